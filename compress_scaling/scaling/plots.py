"""Figures of the fits. Each function returns a matplotlib Figure built without pyplot (no global
backend switch, so colab's inline backend is untouched); `save` writes PNG and PDF.
Every figure's title states the law and the number of runs behind it."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

from compress_scaling.scaling import data as data_mod
from compress_scaling.scaling import laws

UNIFIED = "L = A (N eff(C))^-α + B D^-β + E  (Frantar et al. 2025)"


def save(fig: Figure, stem: str) -> list[str]:
  """Writes stem.png and stem.pdf; returns their paths."""
  os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
  paths = []
  for ext in ("png", "pdf"):
    path = f"{stem}.{ext}"
    fig.savefig(path, dpi=130 if ext == "png" else None, bbox_inches="tight")
    paths.append(path)
  return paths


def _log_x(ax) -> None:
  """Log x axis labelled at 1, 2, 5 x 10^k as 100k, 2M, 5G: readable also when the data span
  less than a decade (the mini sweeps' sizes), where decade-only labels leave none."""
  ax.set_xscale("log")
  ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
  ax.xaxis.set_major_formatter(EngFormatter(sep=""))
  ax.xaxis.set_minor_formatter(NullFormatter())


def _colors(n):
  from matplotlib import colormaps

  cmap = colormaps["tab10" if n <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(n)]


def _law_params(table):
  base = table.attrs["base"]
  return {k: float(base[k]) for k in ("A", "B", "E", "alpha", "beta")}


def _eff_of(table, compressions) -> np.ndarray:
  return table.eff.reindex(np.asarray(compressions)).to_numpy(float)


def budget_panels(D_over_N, step: float = 0.25) -> np.ndarray:
  """Panel of each run by its tokens per parameter: log2(D/N) rounded to `step` (runs whose
  step counts round D/N a little apart share a panel)."""
  return np.round(np.log2(np.asarray(D_over_N, float)) / step) * step


def loss_vs_N_data(runs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
  """The points of loss_vs_N with their panel, the panel's tokens per parameter `ratio` (its
  runs' median D/N) and `curve`: the drawn curve L(N, ratio N, C) at the point's N, which is
  the law at the point's own D up to the rounding of D/N into the panel; `pred` is the law at
  the point's exact (N, D) and resid = loss - pred (nats)."""
  p = _law_params(table)
  df = runs[runs.compression.isin(table.index)].copy()
  df["panel"] = budget_panels(df.D / df.N)
  df["ratio"] = (df.D / df.N).groupby(df.panel).transform("median")
  eff = _eff_of(table, df.compression)
  df["pred"] = laws.unified(df.N, df.D, eff, **p)
  df["curve"] = laws.unified(df.N, df.ratio * df.N, eff, **p)
  df["resid"] = df.loss - df.pred
  return df


def seed_band(table: pd.DataFrame) -> float | None:
  """Seed-to-seed SD of the loss in nats from the fit's replicates (scaling/noise.py)."""
  model = table.attrs.get("noise")
  if model is None or not np.isfinite(model.replicate_spread):
    return None
  return float(model.replicate_spread * model.mean_loss)


def _runs_only(runs: pd.DataFrame) -> Figure:
  fig = Figure(figsize=(7.5, 5))
  ax = fig.add_subplot()
  comps = sorted(runs.compression.unique(), key=lambda c: (c != "dense", c))
  for color, c in zip(_colors(len(comps)), comps):
    r = runs[runs.compression == c]
    ax.scatter(r.N, r.loss, color=color, s=18, label=c)
  _log_x(ax)
  ax.set_xlabel("N (non-embedding parameters)")
  ax.set_ylabel("final eval loss")
  ax.legend(fontsize=7, ncol=2)
  ax.set_title(f"{UNIFIED}\nmeasured runs only (no fit); {len(runs)} runs", fontsize=9)
  return fig


def loss_vs_N(runs: pd.DataFrame, table: pd.DataFrame | None = None) -> Figure:
  """Loss vs N per compression with the fitted unified law, one panel per token budget
  (tokens per parameter D/N): each curve is the law at its panel's D/N, so it runs among its
  own points. Below each panel the residuals (measured - law, nats) with the seed-noise band
  of the replicates. table=None (no fit, e.g. too few sizes): the measured runs only."""
  if table is None:
    return _runs_only(runs)
  df = loss_vs_N_data(runs, table)
  p = _law_params(table)
  panels = sorted(df.panel.unique())
  comps = [c for c in table.index if c in set(df.compression)]
  colors = dict(zip(comps, _colors(len(comps))))
  band = seed_band(table)
  fig = Figure(figsize=(3.6 * len(panels) + 1, 6.4))
  grid = fig.add_gridspec(2, len(panels), height_ratios=(3, 1), hspace=0.06, wspace=0.28)
  handles = {}
  for k, panel in enumerate(panels):
    sub = df[df.panel == panel]
    ax = fig.add_subplot(grid[0, k])
    res = fig.add_subplot(grid[1, k], sharex=ax)
    ratio = float(sub.ratio.iloc[0])
    for c in [c for c in comps if c in set(sub.compression)]:
      r = sub[sub.compression == c]
      handles[c] = ax.scatter(r.N, r.loss, color=colors[c], s=16)
      n = np.geomspace(r.N.min() / 1.3, r.N.max() * 1.3, 48)
      ax.plot(n, laws.unified(n, ratio * n, table.eff[c], **p), color=colors[c], lw=1)
      res.scatter(r.N, r.resid, color=colors[c], s=10)
    res.axhline(0, color="k", lw=0.8)
    res.tick_params(labelsize=7)
    if band is not None:
      res.axhspan(-band, band, color="0.85", zorder=0)
    _log_x(ax)
    _log_x(res)
    ax.tick_params(labelbottom=False)
    ax.set_title(f"D/N = {ratio:.3g}: {len(sub)} runs", fontsize=8)
    res.set_xlabel("N (non-embedding parameters)")
    if k == 0:
      ax.set_ylabel("final eval loss")
      res.set_ylabel("measured − law (nats)", fontsize=8)
  labels = [f"{c} (eff {table.eff[c]:.3g})" for c in handles]
  fig.legend(
    list(handles.values()),
    labels,
    fontsize=6,
    ncol=6,
    loc="upper center",
    bbox_to_anchor=(0.5, 0.03),
  )
  band_text = "" if band is None else f"; grey: ±1 seed SD ({band:.3g} nats, replicates)"
  fig.suptitle(
    f"{UNIFIED}\n{table.attrs.get('protocol', '')} fit, {len(df)} runs, curves at each "
    f"panel's D/N; residual RMS {np.sqrt(np.mean(df.resid**2)):.3g} nats{band_text}",
    fontsize=9,
  )
  return fig


def collapse_data(runs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
  """The collapse plot's points: x = N eff(C), y = loss - B D^-beta (the run's loss less its
  fitted data term), `curve` = A x^-alpha + E (the one dense curve at x) and resid = y -
  curve (= loss - law)."""
  p = _law_params(table)
  df = runs[runs.compression.isin(table.index)].copy()
  df["x"] = df.N * _eff_of(table, df.compression)
  df["y"] = df.loss - p["B"] * df.D ** -p["beta"]
  df["curve"] = p["A"] * df.x ** -p["alpha"] + p["E"]
  df["resid"] = df.y - df.curve
  return df


def collapse(runs: pd.DataFrame, table: pd.DataFrame, label_worst: int = 4) -> Figure:
  """The unified law in one picture, as Frantar et al. 2025 and Panferov et al. 2025 draw it:
  every run at x = N eff(C) with its loss less the fitted data term B D^-beta, against the one
  dense curve A x^-alpha + E. Runs that do not collapse onto it stand out; the `label_worst`
  farthest are named."""
  df = collapse_data(runs, table)
  p = _law_params(table)
  fig = Figure(figsize=(7.5, 5.2))
  ax = fig.add_subplot()
  comps = [c for c in table.index if c in set(df.compression)]
  for color, c in zip(_colors(len(comps)), comps):
    r = df[df.compression == c]
    ax.scatter(r.x, r.y, color=color, s=16, label=c, marker="s" if c == "dense" else "o")
  x = np.geomspace(df.x.min() / 1.3, df.x.max() * 1.3, 96)
  ax.plot(x, p["A"] * x ** -p["alpha"] + p["E"], "k-", lw=1.2, label="A x^-α + E (dense)")
  # The farthest (compression, N, D) cells, each once (replicate seeds sit together).
  order = df.resid.abs().sort_values(ascending=False).index
  worst = df.loc[order].drop_duplicates(["compression", "N", "D"]).index[:label_worst]
  for _, r in df.loc[worst].iterrows():
    name = f"{r.compression}, N={r.N:.3g}, D={r.D:.3g}: {r.resid:+.3f}"
    ax.annotate(name, (r.x, r.y), fontsize=6, xytext=(4, -9), textcoords="offset points")
  _log_x(ax)
  ax.set_xlabel("N · eff(C)  (effective parameters)")
  ax.set_ylabel("loss − B D^-β  (nats)")
  ax.legend(fontsize=6, ncol=2)
  ax.set_title(
    f"{UNIFIED}: every run on the dense curve\n{table.attrs.get('protocol', '')} fit, "
    f"{len(df)} runs, residual RMS {np.sqrt(np.mean(df.resid**2)):.3g} nats; "
    f"the {label_worst} farthest labelled",
    fontsize=9,
  )
  return fig


def eff_axis_top(effs) -> float:
  """Top of an eff axis: room above the largest point estimate (intervals may go past it)."""
  return float(max(1.2, 1.15 * np.nanmax(np.asarray(effs, float))))


def eff_bars(t: pd.DataFrame, top: float) -> pd.DataFrame:
  """What eff_errorbar draws: each bar's ends within [0, top] and whether the upper end was
  cut (`clipped`, with the true upper end in eff_hi)."""
  lo = np.clip(np.nan_to_num(t.eff_lo.to_numpy(float), nan=t.eff), 0, None)
  hi = np.nan_to_num(t.eff_hi.to_numpy(float), nan=t.eff)
  return pd.DataFrame(
    {
      "eff": t.eff,
      "lo": np.minimum(lo, t.eff),
      "hi": np.clip(np.maximum(hi, t.eff), None, top),
      "clipped": hi > top,
      "eff_hi": hi,
    },
    index=t.index,
  )


def eff_errorbar(ax, x, t: pd.DataFrame, top: float, fmt="o", **kw):
  """eff with its interval on an axis that ends at `top`: a bar that runs past it ends in an
  arrow labelled with its true upper end, so no interval is shown shorter than it is."""
  b = eff_bars(t, top)
  x = np.asarray(x, float)
  out = ax.errorbar(x, b.eff, yerr=(b.eff - b.lo, b.hi - b.eff), fmt=fmt, capsize=3, **kw)
  for xi, (_, r) in zip(x, b.iterrows()):
    if r.clipped:
      ax.annotate(
        f"↑ {r.eff_hi:.3g}",
        (xi, top),
        xytext=(0, -10),
        textcoords="offset points",
        fontsize=6,
        ha="center",
        color=out[0].get_color(),
      )
  ax.set_ylim(0, top)
  return out


def step_links(x, t: pd.DataFrame, matched=None) -> pd.DataFrame:
  """The links eff_vs_bits draws between consecutive points of a panel (by bits, highest
  first), each with its paired ordering P(eff(higher bits) > eff(lower bits)) and whether it
  is resolved (>= 0.975); pairs run at different sizes are read from their matched fit
  (orderings.py). Empty without bootstrap draws."""
  from compress_scaling.scaling import orderings  # noqa: PLC0415

  cols = ["higher", "lower", "x_higher", "x_lower", "p", "resolved"]
  cache = {id(t): orderings._log_draws(t)}
  if cache[id(t)] is None:
    return pd.DataFrame(columns=cols)
  order = np.argsort(-np.asarray(x, float), kind="stable")
  names, xs = list(t.index[order]), np.asarray(x, float)[order]
  rows = []
  for (a, xa), (b, xb) in zip(zip(names, xs), zip(names[1:], xs[1:])):
    if xa == xb:
      continue
    log_draws, _, _ = orderings._source(t, a, b, matched, cache)
    if log_draws is None or a not in log_draws or b not in log_draws:
      continue
    p = orderings.pair(log_draws, a, b)["p"]
    rows.append((a, b, xa, xb, p, p >= orderings.LEVEL))
  return pd.DataFrame(rows, columns=cols)


def _steps(ax, x, t: pd.DataFrame, matched=None) -> None:
  """Draws step_links: solid where the ordering is resolved, dotted where not."""
  for link in step_links(x, t, matched).itertuples():
    a, b = link.higher, link.lower
    ax.plot(
      [link.x_higher, link.x_lower],
      [t.eff[a], t.eff[b]],
      "-" if link.resolved else ":",
      color="0.4",
      lw=0.9,
    )
    ax.annotate(
      f"P={link.p:.3f}",
      ((link.x_higher + link.x_lower) / 2, (t.eff[a] + t.eff[b]) / 2),
      fontsize=6,
      color="0.3",
      xytext=(2, 2),
      textcoords="offset points",
    )


def eff_vs_bits(table: pd.DataFrame, kumar=None, matched=None) -> Figure:
  """eff vs bits, one panel per kind the table has: weight-only (x = weight bits),
  weights+activations (x = W = A bits), activation-only (x = activation bits, Kumar et al.)."""
  st = data_mod.spec_table(table.index)
  panels = [
    ("weight", "weight-only: WxA16", "w_bits"),
    ("weight+act", "weights + activations: WxAy", "w_bits"),
    ("act", "activation-only: W16Ax", "a_bits"),
  ]
  panels = [p for p in panels if (st.kind == p[0]).any()] or panels[:1]  # the kinds present
  fig = Figure(figsize=(5 * len(panels), 4.2))
  n_runs = 0
  for k, (kind, title, xcol) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), k + 1)
    rows = st.index[(st.kind == kind) | (st.index == "dense")]
    t = table.loc[rows]
    x = np.where(t.index == "dense", laws.UNQUANTIZED_BITS, st.loc[rows, xcol])
    n_runs += int(t.n_runs[t.index != "dense"].sum())
    eff_errorbar(ax, x, t, eff_axis_top(table.eff))
    _steps(ax, x, t, matched)
    for xi, yi, name in zip(x, t.eff, t.index):
      ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if kumar is not None:
      P = np.linspace(1, 16, 100)
      gw, ga = (kumar.params.get(g, np.nan) for g in ("gamma_w", "gamma_a"))
      fw, fa = laws.kumar_factor(P, gw), laws.kumar_factor(P, ga)
      y = {"weight": fw, "weight+act": fw * fa if np.isfinite(ga) else fw, "act": fa}[kind]
      if np.isfinite(y).all():
        ax.plot(P, y, lw=1, label="Kumar et al. 1 - e^(-P/γ) fit")
        ax.legend(fontsize=7)
    ax.set_xlabel(
      "activation bits" if kind == "act" else "bits (weights; activations = weights on the right)"
    )
    ax.set_ylabel("eff(C)")
    ax.set_title(title, fontsize=9)
  links = (
    "; links: solid = paired ordering resolved (P >= 0.975), dotted = not"
    if table.attrs.get("bootstrap") is not None
    else ""
  )
  fig.suptitle(
    f"eff vs bits, {UNIFIED}; {table.attrs.get('protocol', '')} fit, {n_runs} compressed runs "
    f"(+{int(table.n_runs.get('dense', 0))} dense){links}",
    fontsize=9,
  )
  return fig


def eff_vs_sparsity(table: pd.DataFrame, sparse_fit=None) -> Figure:
  st = data_mod.spec_table(table.index)
  rows = st.index[(st.kind == "sparse") | (st.index == "dense")]
  t, s = table.loc[rows], st.loc[rows, "sparsity"].astype(float)
  nm = st.loc[rows, "nm"].notna()
  fig = Figure(figsize=(6, 4.2))
  ax = fig.add_subplot()
  for mask, label, mk in ((~nm, "unstructured", "o"), (nm, "n:m", "s")):
    if mask.any():
      eff_errorbar(ax, 100 * s[mask], t[mask], eff_axis_top(table.eff), fmt=mk, label=label)
  for xi, yi, name in zip(100 * s, t.eff, t.index):
    ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
  if sparse_fit is not None:
    S = np.linspace(0, 0.95, 100)
    ax.plot(100 * S, sparse_fit.eff(S), lw=1, label="sparse law (Frantar et al. 2023)")
  ax.set_xlabel("sparsity (%)")
  ax.set_ylabel("eff(C) (dense-shape N)")
  ax.legend(fontsize=7)
  n = int(t.n_runs[t.index != "dense"].sum())
  ax.set_title(f"eff vs sparsity, {UNIFIED}\n{n} sparse runs", fontsize=9)
  return fig


def eff_vs_gmse(table: pd.DataFrame, gmse: pd.DataFrame, capacity=None) -> Figure:
  """eff vs the Gaussian MSE of the representation (product over compressed parts shown as
  the x of the part with the largest GMSE), with the capacity law of Panferov et al. 2025."""
  t = table.join(gmse, how="inner")
  x = t[[c for c in ("gmse_w", "gmse_a", "gmse_s") if c in t]].max(axis=1)
  fig = Figure(figsize=(6, 4.2))
  ax = fig.add_subplot()
  eff_errorbar(ax, x, t, eff_axis_top(table.eff))
  for xi, yi, name in zip(x, t.eff, t.index):
    ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
  if capacity is not None:
    g = np.geomspace(max(x.min() / 3, 1e-5), 0.9, 100)
    ax.plot(
      g, laws.capacity(g, **capacity.params), lw=1, label="L tanh(F log_{1/4} GMSE)^C, one part"
    )
    ax.legend(fontsize=7)
  ax.set_xscale("log")
  ax.set_xlabel("Gaussian MSE (largest compressed part)")
  ax.set_ylabel("eff(C)")
  ax.set_title(
    f"eff vs GMSE, capacity law (Panferov et al. 2025)\n{int(t.n_runs.sum())} runs", fontsize=9
  )
  return fig


def pred_vs_measured(pred: pd.DataFrame) -> Figure:
  """Measured vs predicted loss; held-out runs (column held_out) marked with crosses."""
  fig = Figure(figsize=(5.5, 5))
  ax = fig.add_subplot()
  held = pred.held_out.astype(bool)
  ax.scatter(pred.pred[~held], pred.loss[~held], s=16, label="fitted")
  ax.scatter(
    pred.pred[held],
    pred.loss[held],
    s=40,
    marker="x",
    color="C3",
    label="held out (not in the fit)",
  )
  lo, hi = min(pred.pred.min(), pred.loss.min()), max(pred.pred.max(), pred.loss.max())
  ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
  ax.set_xlabel("predicted loss")
  ax.set_ylabel("measured loss")
  ax.legend(fontsize=7)
  err = np.mean(np.abs(pred.pred[held] / pred.loss[held] - 1)) if held.any() else np.nan
  ax.set_title(
    f"{UNIFIED}\n{len(pred)} runs, {int(held.sum())} held out (mean |rel. err| {err:.2%})",
    fontsize=9,
  )
  return fig


def qat_delta(qat, label: str = "") -> Figure:
  """Measured delta = L - base(N, D) vs N, D, G with the Chen et al. 2025 law; `label` (the
  recipe, e.g. 'w4a4') heads the title."""
  pts = qat.info["points"]
  fig = Figure(figsize=(12, 4))
  for k, col in enumerate(("N", "D", "G")):
    ax = fig.add_subplot(1, 3, k + 1)
    ax.scatter(pts[col], pts.delta, s=16, label="measured L - base(N, D)")
    ax.scatter(pts[col], qat.predict_delta(pts.N, pts.D, pts.G), s=16, marker="x", label="law")
    if col == "G":
      ax.set_xscale("log", base=2)
    else:
      _log_x(ax)
    ax.set_xlabel(col)
    ax.set_ylabel("δ")
    ax.legend(fontsize=7)
  p = qat.params
  fig.suptitle(
    (f"{label}: " if label else "")
    + f"QAT error δ = k D^γD (log2 G)^γG / N^γN (Chen et al. 2025): k={p['k']:.3g}, "
    f"γN={p['gamma_N']:.3g}, γD={p['gamma_D']:.3g}, γG={p['gamma_G']:.3g}; "
    f"{len(pts)} runs",
    fontsize=9,
  )
  return fig


def composition(comp: pd.DataFrame, table: pd.DataFrame) -> Figure:
  """Measured eff(q+s) against the product eff(q) eff(s) for each composite of
  `eff.composition_test(table)`, with the ratio's interval when the table has bootstrap draws:
  points on the diagonal mean the effs multiply (Panferov et al. 2025 find capacities do)."""
  fig = Figure(figsize=(5.5, 5))
  ax = fig.add_subplot()
  x, y = comp.eff_product.astype(float), comp.eff_measured.astype(float)
  lo = np.nan_to_num(np.clip(y - comp.ratio_lo.astype(float) * x, 0, None))
  hi = np.nan_to_num(np.clip(comp.ratio_hi.astype(float) * x - y, 0, None))
  ax.errorbar(x, y, yerr=(lo, hi), fmt="o", capsize=3)
  for xi, yi, name in zip(x, y, comp.index):
    ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
  if len(comp):
    a, b = min(x.min(), y.min()) * 0.95, max(x.max(), y.max()) * 1.05
    ax.plot([a, b], [a, b], "k--", lw=0.8, label="eff(q+s) = eff(q) eff(s)")
    ax.legend(fontsize=7)
  ax.set_xlabel("eff(q) · eff(s)")
  ax.set_ylabel("eff(q+s) measured")
  used = set(comp.index) | set(comp.get("quant", [])) | set(comp.get("sparse", []))
  n = int(table.n_runs[table.index.isin(used)].sum())
  ax.set_title(
    f"composition test, {UNIFIED}\n{len(comp)} composites, {n} runs behind their effs",
    fontsize=9,
  )
  return fig


def eff_per_bit(table: pd.DataFrame) -> Figure:
  """Dense-equivalent parameters per stored bit relative to dense (16 eff / bits): the
  compression with the largest bar reaches a given loss with the least memory."""
  t = table.sort_values("gain_vs_dense")
  fig = Figure(figsize=(6.5, 0.35 * len(t) + 1.5))
  ax = fig.add_subplot()
  ax.barh(t.index, t.gain_vs_dense)
  ax.axvline(1.0, color="k", lw=0.8)
  ax.set_xlabel("(eff / bits) relative to dense: memory gain at equal loss")
  ax.set_title(f"eff(C) / bits per parameter, {UNIFIED}\n{int(t.n_runs.sum())} runs", fontsize=9)
  return fig


PTQ_LAW = "δ_PTQ = C_T D^γD / N^γN e^(-P/γ_post)  (Kumar et al. 2024)"


def ptq_delta(rows: pd.DataFrame) -> Figure:
  """ΔNLL of PTQ (ptq_predictor.ptq_rows) vs weight bits per model and method, and vs
  tokens per parameter per bit width (Kumar et al. 2024: over-trained models degrade more)."""
  fig = Figure(figsize=(11, 4.2))
  ax = fig.add_subplot(1, 2, 1)
  models = sorted(rows.groupby(["N", "D"]).groups)
  colors = _colors(len(models))
  for (n, d), color in zip(models, colors):
    for method, style in (("rtn", ":"), ("gptq", "-")):
      g = rows[(rows.N == n) & (rows.D == d) & (rows.method == method)].sort_values("weight_bits")
      if len(g):
        ax.plot(g.weight_bits, g.delta, style, marker="o", ms=3, color=color, lw=1)
    ax.plot([], [], color=color, label=f"N={n:.3g}, D/N={d / n:.2g}")
  ax.plot([], [], "k:", label="RTN")
  ax.plot([], [], "k-", label="GPTQ")
  ax.set_yscale("symlog", linthresh=1e-3)
  ax.set_xlabel("weight bits")
  ax.set_ylabel("ΔNLL (nats/token)")
  ax.legend(fontsize=6)
  ax = fig.add_subplot(1, 2, 2)
  gptq = rows[rows.method == "gptq"] if (rows.method == "gptq").any() else rows
  for bits, color in zip(sorted(gptq.weight_bits.unique()), _colors(gptq.weight_bits.nunique())):
    g = gptq[gptq.weight_bits == bits]
    ax.scatter(g.D / g.N, g.delta, s=18, color=color, label=f"{bits:g} bits")
  ax.set_xscale("log")
  ax.set_yscale("symlog", linthresh=1e-3)
  ax.set_xlabel("tokens per parameter D/N")
  ax.set_ylabel("ΔNLL, " + str(gptq.method.iloc[0]).upper())
  ax.legend(fontsize=7)
  fig.suptitle(f"Post-training quantization; {PTQ_LAW}\n{len(rows)} PTQ entries", fontsize=9)
  return fig


def ptq_pred_vs_measured(pred: pd.DataFrame) -> Figure:
  """Held-out-size predictions of ΔNLL (ptq_predictor.leave_one_size_out) vs measured."""
  fig = Figure(figsize=(5.5, 5))
  ax = fig.add_subplot()
  for col, marker, label in (
    ("pred_forest", "o", "random forest (Xu et al. 2024)"),
    ("pred_law", "x", "δ_PTQ law (Kumar et al. 2024)"),
  ):
    if col in pred and pred[col].notna().any():
      ok = pred[col].notna()
      mae = np.mean(np.abs(pred[col][ok] - pred.delta[ok]))
      ax.scatter(
        pred[col][ok], pred.delta[ok], s=18, marker=marker, label=f"{label}, MAE {mae:.3g}"
      )
  lo = min(pred.delta.min(), pred.pred_forest.min())
  hi = max(pred.delta.max(), pred.pred_forest.max())
  ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
  ax.set_xscale("symlog", linthresh=1e-3)
  ax.set_yscale("symlog", linthresh=1e-3)
  ax.set_xlabel("predicted ΔNLL (model size held out)")
  ax.set_ylabel("measured ΔNLL")
  ax.legend(fontsize=7)
  ax.set_title(
    f"PTQ loss predictors, leave one size out\n{len(pred)} PTQ entries, {pred.N.nunique()} sizes",
    fontsize=9,
  )
  return fig
