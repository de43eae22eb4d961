"""eff(C) of the unified compression law and the checks around it.

Frantar et al. 2025 (arXiv 2502.16440): L(N, D, C) = A (N eff(C))^-alpha + B D^-beta + E with
eff(dense) = 1 and one eff per compression C. Three protocols:
  two_stage  base law (A, B, E, alpha, beta) from the dense runs, then eff(C) with the base
             fixed, one C at a time (the bootstrap refits the base too, so its uncertainty
             reaches the eff intervals);
  paired     two_stage, but a compressed run that has a dense partner (same N, D and seed:
             same init and data order) is predicted as the partner's measured loss plus the
             law's gap A ((N eff)^-alpha - N^-alpha): the base law then supplies only the slope
             of the N term, and neither its misfit at that cell nor the seed's shared effect
             enters eff (runs without a partner, or without seeds, are fitted as two_stage);
  joint      shared A, B, E, alpha, beta and one eff per C, fitted together on all runs.
eff is fitted as u = log eff (unconstrained; eff > 1 is allowed, e.g. QuEST's 8-bit 1.02).

Uncertainty (`uncertainty=`):
  seed_noise  (default) a parametric bootstrap: losses are redrawn around the fitted law with
              the noise measured from replicate seeds (scaling/noise.py: a seed effect shared
              by the compressions of a cell and seed, plus each run's own noise, widened by
              lack of fit) and the whole protocol is refitted on every draw. The draws are
              paired: eff(a) and eff(b) of one draw come from one simulated data set, so
              orderings (scaling/orderings.py) cancel the shared base-law uncertainty.
  resample    resampling runs within each compression (the nonparametric bootstrap): right
              for many runs per compression, not for two (three distinct resamples).
The base law's unidentified parameters (scaling/identify.py) are named in a warning and in
attrs['unidentified']; eff is reported with its interval either way.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from compress_scaling.scaling import data as data_mod
from compress_scaling.scaling import fit as fit_mod
from compress_scaling.scaling import identify, optim
from compress_scaling.scaling import noise as noise_mod
from compress_scaling.scaling.data import FitError

DENSE = "dense"
LAW_TEXT = "L = A (N eff(C))^-alpha + B D^-beta + E"
EFF_STARTS = np.log([0.03, 0.15, 0.4, 0.8, 1.2])  # u = log eff starts for the per-C fits
UNCERTAINTY = ("seed_noise", "resample")
PROTOCOLS = ("paired", "two_stage", "joint")
REFIT_EVALS = 400  # evaluations per bootstrap refit (each starts at the point estimate)


def _two_stage_log_pred(theta, aux, data):
  a, b, e, alpha, beta = (aux[i] for i in range(5))
  return jax.nn.logsumexp(
    jnp.stack(
      [
        a - alpha * (data["lN"] + theta[0]),
        b - beta * data["lD"],
        jnp.broadcast_to(e, data["lN"].shape),
      ]
    ),
    axis=0,
  )


def _joint_log_pred(theta, aux, data):
  a, b, e, alpha, beta = (theta[i] for i in range(5))
  u = jnp.concatenate([jnp.zeros(1, theta.dtype), theta[5:]])[data["cidx"]]  # dense: u = 0
  return jax.nn.logsumexp(
    jnp.stack(
      [a - alpha * (data["lN"] + u), b - beta * data["lD"], jnp.broadcast_to(e, data["lN"].shape)]
    ),
    axis=0,
  )


def _paired_log_pred(theta, aux, data):
  """A compressed run with a dense partner (same N, D, seed): the partner's measured loss plus
  the law's gap A ((N eff)^-alpha - N^-alpha); without one, the two-stage prediction."""
  a, alpha = aux[0], aux[3]
  lN = data["lN"]
  gap = jnp.exp(a - alpha * (lN + theta[0])) - jnp.exp(a - alpha * lN)
  anchored = jnp.log(jnp.maximum(data["anchor"] + gap, 1e-12))
  return jnp.where(data["has_anchor"] > 0, anchored, _two_stage_log_pred(theta, aux, data))


def _eff_natural(th):
  return dict(eff=np.exp(np.asarray(th)[..., 0]))


EFF_TWO_STAGE = fit_mod.LogLaw("eff_two_stage", ("u",), _two_stage_log_pred, _eff_natural)
EFF_PAIRED = fit_mod.LogLaw("eff_paired", ("u",), _paired_log_pred, _eff_natural)
EFF_JOINT = fit_mod.LogLaw(
  "eff_joint",
  ("a", "b", "e", "alpha", "beta"),
  _joint_log_pred,
  lambda th: fit_mod._chinchilla_natural(np.asarray(th)[..., :5]),
)


