"""The loss noise of a set of runs, measured from replicate seeds, and the parametric bootstrap
draws that carry it into the eff intervals and orderings (scaling/eff.py).

Why not resample the runs: a compression with two runs has three distinct bootstrap resamples
(Efron & Tibshirani 1993, ch. 6: the nonparametric bootstrap needs enough points per group to
stand in for their distribution). Instead, as Efron & Tibshirani's parametric bootstrap
(§6.5), the fitted law is kept and new losses are drawn around it with the noise that
replicate seeds show, then the whole fit is repeated on every draw: the intervals say how far
the sweep's eff would move if it were run again with other seeds. Epoch AI's Chinchilla
replication (Besiroglu et al. 2024, PAPERS.md §7) bootstraps over runs because it has 245 of
them; a CPU sweep has a handful per compression.

Noise model, in log loss (the scale every law here is fitted on):

    log L_i = f(N_i, D_i, C_i) + eta_g(i) + xi_i,    g(i) = (N_i, D_i, seed_i)

  xi   a run's own noise, independent across runs, SD `sigma_run`;
  eta  the seed's effect, shared by every compression trained with that seed at that (N, D):
       the same init and data order (common random numbers), SD `sigma_shared`.

Measured from the runs:
  replicate spread  pooled SD of log loss across seeds of one config (same C, N, D): the
                    seed-to-seed spread, sqrt(sigma_run^2 + sigma_shared^2);
  paired spread     within each (N, D) with several seeds and compressions, the residual SD of
                    the additive model compression + seed: sigma_run.
Runs without a seed column are treated as independent (sigma_shared = 0); without replicates
the fit's residual SDs stand in for both (said in `source`).

Lack of fit is not noise: a new set of seeds reproduces it. It is tested and reported, not
drawn: the base law's residual variance on the dense runs against the replicate spread, and
the variance of compressed runs' residuals against their dense partners' (same N, D, seed)
against 2 x the paired spread (F ratios, `lack_of_fit()`). A significant lack of fit means the
law's form (one eff per compression, the additive base law) misses these runs, e.g. eff
drifting with N (eff.eff_by_size shows it). `widen=True` (fit_eff's lack_of_fit="widen") draws
it as extra independent noise instead, per compression (the larger of the replicate and
residual SDs): a conservative bound that ignores how the misfit is shared by the compressions
of a cell, so it can hide orderings every cell and seed agree on.

Sharing seeds across compressions is what makes orderings cheap to resolve: eta cancels in a
difference of two compressions at the same cells. At 0.1m and 105 steps (configs/sweeps/
unified.py) dense seeds spread by 0.0095 nats but w4a4 - w4a16 by 0.004 around its 0.020.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

SEED_COLUMNS = ("seed", "config.seed")
MIN_DOF = 2  # residual degrees of freedom for a compression's own lack-of-fit SD
LACK_OF_FIT_P = 0.01  # F-test level at which lack of fit is reported


def seeds_of(df: pd.DataFrame) -> tuple[np.ndarray, bool]:
  """(seed per run, known): from a `seed` or `config.seed` column; without one every run is
  its own seed (nothing shared) and known is False."""
  for col in SEED_COLUMNS:
    if col in df.columns and df[col].notna().all():
      return df[col].to_numpy(), True
  return np.arange(len(df)), False


def _cells(df: pd.DataFrame) -> np.ndarray:
  """Integer id of each run's (N, D)."""
  return pd.MultiIndex.from_arrays([df.N.to_numpy(float), df.D.to_numpy(float)]).factorize()[0]


def replicate_spread(df: pd.DataFrame) -> tuple[float, int]:
  """(pooled SD of log loss within configs run with several seeds, degrees of freedom)."""
  y = np.log(df.loss.to_numpy(float))
  key = pd.MultiIndex.from_arrays([df.compression.to_numpy(), _cells(df)]).factorize()[0]
  ss, dof = 0.0, 0
  for k in np.unique(key):
    yk = y[key == k]
    if len(yk) > 1:
      ss += float(np.sum((yk - yk.mean()) ** 2))
      dof += len(yk) - 1
  return (float(np.sqrt(ss / dof)) if dof else float("nan")), dof


def paired_spread(df: pd.DataFrame) -> tuple[float, int]:
  """(residual SD of log loss ~ compression + seed within each (N, D), degrees of freedom):
  what is left of a run's noise once its seed's shared effect is removed."""
  seeds, known = seeds_of(df)
  if not known:
    return float("nan"), 0
  y = np.log(df.loss.to_numpy(float))
  cells = _cells(df)
  ss, dof = 0.0, 0
  for cell in np.unique(cells):
    sel = cells == cell
    comp = pd.factorize(df.compression.to_numpy()[sel])[0]
    seed = pd.factorize(seeds[sel])[0]
    if comp.max() < 1 or seed.max() < 1:
      continue
    X = np.concatenate([np.eye(comp.max() + 1)[comp], np.eye(seed.max() + 1)[seed][:, 1:]], axis=1)
    coef, *_ = np.linalg.lstsq(X, y[sel], rcond=None)
    rank = np.linalg.matrix_rank(X)
    if sel.sum() > rank:
      ss += float(np.sum((y[sel] - X @ coef) ** 2))
      dof += int(sel.sum() - rank)
  return (float(np.sqrt(ss / dof)) if dof else float("nan")), dof


