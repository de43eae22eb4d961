"""Which base-law parameters the dense runs do not pin down, said out loud.

eff(C) is a shift along the N axis of the base law A (N eff)^-alpha + B D^-beta + E, so it
can be measured even where A, alpha or E are not: at a single tokens/parameter ratio the N and
D terms are one power law in N, and far from the irreducible loss E trades against A. A fit
then still reports eff, with its interval, and names the parameters it could not identify:

  design     the dense runs sit at one tokens/parameter ratio: N and D are collinear, the N
             and D terms (A, alpha, B, beta) and E trade against each other;
  bound      E at its lower bound 0 (E below 0.1% of the smallest loss), an exponent below
             0.01, or a coefficient past 1e12 (a term that ran off);
  draws      (fit_eff with bootstrap draws of the base) an exponent whose 95% interval over
             the draws reaches 0 or spans more than EXPONENT_RANGE x;
  flat       a flat direction of the objective: the parameter's Gauss-Newton standard
             error (Jacobian of the log-loss predictions, scaled by the loss noise) exceeds 1
             in the log level of the N term, the D term (at the runs' geometric-mean N and D)
             or E (a factor e), or 0.5 in alpha / beta; a flat direction is what makes a
             bootstrap of the base run off.
"""

from __future__ import annotations

import numpy as np

PARAMS = ("A", "B", "E", "alpha", "beta")
ORDER = (*PARAMS, "eff")
LOG_SE_LIMIT = 1.0  # se of log A, log B, log E: a factor e either way
EXPONENT_SE_LIMIT = 0.5
E_FLOOR = 1e-3  # E below this share of the smallest loss: at its bound 0
RATIO_TOL = 0.05  # tokens/parameter ratios closer than this (relative) count as one
EXPONENT_RANGE = 3.0  # an exponent whose 95% bootstrap interval spans more than this factor


def _distinct_ratios(N, D) -> int:
  r = np.sort(np.log(np.asarray(D, float) / np.asarray(N, float)))
  return int(1 + np.sum(np.diff(r) > np.log1p(RATIO_TOL))) if len(r) else 0


def _standard_errors(params: dict, N, D, sigma: float, *, fix_E: bool = False) -> dict:
  """Gauss-Newton standard errors of the N term's and D term's levels at the geometric-mean
  N and D of the points (log A N_ref^-alpha, log B D_ref^-beta), log E, alpha and beta
  (fix_E: E held at its bound, not a free parameter). The levels are measured where the runs
  are; log A itself would carry alpha's error times log N_ref, ~18 at N = 1e8, and flag every
  law. A direction of (numerically) zero curvature gives an infinite error to every parameter
  it involves."""
  lN, lD = np.log(np.asarray(N, float)), np.log(np.asarray(D, float))
  tA = params["A"] * np.exp(-params["alpha"] * lN)
  tB = params["B"] * np.exp(-params["beta"] * lD)
  L = tA + tB + params["E"]
  # d log L / d (log N-term level, log D-term level, log E, alpha, beta)
  cols = {
    "log A": tA / L,
    "log B": tB / L,
    "log E": params["E"] / L,
    "alpha": -tA * (lN - lN.mean()) / L,
    "beta": -tB * (lD - lD.mean()) / L,
  }
  if fix_E:
    del cols["log E"]
  J = np.stack(list(cols.values()), 1)
  _, s, vt = np.linalg.svd(J, full_matrices=False)
  flat = s <= s.max() * 1e-10
  var = (vt[~flat].T ** 2) @ (1.0 / s[~flat] ** 2) * sigma**2
  var = np.where(np.any(np.abs(vt[flat]) > 1e-6, axis=0), np.inf, var)
  out = dict(zip(cols, np.sqrt(var)))
  return out


def unidentified(params: dict, N, D, L, *, sigma: float | None = None) -> dict[str, str]:
  """{parameter: reason} for the base-law parameters the dense runs (N, D, L) do not pin down
  (and "eff" when the design leaves eff itself unidentified); empty when the law is
  identified. sigma: SD of log loss (default: the fit's residual SD, at least 1e-3)."""
  N, D, L = (np.asarray(v, float) for v in (N, D, L))
  out: dict[str, str] = {}
  if _distinct_ratios(N, D) < 2:
    why = (
      f"every dense run is at D/N = {np.median(D / N):.3g}: N and D are collinear, so the N and "
      "D terms and E trade against each other (add dense runs at other budgets)"
    )
    for k in ("A", "alpha", "B", "beta", "E"):
      out[k] = why
    # eff multiplies N in the N term only, so it moves with the split of the loss between the
    # N and D terms that one ratio cannot make (synthetic D = 20 N runs, true eff 0.8: the
    # paired fit gives 0.94, and 0.81-11 as B varies; tests/test_scaling_noise.py).
    out["eff"] = (
      "conditional on how the fit splits the loss between the N and D terms, which one "
      "tokens/parameter ratio cannot tell apart: not identified either"
    )
  if params["E"] < E_FLOOR * L.min():
    out.setdefault(
      "E",
      f"E = {params['E']:.3g} is at its lower bound 0: the runs (losses >= {L.min():.3g}) are "
      "too far from the irreducible loss to measure it",
    )
  for k in ("alpha", "beta"):
    if params[k] < 0.01:
      out.setdefault(k, f"{k} = {params[k]:.3g} is at its lower bound 0")
  for k in ("A", "B"):
    if params[k] > 1e12:
      out.setdefault(k, f"{k} = {params[k]:.3g} ran off (past 1e12)")
  if sigma is None:
    pred = params["A"] * N ** -params["alpha"] + params["B"] * D ** -params["beta"] + params["E"]
    sigma = max(1e-3, float(np.sqrt(np.mean(np.log(L / pred) ** 2))))
  se = _standard_errors(params, N, D, sigma, fix_E=params["E"] < E_FLOOR * L.min())
  for k, name, limit in (
    ("A", "log A", LOG_SE_LIMIT),  # the N term A N^-alpha at the runs' N
    ("B", "log B", LOG_SE_LIMIT),
    ("E", "log E", LOG_SE_LIMIT),
    ("alpha", "alpha", EXPONENT_SE_LIMIT),
    ("beta", "beta", EXPONENT_SE_LIMIT),
  ):
    if name in se and not se[name] <= limit:
      out.setdefault(
        k,
        f"a flat direction of the objective: standard error of {name} {se[name]:.3g} "
        f"(> {limit}) at a loss noise of {sigma:.2g}",
      )
  return {k: out[k] for k in ORDER if k in out}


def from_draws(draws, exclude=()) -> dict[str, str]:
  """{exponent: reason} for alpha / beta whose 95% interval over bootstrap draws of the base
  law (a DataFrame with those columns) reaches 0 or spans more than EXPONENT_RANGE x: the
  slope eff is read with is then not pinned, however narrow the eff interval it gives."""
  out = {}
  for k in ("alpha", "beta"):
    if k in exclude or k not in draws:
      continue
    v = np.asarray(draws[k], float)
    v = v[np.isfinite(v)]
    if len(v) < 20:
      continue
    lo, hi = np.percentile(v, [2.5, 97.5])
    if lo <= 0.01 or hi / lo > EXPONENT_RANGE:
      out[k] = (
        f"its 95% interval over the bootstrap draws is {lo:.3g}-{hi:.3g}: the dense runs do "
        "not pin the exponent (eff is read through it; its interval carries this spread)"
      )
  return out
