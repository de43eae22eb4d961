"""Sparsity inside training: masks as checkpointed state, exact densities, pruned weights
that stay zero, and masks that survive a kill-and-resume."""

import signal

import jax
import numpy as np
import pytest

from compress_scaling import checkpoint, compression, data, steps, train
from configs import smoke
from tests.conftest import read_entry, run_main, start_main, wait_for_checkpoint


def _final_state(config, workdir):
  setup = steps.Setup.create(config)
  fingerprint = data.load_corpus(config.data).fingerprint
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"))
  state, _ = ckpt.restore(setup.abstract_state, fingerprint)
  ckpt.close()
  return state


def _pruned_kernels(state):
  kernels = compression.kernels_for_masks(state["params"], state["masks"])
  masks = {
    compression._path_keys(p): np.asarray(m)
    for p, m in jax.tree_util.tree_leaves_with_path(state["masks"])
  }
  return {p: (np.asarray(kernels[p]), masks[p]) for p in masks}


@pytest.mark.parametrize("spec,check_group", [("s50-every10", False), ("2:4-every10", True)])
def test_sparse_smoke_run(tmp_path, spec, check_group):
  c = smoke.get_config()
  c.compression = spec
  entry = train.train_and_evaluate(c, str(tmp_path))
  assert entry["status"] == "complete" and entry["compression"]["spec"] == spec
  state = _final_state(c, tmp_path)
  pruned = _pruned_kernels(state)
  # Default scope: the 7 projections of each of the 2 blocks; never norms, embeddings or head.
  assert len(pruned) == 14 and all(p[0].startswith("block_") for p in pruned)
  masked = sum(m.size for _, m in pruned.values())
  assert entry["compression"]["achieved_sparsity"] == 0.5
  assert entry["model"]["n_nonzero"] == entry["model"]["n_params"] - masked // 2
  for path, (w, m) in pruned.items():
    assert m.mean() == 0.5, path
    assert np.all(w[~m] == 0), path  # pruned weights are exactly zero after training
    assert np.count_nonzero(w) == m.sum(), path  # and every kept one is non-zero
    if check_group:  # 2 kept of every 4 consecutive inputs (contraction axis 0)
      groups = m.reshape(m.shape[0] // 4, 4, m.shape[1]).sum(axis=1)
      assert np.all(groups == 2), path


@pytest.mark.slow  # two training processes, one killed (~75 s)
def test_masks_identical_after_kill_and_resume(tmp_path):
  args = (
    "--config.compression=s75-every10",
    "--config.total_steps=120",
    "--config.checkpoint_every=20",
    "--config.eval_every=60",
  )
  ref = tmp_path / "ref"
  run_main(ref, *args)
  killed = tmp_path / "killed"
  proc = start_main(killed, *args)
  wait_for_checkpoint(proc, killed, 40)  # mid-ramp: masks update every 10 steps in [30, 90]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  run_main(killed, *args)
  c = smoke.get_config()
  c.compression, c.total_steps, c.checkpoint_every = "s75-every10", 120, 20
  c.eval_every = 60
  a, b = _final_state(c, ref), _final_state(c, killed)
  for x, y in zip(jax.tree_util.tree_leaves(a["masks"]), jax.tree_util.tree_leaves(b["masks"])):
    np.testing.assert_array_equal(x, y)
  assert read_entry(killed)["eval"]["loss"] == pytest.approx(
    read_entry(ref)["eval"]["loss"], rel=1e-6
  )


@pytest.mark.slow  # default-suite time: CI runs the fast set in ~15 minutes on 2 cores
def test_embedding_pruned_by_rule(tmp_path):
  """Embeddings are off by default and prunable by rule, with the same exact density."""
  c = smoke.get_config()
  c.compression, c.compression_rules = "dense", "embed=s75-static"
  entry = train.train_and_evaluate(c, str(tmp_path))
  pruned = _pruned_kernels(_final_state(c, tmp_path))
  assert list(pruned) == [("embed", compression.MASK_MODULE, "mask")]
  w, m = pruned[("embed", compression.MASK_MODULE, "mask")]
  assert w.shape == (256, 64) and m.mean() == 0.25 and np.all(w[~m] == 0)
  assert entry["compression"]["achieved_sparsity"] == 0.75
  assert entry["model"]["n_nonzero"] == entry["model"]["n_params"]  # N excludes embeddings