def base_theta(base) -> np.ndarray:
  """(a, b, e, alpha, beta) from anything with A, B, E, alpha, beta keys (columns of a
  bootstrap table give a [5, n_draws] array)."""
  return np.array(
    [np.log(base["A"]), np.log(base["B"]), np.log(base["E"]), base["alpha"], base["beta"]], float
  )


def _select_groups(df, min_runs, on_insufficient, who):
  counts = df.groupby("compression").size()
  short = counts[(counts < min_runs) & (counts.index != DENSE)]
  skipped = []
  if len(short):
    desc = "; ".join(
      f"{c!r} has {n} run{'s' if n != 1 else ''} "
      f"({', '.join(data_mod.row_names(df, df.compression == c)[:3])})"
      for c, n in short.items()
    )
    msg = (
      f"{who}: compression {desc}; each compression needs at least {min_runs} runs "
      f"(min_runs={min_runs}) for an eff with an interval"
    )
    if on_insufficient == "raise":
      raise FitError(msg + " (add runs, pass min_runs=1, or on_insufficient='skip')")
    if on_insufficient != "skip":
      raise ValueError(f"on_insufficient must be 'raise' or 'skip', got {on_insufficient!r}")
    warnings.warn(msg + "; skipped", stacklevel=3)
    skipped = list(short.index)
    df = df[~df.compression.isin(skipped)]
  return df, skipped


def _best_per_group(
  res: optim.BatchResult, lane_group: np.ndarray, n_groups: int, who, names, strict=True
):
  """Best lane of each group (lanes of a group = its multi-start); strict: raise when no start
  of a group converged."""
  best = np.full(n_groups, -1)
  for k in range(n_groups):
    lanes = np.flatnonzero(lane_group[res.lanes] == k)
    f = np.where(np.isfinite(res.f[lanes]), res.f[lanes], np.inf)
    if not np.isfinite(f).any():
      raise FitError(f"{who}: the objective is not finite at any start for {names[k]!r}")
    best[k] = lanes[np.argmin(f)]
    if strict and not res.converged[lanes].any():
      raise FitError(
        f"{who}: the optimiser did not converge from any of the {len(lanes)} "
        f"starts for compression {names[k]!r}"
      )
  return best


def _eff_data(df_c, anchor=None) -> dict:
  """Per-point data of the per-C eff fits; `anchor`: each run's dense partner loss (NaN: none),
  for the paired protocol."""
  data = dict(
    lN=np.log(df_c.N.to_numpy(float)),
    lD=np.log(df_c.D.to_numpy(float)),
    target=np.log(df_c.loss.to_numpy(float)),
  )
  if anchor is not None:
    anchor = np.asarray(anchor, float)
    data["has_anchor"] = np.isfinite(anchor).astype(float)
    data["anchor"] = np.where(np.isfinite(anchor), anchor, 1.0)
  return data


def _eff_law(data):
  return EFF_PAIRED if "anchor" in data else EFF_TWO_STAGE


def _eff_given_base(df_c, comps, base_th, *, delta, who, u0=None, anchor=None, strict=True):
  """Per-C eff with the base fixed: lanes = compressions x starts, weights = C masks.
  base_th: (5,) shared or (B, 5) per resample with df-weights given by the caller."""
  cidx = np.array([comps.index(c) for c in df_c.compression])
  K = len(comps)
  data = _eff_data(df_c, anchor)
  starts = EFF_STARTS if u0 is None else np.asarray(u0, float)
  lane_group = np.repeat(np.arange(K), len(starts))
  x0 = np.tile(starts, K)[:, None]
  w = (cidx[None, :] == lane_group[:, None]).astype(float)
  with optim.x64_cpu():
    res = optim.minimize_batch(
      _eff_law(data).batched_vg, x0, w, base_th[None, :], dict(data, delta=np.float64(delta))
    )
  best = _best_per_group(res, lane_group, K, who, comps, strict)
  return res.x[best, 0], res, data, cidx


