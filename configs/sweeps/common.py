"""Shared pieces of the sweep configs: the `Run` record, variant arguments, step arithmetic.

A sweep module (configs/sweeps/<paper>.py) has

    runs(arg) -> list[Run]          every run of a variant, in a stable order
    get_config(arg) -> ConfigDict   configs/base.py plus the variant's shared settings, or
                                    with arg "<variant>/<run name>" exactly that run

and arg is "paper", "mini" (the same design at CPU scale), "quick" (the slice of "mini" at its
smallest size and budget, 2-10 minutes on 2 CPU cores; same names and overrides as in "mini",
so a later "mini" sweep into the same directory skips them), or "<variant>/<run name>".

`Run.overrides` holds every field that differs from configs/base.py (the variant's shared
settings and the run's own), so `--config=configs/base.py --config.<k>=<v> ...` reproduces a
run without the sweep module (launch/sweep.py prints exactly that command).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import ml_collections

from compress_scaling import sizes
from configs import base

VARIANTS = ("paper", "mini", "quick")
DEFAULT_VARIANT = "mini"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")

# ------------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep: a unique name (its workdir) and its config overrides.

  `pack`: for replicate seeds of one config (`replicas()`), the workdir template they share
  ('<name>_s{seed}'); the sweep runner trains runs of one pack in one process, stacked in one
  compiled program (`compress_scaling.main --seeds`)."""

  name: str
  overrides: dict[str, Any]
  pack: str | None = None

  def __post_init__(self):
    if not _NAME_RE.fullmatch(self.name):
      raise ValueError(
        f"run name {self.name!r}: use letters, digits and . _ + = - (it names a directory)"
      )
    if self.pack is not None and (
      "seed" not in self.overrides
      or self.pack.replace("{seed}", str(self.overrides["seed"])) != self.name
    ):
      raise ValueError(
        f"run {self.name!r}: pack template {self.pack!r} must give the run's name with its "
        "seed override"
      )

  def flags(self) -> list[str]:
    """`--config.<field>=<value>` arguments for compress_scaling.main."""
    return override_flags(self.overrides)


def replicas(name: str, overrides: dict[str, Any], seeds: Iterable[int]) -> list[Run]:
  """One run per seed of one config, named '<name>_s<seed>', sharing the pack '<name>_s{seed}'.
  Every compression of a cell gets the same seeds, so their runs share init and data order
  (common random numbers: the paired loss differences the fit's noise model uses)."""
  return [
    Run(f"{name}_s{seed}", {**overrides, "seed": int(seed)}, pack=f"{name}_s{{seed}}")
    for seed in seeds
  ]


def flag_value(value: Any) -> str:
  """How a config value is spelled on the command line (ml_collections parses it back)."""
  if isinstance(value, bool):
    return str(value)  # True / False
  if isinstance(value, float):
    return repr(value)  # shortest string that round-trips
  return str(value)


def override_flags(overrides: dict[str, Any]) -> list[str]:
  return [f"--config.{key}={flag_value(value)}" for key, value in overrides.items()]


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]):
  """Sets dotted fields in place; the config stays locked, so an unknown field fails."""
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    target = config
    for part in parents:
      target = target[part]
    if leaf not in target:
      raise KeyError(f"sweep override {key}={value!r}: configs/base.py has no field {key!r}")
    target[leaf] = value
  return config


def check_unique(runs: list[Run]) -> list[Run]:
  seen: dict[str, Run] = {}
  for run in runs:
    if run.name in seen:
      raise ValueError(f"duplicate run name {run.name!r} in a sweep")
    seen[run.name] = run
  return runs


# ------------------------------------------------------------------------- arguments


def split_arg(arg: str | None) -> tuple[str, str | None]:
  """'mini' -> ('mini', None); 'mini/NAME' -> ('mini', 'NAME'); None -> the default variant."""
  variant, _, name = (arg or DEFAULT_VARIANT).partition("/")
  if variant not in VARIANTS:
    raise ValueError(
      f"sweep argument {arg!r}: unknown variant {variant!r}; allowed: "
      f"{', '.join(VARIANTS)}, optionally followed by /<run name>"
    )
  return variant, name or None


def select(runs: list[Run], name: str | None) -> list[Run]:
  if name is None:
    return runs
  for run in runs:
    if run.name == name:
      return [run]
  some = ", ".join(r.name for r in runs[:5])
  raise ValueError(f"no run named {name!r} in this sweep ({len(runs)} runs, e.g. {some}, ...)")


def make_get_config(
  all_runs: Callable[[str], list[Run]], shared: Callable[[str], dict[str, Any]]
) -> Callable[[str | None], ml_collections.ConfigDict]:
  """get_config(arg) for a sweep module: base.py + the variant's shared overrides, or with
  '<variant>/<name>' base.py + that run's overrides."""

  def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, name = split_arg(arg)
    c = base.get_config()
    if name is None:
      return apply_overrides(c, shared(variant))
    (run,) = select(all_runs(variant), name)
    return apply_overrides(c, run.overrides)

  return get_config


def make_runs(
  all_runs: Callable[[str], list[Run]], quick: Callable[[Run], bool]
) -> Callable[[str | None], list[Run]]:
  """runs(arg) for a sweep module: 'quick' is the subset of 'mini' where `quick(run)`."""

  def runs(arg: str | None = None) -> list[Run]:
    variant, name = split_arg(arg)
    if variant == "quick":
      out = [r for r in all_runs("mini") if quick(r)]
    else:
      out = all_runs(variant)
    return select(check_unique(out), name)

  return runs


