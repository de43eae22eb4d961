"""One-step golden numbers, loss falls on the smoke config, workdir safety."""

import json
import math
import os

import jax
import numpy as np
import pytest

from compress_scaling import config_lib, data, logbook, steps, train
from configs import smoke

# Golden metrics of the first three steps of smoke at batch 4 x 32 (seed 0). If a change is
# meant to alter the numerics (init, data order, optimizer), re-derive and update them.
GOLDEN = [  # (loss, grad_norm, lr)
  (6.05745267868042, 2.7644903659820557, 0.0),
  (6.051045894622803, 3.9326653480529785, 0.0016666668234393),
  (5.4941205978393555, 3.217867136001587, 0.0033333336468786),
]


def test_golden_first_steps():
  c = smoke.get_config()
  c.batch_size, c.seq_len = 4, 32
  setup = steps.Setup.create(c)
  init_key, step_key = jax.random.split(jax.random.key(c.seed))
  state = setup.init_state(init_key)
  batches = data.Batches(data.load_corpus(c.data), seed=c.seed, batch_size=4, seq_len=32)
  step = setup.jit_train_step()
  for i, (loss, grad_norm, lr) in enumerate(GOLDEN):
    state, m = step(state, setup.global_batch(batches.train(i)), step_key)
    np.testing.assert_allclose(
      [m["loss"], m["grad_norm"], m["lr"]], [loss, grad_norm, lr], rtol=2e-5, err_msg=f"step {i}"
    )
  assert int(state["step"]) == 3
  # Initial loss is near-uniform prediction over 256 byte ids (ln 256 = 5.545).
  assert abs(GOLDEN[0][0] - math.log(256)) < 1.0