def _boot_two_stage(df_c, comps, base_boot_theta, u_hat, n_boot, seed, delta, anchor=None):
  """eff draws (B, K): resample within each C, refit u with that resample's base."""
  cidx = np.array([comps.index(c) for c in df_c.compression])
  K = len(comps)
  w1 = fit_mod.resample_weights(len(df_c), n_boot, seed + 1, groups=cidx)  # (B, n)
  lane_group = np.tile(np.arange(K), n_boot)
  w = w1.repeat(K, axis=0) * (cidx[None, :] == lane_group[:, None])
  aux = np.repeat(base_boot_theta, K, axis=0)
  x0 = np.tile(u_hat, n_boot)[:, None]
  data = dict(_eff_data(df_c, anchor), delta=np.float64(delta))
  with optim.x64_cpu():
    res = optim.minimize_batch(
      _eff_law(data).batched_vg, x0, w, aux, data, optim.LbfgsOptions(max_evals=300)
    )
  u = np.where(np.isfinite(res.f), res.x[:, 0], np.nan)
  bad = ~np.all(np.isfinite(base_boot_theta), -1)
  return np.where(bad[:, None], np.nan, u.reshape(n_boot, K))


def _anchors(df) -> tuple[np.ndarray, np.ndarray]:
  """For the paired protocol: each run's dense partner row (-1: none) and the partner's loss
  (NaN: none)."""
  partner = noise_mod.dense_partners(df, DENSE)
  loss = df.loss.to_numpy(float)
  return partner, np.where(partner >= 0, loss[np.maximum(partner, 0)], np.nan)


def _log_pred(df, base_params, eff_by_c) -> np.ndarray:
  """log L of the unified law at every run (dense: eff = 1)."""
  e = df.compression.map(lambda c: 1.0 if c == DENSE else eff_by_c[c]).to_numpy(float)
  p = base_params
  return np.log(
    p["A"] * (df.N.to_numpy(float) * e) ** -p["alpha"]
    + p["B"] * df.D.to_numpy(float) ** -p["beta"]
    + p["E"]
  )


def _noise_draws(df, log_pred, n_base_params, n_eff, n_boot, seed, widen=False):
  """The noise model of the fitted runs and (n_boot, n) simulated log losses around the fit."""
  dense_mask = (df.compression == DENSE).to_numpy()
  model = noise_mod.model(
    df,
    np.log(df.loss.to_numpy(float)) - log_pred,
    dense_mask=dense_mask,
    n_base_params=n_base_params,
    n_eff_params=n_eff,
    widen=widen,
  )
  seeds, _ = noise_mod.seeds_of(df)
  ids = pd.MultiIndex.from_arrays([df.N.to_numpy(float), df.D.to_numpy(float), seeds])
  noise = model.draws(ids.factorize()[0], n_boot, seed + 7, model.run_sd(df.compression))
  return model, log_pred[None, :] + noise


def _refit_base(dense, th, targets, delta) -> np.ndarray:
  """Base law (a, b, e, alpha, beta) refitted on each row of targets (B, n_dense), from th;
  rows whose fit ran off are NaN."""
  data = dict(
    lN=np.log(dense.N.to_numpy(float)),
    lD=np.log(dense.D.to_numpy(float)),
    target=targets,
    delta=np.float64(delta),
  )
  B = len(targets)
  with optim.x64_cpu():
    res = optim.minimize_batch(
      fit_mod.CHINCHILLA.batched_vg,
      np.tile(th, (B, 1)),
      np.ones((B, len(dense))),
      np.zeros((B, 0)),
      data,
      optim.LbfgsOptions(max_evals=REFIT_EVALS),
    )
  x = np.where(np.isfinite(res.f)[:, None], res.x, np.nan)
  # A refit that ran off (a coefficient past 1e150, as make_law_fit counts them) is dropped.
  with np.errstate(invalid="ignore"):
    ran_off = ~(np.all(x[:, :3] < np.log(1e150), 1) & np.all(np.abs(x[:, 3:]) < 1e150, 1))
  return np.where(ran_off[:, None], np.nan, x)


