"""Trains one config:

  python -m compress_scaling.main --config=configs/smoke.py --workdir=/tmp/run \
      [--config.model.size=5m --config.compression=w4a16 ...]

Re-running on the same workdir resumes; a finished workdir is reported and left untouched.
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
  "workdir", None, "Run directory (checkpoints, log entry).", required=True
)


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
    entry = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, train.WorkdirError, checkpoint.CheckpointError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  path = os.path.join(paths.absolute(_WORKDIR.value), train.LOG_ENTRY)
  print(f"{entry['status']}: eval loss {entry['eval']['loss']}  log entry: {path}")


if __name__ == "__main__":
  app.run(main)