def test_smoke_loss_falls_and_entry(tmp_path):
  c = smoke.get_config()
  entry = train.train_and_evaluate(c, str(tmp_path))
  assert entry["status"] == "complete"
  curve = entry["eval"]["curve"]
  assert [s for s, _ in curve] == [30, 60]
  # From ~ln(256) = 5.55 nats/byte at init to well below 3 after 60 steps.
  assert entry["eval"]["loss"] < 3.0
  m, d, t = entry["model"], entry["data"], entry["train"]
  assert m["n_params"] == 106816 and m["n_params_total"] == 106816 + 2 * 256 * 64
  assert m["n_nonzero"] == m["n_params"] and m["bits_per_param"] == 16.0
  assert (
    d["tokens_seen"] == 60 * 8 * 64 and d["fingerprint"] == data.load_corpus(c.data).fingerprint
  )
  assert entry["eval"]["n_tokens"] == 2 * 8 * 64
  assert (
    t["steps"] == 60 and t["tokens_per_s"] > 0 and t["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
  )
  assert entry["compression"]["spec"] == "dense"
  assert entry["config_hash"] == config_lib.config_hash(c)
  on_disk = json.loads((tmp_path / "log_entry.json").read_text())
  assert (
    on_disk["run_id"] == entry["run_id"] and on_disk["schema"] == "compress_scaling/log_entry/v1"
  )
  # The fitting side reads it back: one row with the law's columns.
  row = logbook.read_runs(str(tmp_path / "**" / "log_entry.json")).iloc[0]
  assert (row["run_id"], row["compression"], row["status"]) == (
    entry["run_id"],
    "dense",
    "complete",
  )
  assert (row["N"], row["D"], row["loss"]) == (
    m["n_params"],
    d["tokens_seen"],
    entry["eval"]["loss"],
  )
  # Re-running a finished workdir reports it and changes nothing.
  before = {p: os.stat(p).st_mtime_ns for p in map(str, tmp_path.rglob("*"))}
  again = train.train_and_evaluate(c, str(tmp_path))
  assert again == on_disk
  assert {p: os.stat(p).st_mtime_ns for p in map(str, tmp_path.rglob("*"))} == before


def test_resume_with_different_config_is_refused(tmp_path):
  c = smoke.get_config()
  # An unfinished run of another config (identity file, no log entry yet).
  other = smoke.get_config()
  other.seed = 7
  meta = {
    "run_id": "x",
    "created": "t",
    "config": config_lib.to_dict(other),
    "config_hash": config_lib.config_hash(other),
  }
  (tmp_path / "run.json").write_text(json.dumps(meta))
  with pytest.raises(train.WorkdirError, match="different config .*fields seed"):
    train.train_and_evaluate(c, str(tmp_path))
  assert json.loads((tmp_path / "run.json").read_text()) == meta
  assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_nan_stops_run_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  """A loss that turns NaN at step 26 stops the run: entry `diverged`, message with the step
  range, and the checkpoint of step 20 (before the NaN) is kept and not replaced."""
  original = steps.Setup.jit_train_step

  def poisoned(self):
    step_fn = original(self)

    def wrapped(state, batch, key):
      new_state, metrics = step_fn(state, batch, key)
      bad = new_state["step"] >= 26
      return new_state, {**metrics, "loss": jax.numpy.where(bad, jax.numpy.nan, metrics["loss"])}

    return wrapped

  monkeypatch.setattr(steps.Setup, "jit_train_step", poisoned)
  entry = train.train_and_evaluate(smoke.get_config(), str(tmp_path))
  assert entry["status"] == "diverged"
  assert "at step 26" in entry["message"] and "last finite loss was at step 25" in entry["message"]
  assert "last good checkpoint: step 20" in entry["message"]
  assert entry["eval"]["loss"] is None
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["20"]
  # A diverged workdir is finished: re-running reports it and does not train again.
  monkeypatch.setattr(steps.Setup, "jit_train_step", original)
  assert train.train_and_evaluate(smoke.get_config(), str(tmp_path)) == entry


def test_corrupt_log_entry_is_not_overwritten(tmp_path):
  (tmp_path / "log_entry.json").write_text('{"schema": "compress_scaling/log_entry/v1", "sta')
  with pytest.raises(train.WorkdirError, match="log_entry.json"):
    train.train_and_evaluate(smoke.get_config(), str(tmp_path))
  assert (tmp_path / "log_entry.json").read_text().endswith('"sta')
  assert sorted(p.name for p in tmp_path.iterdir()) == ["log_entry.json"]


def _snapshot(root):
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_finished_workdir_checks_the_config_first(tmp_path):
  """On a finished workdir: an invalid config is reported as on a fresh one (exit 2); the same
  config is reported finished (exit 0); another valid config is refused (exit 2) naming the
  differing fields. The workdir's files stay byte-identical in every case."""
  from tests.conftest import run_main  # noqa: PLC0415

  fast = ("--config.total_steps=8", "--config.eval_every=4", "--config.checkpoint_every=4")
  run_main(tmp_path, *fast)
  before = _snapshot(tmp_path)
  cases = {
    "--config.compression=s150": "compression='s150': sparsity term 's150': sparsity must be",
    "--config.model.size=bogus": "model.size='bogus' is unknown",
    "--config.total_steps=0": "total_steps=0: must be a positive integer",
  }
  for flag, message in cases.items():
    proc = run_main(tmp_path, *fast, flag, check=False)
    assert proc.returncode == 2 and message in proc.stderr, (flag, proc.stderr[-2000:])
    assert "nothing to do" not in proc.stderr + proc.stdout
    assert _snapshot(tmp_path) == before
  same = run_main(tmp_path, *fast)
  assert "is finished (status complete" in same.stderr and "nothing to do" in same.stderr
  other = run_main(tmp_path, *fast, "--config.compression=w2a16", check=False)
  assert other.returncode == 2, other.stderr[-2000:]
  assert "finished run (status complete) of a different config (fields compression)" in (
    other.stderr
  )
  assert _snapshot(tmp_path) == before