def _refit_eff(comp, comps, base_rows, u_hat, targets, delta, anchors=None) -> np.ndarray:
  """u = log eff per C refitted on each row of targets (B, n_comp) with that row's base (and,
  paired, that row's dense-partner losses anchors (B, n_comp), NaN where none). Lane (b, k)
  holds only compression k's runs (padded to the largest compression's count, weight 0)."""
  K, B = len(comps), len(targets)
  rows = [np.flatnonzero((comp.compression == c).to_numpy()) for c in comps]
  m = max(len(r) for r in rows)
  idx = np.stack([np.pad(r, (0, m - len(r)), mode="edge") for r in rows])  # (K, m)
  real = np.stack([np.arange(m) < len(r) for r in rows]).astype(float)
  flat = _eff_data(comp, None if anchors is None else anchors[0])

  def lanes(a):  # (n,) per run, or (B, n) per draw -> (B K, m)
    a = np.asarray(a, float)
    if a.ndim == 1:
      return np.broadcast_to(a[idx], (B, K, m)).reshape(B * K, m)
    return a[:, idx].reshape(B * K, m)

  data = {k: lanes(v) for k, v in flat.items() if k != "target"}
  data["target"] = lanes(targets)
  if anchors is not None:
    data["anchor"] = lanes(np.where(np.isfinite(anchors), anchors, 1.0))
  aux = np.nan_to_num(np.repeat(base_rows, K, axis=0))  # NaN bases: results dropped below
  with optim.x64_cpu():
    res = optim.minimize_batch(
      _eff_law(data).batched_vg,
      np.tile(u_hat, B)[:, None],
      np.tile(real, (B, 1)),
      aux,
      dict(data, delta=np.float64(delta)),
      optim.LbfgsOptions(max_evals=REFIT_EVALS),
    )
  u = np.where(np.isfinite(res.f), res.x[:, 0], np.nan).reshape(B, K)
  return np.where(np.all(np.isfinite(base_rows), 1)[:, None], u, np.nan)


def _with_draws(fit, law, theta_draws, level):
  """A LawFit with parametric-bootstrap draws (B, P thetas) as its bootstrap table."""
  with np.errstate(over="ignore", invalid="ignore"):
    draws = law.natural(theta_draws)
  se, ci = fit_mod.summarize_boot(draws, level)
  return dataclasses.replace(fit, se=se, ci=ci, ci_level=level, bootstrap=pd.DataFrame(draws))


def _seed_noise_two_stage(df, dense, comp, comps, base_fit, u_hat, fixed_base, paired, args):
  """Parametric bootstrap of the two-stage (or paired) protocol: eff draws (B, K), the base
  law with its draws, and the noise model. Losses are drawn around the law's predictions (a
  dense partner around the law's dense loss, so the paired refit sees a consistent level)."""
  n_boot, seed, delta, level, widen = args
  th = base_theta(base_fit)
  log_pred = _log_pred(df, base_fit, dict(zip(comps, np.exp(u_hat))))
  n_base = 0 if fixed_base else 5
  model, y = _noise_draws(df, log_pred, n_base, len(comps), n_boot, seed, widen)
  dense_mask = (df.compression == DENSE).to_numpy()
  if fixed_base:
    base_rows = np.tile(th, (n_boot, 1))
  else:
    base_rows = _refit_base(dense, th, y[:, dense_mask], delta)
    base_fit = _with_draws(base_fit, fit_mod.CHINCHILLA, base_rows, level)
  draws = None
  if comps:
    anchors = None
    if paired:
      partner, _ = _anchors(df)
      p_c = partner[~dense_mask]
      anchors = np.where(p_c >= 0, np.exp(y[:, np.maximum(p_c, 0)]), np.nan)
    u = _refit_eff(comp, comps, base_rows, u_hat, y[:, ~dense_mask], delta, anchors)
    draws = _finite_exp(u)
  return draws, base_fit, model


