"""Replicas: K seeds of one config in one vmapped program give each model what its own single
run gives (to float tolerance); a diverged member stops alone; a pack resumes."""

import json

import jax
import numpy as np
import pytest

from compress_scaling import data, replicas, steps, train
from configs import smoke
from tests.conftest import read_entry, run_main

SEEDS = (0, 3)
# Quantized weights and activations with stochastic rounding (a per-member quantizer key) and
# gradual magnitude pruning (masks updated in a lax.cond): the state and keys a member owns.
QUANT_SPARSE = "w4a8-sr+s50-every10"


def _config(compression: str, steps_: int = 24):
  c = smoke.get_config()
  c.compression = compression
  c.total_steps, c.eval_every, c.checkpoint_every = steps_, steps_ // 2, steps_ // 2
  return c


@pytest.mark.parametrize(
  "compression", ["dense", pytest.param("s50-every10", marks=pytest.mark.slow)]
)
def test_replicas_equal_single_runs(tmp_path, compression):
  c = _config(compression)
  singles = [
    train.train_and_evaluate(train.with_seed(c, s), str(tmp_path / f"single_{s}")) for s in SEEDS
  ]
  packed = train.train_replicas(c, [str(tmp_path / f"pack_{s}") for s in SEEDS], list(SEEDS))
  for one, member, seed in zip(singles, packed, SEEDS):
    assert member["config"]["seed"] == seed and member["train"]["replicas"] == 2
    assert one["train"]["replicas"] == 1
    assert member["config_hash"] == one["config_hash"]
    assert member["data"]["tokens_seen"] == one["data"]["tokens_seen"]
    assert member["model"]["n_nonzero"] == one["model"]["n_nonzero"]
    np.testing.assert_allclose(
      [loss for _, loss in member["eval"]["curve"]],
      [loss for _, loss in one["eval"]["curve"]],
      rtol=2e-5,
    )
    assert member["train"]["final_train_loss"] == pytest.approx(
      one["train"]["final_train_loss"], rel=2e-5
    )
  # The seeds really differ: distinct models, not one model twice.
  assert abs(packed[0]["eval"]["loss"] - packed[1]["eval"]["loss"]) > 1e-4


def test_quantized_replica_step_equals_single_step():
  """Quantized training is chaotic in the last bit: a vmapped matmul rounds differently in the
  ulp, a rounding decision of the quantizer flips, and after a few steps two trajectories part
  (a single run and its replica by ~1e-3 in loss after 24 steps, as two XLA builds would).
  So the step itself is compared: from the single runs' states at steps 0, 6 and 12, one
  replica step gives each member the loss, gradient norm and parameters of its single step."""
  c = _config(QUANT_SPARSE)
  setup = steps.Setup.create(c)
  corpus = data.load_corpus(c.data)
  batches = [
    data.Batches(corpus, seed=s, batch_size=c.batch_size, seq_len=c.seq_len) for s in SEEDS
  ]
  reps = replicas.Replicas(setup, SEEDS)
  one = replicas.Replicas(setup, (SEEDS[0],))
  init_keys, step_keys = reps.keys()
  single_step, pack_step = setup.jit_train_step(), reps.jit_train_step()
  states = [setup.init_state(k) for k in init_keys]
  for t in range(13):
    rows = [b.train(t) for b in batches]
    if t % 6 == 0:
      new, m = pack_step(reps.stack(states), reps.global_batch(rows), reps.step_keys(step_keys))
    singles = [single_step(s, one.global_batch([r]), k) for s, r, k in zip(states, rows, step_keys)]
    if t % 6 == 0:
      for i, (s_i, m_i) in enumerate(singles):
        np.testing.assert_allclose(m["loss"][i], m_i["loss"], rtol=1e-6, err_msg=f"step {t}")
        np.testing.assert_allclose(m["grad_norm"][i], m_i["grad_norm"], rtol=1e-4)
        member = reps.member(new, i)
        for a, b in zip(jax.tree.leaves(member["params"]), jax.tree.leaves(s_i["params"])):
          np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
        for a, b in zip(jax.tree.leaves(member["masks"]), jax.tree.leaves(s_i["masks"])):
          np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    states = [s for s, _ in singles]


def test_member_state_is_a_single_runs_state():
  c = _config("2:4")
  setup = steps.Setup.create(c)
  reps = replicas.Replicas(setup, SEEDS)
  init_keys, _ = reps.keys()
  state = reps.init_state(init_keys)
  assert state["step"].shape == () and jax.tree.leaves(state["params"])[0].shape[0] == 2
  single = setup.init_state(init_keys[1])
  member = reps.member(state, 1)
  for a, b in zip(jax.tree.leaves(member), jax.tree.leaves(single)):
    assert a.shape == b.shape and a.sharding == b.sharding
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  restacked = reps.stack([reps.member(state, 0), member])
  for a, b in zip(jax.tree.leaves(restacked), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # ~45 s
def test_diverged_member_stops_alone(tmp_path, monkeypatch):
  """Member 1's loss turns NaN at step 10: it is recorded diverged with its last good
  checkpoint (step 6) kept; member 0 trains to the end as its single run does."""
  original = replicas.Replicas.jit_train_step

  def poisoned(self):
    step_fn = original(self)

    def wrapped(state, batch, keys):
      new_state, metrics = step_fn(state, batch, keys)
      bad = (new_state["step"] >= 10) & (jax.numpy.arange(self.k) == 1)
      return new_state, {**metrics, "loss": jax.numpy.where(bad, jax.numpy.nan, metrics["loss"])}

    return wrapped

  c = _config("dense", 12)
  c.checkpoint_every = 6
  monkeypatch.setattr(replicas.Replicas, "jit_train_step", poisoned)
  good, bad = train.train_replicas(c, [str(tmp_path / "a"), str(tmp_path / "b")], [0, 1])
  monkeypatch.setattr(replicas.Replicas, "jit_train_step", original)
  assert bad["status"] == "diverged" and "at step 10" in bad["message"]
  assert "last good checkpoint: step 6" in bad["message"] and bad["train"]["steps"] == 10
  assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["6"]
  assert good["status"] == "complete" and good["train"]["steps"] == 12
  alone = train.train_and_evaluate(c, str(tmp_path / "alone"))
  assert good["eval"]["loss"] == pytest.approx(alone["eval"]["loss"], rel=2e-5)


def test_cli_seeds_resume_and_finished_members(tmp_path):
  """`--seeds` through main: a member finished earlier is reported, not retrained; the others
  train together; the workdir template must hold {seed} for several seeds."""
  fast = ("--config.total_steps=12", "--config.eval_every=6", "--config.checkpoint_every=6")
  run_main(tmp_path / "r_s1", *fast, "--config.seed=1")
  first = read_entry(tmp_path / "r_s1")
  proc = run_main(tmp_path / "r_s{seed}", *fast, "--seeds=0,1,2")
  assert proc.stdout.count("complete: eval loss") == 3
  assert read_entry(tmp_path / "r_s1") == first  # finished: untouched
  entries = [read_entry(tmp_path / f"r_s{s}") for s in (0, 2)]
  assert [e["train"]["replicas"] for e in entries] == [2, 2]
  assert [e["config"]["seed"] for e in entries] == [0, 2]
  bad = run_main(tmp_path / "no_template", *fast, "--seeds=0,1", check=False)
  assert bad.returncode == 2 and "must contain {seed}" in bad.stderr
  assert not (tmp_path / "no_template").exists()
  json.dumps(entries)  # entries stay plain JSON
