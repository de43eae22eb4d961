"""eff(C) of the unified compression law and the checks around it.

Frantar et al. 2025 (arXiv 2502.16440): L(N, D, C) = A (N eff(C))^-alpha + B D^-beta + E with
eff(dense) = 1 and one eff per compression C. Two protocols:
  two_stage  base law (A, B, E, alpha, beta) from the dense runs, then eff(C) with the base
             fixed, one C at a time (the bootstrap refits the base too, so its uncertainty
             reaches the eff intervals);
  joint      shared A, B, E, alpha, beta and one eff per C, fitted together on all runs.
eff is fitted as u = log eff (unconstrained; eff > 1 is allowed, e.g. QuEST's 8-bit 1.02).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from compress_scaling.scaling import data as data_mod
from compress_scaling.scaling import fit as fit_mod
from compress_scaling.scaling import optim
from compress_scaling.scaling.data import FitError

DENSE = "dense"
LAW_TEXT = "L = A (N eff(C))^-alpha + B D^-beta + E"
EFF_STARTS = np.log([0.03, 0.15, 0.4, 0.8, 1.2])  # u = log eff starts for the per-C fits


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


EFF_TWO_STAGE = fit_mod.LogLaw(
  "eff_two_stage", ("u",), _two_stage_log_pred, lambda th: dict(eff=np.exp(np.asarray(th)[..., 0]))
)
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


def _best_per_group(res: optim.BatchResult, lane_group: np.ndarray, n_groups: int, who, names):
  """Best lane of each group (lanes of a group = its multi-start)."""
  best = np.full(n_groups, -1)
  for k in range(n_groups):
    lanes = np.flatnonzero(lane_group[res.lanes] == k)
    f = np.where(np.isfinite(res.f[lanes]), res.f[lanes], np.inf)
    if not np.isfinite(f).any():
      raise FitError(f"{who}: the objective is not finite at any start for {names[k]!r}")
    best[k] = lanes[np.argmin(f)]
    if not res.converged[lanes].any():
      raise FitError(
        f"{who}: the optimiser did not converge from any of the {len(lanes)} "
        f"starts for compression {names[k]!r}"
      )
  return best


def _eff_given_base(df_c, comps, base_th, *, delta, who, u0=None):
  """Per-C eff with the base fixed: lanes = compressions x starts, weights = C masks.
  base_th: (5,) shared or (B, 5) per resample with df-weights given by the caller."""
  cidx = np.array([comps.index(c) for c in df_c.compression])
  K = len(comps)
  data = dict(
    lN=np.log(df_c.N.to_numpy()), lD=np.log(df_c.D.to_numpy()), target=np.log(df_c.loss.to_numpy())
  )
  starts = EFF_STARTS if u0 is None else np.asarray(u0, float)
  lane_group = np.repeat(np.arange(K), len(starts))
  x0 = np.tile(starts, K)[:, None]
  w = (cidx[None, :] == lane_group[:, None]).astype(float)
  with optim.x64_cpu():
    res = optim.minimize_batch(
      EFF_TWO_STAGE.batched_vg, x0, w, base_th[None, :], dict(data, delta=np.float64(delta))
    )
  best = _best_per_group(res, lane_group, K, who, comps)
  return res.x[best, 0], res, data, cidx


def _boot_two_stage(dense, df_c, comps, base_boot_theta, u_hat, n_boot, seed, delta):
  """eff draws (B, K): resample within each C, refit u with that resample's base."""
  cidx = np.array([comps.index(c) for c in df_c.compression])
  K = len(comps)
  w1 = fit_mod.resample_weights(len(df_c), n_boot, seed + 1, groups=cidx)  # (B, n)
  lane_group = np.tile(np.arange(K), n_boot)
  w = w1.repeat(K, axis=0) * (cidx[None, :] == lane_group[:, None])
  aux = np.repeat(base_boot_theta, K, axis=0)
  x0 = np.tile(u_hat, n_boot)[:, None]
  data = dict(
    lN=np.log(df_c.N.to_numpy()),
    lD=np.log(df_c.D.to_numpy()),
    target=np.log(df_c.loss.to_numpy()),
    delta=np.float64(delta),
  )
  with optim.x64_cpu():
    res = optim.minimize_batch(
      EFF_TWO_STAGE.batched_vg, x0, w, aux, data, optim.LbfgsOptions(max_evals=300)
    )
  u = np.where(np.isfinite(res.f), res.x[:, 0], np.nan)
  bad = ~np.all(np.isfinite(base_boot_theta), -1)
  return np.where(bad[:, None], np.nan, u.reshape(n_boot, K))