def fit_eff(
  runs,
  *,
  protocol: str = "paired",
  base=None,
  delta: float = 1e-3,
  bootstrap: int = 1000,
  uncertainty: str = "seed_noise",
  lack_of_fit: str = "report",
  ci: float = 0.95,
  seed: int = 0,
  min_runs: int | None = None,
  on_insufficient: str = "raise",
  drop_invalid: bool = False,
  drop_highest: int = 0,
  halving: bool = True,
  max_evals: int | None = None,
) -> pd.DataFrame:
  """eff(C) per compression from a runs table (columns compression, N, D, loss; `dense` = 1;
  a `seed` or `config.seed` column tells replicate seeds apart, scaling/noise.py).

  protocol: 'paired' (default), 'two_stage' or 'joint' (module docstring). base: fixed
  base-law parameters for paired / two_stage (mapping with A, B, E, alpha, beta) instead of
  fitting them on the dense runs.
  bootstrap: draws for the intervals and orderings; 0 for none. uncertainty: 'seed_noise'
  (parametric bootstrap with the loss noise of the replicate seeds) or 'resample' (resample
  runs within each compression). lack_of_fit: 'report' (tested against the noise, warned about
  and in attrs['noise'], not drawn) or 'widen' (drawn as extra noise per compression:
  conservative, scaling/noise.py). min_runs (default 1 with seed_noise, whose intervals come
  from the noise model, 2 with resample) / on_insufficient: compressions with fewer runs raise
  ('raise') or are left out with a warning ('skip', listed in attrs['skipped']).
  drop_highest: leave out the k highest-loss runs first (as Epoch drop 5 of Chinchilla's;
  listed in attrs['dropped']).
  max_evals: objective evaluations per start of the base-law and joint fits (None: 1500 and
  2000); raise it when a fit is reported as not converged.

  Returns a DataFrame indexed by compression, ordered by bits per parameter (dense first):
  eff, eff_lo, eff_hi, eff_se, bits_per_param, n_runs, n_sizes, kind, eff_per_bit and
  gain_vs_dense (= eff/bits relative to dense: dense-equivalent parameters per stored bit).
  attrs: protocol, law, base (the base ChinchillaFit or mapping), bootstrap (draws, B x C),
  uncertainty, noise (the NoiseModel of seed_noise), unidentified ({parameter: reason}),
  skipped, dropped, n_runs.
  """
  who = f"fit_eff({protocol})"
  if protocol not in PROTOCOLS:
    raise ValueError(f"fit_eff: protocol must be one of {PROTOCOLS}, got {protocol!r}")
  if uncertainty not in UNCERTAINTY:
    raise ValueError(f"fit_eff: uncertainty must be one of {UNCERTAINTY}, got {uncertainty!r}")
  if lack_of_fit not in ("report", "widen"):
    raise ValueError(f"fit_eff: lack_of_fit must be 'report' or 'widen', got {lack_of_fit!r}")
  if min_runs is None:
    min_runs = 1 if uncertainty == "seed_noise" else 2
  df = data_mod.training_runs(data_mod.check_runs(runs, who, drop_invalid=drop_invalid))
  dropped = []
  if drop_highest:
    keep = fit_mod.drop_highest_loss(df.loss, drop_highest)
    dropped = data_mod.row_names(df, ~keep)
    df = df[keep]
  if not (df.compression == DENSE).any():
    raise FitError(
      f"{who} needs dense runs (compression == 'dense', eff = 1) to anchor the "
      f"base law; found none among compressions {sorted(df.compression.unique())}"
    )
  df, skipped = _select_groups(df, min_runs, on_insufficient, who)
  dense = df[df.compression == DENSE]
  comp = df[df.compression != DENSE]
  comps = sorted(comp.compression.unique())
  draws = model = None
  resample = bootstrap if uncertainty == "resample" else 0
  paired = protocol == "paired"
  anchor = None
  if paired:
    _, anchor_all = _anchors(df)
    anchor = anchor_all[(df.compression != DENSE).to_numpy()]
  if protocol in ("two_stage", "paired"):
    if base is None:
      base_fit = fit_mod.fit_chinchilla(
        dense.N,
        dense.D,
        dense.loss,
        delta=delta,
        bootstrap=resample,
        seed=seed,
        halving=halving,
        ci=ci,
        who=f"{who} base law on the dense runs",
        **({} if max_evals is None else {"max_evals": max_evals}),
      )
    else:
      base_fit = base
    th = base_theta(base_fit)
    u_hat = np.zeros(0)
    if comps:
      u_hat, _, _, _ = _eff_given_base(comp, comps, th, delta=delta, who=who, anchor=anchor)
    if bootstrap and uncertainty == "seed_noise":
      draws, base_fit, model = _seed_noise_two_stage(
        df,
        dense,
        comp,
        comps,
        base_fit,
        u_hat,
        base is not None,
        paired,
        (bootstrap, seed, delta, ci, lack_of_fit == "widen"),
      )
    elif bootstrap and comps:
      if base is None:
        bth = base_theta(base_fit.bootstrap).T  # one (a, b, e, alpha, beta) row per draw
      else:
        bth = np.broadcast_to(th, (bootstrap, 5))
      draws = _finite_exp(
        _boot_two_stage(comp, comps, bth, u_hat, bootstrap, seed, delta, anchor=anchor)
      )
    eff_hat = np.exp(u_hat)
  else:
    base_fit, eff_hat, draws, model = _fit_joint(
      df,
      comps,
      delta=delta,
      bootstrap=bootstrap,
      uncertainty=uncertainty,
      widen=lack_of_fit == "widen",
      seed=seed,
      ci=ci,
      halving=halving,
      who=who,
      max_evals=2000 if max_evals is None else max_evals,
    )
  table = _eff_table(df, comps, eff_hat, draws, ci, protocol, base_fit, skipped)
  table.attrs.update(dropped=dropped, uncertainty=uncertainty, noise=model)
  table.attrs["unidentified"] = _unidentified(base_fit, dense, model, who)
  if model is not None and not model.widened:
    tests = model.lack_of_fit()
    bad = [k for k, t in tests.items() if t["significant"]]
    if bad:
      warnings.warn(
        f"{who}: lack of fit beyond the seed noise ({'; '.join(bad)}: "
        + "; ".join(f"{k} F = {tests[k]['F']:.2f}, p = {tests[k]['p']:.2g}" for k in bad)
        + "): the law's form misses these runs (eff_by_size shows whether eff drifts with N); "
        "the intervals carry the seed noise only (lack_of_fit='widen' draws the misfit too)",
        stacklevel=2,
      )
  return table


