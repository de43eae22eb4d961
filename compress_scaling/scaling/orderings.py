"""Which compression is worth more: P(eff(a) > eff(b)) from paired bootstrap draws.

Two marginal eff intervals can overlap while the ordering is certain: most of their width is
the base law's uncertainty (A, alpha, ...), which every compression shares and which cancels
in eff(a) / eff(b). So the ordering is read from the *same* draws: draw k refits the base and
every eff on one simulated data set (scaling/noise.py), and p = the share of draws with
eff_k(a) > eff_k(b). `resolved` means p >= 0.975, one-sided: the 95% two-sided percentile
interval of log eff(a) - log eff(b) excludes 0.

Two compressions run at different model sizes are compared at the sizes they share: where eff
drifts with N (CPU scale does), an eff from 0.1m alone and one averaged over 0.03m-0.1m would
differ by the drift, not by the compressions. `matched` maps such a pair to a table fitted on
their common sizes only (report.matched_tables; column `sizes` says which).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd

DENSE = "dense"
LEVEL = 0.975  # one-sided: the two-sided 95% interval of the log ratio excludes 0
# The orderings Frantar et al. 2025 and its neighbours report (PAPERS.md §0, §1): fewer bits
# and more sparsity are worth less, and quantizing activations costs beyond the weights.
STANDARD = (
  ("w4a16", "w2a16"),
  ("w2a16", "w1a16"),
  ("w4a16", "w4a4"),
  ("w4a4", "w2a2"),
  ("s50", "s75"),
  ("w2a2", "w1a1"),
)
COLUMNS = [
  "higher",
  "lower",
  "p",
  "resolved",
  "ratio",
  "ratio_lo",
  "ratio_hi",
  "n_draws",
  "sizes",
]


def base_label(spec: str) -> str:
  """A label without its modifiers: 'w4a16-gmse' -> 'w4a16', 'w4a16-gmse+2:4-every10' ->
  'w4a16+2:4' (the form the standard orderings are written in)."""
  return "+".join(re.sub(r"-.*$", "", t) for t in spec.split("+"))


def _log_draws(table: pd.DataFrame) -> pd.DataFrame | None:
  draws = table.attrs.get("bootstrap")
  if draws is None:
    return None
  with np.errstate(divide="ignore", invalid="ignore"):
    out = np.log(draws.astype(float))
  out[DENSE] = 0.0  # eff(dense) = 1 in every draw
  return out


def pair(log_draws: pd.DataFrame, a: str, b: str, ci: float = 0.95) -> dict:
  """P(eff(a) > eff(b)) and the percentile interval of eff(a) / eff(b) from paired draws."""
  d = (log_draws[a] - log_draws[b]).to_numpy(float)
  d = d[np.isfinite(d)]
  if not len(d):
    return dict(p=np.nan, ratio_lo=np.nan, ratio_hi=np.nan, n_draws=0)
  lo, hi = np.percentile(d, [50 * (1 - ci), 50 * (1 + ci)])
  return dict(
    p=float(np.mean(d > 0)), ratio_lo=float(np.exp(lo)), ratio_hi=float(np.exp(hi)), n_draws=len(d)
  )


def _source(table, a, b, matched, cache):
  """(log draws, eff, sizes label) a pair is read from: its matched table, or the table."""
  t, label = (matched or {}).get(frozenset((a, b)), (table, "all"))
  key = id(t)
  if key not in cache:
    cache[key] = _log_draws(t)
  return cache[key], t.eff, label


def orderings(table: pd.DataFrame, matched: dict | None = None) -> pd.DataFrame:
  """Every pair of the table's compressions (dense included), the one with the larger eff
  first: columns higher, lower, p = P(eff(higher) > eff(lower)), resolved (p >= 0.975),
  ratio = eff(higher) / eff(lower) and its 95% interval, n_draws, sizes (the N compared at:
  'all', or the common sizes of a matched pair). Empty without draws."""
  cache = {id(table): _log_draws(table)}
  if cache[id(table)] is None:
    return pd.DataFrame(columns=COLUMNS)
  rows = []
  for a, b in itertools.combinations(table.index, 2):
    log_draws, eff, label = _source(table, a, b, matched, cache)
    hi, lo = (a, b) if eff[a] >= eff[b] else (b, a)
    r = pair(log_draws, hi, lo)
    rows.append(
      dict(
        higher=hi,
        lower=lo,
        p=r["p"],
        resolved=bool(r["p"] >= LEVEL),
        ratio=float(eff[hi] / eff[lo]),
        ratio_lo=r["ratio_lo"],
        ratio_hi=r["ratio_hi"],
        n_draws=r["n_draws"],
        sizes=label,
      )
    )
  return pd.DataFrame(rows, columns=COLUMNS)


def verdict(p: float) -> str:
  if not np.isfinite(p):
    return "no draws"
  if p >= LEVEL:
    return "resolved"
  return "contradicted" if p <= 1 - LEVEL else "not resolved"


def standard(table: pd.DataFrame, pairs=STANDARD, matched: dict | None = None) -> pd.DataFrame:
  """The standard orderings (`STANDARD`, written without modifiers) among the table's labels:
  expected (higher, lower), p = P(eff(higher) > eff(lower)) and whether it is resolved (and
  so measured) or contradicted (p <= 0.025), and the sizes compared at. Pairs whose labels
  are absent are left out."""
  by_base: dict[str, list[str]] = {}
  for c in table.index:
    by_base.setdefault(base_label(c), []).append(c)
  rows, cache = [], {}
  for hi_base, lo_base in pairs:
    for hi in by_base.get(hi_base, []):
      for lo in by_base.get(lo_base, []):
        log_draws, _, label = _source(table, hi, lo, matched, cache)
        p = pair(log_draws, hi, lo)["p"] if log_draws is not None else np.nan
        rows.append(
          dict(expected=f"{hi} > {lo}", higher=hi, lower=lo, p=p, verdict=verdict(p), sizes=label)
        )
  return pd.DataFrame(rows, columns=["expected", "higher", "lower", "p", "verdict", "sizes"])