def dense_partners(df: pd.DataFrame, dense: str = "dense") -> np.ndarray:
  """For each run, the row position of the dense run at the same (N, D, seed), or -1 (also for
  dense runs themselves and when seeds are unknown)."""
  seeds, known = seeds_of(df)
  out = np.full(len(df), -1)
  if not known:
    return out
  comp = df.compression.to_numpy()
  where = {}
  for i in np.flatnonzero(comp == dense):
    where[(float(df.N.iloc[i]), float(df.D.iloc[i]), seeds[i])] = i
  for i in np.flatnonzero(comp != dense):
    out[i] = where.get((float(df.N.iloc[i]), float(df.D.iloc[i]), seeds[i]), -1)
  return out


def _pooled(r: np.ndarray, n_params: int) -> float:
  dof = len(r) - n_params
  return float(np.sqrt(np.sum(r**2) / dof)) if dof > 0 else float("nan")


def _max(*values: float) -> float:
  finite = [v for v in values if np.isfinite(v)]
  return max(finite) if finite else float("nan")


@dataclasses.dataclass(frozen=True)
class NoiseModel:
  """SDs of log loss (multiply by the loss for nats). See the module docstring."""

  sigma_run: float
  sigma_shared: float
  replicate_spread: float
  replicate_dof: int
  paired_spread: float
  paired_dof: int
  residual_spread: float  # base law on the dense runs
  residual_dof: int
  paired_residual_spread: float  # compressed run vs its dense partner, over sqrt 2, pooled
  paired_residual_dof: int
  seeds_known: bool
  mean_loss: float
  widened: bool = False
  sigma_run_by_c: dict = dataclasses.field(default_factory=dict)  # widened, per compression

  def run_sd(self, compressions) -> np.ndarray:
    """sigma_run of each run: its compression's when widened, else the pooled."""
    return np.array([self.sigma_run_by_c.get(c, self.sigma_run) for c in compressions], float)

  @property
  def sigma_total(self) -> float:
    return float(np.hypot(self.sigma_run, self.sigma_shared))

  @property
  def source(self) -> str:
    if self.replicate_dof == 0:
      return "fit residuals: no replicate seeds"
    return "replicate seeds" + (", widened by the lack of fit" if self.widened else "")

  def lack_of_fit(self) -> dict:
    """F tests of the fit's residual variance against the replicate noise: {'base': ...,
    'paired': ...}, each {F, dof, p, significant} (NaN without replicates or residuals)."""
    from scipy import stats  # noqa: PLC0415

    out = {}
    for name, res, res_dof, rep, rep_dof in (
      ("base", self.residual_spread, self.residual_dof, self.replicate_spread, self.replicate_dof),
      (
        "paired",
        self.paired_residual_spread,
        self.paired_residual_dof,
        self.paired_spread,
        self.paired_dof,
      ),
    ):
      F = res**2 / rep**2 if np.isfinite(res) and np.isfinite(rep) and rep > 0 else np.nan
      p = float(stats.f.sf(F, res_dof, rep_dof)) if np.isfinite(F) else np.nan
      out[name] = dict(F=F, dof=(res_dof, rep_dof), p=p, significant=bool(p < LACK_OF_FIT_P))
    return out

  def draws(self, cells_seeds: np.ndarray, n_boot: int, seed: int, run_sd=None) -> np.ndarray:
    """(n_boot, n) log-loss noise: eta shared by runs with one (N, D, seed) id, plus xi with
    each run's SD (run_sd, default sigma_run)."""
    rng = np.random.default_rng(seed)
    ids = pd.factorize(cells_seeds)[0]
    eta = rng.standard_normal((n_boot, ids.max() + 1)) * self.sigma_shared
    sd = self.sigma_run if run_sd is None else np.asarray(run_sd, float)[None, :]
    xi = rng.standard_normal((n_boot, len(ids))) * sd
    return eta[:, ids] + xi

  def summary(self) -> dict:
    """The SDs in nats at the runs' mean loss, and the lack-of-fit tests, for tables/notes."""
    nats = self.mean_loss
    return {
      "seed_spread_nats": self.replicate_spread * nats,
      "seed_spread_dof": self.replicate_dof,
      "paired_spread_nats": self.paired_spread * nats,
      "paired_spread_dof": self.paired_dof,
      "base_residual_nats": self.residual_spread * nats,
      "paired_residual_nats": self.paired_residual_spread * nats,
      "sigma_run_nats": self.sigma_run * nats,
      "sigma_shared_nats": self.sigma_shared * nats,
      "sigma_run_by_c_nats": {c: v * nats for c, v in self.sigma_run_by_c.items()},
      "source": self.source,
      "lack_of_fit": self.lack_of_fit(),
    }

  def describe(self) -> str:
    s = self.summary()

    def f(v):
      return "n/a" if not np.isfinite(v) else f"{v:.4f}"

    by_c = s["sigma_run_by_c_nats"]
    run = (
      f"{f(min(by_c.values()))}-{f(max(by_c.values()))} by compression"
      if by_c
      else f(s["sigma_run_nats"])
    )
    lines = [
      f"loss noise ({s['source']}): seed-to-seed spread {f(s['seed_spread_nats'])} nats "
      f"({s['seed_spread_dof']} dof), paired spread (same seed, other compression) "
      f"{f(s['paired_spread_nats'])} nats ({s['paired_spread_dof']} dof); drawn as a shared "
      f"seed effect of SD {f(s['sigma_shared_nats'])} and a run's own of SD {run} nats."
    ]
    for name, what, res in (
      ("base", "the base law's residuals on the dense runs", s["base_residual_nats"]),
      ("paired", "compressed runs against their dense partners", s["paired_residual_nats"]),
    ):
      t = s["lack_of_fit"][name]
      if not np.isfinite(t["F"]):
        continue
      verdict = "lack of fit" if t["significant"] else "consistent with the noise"
      lines.append(
        f"Lack of fit, {what}: residual SD {f(res)} nats, F = {t['F']:.2f} on {t['dof']} dof, "
        f"p = {t['p']:.2g}: {verdict}."
      )
    return " ".join(lines)


