"""Checks on every host, before a (multi-host) job trains, that it spans what the launch expects.

  python -m launch.preflight --processes=N [--config.mesh.data=D --config.mesh.fsdp=F ...]

Initialises jax.distributed exactly as compress_scaling.main does (TPU pods and SLURM are
auto-detected; JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID otherwise), then
requires jax.process_count() == N and that the mesh (configs/base.py's, with the given
--config.mesh.* overrides) resolves over jax.device_count() devices (main's own check,
sharding.mesh_shape). Prints one line per host and exits 0, or exits 2 naming the mismatch: a
TPU VM launch whose workers did not all join, or whose slice is not the one the mesh was
written for, stops here instead of training on a wrong topology. Other --config.* arguments
are accepted and ignored, so a launcher may pass a run's overrides unchanged.
"""

from __future__ import annotations

import argparse
import re
import sys

from configs import base
from launch import sweep as sweep_lib


class PreflightError(RuntimeError):
  pass


def mesh_config(overrides: dict[str, str]):
  mesh = base.get_config().mesh
  for key, value in overrides.items():
    if key.startswith("mesh."):
      axis = key.split(".", 1)[1]
      if axis not in mesh or not re.fullmatch(r"-?\d+", value.strip()):
        raise PreflightError(f"--config.{key}={value!r}: expected an integer mesh axis size")
      mesh[axis] = int(value)
  return mesh


def check(expected_processes: int, overrides: dict[str, str], process_count: int, devices: int):
  """The resolved mesh shape, or PreflightError naming what does not match."""
  from compress_scaling import sharding  # noqa: PLC0415 -- imports JAX

  errors = []
  if process_count != expected_processes:
    errors.append(
      f"jax.process_count() = {process_count} but the launch expects {expected_processes} "
      "processes (one per TPU VM worker): a worker did not join, or --processes does not match "
      "the slice"
    )
  try:
    shape = sharding.mesh_shape(mesh_config(overrides), devices)
  except ValueError as e:
    errors.append(f"{e} ({devices} devices over {process_count} processes)")
    shape = None
  if errors:
    raise PreflightError("preflight failed:\n  - " + "\n  - ".join(errors))
  return shape


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m launch.preflight", allow_abbrev=False)
  parser.add_argument("--processes", type=int, required=True, help="expected process count")
  args, rest = parser.parse_known_args(argv)
  try:
    overrides = sweep_lib.parse_config_overrides(rest)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from compress_scaling import main as main_lib  # noqa: PLC0415 -- imports JAX

  main_lib.maybe_initialize_distributed()
  import jax  # noqa: PLC0415

  try:
    shape = check(args.processes, overrides, jax.process_count(), jax.device_count())
  except PreflightError as e:
    print(f"error: process {jax.process_index()}: {e}", file=sys.stderr)
    return 2
  mesh = ", ".join(f"{a}={s}" for a, s in zip(("data", "fsdp", "tensor"), shape))
  kind = jax.devices()[0].device_kind
  print(
    f"preflight ok: process {jax.process_index()} of {jax.process_count()}, "
    f"{jax.local_device_count()} local / {jax.device_count()} devices ({kind}), mesh {mesh}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