def fit_eff(
  runs,
  *,
  protocol: str = "two_stage",
  base=None,
  delta: float = 1e-3,
  bootstrap: int = 1000,
  ci: float = 0.95,
  seed: int = 0,
  min_runs: int = 2,
  on_insufficient: str = "raise",
  drop_invalid: bool = False,
  drop_highest: int = 0,
  halving: bool = True,
  max_evals: int | None = None,
) -> pd.DataFrame:
  """eff(C) per compression from a runs table (columns compression, N, D, loss; `dense` = 1).

  protocol: 'two_stage' or 'joint' (module docstring). base: fixed base-law parameters for
  two_stage (mapping with A, B, E, alpha, beta) instead of fitting them on the dense runs.
  bootstrap: resamples of the runs (within each compression) for the intervals; 0 for none.
  min_runs / on_insufficient: compressions with fewer runs raise ('raise') or are left out
  with a warning ('skip', listed in attrs['skipped']). drop_highest: leave out the k
  highest-loss runs first (as Epoch drop 5 of Chinchilla's; listed in attrs['dropped']).
  max_evals: objective evaluations per start of the base-law and joint fits (None: 1500 and
  2000); raise it when a fit is reported as not converged.

  Returns a DataFrame indexed by compression, ordered by bits per parameter (dense first):
  eff, eff_lo, eff_hi, eff_se, bits_per_param, n_runs, n_sizes, kind, eff_per_bit and
  gain_vs_dense (= eff/bits relative to dense: dense-equivalent parameters per stored bit).
  attrs: protocol, law, base (the base ChinchillaFit or mapping), bootstrap (draws, B x C),
  skipped, n_runs.
  """
  who = f"fit_eff({protocol})"
  if protocol not in ("two_stage", "joint"):
    raise ValueError(f"fit_eff: protocol must be 'two_stage' or 'joint', got {protocol!r}")
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
  draws = None
  if protocol == "two_stage":
    if base is None:
      base_fit = fit_mod.fit_chinchilla(
        dense.N,
        dense.D,
        dense.loss,
        delta=delta,
        bootstrap=bootstrap,
        seed=seed,
        halving=halving,
        who=f"{who} base law on the dense runs",
        **({} if max_evals is None else {"max_evals": max_evals}),
      )
    else:
      base_fit = base
    th = base_theta(base_fit)
    u_hat = np.zeros(0)
    if comps:
      u_hat, _, _, _ = _eff_given_base(comp, comps, th, delta=delta, who=who)
      if bootstrap:
        if base is None:
          bth = base_theta(base_fit.bootstrap).T  # one (a, b, e, alpha, beta) row per draw
        else:
          bth = np.broadcast_to(th, (bootstrap, 5))
        draws = _finite_exp(_boot_two_stage(dense, comp, comps, bth, u_hat, bootstrap, seed, delta))
    eff_hat = np.exp(u_hat)
  else:
    base_fit, eff_hat, draws = _fit_joint(
      df,
      comps,
      delta=delta,
      bootstrap=bootstrap,
      seed=seed,
      halving=halving,
      who=who,
      max_evals=2000 if max_evals is None else max_evals,
    )
  table = _eff_table(df, comps, eff_hat, draws, ci, protocol, base_fit, skipped)
  table.attrs["dropped"] = dropped
  return table


def _fit_joint(df, comps, *, delta, bootstrap, seed, halving, who, max_evals):
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
  if bootstrap:
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
    info=dict(protocol="joint"),
  )
  draws = None
  if raw.boot is not None:  # a resample whose fit ran off (make_law_fit) has no eff either
    ran_off = base_fit.bootstrap.isna().any(axis=1).to_numpy()
    draws = np.where(ran_off[:, None], np.nan, _finite_exp(raw.boot[:, 5:]))
  return base_fit, np.exp(raw.theta[5:]), draws


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
  protocol: str = "two_stage",
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
