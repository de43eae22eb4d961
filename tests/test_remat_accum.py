"""Rematerialisation (model.remat) and gradient accumulation (microbatches) change memory, not
the math: the same loss and gradients as the plain step, dense and compressed, single runs and
vmapped replicas; the log entry counts the whole global batch."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compress_scaling import compression, config_identity, config_lib, data, replicas, steps
from compress_scaling import train as train_lib
from configs import smoke

REMAT_PRIMITIVE = re.compile(r"\b(remat2?|checkpoint)\[")  # jax.checkpoint's primitive


def _config(compression_="dense", remat="none", microbatches=1, batch=8, seq=16):
  c = smoke.get_config()
  # One block of width 32: compile time, which dominates these tests, grows with the blocks.
  c.model.size, c.model.n_layers = "0.03m", 1
  c.compression, c.model.remat, c.microbatches = compression_, remat, microbatches
  c.batch_size, c.seq_len = batch, seq
  return c


def _inputs(setup, seed=0):
  """Params with step-0 masks applied (2:4 really prunes), masks, a batch, a quantizer key."""
  c = setup.config
  state = setup.init_state(jax.random.key(seed))
  masks = compression.update_masks(
    setup.resolved.plan, state["params"], state["masks"], jnp.int32(0), c.total_steps
  )
  params = compression.apply_masks(state["params"], masks)
  corpus = data.load_corpus(c.data)
  batch = data.Batches(corpus, seed=seed, batch_size=c.batch_size, seq_len=c.seq_len).train(0)
  return params, masks, setup.global_batch(batch), jax.random.key(seed + 1)


@functools.cache
def _reference(spec: str):
  """(inputs, loss, grads) of the plain step (no remat, one microbatch), shared by the remat
  and microbatch tests of a spec: one compilation fewer per spec."""
  base = steps.Setup.create(_config(spec))
  inputs = _inputs(base)
  assert not REMAT_PRIMITIVE.search(str(jax.make_jaxpr(base.loss_and_grads)(*inputs)))
  return (inputs, *jax.jit(base.loss_and_grads)(*inputs))


def _assert_trees_close(a, b, rtol, atol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
    )


# Default suite: one compressed spec and one policy (each case compiles two gradient programs);
# the other combinations run with -m slow.
REMAT_CASES = [("w4a4+2:4", "save_dots")] + [
  pytest.param(spec, remat, marks=pytest.mark.slow)
  for spec in ("w4a4+2:4", "dense", "w4a4", "2:4")
  for remat in ("full", "save_dots")
  if (spec, remat) != ("w4a4+2:4", "save_dots")
]


@pytest.mark.parametrize("spec,remat", REMAT_CASES)
def test_remat_same_loss_and_gradients(spec, remat):
  inputs, ref_loss, ref_grads = _reference(spec)
  setup = steps.Setup.create(_config(spec, remat=remat))
  # Really rematerialised: the backward pass holds a checkpoint (remat) primitive.
  assert REMAT_PRIMITIVE.search(str(jax.make_jaxpr(setup.loss_and_grads)(*inputs)))
  loss, grads = jax.jit(setup.loss_and_grads)(*inputs)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  _assert_trees_close(grads, ref_grads, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
  "spec,ks", [("w4a4+2:4", (4,)), pytest.param("dense", (2, 4), marks=pytest.mark.slow)]
)
def test_microbatch_gradients_equal_full_batch(spec, ks):
  inputs, ref_loss, ref_grads = _reference(spec)
  for k in ks:
    setup = steps.Setup.create(_config(spec, microbatches=k))
    loss, grads = jax.jit(setup.loss_and_grads)(*inputs)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    _assert_trees_close(grads, ref_grads, rtol=1e-4, atol=1e-5)
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype("float32")}
  if "2:4" in spec:  # the mask update (a lax.cond) runs once per step, outside the scan
    step = jax.make_jaxpr(setup.train_step)(setup.abstract_state, inputs[2], inputs[3]).jaxpr
    (scan,) = [e for e in step.eqns if e.primitive.name == "scan"]
    assert any(e.primitive.name == "cond" for e in step.eqns)
    assert "cond[" not in str(scan.params["jaxpr"])


@pytest.mark.slow  # ~25 s: two trainings with eval and checkpoints
def test_microbatch_training_tracks_full_batch_and_entry(tmp_path):
  """Four steps with 4 microbatches: losses and params follow the one-batch run closely; the
  log entry counts every token of the global batch."""
  c1, c4 = _config(), _config(microbatches=4)
  for c in (c1, c4):
    c.total_steps, c.eval_every, c.checkpoint_every, c.eval_batches = 4, 4, 4, 1
  e1 = train_lib.train_and_evaluate(c1, str(tmp_path / "k1"))
  e4 = train_lib.train_and_evaluate(c4, str(tmp_path / "k4"))
  assert e4["status"] == "complete" and e4["config"]["microbatches"] == 4
  assert e4["train"]["final_train_loss"] == pytest.approx(e1["train"]["final_train_loss"], rel=1e-4)
  assert e4["eval"]["loss"] == pytest.approx(e1["eval"]["loss"], rel=1e-4)
  assert e4["data"]["tokens_seen"] == 4 * 8 * 16 == e1["data"]["tokens_seen"]
  # Throughput: the 3 timed steps (after the compiling one) of the full 8 x 16 batch each.
  steps_s = e4["train"]["phases_s"]["steps"]
  assert e4["train"]["tokens_per_s"] == pytest.approx(3 * 8 * 16 / steps_s, rel=0.05)
  assert e4["config_hash"] != e1["config_hash"]


@pytest.mark.slow  # ~25 s; tests/test_replicas.py covers the vmapped step at microbatches=1
def test_microbatches_under_replicas():
  """The vmapped K-seed step with microbatching gives each member its single step."""
  c = _config("w4a16+2:4", microbatches=2)
  setup = steps.Setup.create(c)
  seeds = (0, 3)
  reps = replicas.Replicas(setup, seeds)
  one = replicas.Replicas(setup, (seeds[0],))
  init_keys, step_keys = reps.keys()
  corpus = data.load_corpus(c.data)
  rows = [data.Batches(corpus, seed=s, batch_size=8, seq_len=16).train(0) for s in seeds]
  states = [setup.init_state(k) for k in init_keys]
  new, m = reps.jit_train_step()(
    reps.stack(states), reps.global_batch(rows), reps.step_keys(step_keys)
  )
  single = setup.jit_train_step()
  for i, (s, r, k) in enumerate(zip(states, rows, step_keys)):
    s_i, m_i = single(s, one.global_batch([r]), k)
    np.testing.assert_allclose(m["loss"][i], m_i["loss"], rtol=1e-6)
    np.testing.assert_allclose(m["grad_norm"][i], m_i["grad_norm"], rtol=1e-4)
    _assert_trees_close(reps.member(new, i)["params"], s_i["params"], rtol=1e-4, atol=1e-6)


def test_neutral_defaults_keep_old_hashes():
  """A config recorded before remat / microbatches existed hashes as the same config at their
  neutral defaults (so finished workdirs stay finished); other values change the identity."""
  c = _config()
  new = config_lib.to_dict(c)
  old = {k: v for k, v in new.items() if k != "microbatches"}
  old["model"] = {k: v for k, v in new["model"].items() if k != "remat"}
  assert config_identity.dict_hash(old) == config_identity.dict_hash(new)
  assert config_identity.mismatch({"config": old}, new) is None
  c.microbatches = 2
  assert config_identity.mismatch({"config": old}, config_lib.to_dict(c)) == ["microbatches"]
  # A recorded config without the fields still validates (PTQ rebuilds configs from entries).
  import ml_collections

  r = config_lib.validate(ml_collections.ConfigDict(old), 1)
  assert r.microbatches == 1 and r.model.remat == "none"
