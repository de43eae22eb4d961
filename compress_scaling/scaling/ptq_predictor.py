"""Predicting the loss cost of post-training quantization from log entries (kind 'ptq').

Two predictors of ΔNLL = loss after PTQ - loss before, both evaluated on held-out model
sizes (every row of one N is predicted by a model fitted on the other sizes):

  * Kumar et al. 2024 (arXiv 2411.04330): δ_PTQ = C_T (D^γD / N^γN) exp(-P_post / γ_post)
    (neighbours.fit_ptq), fitted per PTQ method on the rows with ΔNLL > 0 (the law is fitted
    in log space; rows with ΔNLL <= 0, e.g. 8-bit PTQ within eval noise, are listed in
    attrs["law_dropped"]).
  * Xu et al. 2024 (arXiv 2410.12119): a random forest (scikit-learn) on the model's PTQ
    factors (compress_scaling/ptq/factors.py, stored in each entry): log10 N, log10 D/N,
    pre-trained NLL, weight bits and group size of the format, RTN weight SQNR, the method,
    and the radial loss profile (global ΔL at each probe radius, and the largest per-block
    ΔL).

`ptq_rows(runs)` builds the feature table; `leave_one_size_out(rows)` returns one row per PTQ
entry with both predictions; `error_table(pred)` the errors per held-out size and predictor.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from compress_scaling.scaling import laws, neighbours, specs
from compress_scaling.scaling.data import FitError

RADIAL = "factors.radial"
BASE_FEATURES = (
  "log10_N",
  "log10_tokens_per_param",
  "base_loss",
  "weight_bits",
  "group",
  "weight_sqnr_db",
  "gptq",
)


def _radial_features(row) -> dict[str, float]:
  radii = row.get(f"{RADIAL}.radii")
  if not isinstance(radii, list):
    return {}
  glob = row[f"{RADIAL}.loss.global"]
  # (models of other depths leave NaN in the columns of blocks this one lacks)
  blocks = [
    v for k, v in row.items() if k.startswith(f"{RADIAL}.loss.block_") and isinstance(v, list)
  ]
  out = {}
  for i, r in enumerate(radii):
    if r == 0:
      continue
    out[f"radial_global_r{r:g}"] = glob[i] - glob[0]
    if blocks:
      out[f"radial_block_max_r{r:g}"] = max(b[i] - b[0] for b in blocks)
  return out


def ptq_rows(runs: pd.DataFrame) -> pd.DataFrame:
  """One row per PTQ entry: N, D, P_post, method, delta (ΔNLL) and the predictor features.

  Raises FitError when the table has no PTQ entries or they lack the factors.
  """
  if "kind" not in runs.columns or not (runs["kind"] == "ptq").any():
    raise FitError(
      "ptq_rows: no PTQ entries (kind 'ptq') in the runs; make them with "
      "`python -m compress_scaling.ptq --workdir RUN --formats ...`"
    )
  ptq = runs[runs["kind"] == "ptq"]
  need = ("eval.delta_nll", "factors.base_loss", "factors.weight_sqnr_db", "ptq.method")
  missing = [c for c in need if c not in ptq.columns]
  if missing:
    raise FitError(f"ptq_rows: the PTQ entries lack the field(s) {missing}")
  rows = []
  for _, r in ptq.iterrows():
    info = specs.parse_spec(r["compression"])
    rows.append(
      dict(
        run_id=r["run_id"],
        base_run_id=r.get("base_run_id"),
        compression=r["compression"],
        method=r["ptq.method"],
        N=float(r["N"]),
        D=float(r["D"]),
        P_post=info.w_bits,
        delta=float(r["eval.delta_nll"]),
        loss=float(r["loss"]),
        log10_N=np.log10(float(r["N"])),
        log10_tokens_per_param=np.log10(float(r["D"]) / float(r["N"])),
        base_loss=float(r["factors.base_loss"]),
        weight_bits=info.w_bits,
        group=float(info.group or 0),
        weight_sqnr_db=float(r["factors.weight_sqnr_db"]),
        gptq=float(r["ptq.method"] == "gptq"),
        **_radial_features(r),
      )
    )
  return pd.DataFrame(rows)


def feature_columns(rows: pd.DataFrame) -> list[str]:
  radial = sorted(c for c in rows.columns if c.startswith("radial_"))
  return [*BASE_FEATURES, *radial]


def _forest(seed: int, n_estimators: int):
  try:
    from sklearn.ensemble import RandomForestRegressor  # noqa: PLC0415 -- optional extra
  except ImportError as e:
    raise ImportError(
      "the random-forest PTQ predictor needs scikit-learn: pip install 'compress_scaling[ptq]'"
    ) from e
  return RandomForestRegressor(n_estimators=n_estimators, min_samples_leaf=1, random_state=seed)


def leave_one_size_out(
  rows: pd.DataFrame, *, seed: int = 0, n_estimators: int = 300, law: bool = True
) -> pd.DataFrame:
  """Predictions of every row from predictors fitted on the other model sizes.

  Returns `rows` plus columns pred_forest and (law=True) pred_law (NaN where the law could
  not be fitted for that fold; the reason is in attrs["law_errors"]).
  """
  sizes = np.unique(rows.N)
  if len(sizes) < 2:
    raise FitError(
      f"leave_one_size_out: needs PTQ entries of >= 2 model sizes, got {len(sizes)} "
      f"(N = {sizes.tolist()})"
    )
  cols = feature_columns(rows)
  x = rows[cols].to_numpy(float)
  if not np.isfinite(x).all():
    bad = [c for c in cols if not np.isfinite(rows[c].to_numpy(float)).all()]
    raise FitError(f"leave_one_size_out: non-finite features {bad} (entries without factors?)")
  out = rows.copy()
  out["pred_forest"] = np.nan
  out["pred_law"] = np.nan
  law_errors, law_dropped = [], []
  for n in sizes:
    test, train = rows.N == n, rows.N != n
    forest = _forest(seed, n_estimators).fit(x[train], rows.delta[train])
    out.loc[test, "pred_forest"] = forest.predict(x[test])
    if not law:
      continue
    for method in rows.method.unique():
      fit_rows = rows[train & (rows.method == method) & (rows.delta > 0)]
      law_dropped += rows.run_id[train & (rows.method == method) & (rows.delta <= 0)].tolist()
      target = test & (rows.method == method)
      try:
        fit = neighbours.fit_ptq(fit_rows.N, fit_rows.D, fit_rows.P_post, fit_rows.delta)
      except FitError as e:
        law_errors.append(f"N={n:g} {method}: {e}")
        continue
      t = rows[target]
      out.loc[target, "pred_law"] = laws.kumar_ptq_delta(t.N, t.D, t.P_post, **fit.params)
  out.attrs.update(
    features=cols, law_errors=law_errors, law_dropped=sorted(set(law_dropped)), sizes=sizes
  )
  return out


def error_table(pred: pd.DataFrame) -> pd.DataFrame:
  """Per held-out size and predictor: MAE of ΔNLL, mean relative error of the post-PTQ loss,
  and the rank correlation of predicted and measured ΔNLL."""
  out = []
  for predictor in ("forest", "law"):
    col = f"pred_{predictor}"
    if col not in pred or pred[col].isna().all():
      continue
    for n, g in pred.groupby("N"):
      g = g[g[col].notna()]
      if g.empty:
        continue
      err = g[col] - g.delta
      out.append(
        dict(
          predictor=predictor,
          held_out_N=int(n),
          n=len(g),
          mae_delta=float(np.mean(np.abs(err))),
          rel_err_loss=float(np.mean(np.abs(err) / g.loss)),
          spearman=float(g[col].rank().corr(g.delta.rank())) if len(g) > 2 else np.nan,
        )
      )
  return pd.DataFrame(out)


def findings(rows: pd.DataFrame, low_bits: float = 3, noise: float = 1e-3) -> pd.DataFrame:
  """The qualitative PTQ findings, checked on the entries (one row per finding):

  * ΔNLL falls with bits: per (model, method, group), ΔNLL strictly decreasing in weight bits.
  * GPTQ beats RTN at `low_bits`: per (model, format), GPTQ's ΔNLL below RTN's.
  * over-trained models degrade more: per (N, format, method) with >= 2 D, ΔNLL increasing
    in D/N (Kumar et al. 2024, Fig. 2); cases whose ΔNLL stays below `noise` nats (e.g. 8-bit
    PTQ, ~1e-4 here, inside the eval noise) are not counted.
  `holds` is the fraction of cases where the finding holds; `cases` how many were checked.
  """
  out = []

  def add(name, checks, detail):
    out.append(
      dict(
        finding=name,
        holds=float(np.mean(checks)) if checks else np.nan,
        cases=len(checks),
        detail=detail,
      )
    )

  mono = []
  for _, g in rows.groupby(["N", "D", "method", "group"]):
    d = g.sort_values("weight_bits").delta.to_numpy()
    if len(d) >= 2:
      mono.append(bool(np.all(np.diff(d) < 0)))
  add("ΔNLL falls with bits", mono, "per model, method and group size")

  gain = []
  low = rows[rows.weight_bits == low_bits]
  for _, g in low.groupby(["N", "D", "compression"]):
    by = g.set_index("method").delta
    if {"rtn", "gptq"} <= set(by.index):
      gain.append(bool(by["gptq"] < by["rtn"]))
  add(f"GPTQ beats RTN at {low_bits:g} bits", gain, "per model and format")

  over = []
  for _, g in rows.groupby(["N", "compression", "method"]):
    g = g.sort_values("D")
    if g.D.nunique() >= 2 and g.delta.abs().max() >= noise:
      over.append(bool(np.all(np.diff(g.delta.to_numpy()) > 0)))
  add(
    "more tokens per parameter, larger ΔNLL",
    over,
    f"per size, format and method with ΔNLL >= {noise:g}",
  )
  return pd.DataFrame(out)