def _unidentified(base_fit, dense, model, who) -> dict[str, str]:
  """identify.unidentified on the dense runs, at the measured noise; warns when not empty."""
  sigma = model.sigma_total if model is not None and np.isfinite(model.sigma_total) else None
  params = {k: float(base_fit[k]) for k in identify.PARAMS}
  out = identify.unidentified(params, dense.N, dense.D, dense.loss, sigma=sigma)
  draws = getattr(base_fit, "bootstrap", None)
  if draws is not None:  # the bootstrap sees past the local (Gauss-Newton) curvature
    out.update(identify.from_draws(draws, exclude=out))
    out = {k: out[k] for k in identify.ORDER if k in out}
  if out:
    warnings.warn(
      f"{who}: the dense runs do not identify {', '.join(out)} ("
      + "; ".join(f"{k}: {why}" for k, why in out.items())
      + ")"
      + (
        ""
        if "eff" in out
        else "; eff(C) is a shift along N, measured against the partners, and is reported "
        "with its interval"
      ),
      stacklevel=3,
    )
  return out


def _fit_joint(
  df, comps, *, delta, bootstrap, uncertainty, widen, seed, ci, halving, who, max_evals
):
  dense = df[df.compression == DENSE]
  data_mod.require_distinct(df.N, "N", 3, who)
  data_mod.require_distinct(df.D, "D", 3, who)
  data_mod.require_points(len(df), 5 + len(comps), who)
  # Start from the two-stage solution and from Epoch's grid with every eff = 1.
  base0 = fit_mod.fit_chinchilla(
    dense.N,
    dense.D,
    dense.loss,
    delta=delta,
    halving=halving,
    who=f"{who} initial base law on the dense runs",
  )
  u0 = np.zeros(len(comps))
  if comps:
    u0, _, _, _ = _eff_given_base(
      df[df.compression != DENSE], comps, base_theta(base0), delta=delta, who=who
    )
  grid = np.concatenate([fit_mod.EPOCH_GRID, np.zeros((len(fit_mod.EPOCH_GRID), len(comps)))], 1)
  starts = np.concatenate([np.concatenate([base_theta(base0), u0])[None], grid])
  cidx = np.array([0 if c == DENSE else 1 + comps.index(c) for c in df.compression])
  data = dict(
    lN=np.log(df.N.to_numpy()),
    lD=np.log(df.D.to_numpy()),
    target=np.log(df.loss.to_numpy()),
    cidx=cidx,
  )
  opt = optim.LbfgsOptions(max_evals=max_evals, **(fit_mod.HALVING if halving else {}))
  raw = fit_mod.run_law(EFF_JOINT, data, starts, who=who, delta=delta, opt=opt)
  model = None
  if bootstrap and uncertainty == "seed_noise":
    natural = fit_mod._chinchilla_natural(raw.theta[:5])
    eff_by_c = dict(zip(comps, np.exp(raw.theta[5:])))
    log_pred = _log_pred(df, {k: float(v) for k, v in natural.items()}, eff_by_c)
    model, y = _noise_draws(df, log_pred, 5, len(comps), bootstrap, seed, widen)
    raw.boot, raw.boot_converged = fit_mod.bootstrap_law(
      EFF_JOINT, data, raw.theta, targets=y, delta=delta, max_evals=REFIT_EVALS
    )
  elif bootstrap:
    wb = fit_mod.resample_weights(len(df), bootstrap, seed, groups=cidx)
    raw.boot, raw.boot_converged = fit_mod.bootstrap_law(
      EFF_JOINT, data, raw.theta, wb, delta=delta
    )
  base_fit = fit_mod.make_law_fit(
    fit_mod.ChinchillaFit,
    EFF_JOINT,
    raw,
    len(df),
    delta=delta,
    normalize="sum",
    level=ci,
    info=dict(protocol="joint"),
  )
  draws = None
  if raw.boot is not None:  # a resample whose fit ran off (make_law_fit) has no eff either
    ran_off = base_fit.bootstrap.isna().any(axis=1).to_numpy()
    draws = np.where(ran_off[:, None], np.nan, _finite_exp(raw.boot[:, 5:]))
  return base_fit, np.exp(raw.theta[5:]), draws, model