# ------------------------------------------------------------------------ arithmetic


def n_params(size: str) -> int:
  """Non-embedding N of a ladder size (the N of the laws)."""
  return sizes.non_embedding_params(sizes.LADDER[size])


def steps_for_tokens(tokens: float, batch_size: int, seq_len: int) -> int:
  """Steps whose batches hold at least `tokens` tokens (D is then logged exactly)."""
  return max(1, math.ceil(tokens / (batch_size * seq_len)))


def cadence(total_steps: int, evals: int, checkpoint_every: int, log_every: int) -> dict:
  """eval_every / checkpoint_every / log_every for a run of `total_steps` steps: `evals`
  evaluations over the run (the last at the end), checkpoints at most every
  `checkpoint_every` steps (also on SIGTERM and at the end)."""
  return {
    "eval_every": max(1, math.ceil(total_steps / evals)),
    "checkpoint_every": max(1, min(checkpoint_every, total_steps)),
    "log_every": max(1, min(log_every, total_steps)),
  }


def spec_slug(spec: str) -> str:
  """A compression spec as part of a run name: ':' (n:m) becomes 'of' (2:4 -> 2of4), since a
  colon in a directory name confuses scp, tar and PATH-like lists."""
  return spec.replace(":", "of")


def fmt_tokens(tokens: float) -> str:
  """10e9 -> '10B', 1.5e9 -> '1.5B', 2.5e5 -> '250K' (run-name part)."""
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if tokens >= scale:
      return f"{tokens / scale:.4g}{unit}"
  return f"{tokens:g}"


def fmt_num(x: float) -> str:
  return f"{x:g}"


# CPU time model for the mini variants (launch/sweep.py --dry_run prints it), measured with
# launch.sweep on the 2-core development box shared with other jobs (load ~3), batch 16 x 128
# tokens, float32: training tokens/s per size (log entry train.tokens_per_s of 100-460-step
# runs), and a fixed cost per run (interpreter + JAX import, corpus load, compile, evals,
# checkpoints) of ~10 s. unified.py:quick (17 runs at 0.1m) took 4.0 minutes, the model says
# 4.4. Indicative only: under load ~5 the same box ran 0.1m / 0.2m / 0.5m at 15k / 8k / 5.5k
# tokens/s, up to 2x slower.
# The width family of unified.py:mini (batch 4 x 128), measured on the quiet box in packs of two
# seeds (benchmarks/bench_sweep.py; train.phases_s of the sweep's entries): 0.03m 45k, 0.06m
# 35k, 0.1m 22k, 0.17m 19k, 0.32m 12k tokens/s; a process's start-up, compilation and entries
# take ~12 s (~15-20 s when two run at once), once per pack however many seeds it trains.
# Checked on a fresh clone (unified.py:mini, --jobs 2, quiet box, 2026-12-04): estimate 16 min,
# measured 11 min 7 s; per process 40k / 32k / 20k / 16k / 10k tokens/s at 0.03m / 0.06m / 0.1m /
# 0.17m / 0.32m and ~20 process-seconds of start-up, compilation and entries. The model sums
# processes as if one ran at a time at the rate of two sharing the box, so with --jobs 2 it
# overestimates by ~1.4x: read it as an upper bound.
CPU_TOKENS_PER_S = {
  "0.03m": 45_000,
  "0.06m": 35_000,
  "0.1m": 20_000,
  "0.17m": 19_000,
  "0.2m": 15_000,
  "0.32m": 12_000,
  "0.5m": 10_000,
  "1m": 4_000,
}
CPU_OVERHEAD_S = 12.0


TOKEN_FIELDS = ("total_steps", "batch_size", "seq_len")


def run_tokens(overrides: dict[str, Any]) -> int | None:
  """Training tokens of a run; None unless its overrides set steps, batch and length."""
  if not all(k in overrides for k in TOKEN_FIELDS):
    return None
  return overrides["total_steps"] * overrides["batch_size"] * overrides["seq_len"]


def estimate_cpu_seconds(runs: Iterable[Run]) -> float | None:
  """Estimated wall time on 2 CPU cores (model above; the start-up counted once per pack of
  replicate seeds, as the sweep runner trains them in one process); None if a run's size is
  not in the table or its overrides do not fix its token count."""
  total, packs = 0.0, set()
  for run in runs:
    tokens = run_tokens(run.overrides)
    size = run.overrides.get("model.size")
    if tokens is None or size not in CPU_TOKENS_PER_S:
      return None
    key = run.name if run.pack is None else (run.pack, size, tokens)
    total += (0.0 if key in packs else CPU_OVERHEAD_S) + tokens / CPU_TOKENS_PER_S[size]
    packs.add(key)
  return total


MINI_SHARED = {"batch_size": 16, "seq_len": 128}  # every CPU-sized variant


def shared_fields(variant: str, *, batch_size: int, seq_len: int, **paper_extra) -> dict:
  """Fields all runs of a variant share: the paper's batch and context (bfloat16, tfds data)
  plus any paper-specific extras, or the CPU mini's batch and context."""
  if variant != "paper":
    return dict(MINI_SHARED)
  return {
    "batch_size": batch_size,
    "seq_len": seq_len,
    "model.dtype": "bfloat16",
    "data.source": "tfds",
    **paper_extra,
  }
