"""Orbax checkpoints of the train state plus the data position (current CheckpointManager API).

Each checkpoint holds two items: `state` (params, optimizer state, masks, step), restored onto
explicitly sharded abstract targets, and `data` (JSON: the step the data iterator resumes at
and the corpus fingerprint, checked on restore). Only finished steps are restored: orbax
writes to a temporary folder and renames, so a run killed mid-save resumes from the previous
checkpoint.
"""

from __future__ import annotations

import logging

import jax
import orbax.checkpoint as ocp

from compress_scaling import paths


class CheckpointError(RuntimeError):
  pass


class Checkpointer:
  def __init__(self, directory: str, max_to_keep: int = 2, *, read_only: bool = False):
    """`read_only` opens another run's checkpoints (e.g. for post-training quantization):
    nothing is created, cleaned up or deleted in `directory`."""
    self.directory = paths.absolute(directory)
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
      ),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_position: dict) -> None:
    """Saves asynchronously; `wait()` before exiting or reading the checkpoint back."""
    self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position)
      ),
      force=True,
    )

  def restore(self, abstract_state, fingerprint: str):
    """Restores the newest readable checkpoint onto `abstract_state` (ShapeDtypeStructs with
    shardings). Returns (state, data_position) or None when there is no checkpoint."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      return None
    errors = []
    for step in steps:
      try:
        restored = self.manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
          ),
        )
      except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint: try the previous one
        errors.append(f"step {step}: {type(e).__name__}: {e}")
        logging.warning(
          "checkpoint %s/%d unreadable, trying an older one: %s", self.directory, step, e
        )
        continue
      data = restored["data"]
      if data.get("fingerprint") != fingerprint:
        raise CheckpointError(
          f"checkpoint {self.directory}/{step} was written for data fingerprint "
          f"{data.get('fingerprint')!r}, but the current corpus has {fingerprint!r}; "
          "refusing to resume on different data"
        )
      return restored["state"], data
    raise CheckpointError(
      f"no readable checkpoint in {self.directory}; nothing was deleted. Errors:\n  "
      + "\n  ".join(errors)
    )

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(state, shardings):
  """ShapeDtypeStructs of `state` carrying the target shardings (for sharded restore)."""
  return jax.tree_util.tree_map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )
