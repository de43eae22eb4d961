"""fit_eff recovers known eff(C) from synthetic compressed runs, under both protocols."""

import numpy as np
import pandas as pd
import pytest

from compress_scaling import scaling
from compress_scaling.scaling import synthetic

EFFS = {
  "dense": 1.0,
  "w4a16": 0.92,
  "w4a4": 0.75,
  "s50": 0.87,
  "w4a16+s50": 0.92 * 0.87,
  "w2a2": 0.2,
  "w4a4+2:4": 0.5,
}


@pytest.fixture(scope="module")
def runs():
  return synthetic.unified_runs(EFFS, noise=0.003, seed=0)


@pytest.fixture(scope="module")
def two_stage(runs):
  return scaling.fit_eff(runs, protocol="two_stage", bootstrap=300, seed=0)


def test_two_stage_recovers_eff_with_covering_intervals(two_stage):
  t = two_stage
  assert list(t.index[:1]) == ["dense"] and t.loc["dense", "eff"] == 1.0
  assert list(t.bits_per_param) == sorted(t.bits_per_param, reverse=True)
  for c, e in EFFS.items():
    assert t.eff[c] == pytest.approx(e, rel=0.06), c
    assert t.eff_lo[c] <= e <= t.eff_hi[c], (c, t.eff_lo[c], t.eff_hi[c])
    assert t.n_runs[c] == 15 and t.n_sizes[c] == 5
  assert t.bits_per_param["w4a16"] == 4.0 and t.bits_per_param["s50"] == 9.0
  assert t.kind["w4a4"] == "weight+act" and t.kind["w4a16+s50"] == "quant+sparse"
  assert t.gain_vs_dense["w4a16"] == pytest.approx(16 * t.eff["w4a16"] / 4)
  assert t.attrs["protocol"] == "two_stage" and t.attrs["n_runs"] == len(EFFS) * 15
  assert t.attrs["bootstrap"].shape == (300, len(EFFS) - 1)


def test_joint_protocol_agrees(runs, two_stage):
  t = scaling.fit_eff(runs, protocol="joint", bootstrap=50, seed=0)
  for c, e in EFFS.items():
    assert t.eff[c] == pytest.approx(e, rel=0.06), c
    assert t.eff[c] == pytest.approx(two_stage.eff[c], rel=0.05), c
  base = t.attrs["base"]
  # the joint fit uses every run for the shared constants: closer to the truth here
  assert base.alpha == pytest.approx(synthetic.BASE["alpha"], abs=0.03)
  assert base.E == pytest.approx(synthetic.BASE["E"], rel=0.03)


def test_composition_test_flags_only_the_non_multiplicative_combo(two_stage):
  comp = scaling.composition_test(two_stage)
  assert set(comp.index) == {"w4a16+s50"}  # w4a4+2:4 has no 2:4-only runs to compare with
  row = comp.loc["w4a16+s50"]
  assert row.ratio == pytest.approx(1.0, abs=0.05) and bool(row.consistent)
  # a combination that is far from the product is flagged
  t = two_stage.copy()
  t.attrs = dict(two_stage.attrs)
  draws = t.attrs["bootstrap"].copy()
  draws["w4a16+s50"] *= 0.7
  t.attrs["bootstrap"] = draws
  t.loc["w4a16+s50", "eff"] *= 0.7
  assert not bool(scaling.composition_test(t).loc["w4a16+s50", "consistent"])


def test_predict_loss_and_leave_one_size_out(runs, two_stage):
  sub = runs[runs.compression == "w4a4"]
  pred = scaling.predict_loss(two_stage, sub.N, sub.D, sub.compression.to_numpy())
  assert np.max(np.abs(pred / sub.loss - 1)) < 0.015
  held = scaling.leave_one_size_out(runs[runs.compression.isin(["dense", "w4a4"])], sizes=[4e8])
  assert set(held.held_out_N) == {4e8} and len(held) == 6
  assert held.attrs["summary"][4e8] < 0.02  # extrapolating to 2x the largest fitted N


def test_accepts_a_plain_csv_table(tmp_path, runs):
  path = tmp_path / "runs.csv"
  runs[["compression", "N", "D", "loss"]].to_csv(path, index=False)
  t = scaling.fit_eff(str(path), bootstrap=0)
  assert t.eff["w4a4"] == pytest.approx(EFFS["w4a4"], rel=0.06)
  assert np.isnan(t.eff_lo["w4a4"])  # no bootstrap, no interval


def test_fixed_base_gives_exact_eff_on_noise_free_runs():
  runs = synthetic.unified_runs({"dense": 1.0, "w3a16": 0.6}, noise=0.0)
  t = scaling.fit_eff(runs, base=synthetic.BASE, bootstrap=50)
  assert t.eff["w3a16"] == pytest.approx(0.6, rel=1e-6)
  assert t.eff_hi["w3a16"] - t.eff_lo["w3a16"] < 1e-6
  assert pd.api.types.is_float_dtype(t.eff)


def test_drop_highest_leaves_out_the_worst_runs(runs):
  bad = runs[runs.compression.isin(["dense", "w4a4"])].copy()
  bad.loc[bad.index[0], "loss"] *= 3  # a broken run
  t = scaling.fit_eff(bad, drop_highest=1, bootstrap=0)
  assert t.attrs["dropped"] == [bad.run_id.iloc[0]]
  assert t.eff["w4a4"] == pytest.approx(EFFS["w4a4"], rel=0.06)


def test_ptq_entries_feed_the_kumar_ptq_law():
  from compress_scaling.scaling import laws

  rng = np.random.default_rng(5)
  rows = []
  for N in (30e6, 60e6, 110e6, 220e6):
    for D in (1.5e9, 6e9, 26e9):
      base_id = f"bf16-{N:g}-{D:g}"
      L0 = float(laws.chinchilla(N, D, **synthetic.BASE))
      rows.append(dict(run_id=base_id, kind="train", compression="dense", N=N, D=D, loss=L0))
      for P in (3, 4, 6):
        dl = laws.kumar_ptq_delta(N, D, P, **laws.KUMAR_PTQ) * np.exp(0.01 * rng.normal())
        rows.append(
          dict(
            run_id=f"ptq{P}-{base_id}",
            kind="ptq",
            base_run_id=base_id,
            compression=f"w{P}a16",
            N=N,
            D=D,
            loss=L0 + float(dl),
          )
        )
  rows.append(
    dict(
      run_id="orphan", kind="ptq", base_run_id="gone", compression="w4a16", N=1e8, D=1e9, loss=4.0
    )
  )
  table = scaling.ptq_table(pd.DataFrame(rows))
  assert len(table) == 36 and table.attrs["unmatched"] == ["orphan"]
  assert set(table.P_post) == {3, 4, 6}
  fit = scaling.fit_ptq(table.N, table.D, table.P_post, table.delta)
  assert fit.gamma_N == pytest.approx(laws.KUMAR_PTQ["gamma_N"], abs=0.02)
  assert fit.gamma_D == pytest.approx(laws.KUMAR_PTQ["gamma_D"], abs=0.02)
  assert fit.gamma_post == pytest.approx(laws.KUMAR_PTQ["gamma_post"], rel=0.03)
