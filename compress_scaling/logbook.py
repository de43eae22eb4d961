"""Log entries: one JSON object per run, the only coupling between training and fitting.

    write_entry(path, entry)   atomic JSON write (local: temp file + os.replace)
    read_entry(path) -> dict   ValueError naming the file on corrupt JSON or unknown schema
    read_runs(pattern) -> pandas.DataFrame, one row per run (DESIGN.md "Log entry")

Importable in colab without JAX, TensorFlow or TPU side effects (numpy, pandas, etils only).

Atomicity. Locally the entry is written to a temp file in the target directory, fsynced and
renamed over the target with os.replace, so a reader sees the old file or the new one, never a
partial one. On object stores (gs://, via etils.epath) a rename is a copy plus a delete and is
*not* atomic; there the entry is uploaded straight to its final name instead, which is atomic
per object on GCS (an object becomes visible only once its upload completes).
"""

from __future__ import annotations

import glob as glob_lib
import json
import math
import os
import warnings
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from compress_scaling import paths

if TYPE_CHECKING:
  import pandas as pd

SCHEMA = "compress_scaling/log_entry/v1"
DEFAULT_KIND = "train"
# The columns every read_runs frame has, beside the flattened entry.
COLUMNS = (
  "run_id",
  "status",
  "kind",
  "compression",
  "N",
  "D",
  "loss",
  "bits_per_param",
  "created",
  "file",
)


def _jsonable(x: Any) -> Any:
  """Plain JSON types; non-finite floats become null (JSON has no NaN), numpy -> python."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    x = float(x)
    return x if math.isfinite(x) else None
  return x


def write_entry(path, entry: dict) -> None:
  """Writes `entry` as JSON (indent 2, key order kept) to `path`, atomically (module docstring).
  Non-finite floats are written as null; the file is replaced as a whole, never appended."""
  if not isinstance(entry, dict):
    raise TypeError(f"write_entry({path}): entry must be a dict, got {type(entry).__name__}")
  text = json.dumps(_jsonable(entry), indent=2, sort_keys=False, allow_nan=False) + "\n"
  paths.write_text(os.fspath(path), text)


def read_entry(path) -> dict:
  """The entry at `path`; ValueError naming the file if it is not JSON, not an object, or not
  of schema compress_scaling/log_entry/v1. (OSError if it cannot be read.)"""
  path = os.fspath(path)
  text = paths.read_text(path)
  try:
    entry = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: corrupt log entry, not valid JSON ({e})") from None
  if not isinstance(entry, dict):
    raise ValueError(
      f"{path}: corrupt log entry, expected a JSON object, got {type(entry).__name__}"
    )
  schema = entry.get("schema")
  if schema != SCHEMA:
    raise ValueError(f"{path}: unknown log-entry schema {schema!r}; expected {SCHEMA!r}")
  return entry


def flatten(entry: dict, prefix: str = "") -> dict:
  """Nested dicts to dot-joined keys ('model.n_params'); lists (eval.curve) stay objects."""
  out = {}
  for k, v in entry.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and v:
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _expand(pattern: str) -> list[str]:
  """Files matching one pattern: a file, a directory (all log_entry.json below it), or a glob;
  local globs support `**` (recursive); gs:// globs go through paths (etils.epath), where `**`
  is expanded here by walking the directories below the fixed prefix. Remote matches are
  returned as URLs built from the pattern's own prefix."""
  if not any(c in pattern for c in "*?["):
    if paths.is_remote(pattern):
      if paths.is_dir(pattern):
        return _expand(pattern.rstrip("/") + "/**/log_entry.json")
      return [pattern] if paths.exists(pattern) else []
    if os.path.isdir(pattern):
      return _expand(os.path.join(pattern, "**", "log_entry.json"))
    return [pattern] if os.path.exists(pattern) else []
  if not paths.is_remote(pattern):
    return sorted(glob_lib.glob(pattern, recursive=True))
  parts = pattern.split("/")
  first = next(i for i, s in enumerate(parts) if any(c in s for c in "*?["))
  root, rest = "/".join(parts[:first]), parts[first:]
  base = paths._epath(root)

  def url(p) -> str:
    return f"{root}/{p.relative_to(base).as_posix()}"

  if "**" not in rest:
    return sorted(url(p) for p in base.glob("/".join(rest)))
  # `**`: walk every directory below root and match the rest of the pattern.
  rx = _glob_regex("/".join(rest))
  return sorted(f for f in map(url, _walk_files(base)) if rx.fullmatch(f[len(root) :].lstrip("/")))


def _walk_files(directory):
  """Every file below `directory` (an epath or pathlib path), by iterdir: epath.Path.walk
  exists, pathlib's only from Python 3.12."""
  for child in directory.iterdir():
    if child.is_dir():
      yield from _walk_files(child)
    else:
      yield child


def _glob_regex(pattern: str):
  """Regex of a glob with `**/` (zero or more directories), `*`, `?` (not crossing '/')."""
  import re

  out, i = "", 0
  while i < len(pattern):
    if pattern.startswith("**/", i):
      out, i = out + "(?:.*/)?", i + 3
    elif pattern.startswith("**", i):
      out, i = out + ".*", i + 2
    elif pattern[i] == "*":
      out, i = out + "[^/]*", i + 1
    elif pattern[i] == "?":
      out, i = out + "[^/]", i + 1
    else:
      out, i = out + re.escape(pattern[i]), i + 1
  return re.compile(out)


