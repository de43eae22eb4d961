"""Trains one config:

  python -m compress_scaling.main --config=configs/smoke.py --workdir=/tmp/run \
      [--config.model.size=5m --config.compression=w4a16 ...]

or several seeds of it in one compiled program, one workdir each ({seed} in --workdir):

  python -m compress_scaling.main --config=configs/smoke.py --workdir=/tmp/run_s{seed} \
      --seeds=0,1,2

Re-running on the same workdir resumes; a finished workdir of the same config is reported and
left untouched, one of another config is refused (exit 2) naming the differing fields.

  python -m compress_scaling.main --config=configs/sizes.py:100m --dry_run \
      [--device_memory_gib=16] [--memory_source=auto|compiled|analytic]

validates the config and prints the per-device memory of its train step (params, optimizer
state, masks, activations; compress_scaling/memory.py) for its mesh, dtype, remat and
microbatches, with a WARNING when it exceeds --device_memory_gib; it trains nothing, needs no
--workdir and writes nothing (exit 1 when it will not fit, 2 on an invalid config).
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
  "Run directory (checkpoints, log entry); with --seeds a template holding {seed}. Required "
  "unless --dry_run.",
)
_DRY_RUN = flags.DEFINE_bool(
  "dry_run",
  False,
  "Validate the config and print the train step's per-device memory; train nothing.",
)
_DEVICE_MEMORY_GIB = flags.DEFINE_float(
  "device_memory_gib",
  None,
  "With --dry_run: warn when the step needs more than this per device (e.g. 16 for TPU v5e, "
  "80 for A100/H100 80GB).",
)
_MEMORY_SOURCE = flags.DEFINE_enum(
  "memory_source",
  "auto",
  ["auto", "compiled", "analytic"],
  "With --dry_run: 'compiled' = XLA's memory analysis of the compiled step on this backend; "
  "'analytic' = the arithmetic estimate (no compilation); 'auto' = compiled up to "
  "200M non-embedding params, analytic above (compiling a big model on CPU takes minutes).",
)
AUTO_COMPILE_MAX_PARAMS = 200e6
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

  if _DRY_RUN.value:
    try:
      sys.exit(dry_run(_CONFIG.value, _DEVICE_MEMORY_GIB.value, _MEMORY_SOURCE.value))
    except config_lib.ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  if not _WORKDIR.value:
    print("error: --workdir is required (unless --dry_run)", file=sys.stderr)
    sys.exit(2)
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


def dry_run(config, device_memory_gib: float | None, source: str = "auto") -> int:
  """Prints the config's per-device train-step memory; 0, or 1 when it will not fit."""
  import jax  # noqa: PLC0415

  from compress_scaling import memory, sizes, steps  # noqa: PLC0415

  setup = steps.Setup.create(config)  # validates (ConfigError) and eval_shapes the state
  r = setup.resolved
  n_params = sizes.non_embedding_params(r.model.dims)
  if source == "auto":
    source = "compiled" if n_params <= AUTO_COMPILE_MAX_PARAMS else "analytic"
  mesh = dict(zip(setup.mesh.axis_names, map(int, setup.mesh.devices.shape)))
  print(
    f"# {config.model.size} ({n_params / 1e6:.1f}M non-embedding params), compression "
    f"{config.compression}, dtype {config.model.dtype}, remat {r.model.remat}, microbatches "
    f"{r.microbatches}, batch {config.batch_size} x {config.seq_len}, mesh {mesh} on "
    f"{jax.device_count()} {jax.devices()[0].device_kind} device(s)"
  )
  footprints = [memory.analytic_for_setup(setup)]
  if source == "compiled":
    footprints.insert(0, memory.compiled(setup))
  for f in footprints:
    print(f.line())
  warning = footprints[0].warning(device_memory_gib)
  if warning:
    print(warning)
  return 1 if warning else 0


if __name__ == "__main__":
  app.run(main)
