"""Trains one config:

  python -m compress_scaling.main --config=configs/smoke.py --workdir=/tmp/run \
      [--config.model.size=5m --config.compression=w4a16 ...]

or several seeds of it in one compiled program, one workdir each ({seed} in --workdir):

  python -m compress_scaling.main --config=configs/smoke.py --workdir=/tmp/run_s{seed} \
      --seeds=0,1,2

Re-running on the same workdir resumes; a finished workdir of the same config is reported and
left untouched, one of another config is refused (exit 2) naming the differing fields.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from compress_scaling import cli_logging, cpu_flags, paths

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/base.py", "Run config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Run directory (checkpoints, log entry); with --seeds a template holding {seed}.",
  required=True,
)
_SEEDS = flags.DEFINE_list(
  "seeds",
  None,
  "Train these seeds of the config (replacing config.seed) as replicas in one compiled "
  "program, one workdir each: --workdir must then contain {seed}.",
)


def member_workdirs(template: str, seeds: list[str] | None, config_seed: int):
  """(workdirs, seeds) from --workdir and --seeds; ValueError naming the flag when bad."""
  if seeds is None:
    if "{seed}" in template:
      return [template.replace("{seed}", str(config_seed))], [config_seed]
    return [template], [config_seed]
  try:
    values = [int(s) for s in seeds]
  except ValueError:
    raise ValueError(f"--seeds={','.join(seeds)}: expected comma-separated integers") from None
  if not values or len(set(values)) != len(values) or min(values) < 0:
    raise ValueError(f"--seeds={','.join(seeds)}: expected distinct non-negative integers")
  if len(values) > 1 and "{seed}" not in template:
    raise ValueError(
      f"--workdir={template}: with several --seeds the workdir must contain {{seed}} "
      "(one workdir per seed)"
    )
  return [template.replace("{seed}", str(v)) for v in values], values


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() when the environment says the job spans several hosts."""
  import jax  # noqa: PLC0415 -- import after flags so --help stays fast

  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):  # explicit (local multi-process, GPU clusters)
    # Cross-process collectives on CPU need gloo; the flag only affects the CPU backend, and
    # asking which backend is in use would initialise it too early.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
      num_processes=int(env["JAX_NUM_PROCESSES"]),
      process_id=int(env["JAX_PROCESS_ID"]),
    )
  elif "," in env.get("TPU_WORKER_HOSTNAMES", "") or int(env.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()  # auto-detected on multi-host TPU VMs and SLURM


def main(argv):
  del argv
  cpu_flags.apply()  # before JAX creates its CPU client
  cli_logging.install()
  maybe_initialize_distributed()
  from compress_scaling import checkpoint, config_lib, train  # noqa: PLC0415

  try:
    workdirs, seeds = member_workdirs(_WORKDIR.value, _SEEDS.value, _CONFIG.value.seed)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  try:
    entries = train.train_replicas(_CONFIG.value, workdirs, seeds)
  except (config_lib.ConfigError, train.WorkdirError, checkpoint.CheckpointError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for workdir, entry in zip(workdirs, entries):
    path = os.path.join(paths.absolute(workdir), train.LOG_ENTRY)
    print(f"{entry['status']}: eval loss {entry['eval']['loss']}  log entry: {path}")


if __name__ == "__main__":
  app.run(main)
