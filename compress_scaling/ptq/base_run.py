"""A finished training run, opened read-only for post-training quantization.

`load(workdir)` (local or gs://) checks the run's log entry (complete), rebuilds its config
from the entry, restores the newest readable checkpoint onto the run's sharded abstract state,
and loads the corpus the run was trained on (its fingerprint must match the checkpoint's).
Nothing in the workdir is created, cleaned up or rewritten.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from compress_scaling import checkpoint, compression, data, logbook, model, paths, steps, train


class BaseRunError(ValueError):
  """The workdir does not hold a finished run that PTQ can read."""


@dataclasses.dataclass
class BaseRun:
  workdir: str
  entry: dict  # the run's log entry
  setup: steps.Setup
  batches: data.Batches
  state: Any  # {step, params, opt_state, masks}, restored onto the run's shardings

  @property
  def kernel_paths(self) -> list[tuple[str, ...]]:
    """Param paths of the block projection kernels (the layers a global compression spec
    covers: compression.DEFAULT_SCOPE x PROJECTIONS), in forward order."""
    params = self.state["params"]
    n_layers = self.setup.resolved.model.dims.n_layers
    paths = []
    for i in range(n_layers):
      for proj in compression.PROJECTIONS:
        path = (f"block_{i}", *proj.split("/"), "dense", "kernel")
        get_path(params, path)  # KeyError would mean the model and this list disagree
        paths.append(path)
    return paths

  def eval_setup(self) -> steps.Setup:
    """The run's setup with weight quantization removed from its plan: PTQ supplies the
    weights already quantized; activation quantization and sparsity masks stay as trained."""
    plan = self.setup.resolved.plan
    strip = lambda c: dataclasses.replace(c, weights=None)  # noqa: E731
    plan = dataclasses.replace(
      plan, default=strip(plan.default), rules=tuple((p, strip(c)) for p, c in plan.rules)
    )
    module = model.Transformer(self.setup.resolved.model, plan)
    return dataclasses.replace(self.setup, module=module)


def get_path(tree, path: tuple[str, ...]):
  for k in path:
    tree = tree[k]
  return tree


def set_path(tree: dict, path: tuple[str, ...], value) -> dict:
  """A copy of the nested dict `tree` with `value` at `path` (other leaves shared)."""
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = set_path(tree[path[0]], path[1:], value)
  return out


def load(workdir: str, *, calib_seed: int | None = None) -> BaseRun:
  """Opens a finished run. Raises BaseRunError naming what is missing."""
  # Local or gs:// (as training writes them): files through compress_scaling.paths, the
  # checkpoints through orbax, which reads object stores itself.
  workdir = paths.absolute(workdir)
  entry_path = paths.join(workdir, train.LOG_ENTRY)
  if not paths.exists(entry_path):
    raise BaseRunError(f"--workdir {workdir}: no {train.LOG_ENTRY}; PTQ needs a finished run")
  entry = logbook.read_entry(entry_path)  # ValueError names a corrupt entry
  if entry.get("kind", "train") != "train":
    raise BaseRunError(f"--workdir {workdir}: its log entry is of kind {entry.get('kind')!r}")
  if entry.get("status") != "complete":
    raise BaseRunError(
      f"--workdir {workdir}: the run's status is {entry.get('status')!r}; PTQ needs a "
      "complete run (allowed: status 'complete')"
    )
  config = ml_collections.ConfigDict(entry["config"])
  setup = steps.Setup.create(config)
  corpus = data.load_corpus(config.data)
  ckpt_dir = paths.join(workdir, "checkpoints")
  if not paths.is_dir(ckpt_dir):
    raise BaseRunError(
      f"--workdir {workdir}: no checkpoints/ folder; PTQ needs the trained weights"
    )
  ckpt = checkpoint.Checkpointer(ckpt_dir, read_only=True)
  try:
    restored = ckpt.restore(setup.abstract_state, corpus.fingerprint)
  except checkpoint.CheckpointError as e:
    raise BaseRunError(f"--workdir {workdir}: {e}") from e
  finally:
    ckpt.close()
  if restored is None:
    raise BaseRunError(f"--workdir {workdir}: no finished checkpoint in {ckpt_dir}")
  state, position = restored
  if position.get("step") != config.total_steps:
    raise BaseRunError(
      f"--workdir {workdir}: the newest readable checkpoint is at step {position.get('step')}, "
      f"not the final step {config.total_steps}; PTQ needs the final weights"
    )
  batches = data.Batches(
    corpus,
    seed=config.seed if calib_seed is None else calib_seed,
    batch_size=config.batch_size,
    seq_len=config.seq_len,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  return BaseRun(workdir, entry, setup, batches, state)