def _finite_exp(log_draws: np.ndarray) -> np.ndarray:
  """exp of bootstrap draws of log eff; a resample whose fit ran off (non-finite, or eff past
  1e6 either way) is NaN, left out of the intervals (numpy's overflow warning is expected)."""
  with np.errstate(over="ignore", invalid="ignore"):
    out = np.exp(log_draws)
  return np.where(np.isfinite(out) & (np.abs(log_draws) < np.log(1e6)), out, np.nan)


def _eff_table(df, comps, eff_hat, draws, level, protocol, base_fit, skipped):
  bits = data_mod.bits_column(df)
  kinds = data_mod.spec_table([DENSE] + comps)["kind"]
  rows = []
  lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
  dense_bits = float(np.nanmedian(bits[df.compression == DENSE]))
  for k, c in enumerate([DENSE] + comps):
    sel = df.compression == c
    if c == DENSE:
      eff, lo, hi, se = 1.0, 1.0, 1.0, 0.0
    else:
      eff = float(eff_hat[k - 1])
      if draws is not None:
        col = draws[:, k - 1]
        lo, hi = np.nanpercentile(col, [lo_q, hi_q])
        # Half the central 68.3% interval: the standard deviation for Gaussian draws, and
        # robust to the heavy tails a bootstrap of two or three runs per C has.
        q16, q84 = np.nanpercentile(col, [15.865, 84.135])
        se = float((q84 - q16) / 2)
      else:
        lo = hi = se = np.nan
    b = float(np.nanmedian(bits[sel])) if sel.any() else np.nan
    rows.append(
      dict(
        compression=c,
        eff=eff,
        eff_lo=float(lo),
        eff_hi=float(hi),
        eff_se=se,
        bits_per_param=b,
        n_runs=int(sel.sum()),
        n_sizes=int(df.N[sel].nunique()),
        kind=kinds[c],
        eff_per_bit=eff / b,
        gain_vs_dense=(eff / b) / (1.0 / dense_bits),
      )
    )
  table = pd.DataFrame(rows).set_index("compression")
  table = table.sort_values("bits_per_param", ascending=False, kind="stable")
  table.attrs.update(
    protocol=protocol,
    law=LAW_TEXT,
    base=base_fit,
    skipped=skipped,
    n_runs=int(len(df)),
    ci_level=level,
    bootstrap=None if draws is None else pd.DataFrame(draws, columns=comps),
  )
  return table


def composition_test(table: pd.DataFrame) -> pd.DataFrame:
  """Measured eff(q+s) against eff(q) * eff(s) for every composite whose parts were fitted
  (Panferov et al. 2025 find capacities multiply). With bootstrap draws in the table's attrs,
  the ratio gets a percentile interval and `consistent` says whether it contains 1."""
  from compress_scaling.scaling import specs

  draws = table.attrs.get("bootstrap")
  level = table.attrs.get("ci_level", 0.95)
  rows = []
  for c in table.index:
    try:
      q, s = specs.components(c)
    except ValueError:
      continue
    if q is None or s is None or q not in table.index or s not in table.index:
      continue
    prod = table.eff[q] * table.eff[s]
    row = dict(
      compression=c,
      quant=q,
      sparse=s,
      eff_measured=table.eff[c],
      eff_product=prod,
      ratio=table.eff[c] / prod,
      ratio_lo=np.nan,
      ratio_hi=np.nan,
    )
    if draws is not None and all(k in draws.columns for k in (c, q, s)):
      r = draws[c] / (draws[q] * draws[s])
      row["ratio_lo"], row["ratio_hi"] = np.nanpercentile(r, [50 * (1 - level), 50 * (1 + level)])
    row["consistent"] = (
      bool(row["ratio_lo"] <= 1 <= row["ratio_hi"]) if np.isfinite(row["ratio_lo"]) else None
    )
    rows.append(row)
  cols = [
    "compression",
    "quant",
    "sparse",
    "eff_measured",
    "eff_product",
    "ratio",
    "ratio_lo",
    "ratio_hi",
    "consistent",
  ]
  return pd.DataFrame(rows, columns=cols).set_index("compression")


