"""Where a mini run's wall time goes, and what replica packs and the compilation cache save.

  python benchmarks/bench_sweep.py [--size 0.1m] [--compression w4a4-gmse] [--steps 105]
      [--seeds 2]

Trains K seeds of one unified-mini config the three ways a sweep can, each as subprocesses of
`compress_scaling.main` exactly as launch/sweep.py starts them, all in one session:

  before   K single runs, no compilation cache, two evaluations and a checkpoint at half way
           and at the end (the cadence of the earlier unified mini)
  cache    K single runs sharing a fresh JAX compilation cache, one evaluation and one
           checkpoint at the end (this sweep's cadence)
  pack     one process training the K seeds stacked in one compiled program (--seeds), same
           cadence, fresh cache

For every process it prints the wall time, split into interpreter start-up and imports (wall
minus what the run records) and the phases each log entry records in train.phases_s (setup,
corpus, restore, init, first_step = compilation + one step, steps, eval, checkpoint, entry),
then each way's total and its ratio to `before`. Compilation is in init, first_step and eval.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = (
  "setup",
  "corpus",
  "restore",
  "init",
  "first_step",
  "steps",
  "eval",
  "checkpoint",
  "entry",
)


def _command(workdir: str, args, seeds: list[int], *, old_cadence: bool) -> list[str]:
  steps = args.steps
  cadence = (
    [f"--config.eval_every={-(-steps // 2)}", f"--config.checkpoint_every={steps // 2}"]
    if old_cadence
    else [f"--config.eval_every={steps}", f"--config.checkpoint_every={steps}"]
  )
  seed_flags = (
    [f"--seeds={','.join(map(str, seeds))}"] if len(seeds) > 1 else [f"--config.seed={seeds[0]}"]
  )
  return [
    sys.executable,
    "-m",
    "compress_scaling.main",
    "--config=configs/base.py",
    f"--workdir={workdir}",
    *seed_flags,
    "--config.batch_size=16",
    "--config.seq_len=128",
    f"--config.model.size={args.size}",
    f"--config.compression={args.compression}",
    f"--config.total_steps={steps}",
    "--config.log_every=25",
    *cadence,
  ]


def _process(cmd: list[str], cache: str | None, workdirs: list[str]) -> dict:
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  if cache:
    env["JAX_COMPILATION_CACHE_DIR"] = cache
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  t = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t
  if proc.returncode:
    raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
  with open(os.path.join(workdirs[-1], "log_entry.json")) as f:
    phases = json.load(f)["train"]["phases_s"]  # the last member saw every phase
  row = {"wall": wall, **{p: phases.get(p, 0.0) for p in PHASES}}
  row["startup"] = wall - sum(phases.values())
  return row


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--size", default="0.1m")
  p.add_argument("--compression", default="w4a4-gmse")
  p.add_argument("--steps", type=int, default=105)
  p.add_argument("--seeds", type=int, default=2)
  args = p.parse_args(argv)
  seeds = list(range(args.seeds))
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    for way in ("before", "cache", "pack"):
      cache = None if way == "before" else os.path.join(tmp, f"cache_{way}")
      if way == "pack":
        workdirs = [os.path.join(tmp, way, f"s{s}") for s in seeds]
        cmd = _command(os.path.join(tmp, way, "s{seed}"), args, seeds, old_cadence=False)
        rows[(way, "+".join(map(str, seeds)))] = _process(cmd, cache, workdirs)
        continue
      for s in seeds:
        workdir = os.path.join(tmp, way, f"s{s}")
        cmd = _command(workdir, args, [s], old_cadence=way == "before")
        rows[(way, str(s))] = _process(cmd, cache, [workdir])
  cols = ("wall", "startup", *PHASES)
  print(
    f"{args.size} {args.compression}, {args.steps} steps of 16 x 128 tokens, {args.seeds} seeds "
    "(seconds per process):"
  )
  print("| way | seeds | " + " | ".join(cols) + " |")
  print("|---|---|" + "---|" * len(cols))
  for (way, s), r in rows.items():
    print(f"| {way} | {s} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |")
  totals = {}
  for (way, _), r in rows.items():
    totals[way] = totals.get(way, 0.0) + r["wall"]
  print()
  for way, total in totals.items():
    print(f"{way:>7}: {total:7.1f} s for {args.seeds} runs, {totals['before'] / total:.2f}x before")
  return 0


if __name__ == "__main__":
  sys.exit(main())