def _compression_string(comp) -> Any:
  """The C label of the laws: the spec, plus its per-layer rules when there are any (so Chen
  et al.'s FC2-at-8-bit runs are not pooled with the plain spec)."""
  if isinstance(comp, dict):
    rules = comp.get("rules") or []
    if comp.get("spec") is None or not rules:
      return comp.get("spec")
    return comp["spec"] + "[" + ";".join(f"{glob}={spec}" for glob, spec in rules) + "]"
  return comp  # tolerated: a plain spec string


def _warn(msg: str) -> None:
  warnings.warn(msg, stacklevel=3)


def read_runs(
  pattern: str | Iterable[str], *, include_incomplete: bool = False, strict: bool = False
) -> pd.DataFrame:
  """One row per run from the log entries matching `pattern` (a glob, `**` allowed, a
  directory, a file, gs:// paths, or a list of these).

  Columns: run_id, status, kind ('train' unless the entry says e.g. 'ptq'), compression (the
  spec string), N = model.n_params, D = data.tokens_seen, loss = eval.loss, bits_per_param,
  created, file, and the flattened entry ('model.n_params', 'eval.curve', ...).

  Nothing is dropped silently; each case warns and is listed in df.attrs:
    skipped     [(file, reason)] corrupt JSON, unknown schema, unreadable (strict: raise)
    incomplete  [(file, status)] status != complete, left out unless include_incomplete
    duplicates  [(run_id, kept_file, [dropped_files])] same run_id: the newest `created` kept
    missing     [(file, [fields])] rows without N, D, loss or compression (kept, as NaN)
  """
  import pandas as pd  # noqa: PLC0415 -- here, not at the top: training writes entries only

  patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
  files = []
  for p in patterns:
    files += [f for f in _expand(os.fspath(p)) if f not in files]
  skipped, incomplete, rows = [], [], []
  for f in files:
    try:
      entry = read_entry(f)
    except (ValueError, OSError, UnicodeDecodeError) as e:
      reason = str(e) if str(e).startswith(f) else f"{f}: {e}"
      if strict:
        raise ValueError(f"read_runs(strict=True): {reason}") from None
      skipped.append((f, reason))
      _warn(f"read_runs: skipped {reason}")
      continue
    status = entry.get("status")
    if status != "complete" and not include_incomplete:
      incomplete.append((f, status))
      continue
    flat = flatten(entry)
    comp = entry.get("compression")
    bits = comp.get("bits_per_param") if isinstance(comp, dict) else None
    if bits is None:
      bits = flat.get("model.bits_per_param")
    row = dict(flat)
    row.update(
      run_id=entry.get("run_id"),
      status=status,
      kind=entry.get("kind") or DEFAULT_KIND,
      compression=_compression_string(comp),
      N=flat.get("model.n_params"),
      D=flat.get("data.tokens_seen"),
      loss=flat.get("eval.loss"),
      bits_per_param=bits,
      created=entry.get("created"),
      file=f,
    )
    rows.append(row)
  if incomplete:
    _warn(
      f"read_runs: left out {len(incomplete)} run(s) with status != complete "
      f"(pass include_incomplete=True to keep them): "
      + ", ".join(f"{f} ({s})" for f, s in incomplete[:10])
    )
  df = pd.DataFrame(rows)
  for col in COLUMNS:
    if col not in df.columns:
      df[col] = pd.Series(dtype=object)
  df, duplicates = _fold_duplicates(df)
  for col in ("N", "D", "loss", "bits_per_param"):
    df[col] = pd.to_numeric(df[col], errors="coerce")
  missing = []
  for _, r in df.iterrows():
    gone = [c for c in ("N", "D", "loss") if not np.isfinite(r[c])]
    if not isinstance(r["compression"], str) or not r["compression"]:
      gone.append("compression")
    if gone:
      missing.append((r["file"], gone))
  if missing:
    msg = "read_runs: run(s) without " + "; ".join(f"{f}: {', '.join(g)}" for f, g in missing)
    if strict:
      raise ValueError(msg)
    _warn(msg + " (kept with NaN; fits will name them)")
  if not files:
    _warn(f"read_runs: no files match {patterns}")
  first = [c for c in COLUMNS if c in df.columns]
  df = df[first + [c for c in df.columns if c not in first]].reset_index(drop=True)
  df.attrs.update(
    skipped=skipped,
    incomplete=incomplete,
    duplicates=duplicates,
    missing=missing,
    pattern=[os.fspath(p) for p in patterns],
  )
  return df


def _fold_duplicates(df: pd.DataFrame):
  """Keeps one row per run_id, the newest `created` (ISO time; ties: the later file)."""
  import pandas as pd  # noqa: PLC0415

  if df.empty or df.run_id.isna().all():
    return df, []
  created = pd.to_datetime(df["created"], errors="coerce", utc=True, format="mixed")
  order = df.assign(_t=created, _f=df["file"]).sort_values(["_t", "_f"], na_position="first")
  dup = order.run_id.notna() & order.duplicated("run_id", keep=False)
  if not dup.any():
    return df, []
  duplicates = []
  for rid, grp in order[dup].groupby("run_id", sort=True):
    kept = grp.iloc[-1]["file"]
    duplicates.append((rid, kept, [f for f in grp["file"] if f != kept]))
  drop = order[dup].duplicated("run_id", keep="last")
  keep_idx = order.index.difference(drop[drop].index)
  _warn(
    "read_runs: duplicate run_id(s), kept the newest entry: "
    + "; ".join(f"{r} -> {k} (dropped {', '.join(d)})" for r, k, d in duplicates)
  )
  return df.loc[sorted(keep_idx)], duplicates