def eff_by_size(runs, table: pd.DataFrame, delta: float = 1e-3) -> pd.DataFrame:
  """eff of each compression fitted at each model size alone, with the table's base law (and,
  for a paired table, each run against its dense partner): rows compressions, columns N. The
  law assumes a constant row; a trend along it is eff drifting with N."""
  who = "eff_by_size"
  df = data_mod.training_runs(data_mod.check_runs(runs, who))
  df = df[df.compression.isin(table.index)]
  mask = (df.compression != DENSE).to_numpy()
  anchor = None
  if table.attrs.get("protocol") == "paired":
    anchor = _anchors(df)[1][mask]
  comp = df[mask]
  if not len(comp):
    return pd.DataFrame()
  labels = comp.compression + "@" + comp.N.map(lambda n: f"{n:.6g}")
  comps = sorted(labels.unique())
  u, _, _, _ = _eff_given_base(
    comp.assign(compression=labels),
    comps,
    base_theta(table.attrs["base"]),
    delta=delta,
    who=who,
    anchor=anchor,
    strict=False,  # a diagnostic: two runs' Huber valley may stop on max_evals, flat
  )
  rows = [
    dict(compression=c.split("@")[0], N=float(c.split("@")[1]), eff=float(np.exp(v)))
    for c, v in zip(comps, u)
  ]
  out = pd.DataFrame(rows).pivot(index="compression", columns="N", values="eff")
  return out.reindex([c for c in table.index if c in out.index])


def predict_loss(table: pd.DataFrame, N, D, compression) -> np.ndarray:
  """Loss predicted by the unified law with the table's base and eff."""
  base = table.attrs["base"]
  eff = table.eff.reindex(np.atleast_1d(compression)).to_numpy(float)
  N, D = np.asarray(N, float), np.asarray(D, float)
  return base["A"] * (N * eff) ** -base["alpha"] + base["B"] * D ** -base["beta"] + base["E"]


def leave_one_size_out(
  runs,
  *,
  sizes=None,
  protocol: str = "paired",
  delta: float = 1e-3,
  min_runs: int = 1,
  halving: bool = True,
) -> pd.DataFrame:
  """Extrapolation error: for each held-out model size N (default every size, or `sizes`),
  refit the law (base + eff) without the runs at that size and predict them.

  Returns one row per held-out run: run fields, pred, rel_err = pred/loss - 1, held_out_N.
  attrs['summary']: mean |rel_err| per held-out size. Needs at least 4 distinct N.
  """
  who = "leave_one_size_out"
  df = data_mod.training_runs(data_mod.check_runs(runs, who))
  uniq = np.unique(df.N)
  if len(uniq) < 4:
    raise FitError(
      f"{who} needs at least 4 distinct N (3 left to fit each fold); got "
      f"{len(uniq)} (N={', '.join(f'{v:.4g}' for v in uniq)})"
    )
  sizes = uniq if sizes is None else np.atleast_1d(sizes)
  out = []
  for n_out in sizes:
    train, test = df[df.N != n_out], df[df.N == n_out]
    keep = test.compression.isin(train.compression.unique())
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      table = fit_eff(
        train,
        protocol=protocol,
        delta=delta,
        bootstrap=0,
        min_runs=min_runs,
        on_insufficient="skip",
        halving=halving,
      )
    test = test[keep & test.compression.isin(table.index)].copy()
    test["pred"] = predict_loss(table, test.N, test.D, test.compression.to_numpy())
    test["rel_err"] = test.pred / test.loss - 1
    test["held_out_N"] = n_out
    out.append(test)
  res = pd.concat(out) if out else pd.DataFrame()
  res.attrs["summary"] = (
    res.groupby("held_out_N").rel_err.apply(lambda r: float(np.mean(np.abs(r))))
    if len(res)
    else pd.Series(dtype=float)
  )
  return res
