"""Post-training quantization of finished runs:

  python -m compress_scaling.ptq --workdir W [--workdir W2 ...] --formats w8a16,w4a16,w3a16 \
      --methods rtn,gptq [--out DIR] [--calib_batches 16 --block_size 128 --damp 0.01 \
      --act_order --nosequential --max_carry_gib 4]

--workdir takes run folders or globs (e.g. 'runs/ptq/*': the matching folders that hold a
log_entry.json, so a sweep's _logs/ and earlier -ptq outputs are passed over). One log entry
per (run, format, method), kind "ptq", in `<out or W-ptq>/<format>_<method>/`; the run's own
workdir is only read. Exit code 2 with a message on bad flags or a workdir without a finished
run.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from compress_scaling import cli_logging, cpu_flags

_WORKDIR = flags.DEFINE_multi_string("workdir", None, "Finished run folder(s) or globs.")
_FORMATS = flags.DEFINE_string("formats", None, "Comma-separated weight-only specs.")
_METHODS = flags.DEFINE_string("methods", "rtn,gptq", "Comma-separated: rtn, gptq.")
_OUT = flags.DEFINE_string("out", None, "Output root (default <workdir>-ptq); one run only.")
_CALIB = flags.DEFINE_integer("calib_batches", 16, "Training batches for GPTQ's Hessians.")
_BLOCK = flags.DEFINE_integer("block_size", 128, "GPTQ column block size.")
_DAMP = flags.DEFINE_float("damp", 0.01, "GPTQ dampening (fraction of mean diag H).")
_ACT_ORDER = flags.DEFINE_bool("act_order", False, "GPTQ: quantize inputs by decreasing diag H.")
_SEQUENTIAL = flags.DEFINE_bool("sequential", True, "Calibrate block l after blocks < l.")
_CARRY = flags.DEFINE_float(
  "max_carry_gib", 4.0, "Sequential GPTQ: largest hidden-state carry; above it, rerun blocks."
)
_RADII = flags.DEFINE_list("radii", None, "Relative radii of the radial loss probe.")
_DIRECTIONS = flags.DEFINE_integer("directions", 2, "Random directions per radius.")
flags.mark_flags_as_required(["workdir", "formats"])


def main(argv):
  del argv
  cli_logging.install()
  cpu_flags.apply()  # before JAX creates its CPU client
  from compress_scaling import config_lib  # noqa: PLC0415 -- JAX after flags
  from compress_scaling.ptq import base_run, run  # noqa: PLC0415

  try:
    opts = run.Options(
      calib_batches=_CALIB.value,
      block_size=_BLOCK.value,
      damp=_DAMP.value,
      act_order=_ACT_ORDER.value,
      sequential=_SEQUENTIAL.value,
      max_carry_gib=_CARRY.value,
      directions=_DIRECTIONS.value,
      **({"radii": tuple(float(r) for r in _RADII.value)} if _RADII.value else {}),
    )
    formats, methods = run.parse_formats(_FORMATS.value), run.parse_methods(_METHODS.value)
    workdirs = run.expand_workdirs(_WORKDIR.value)
    if _OUT.value and len(workdirs) > 1:
      raise ValueError("--out names one output root; give it with a single --workdir")
    for workdir in workdirs:
      paths = run.quantize_run(workdir, [f for f, _ in formats], methods, out=_OUT.value, opts=opts)
      print(
        f"{workdir}: {len(paths)} PTQ log entries in {os.path.dirname(os.path.dirname(paths[0]))}"
      )
  except (ValueError, base_run.BaseRunError, config_lib.ConfigError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
