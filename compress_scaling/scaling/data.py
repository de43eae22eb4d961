"""Runs tables for the fits: loading (log-entry globs, CSV, DataFrames) and validation.

Every check raises `FitError` (a ValueError) whose message names the fit, what is missing and
which rows are affected, so a colab user never sees a traceback from inside the optimiser.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterable

import numpy as np
import pandas as pd

from compress_scaling.scaling import specs

REQUIRED = ("compression", "N", "D", "loss")
_BITS_COLUMNS = ("bits_per_param", "compression.bits_per_param", "model.bits_per_param")


class FitError(ValueError):
  """A fit cannot run (or did not succeed) for a reason the message names."""


def load_runs(runs, *, include_incomplete: bool = False) -> pd.DataFrame:
  """A runs table from a DataFrame, a mapping/records, a CSV path, or a log-entry glob.

  Globs (local, `**` recursive, or gs://) go through `logbook.read_runs`, which reports
  skipped and incomplete files in `df.attrs`.
  """
  if isinstance(runs, pd.DataFrame):
    return runs
  if isinstance(runs, (str, os.PathLike)):
    path = os.fspath(runs)
    if path.endswith(".csv") and not any(c in path for c in "*?["):
      if path.startswith(("gs://", "s3://")):
        from etils import epath

        with epath.Path(path).open() as f:
          return pd.read_csv(f)
      return pd.read_csv(path)
    from compress_scaling import logbook  # local: logbook pulls etils

    return logbook.read_runs(path, include_incomplete=include_incomplete)
  return pd.DataFrame(runs)


def row_names(df: pd.DataFrame, mask) -> list[str]:
  """How to name rows in a message: run_id, else the source file, else the index."""
  sub = df[np.asarray(mask, bool)]
  for col in ("run_id", "file"):
    if col in sub.columns:
      return [str(v) for v in sub[col]]
  return [f"row {i}" for i in sub.index]


def _fmt(names: list[str], limit: int = 8) -> str:
  more = f", ... ({len(names)} in all)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def check_runs(
  runs, who: str, need: Iterable[str] = REQUIRED, *, drop_invalid: bool = False
) -> pd.DataFrame:
  """Validated copy of a runs table: required columns present, numeric, finite, positive.

  Bad rows raise a FitError naming them, or with drop_invalid=True are dropped with a warning
  (and listed in attrs["dropped"]); nothing is dropped silently.
  """
  df = load_runs(runs)
  need = tuple(need)
  missing = [c for c in need if c not in df.columns]
  if missing:
    raise FitError(
      f"{who}: the runs table has no column(s) {missing}; it needs {list(need)} "
      f"(columns present: {list(df.columns)[:20]})"
    )
  if df.empty:
    raise FitError(f"{who}: the runs table is empty; it needs rows with {list(need)}")
  df = df.copy()
  problems = []
  bad = np.zeros(len(df), bool)
  for col in need:
    if col == "compression":
      miss = df[col].isna().to_numpy() | (df[col].astype(str).str.strip() == "").to_numpy()
      if miss.any():
        problems.append(f"no compression in {_fmt(row_names(df, miss))}")
      bad |= miss
      continue
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
    nan = ~np.isfinite(vals)
    if nan.any():
      problems.append(f"{col} is NaN/missing in {_fmt(row_names(df, nan))}")
    nonpos = np.isfinite(vals) & (vals <= 0)
    if nonpos.any():
      shown = ", ".join(f"{v:g}" for v in vals[nonpos][:8])
      problems.append(
        f"{col} must be > 0 for the log-space fit; non-positive ({shown}) in "
        f"{_fmt(row_names(df, nonpos))}"
      )
    bad |= nan | nonpos
    df[col] = vals
  if problems:
    msg = f"{who}: {len(np.flatnonzero(bad))} bad row(s): " + "; ".join(problems)
    if not drop_invalid:
      raise FitError(msg + " (fix or drop them, or pass drop_invalid=True)")
    warnings.warn(msg + "; dropped", stacklevel=3)
    dropped = row_names(df, bad)
    df = df[~bad].copy()
    df.attrs["dropped"] = dropped
    if df.empty:
      raise FitError(f"{who}: no valid rows left after dropping the bad ones")
  if "compression" in need:
    df["compression"] = df["compression"].astype(str).str.strip()
  return df


def training_runs(df: pd.DataFrame) -> pd.DataFrame:
  """The rows of trained models: post-training-quantization entries (kind 'ptq') describe a
  quantized copy of a trained run, not a run of their own, and are left to ptq_table."""
  if "kind" not in df.columns:
    return df
  return df[df["kind"].fillna("train") != "ptq"]


def require_distinct(values, what: str, need: int, who: str) -> None:
  """FitError unless `values` has at least `need` distinct entries (named in the message)."""
  uniq = np.unique(np.asarray(values, float))
  if len(uniq) < need:
    shown = ", ".join(f"{v:.4g}" for v in uniq)
    raise FitError(
      f"{who} needs at least {need} distinct {what}; got {len(uniq)} ({what}={shown or 'none'})"
    )


def require_points(n: int, n_params: int, who: str) -> None:
  if n <= n_params:
    raise FitError(f"{who} fits {n_params} parameters and needs more than {n_params} runs; got {n}")


def bits_column(df: pd.DataFrame) -> pd.Series:
  """Bits per parameter per row: from the entry when logged, else parsed from the spec."""
  out = pd.Series(np.nan, index=df.index, dtype=float)
  for col in _BITS_COLUMNS:
    if col in df.columns:
      out = out.fillna(pd.to_numeric(df[col], errors="coerce"))
  missing = out.isna()
  if missing.any():
    out[missing] = [_bits_or_nan(c) for c in df.loc[missing, "compression"]]
  return out


def _bits_or_nan(spec) -> float:
  try:
    return specs.bits_per_param(str(spec))
  except ValueError:
    return float("nan")


def spec_table(compressions: Iterable[str]) -> pd.DataFrame:
  """Parsed fields (w_bits, a_bits, group, sparsity, kind, ...) per compression; unknown
  grammar (e.g. a future fp4 format) gives NaN fields and kind 'other'."""
  rows = []
  for c in compressions:
    try:
      info = specs.parse_spec(c)
      rows.append(
        dict(
          compression=c,
          w_bits=info.w_bits,
          a_bits=info.a_bits,
          group=info.group,
          sparsity=info.sparsity,
          nm=info.nm,
          kind=info.kind,
          quant_term=info.quant_term,
          sparse_term=info.sparse_term,
          spec_bits=info.bits_per_param(),
        )
      )
    except ValueError:
      rows.append(
        dict(
          compression=c,
          w_bits=np.nan,
          a_bits=np.nan,
          group=None,
          sparsity=np.nan,
          nm=None,
          kind="other",
          quant_term=None,
          sparse_term=None,
          spec_bits=np.nan,
        )
      )
  return pd.DataFrame(rows).set_index("compression")
