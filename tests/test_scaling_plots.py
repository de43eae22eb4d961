"""The data behind the figures, not their pixels: loss_vs_N's curves run through their own
points, the collapse plot reproduces the law, eff bars are never drawn shorter than their
intervals."""

import warnings

import numpy as np
import pandas as pd
import pytest

from compress_scaling import scaling
from compress_scaling.scaling import plots, report, synthetic

EFFS = {"dense": 1.0, "w4a16": 0.9, "w4a4": 0.7, "w2a2": 0.3}


def _fit(runs, **kw):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return scaling.fit_eff(runs, **kw)


def test_loss_vs_N_curves_pass_among_their_own_points():
  """Synthetic runs from a known law at three budgets: each point's curve (the law at its
  panel's D/N) lies within 3 residual RMS of the point (and on it without noise); one panel
  per budget."""
  runs = synthetic.unified_runs(EFFS, noise=0.003, seed=3)
  table = _fit(runs, bootstrap=0)
  df = plots.loss_vs_N_data(runs, table)
  assert sorted(df.ratio.unique()) == [10, 20, 40] and df.panel.nunique() == 3
  # The noise is multiplicative (log-normal, as the fit's log-loss objective assumes), so the
  # residual RMS is taken on log loss: in nats the largest losses carry the largest residuals.
  log_resid = np.log(df.loss / df.curve)
  rms = float(np.sqrt(np.mean(log_resid**2)))
  assert 0.5 * 0.003 < rms < 2 * 0.003
  # 3 RMS holds for each point but not for the maximum of 60 Gaussian draws (P(some |z| > 3) is
  # 15%; this seed has one at 3.2): all within 4 RMS (P(some |z| > 4) = 0.4%), 95% within 3.
  assert np.all(np.abs(log_resid) <= 4 * rms)
  assert np.mean(np.abs(log_resid) <= 3 * rms) >= 0.95
  # Without noise each curve runs through its points exactly.
  exact = synthetic.unified_runs(EFFS, noise=0.0, seed=3)
  df0 = plots.loss_vs_N_data(exact, _fit(exact, bootstrap=0))
  np.testing.assert_allclose(df0.curve, df0.loss, rtol=1e-6)
  # Drawn at one ratio for all points (the old figure), the curves miss their points.
  median = float(np.median(runs.D / runs.N))
  old = scaling.predict_loss(table, runs.N, median * runs.N, runs.compression.to_numpy())
  assert np.mean(np.abs(np.log(runs.loss / old)) > 3 * rms) > 0.3
  fig = plots.loss_vs_N(runs, table)
  assert len(fig.axes) == 6  # 3 panels + 3 residual strips


def test_loss_vs_N_rounds_step_counts_into_one_panel_per_budget():
  """Real runs' D is steps x tokens per step, so D/N of one budget differs by a rounding step
  between sizes: they share a panel, and its curve is within the rounding of their own D."""
  runs = synthetic.unified_runs(EFFS, noise=0.0, tokens_per_param=(20,))
  runs["D"] = np.ceil(runs.D / 512) * 512 * (1 + 0.002 * (runs.N == runs.N.max()))
  table = _fit(runs, base=synthetic.BASE, bootstrap=0, min_runs=1)
  df = plots.loss_vs_N_data(runs, table)
  assert df.panel.nunique() == 1
  assert np.max(np.abs(df.curve / df.pred - 1)) < 1e-3


def test_collapse_reproduces_the_law():
  """Noise-free synthetic runs and the true law: every run lands on the dense curve A x^-alpha
  + E to 1e-6, at x = N eff."""
  runs = synthetic.unified_runs(EFFS, noise=0.0)
  table = _fit(runs, base=synthetic.BASE, bootstrap=0)
  df = plots.collapse_data(runs, table)
  np.testing.assert_allclose(df.x, df.N * df.eff_true, rtol=1e-6)
  np.testing.assert_allclose(df.y, df.curve, rtol=1e-6)
  b = synthetic.BASE
  np.testing.assert_allclose(df.loss - df.y, b["B"] * df.D ** -b["beta"], rtol=1e-12)
  # A run that does not follow the law stands out by its distance from the curve.
  off = runs.copy()
  off.loc[off.index[5], "loss"] *= 1.05
  far = plots.collapse_data(off, table).resid.abs()
  assert far.idxmax() == off.index[5]
  plots.collapse(off, table)


def test_eff_bars_are_never_drawn_shorter_than_the_interval():
  t = pd.DataFrame(
    {"eff": [0.9, 0.5, 1.0], "eff_lo": [0.8, 0.1, np.nan], "eff_hi": [2.5, 0.7, np.nan]},
    index=["a", "b", "dense"],
  )
  top = plots.eff_axis_top(t.eff)
  assert top == pytest.approx(1.2)
  bars = plots.eff_bars(t, top)
  assert bool(bars.clipped["a"]) and bars.eff_hi["a"] == 2.5 and bars.hi["a"] == top
  assert not bars.clipped["b"] and (bars.lo["b"], bars.hi["b"]) == (0.1, 0.7)
  assert bars.lo["dense"] == bars.hi["dense"] == 1.0  # no interval: no bar, nothing invented


def test_report_writes_the_collapse_and_per_budget_figures(tmp_path):
  runs = synthetic.unified_runs(EFFS, noise=0.002, seeds=(0, 1), seed_noise=0.003)
  rep = report.build_report(runs, str(tmp_path), bootstrap=50, gmse=False)
  names = {p.rsplit("/", 1)[1] for p in rep.files}
  assert {"loss_vs_N.png", "collapse.png", "eff_vs_bits.png", "orderings.csv"} <= names
  # The residual strips' grey band is the replicate seeds' spread the fit measured.
  summary = rep.table.attrs["noise"].summary()
  assert plots.seed_band(rep.table) == pytest.approx(summary["seed_spread_nats"], rel=1e-6)
  # eff vs bits links consecutive bit widths with the same paired P as orderings.csv.
  ords = pd.read_csv(tmp_path / "orderings.csv").set_index(["higher", "lower"])
  t = rep.table.loc[["dense", "w4a4", "w2a2"]]
  links = plots.step_links([16, 4, 2], t)
  assert list(zip(links.higher, links.lower)) == [("dense", "w4a4"), ("w4a4", "w2a2")]
  for link in links.itertuples():
    row = ords.loc[(link.higher, link.lower)]
    assert link.p == pytest.approx(row.p) and link.resolved == row.resolved