def model(
  df: pd.DataFrame,
  log_residual: np.ndarray,
  *,
  dense_mask: np.ndarray,
  n_base_params: int,
  n_eff_params: int,
  widen: bool = False,
) -> NoiseModel:
  """The noise model of a fitted runs table: replicate spreads (the fit's residuals where
  there are none) and the lack-of-fit statistics; widen: draw the lack of fit as noise.
  log_residual: log L - log L_fit per run (same order as df)."""
  rep, rep_dof = replicate_spread(df)
  pair, pair_dof = paired_spread(df)
  _, known = seeds_of(df)
  r = np.asarray(log_residual, float)
  comp = df.compression.to_numpy()
  base_res = _pooled(r[dense_mask], n_base_params)
  base_dof = int(dense_mask.sum() - n_base_params)
  partner = dense_partners(df)
  has = partner >= 0
  paired_res, paired_dof_res, by_c_res = float("nan"), 0, {}
  if has.any():
    d = r[has] - r[partner[has]]
    n_c = len(np.unique(comp[has]))
    paired_res = _pooled(d, n_c) / np.sqrt(2)
    paired_dof_res = int(has.sum() - n_c)
    for c in np.unique(comp[has]):
      d_c = d[comp[has] == c]
      if len(d_c) - 1 >= MIN_DOF:
        by_c_res[c] = _pooled(d_c, 1) / np.sqrt(2)
  comp_res = _pooled(r[~dense_mask], n_eff_params)
  by_c = {}
  if known:
    # A run's own noise: the replicate paired spread, else what the partnered residuals show.
    sigma_run = pair if np.isfinite(pair) else paired_res
    total = rep if np.isfinite(rep) else _max(base_res, sigma_run)
    if widen:
      total = _max(rep, base_res, sigma_run)
      for c in np.unique(comp[~dense_mask]):
        by_c[c] = _max(pair, by_c_res.get(c, paired_res), sigma_run)
    if not np.isfinite(sigma_run):  # no replicates, no partners: nothing is known to be shared
      sigma_run = total = _max(total, comp_res)
    total = _max(total, sigma_run)
  else:  # nothing is shared: all noise is the run's own
    total = rep if np.isfinite(rep) and not widen else _max(rep, base_res, comp_res)
    sigma_run = total
  shared = float(np.sqrt(max(total**2 - sigma_run**2, 0.0)))
  return NoiseModel(
    sigma_run=float(sigma_run),
    sigma_shared=shared,
    replicate_spread=rep,
    replicate_dof=rep_dof,
    paired_spread=pair,
    paired_dof=pair_dof,
    residual_spread=base_res,
    residual_dof=base_dof,
    paired_residual_spread=paired_res,
    paired_residual_dof=paired_dof_res,
    seeds_known=known,
    mean_loss=float(np.mean(df.loss)),
    widened=widen,
    sigma_run_by_c=by_c,
  )
