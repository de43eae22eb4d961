"""Fitting machinery and the Chinchilla fit: Huber on log-loss, log-space parameters, L-BFGS from
a multi-start grid (all starts in one compiled call), bootstrap over runs.

Procedure of Besiroglu et al. 2024 (arXiv 2404.10102, PAPERS.md §7):
  log L_hat = LSE(a - alpha log N, b - beta log D, e),  A = e^a, B = e^b, E = e^e,
  minimise sum_i Huber_delta(log L_hat_i - log L_i), delta = 1e-3,
  L-BFGS from the grid a, b in {0, 5, ..., 25}, e in {-1, -.5, 0, .5, 1},
  alpha, beta in {0, .5, 1, 1.5, 2} (4500 starts), keep the best; optionally drop the k
  highest-loss points (Epoch drop 5), bootstrap by resampling runs with replacement.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from compress_scaling.scaling import optim
from compress_scaling.scaling.data import FitError, require_distinct, require_points

EPOCH_GRID = optim.grid(
  [0, 5, 10, 15, 20, 25],
  [0, 5, 10, 15, 20, 25],
  [-1, -0.5, 0, 0.5, 1],
  [0, 0.5, 1, 1.5, 2],
  [0, 0.5, 1, 1.5, 2],
)
# Halving defaults for the 4500-start grid: every start gets `phase1_evals` evaluations, then
# the best `keep` continue to convergence. Set halving=False to run every start to the end.
HALVING = dict(phase1_evals=30, keep=128)


@dataclasses.dataclass(frozen=True)
class LawFit(Mapping):
  """A fitted law: parameters as attributes and keys (`fit.alpha`, `fit["alpha"]`), plus
  how the fit went and, with a bootstrap, standard errors and percentile intervals."""

  law: str
  params: dict[str, float]
  objective: float  # Huber objective at the optimum, normalised as asked (sum or mean)
  n_points: int
  n_starts: int
  n_converged: int  # starts run to the end (all, or the `keep` best with halving) that met
  # a stopping tolerance; info['n_finished'] says how many were run to the end
  converged: bool  # the best start converged
  ci: dict[str, tuple[float, float]] | None = None
  se: dict[str, float] | None = None
  ci_level: float | None = None
  bootstrap: Any = None  # pandas.DataFrame of bootstrap draws (natural parameters) or None
  info: dict = dataclasses.field(default_factory=dict)

  def __getitem__(self, key):
    return self.params[key]

  def __iter__(self):
    return iter(self.params)

  def __len__(self):
    return len(self.params)

  def __getattr__(self, name):
    if name.startswith("_") or name == "params":
      raise AttributeError(name)
    try:
      return self.params[name]
    except KeyError:
      raise AttributeError(
        f"{type(self).__name__} has no attribute or parameter {name!r}; "
        f"parameters: {list(self.params)}"
      ) from None

  def __repr__(self):
    ps = ", ".join(f"{k}={v:.6g}" for k, v in self.params.items())
    return (
      f"{type(self).__name__}({self.law}: {ps}; objective={self.objective:.6g}, "
      f"n={self.n_points}, converged={self.converged})"
    )


class ChinchillaFit(LawFit):
  """L(N, D) = A N^-alpha + B D^-beta + E."""

  def predict(self, N, D):
    p = self.params
    N, D = np.asarray(N, float), np.asarray(D, float)
    return p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"] + p["E"]

  @property
  def compute_optimal_exponent(self) -> float:
    """a = beta / (alpha + beta): N_opt ∝ C^a (Hoffmann et al. 2022)."""
    return self.params["beta"] / (self.params["alpha"] + self.params["beta"])


# --- Generic log-space laws ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class LogLaw:
  """A law as the optimiser sees it. log_pred(theta, aux, data) -> (n,) prediction of
  data["target"] (the log-loss, for every law fitted the Epoch way) for one lane;
  natural(theta (..., P)) -> {name: array} maps to the published parametrisation."""

  name: str
  theta_names: tuple[str, ...]
  log_pred: Callable
  natural: Callable
  vg: Callable | None = None  # optional hand-written batched value-and-grad

  @functools.cached_property
  def batched_vg(self):
    if self.vg is not None:
      return self.vg

    def objective(theta, w, aux, data):
      r = self.log_pred(theta, aux, data) - data["target"]
      return jnp.sum(w * optim.huber(r, data["delta"])) / data["delta"]

    return optim.vg_from_objective(objective)


def _chinchilla_log_pred(theta, aux, data):
  a, b, e, alpha, beta = theta
  return jax.nn.logsumexp(
    jnp.stack(
      [a - alpha * data["lN"], b - beta * data["lD"], jnp.broadcast_to(e, data["lN"].shape)]
    ),
    axis=0,
  )


def _chinchilla_vg(x, w, aux, data):
  """Hand-written batched value and gradient of the Chinchilla objective: one pass over the
  (lanes x points) matrix, gradient sums as matmuls (about 3x faster than autodiff on CPU)."""
  del aux
  a, b, e, alpha, beta = (x[:, i : i + 1] for i in range(5))
  lN, lD, delta = data["lN"], data["lD"], data["delta"]
  t1, t2 = a - alpha * lN, b - beta * lD
  m = jnp.maximum(jnp.maximum(t1, t2), e)  # log-sum-exp shift
  e1, e2, e3 = jnp.exp(t1 - m), jnp.exp(t2 - m), jnp.exp(e - m)
  s = e1 + e2 + e3
  r = m + jnp.log(s) - data["target"]
  f = jnp.sum(w * optim.huber(r, delta), -1) / delta
  hp = w * jnp.clip(r, -delta, delta) / (delta * s)  # dHuber/dr / delta, over the softmax sum
  X = jnp.stack([jnp.ones_like(lN), lN, lD], -1)
  g1, g2 = (hp * e1) @ X, (hp * e2) @ X
  g3 = jnp.sum(hp * e3, -1)
  return f, jnp.stack([g1[:, 0], g2[:, 0], g3, -g1[:, 1], -g2[:, 2]], -1)


def _chinchilla_natural(theta):
  theta = np.asarray(theta, float)
  return dict(
    A=np.exp(theta[..., 0]),
    B=np.exp(theta[..., 1]),
    E=np.exp(theta[..., 2]),
    alpha=theta[..., 3],
    beta=theta[..., 4],
  )


CHINCHILLA = LogLaw(
  "chinchilla",
  ("a", "b", "e", "alpha", "beta"),
  _chinchilla_log_pred,
  _chinchilla_natural,
  vg=_chinchilla_vg,
)


@dataclasses.dataclass
class RawFit:
  """Output of `run_law`: the best theta, the batch outcome, optional bootstrap thetas."""

  theta: np.ndarray
  objective_internal: float
  batch: optim.BatchResult
  boot: np.ndarray | None = None  # (B, P), NaN rows for failed resamples
  boot_converged: np.ndarray | None = None
  n_starts: int = 0


def run_law(
  law: LogLaw,
  data: dict,
  starts,
  *,
  who: str,
  w=None,
  aux=None,
  delta: float = 1e-3,
  opt: optim.LbfgsOptions | None = None,
  require_convergence: bool = True,
) -> RawFit:
  """Multi-start fit of `law` on data (which must hold 'target' = log L, or L for raw fits)."""
  starts = np.asarray(starts, float)
  n = len(np.asarray(data["target"]))
  w = np.ones((1, n)) if w is None else np.asarray(w, float)
  aux = np.zeros((1, 0)) if aux is None else np.asarray(aux, float)
  opt = opt or optim.LbfgsOptions()
  with optim.x64_cpu():
    d = dict(data, delta=np.float64(delta))
    res = optim.minimize_batch(law.batched_vg, starts, w, aux, d, opt)
  i = res.best()
  if not np.isfinite(res.f[i]):
    raise FitError(
      f"{who}: the objective is not finite at any of the {len(starts)} starts "
      "(check the data for extreme values)"
    )
  if require_convergence and not res.converged.any():
    raise FitError(
      f"{who}: the optimiser did not converge from any of the {len(starts)} starts "
      f"(best objective {res.f[i] * delta:.6g} after {res.n_eval} evaluations, "
      f"stop reason {optim.STATUS_NAMES[int(res.status[i])]}); raise max_evals or check "
      "the data"
    )
  return RawFit(res.x[i], float(res.f[i]), res, n_starts=len(starts))


def resample_weights(n: int, n_boot: int, seed: int, groups=None) -> np.ndarray:
  """(B, n) resample counts: runs drawn with replacement, within each group if given
  (stratified, so every compression keeps its run count)."""
  rng = np.random.default_rng(seed)
  if groups is None:
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
  groups = np.asarray(groups)
  w = np.zeros((n_boot, n))
  for gval in np.unique(groups):
    idx = np.flatnonzero(groups == gval)
    w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
  return w


def bootstrap_law(
  law: LogLaw,
  data: dict,
  theta_hat,
  weights=None,
  *,
  targets=None,
  aux=None,
  delta: float = 1e-3,
  max_evals: int = 400,
):
  """Refits every resample from theta_hat, all in one batched call: rows of `weights`
  (resample counts of the runs) or rows of `targets` (simulated data["target"] of a parametric
  bootstrap, scaling/noise.py). Returns (thetas (B, P) with NaN rows where a refit failed,
  converged mask)."""
  if (weights is None) == (targets is None):
    raise ValueError("bootstrap_law: pass exactly one of weights and targets")
  n = len(np.asarray(data["target"]))
  if targets is not None:
    targets = np.asarray(targets, float)
    weights = np.ones_like(targets)
    data = dict(data, target=targets)
    n = targets.shape[1]
  weights = np.asarray(weights, float)
  B = len(weights)
  starts = np.broadcast_to(np.asarray(theta_hat, float), (B, len(theta_hat)))
  aux = np.zeros((B, 0)) if aux is None else np.asarray(aux, float)
  with optim.x64_cpu():
    d = dict(data, delta=np.float64(delta))
    res = optim.minimize_batch(
      law.batched_vg, starts, weights.reshape(B, n), aux, d, optim.LbfgsOptions(max_evals=max_evals)
    )
  theta = np.where(np.isfinite(res.f)[:, None], res.x, np.nan)
  return theta, res.converged


def summarize_boot(draws: dict[str, np.ndarray], level: float):
  """Standard errors and percentile intervals of bootstrap draws (NaNs ignored)."""
  lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
  se = {k: float(np.nanstd(v, ddof=1)) for k, v in draws.items()}
  ci = {
    k: (float(np.nanpercentile(v, lo_q)), float(np.nanpercentile(v, hi_q)))
    for k, v in draws.items()
  }
  return se, ci


def _objective_value(f_internal: float, delta: float, n: float, normalize: str) -> float:
  if normalize not in ("sum", "mean"):
    raise ValueError(f"normalize must be 'sum' or 'mean', got {normalize!r}")
  return f_internal * delta / (n if normalize == "mean" else 1.0)


def make_law_fit(
  cls,
  law: LogLaw,
  raw: RawFit,
  n: int,
  *,
  delta: float,
  normalize: str,
  level: float = 0.95,
  info: dict | None = None,
) -> LawFit:
  import pandas as pd  # local: keep `import compress_scaling.scaling.optim` light

  params = {k: float(v) for k, v in law.natural(raw.theta).items()}
  se = ci = boot = None
  runaway = 0
  if raw.boot is not None:
    # A resample whose fit ran off (a parameter past 1e150, where its square in the standard
    # error overflows float64, or past exp's range) is NaN and left out of the intervals, as
    # runaway eff draws are (eff._finite_exp); the count is reported.
    with np.errstate(over="ignore", invalid="ignore"):
      draws = law.natural(raw.boot)
      bad = ~np.all([np.abs(v) < 1e150 for v in draws.values()], axis=0)
    draws = {k: np.where(bad, np.nan, v) for k, v in draws.items()}
    runaway = int(bad.sum())
    if runaway:
      warnings.warn(
        f"{law.name} law: {runaway} of {len(bad)} bootstrap resamples ran off (a parameter "
        "infinite or past 1e150); they are left out of its intervals",
        stacklevel=2,
      )
    se, ci = summarize_boot(draws, level)
    boot = pd.DataFrame(draws)
  b = raw.batch
  return cls(
    law=law.name,
    params=params,
    objective=_objective_value(raw.objective_internal, delta, n, normalize),
    n_points=n,
    n_starts=raw.n_starts or len(b.lanes),
    n_converged=int(b.converged.sum()),
    converged=bool(b.converged[b.best()]),
    ci=ci,
    se=se,
    ci_level=level if boot is not None else None,
    bootstrap=boot,
    info=dict(
      info or {},
      n_eval=b.n_eval,
      n_finished=len(b.lanes),
      stop=optim.STATUS_NAMES[int(b.status[b.best()])],
      theta=dict(zip(law.theta_names, map(float, raw.theta))),
      boot_runaway=runaway,
    ),
  )


def drop_highest_loss(L, k: int) -> np.ndarray:
  """Mask keeping all but the k highest-loss points (Epoch drop k = 5 of 245)."""
  L = np.asarray(L, float)
  keep = np.ones(len(L), bool)
  if k:
    keep[np.argsort(L, kind="stable")[len(L) - k :]] = False
  return keep


def fit_chinchilla(
  N,
  D,
  L,
  *,
  delta: float = 1e-3,
  drop_highest: int = 0,
  starts=None,
  halving: bool = True,
  bootstrap: int = 0,
  ci: float = 0.95,
  seed: int = 0,
  weights=None,
  normalize: str = "sum",
  max_evals: int = 1500,
  who: str = "fit_chinchilla",
) -> ChinchillaFit:
  """Fits L = A/N^alpha + B/D^beta + E (Hoffmann et al. 2022 Eq. 2) the Epoch way.

  N, D, L: 1-D arrays of parameters, tokens, final loss. drop_highest: exclude the k highest
  losses first. starts: (S, 5) grid of (a, b, e, alpha, beta), default Epoch's 4500 points.
  bootstrap: number of resamples of the runs (refit from the optimum, one batched call);
  ci: interval level. normalize: report the objective as a 'sum' (Epoch) or 'mean' (bigsparse
  notebook) of Huber terms. Raises FitError on too few distinct N or D, bad values, or when no
  start converges.
  """
  N, D, L = (np.asarray(v, float).ravel() for v in (N, D, L))
  if not len(N) == len(D) == len(L):
    raise FitError(f"{who}: N, D, L have different lengths ({len(N)}, {len(D)}, {len(L)})")
  for name, v in (("N", N), ("D", D), ("loss", L)):
    bad = ~np.isfinite(v) | (v <= 0)
    if bad.any():
      raise FitError(
        f"{who}: {name} must be finite and > 0 for the log-space fit; bad at "
        f"positions {np.flatnonzero(bad)[:10].tolist()} (values {v[bad][:5]})"
      )
  keep = drop_highest_loss(L, drop_highest)
  N, D, L = N[keep], D[keep], L[keep]
  require_distinct(N, "N", 3, who)
  require_distinct(D, "D", 3, who)
  require_points(len(L), 5, who)
  data = dict(lN=np.log(N), lD=np.log(D), target=np.log(L))
  starts = EPOCH_GRID if starts is None else np.asarray(starts, float)
  opt = optim.LbfgsOptions(
    max_evals=max_evals, **(HALVING if halving and len(starts) > HALVING["keep"] else {})
  )
  w = None if weights is None else np.asarray(weights, float)[None, keep]
  raw = run_law(CHINCHILLA, data, starts, who=who, w=w, delta=delta, opt=opt)
  if bootstrap:
    wb = resample_weights(len(L), bootstrap, seed)
    raw.boot, raw.boot_converged = bootstrap_law(CHINCHILLA, data, raw.theta, wb, delta=delta)
  return make_law_fit(
    ChinchillaFit,
    CHINCHILLA,
    raw,
    len(L),
    delta=delta,
    normalize=normalize,
    level=ci,
    info=dict(dropped=int((~keep).sum()), delta=delta),
  )
