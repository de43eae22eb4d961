"""The seed-noise uncertainty of fit_eff: the noise model recovers stated noise, paired draws
resolve a true ordering and not an equal pair, the intervals cover the truth at the stated
noise, and unidentified base-law parameters are named."""

import warnings

import numpy as np
import pytest

from compress_scaling import scaling
from compress_scaling.scaling import noise, orderings, synthetic

# A sweep shaped like unified.py:mini: a few sizes, three budgets, two seeds per cell shared by
# every compression; noise like the CPU pilots: a seed effect of 0.4% of the loss shared by the
# compressions of a cell, 0.15% of the run's own.
SIZES = (2e7, 4e7, 8e7, 1.6e8)
TPP = (10, 20, 40)
RUN_NOISE, SHARED_NOISE = 0.0015, 0.004
EFFS = {"dense": 1.0, "w4a16": 0.92, "w4a4": 0.80, "w4a4-copy": 0.80, "w2a2": 0.30}


def _runs(seed, effs=EFFS, **kw):
  kw = dict(sizes=SIZES, tokens_per_param=TPP, seeds=(0, 1), noise=RUN_NOISE, **kw)
  return synthetic.unified_runs(effs, seed=seed, seed_noise=SHARED_NOISE, **kw)


def _fit(runs, **kw):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return scaling.fit_eff(runs, **kw)


def test_noise_model_recovers_the_stated_noise():
  runs = _runs(0)
  rep, rep_dof = noise.replicate_spread(runs)
  pair, pair_dof = noise.paired_spread(runs)
  assert rep_dof == len(EFFS) * len(SIZES) * len(TPP) and pair_dof > 30
  assert rep == pytest.approx(np.hypot(RUN_NOISE, SHARED_NOISE), rel=0.3)
  assert pair == pytest.approx(RUN_NOISE, rel=0.3)
  # Without a seed column nothing is known to be shared: each run its own seed.
  no_seed = runs.drop(columns="seed")
  assert noise.paired_spread(no_seed) == (pytest.approx(np.nan, nan_ok=True), 0)
  table = _fit(no_seed, bootstrap=50)
  assert table.attrs["noise"].sigma_shared == 0.0 and not table.attrs["noise"].seeds_known


def test_paired_orderings_resolve_a_true_ordering_and_not_an_equal_pair():
  table = _fit(_runs(0), bootstrap=400)
  model = table.attrs["noise"]
  assert model.sigma_run == pytest.approx(RUN_NOISE, rel=0.4)
  assert model.sigma_shared == pytest.approx(SHARED_NOISE, rel=0.4)
  ords = orderings.orderings(table).set_index(["higher", "lower"])
  # w4a16 (0.92) vs w4a4 (0.80) is a 0.3% loss difference at these N, under a 0.4% seed
  # effect: the marginal intervals overlap, the paired ordering is certain.
  assert table.eff_lo["w4a16"] < table.eff_hi["w4a4"]
  row = ords.loc[("w4a16", "w4a4")]
  assert row.resolved and row.p >= 0.975
  equal = orderings.orderings(table)
  equal = equal[equal.higher.isin(["w4a4", "w4a4-copy"]) & equal.lower.isin(["w4a4", "w4a4-copy"])]
  assert len(equal) == 1 and 0.025 < equal.p.iloc[0] < 0.975 and not equal.resolved.iloc[0]
  std = orderings.standard(table).set_index("expected")
  assert std.loc["w4a16 > w4a4", "verdict"] == "resolved"
  assert std.loc["w4a4 > w2a2", "verdict"] == "resolved"


def test_seed_noise_intervals_cover_the_true_eff():
  """20 replicas of the sweep at the stated noise: the 95% interval of each compression's eff
  contains the true value in at least 18 of 20 (90%)."""
  covered = {c: 0 for c in ("w4a16", "w4a4", "w2a2")}
  for replica in range(20):
    table = _fit(_runs(100 + replica, {k: EFFS[k] for k in ("dense", *covered)}), bootstrap=200)
    for c in covered:
      covered[c] += int(table.eff_lo[c] <= EFFS[c] <= table.eff_hi[c])
  assert min(covered.values()) >= 18, covered


def test_unidentified_parameters_are_named():
  effs = {"dense": 1.0, "w4a4": 0.8, "w2a2": 0.3}
  # Every run at 20 tokens per parameter: N and D collinear.
  single = synthetic.unified_runs(effs, sizes=SIZES, tokens_per_param=(20,), noise=0.002)
  with pytest.warns(UserWarning, match="do not identify A, B, E, alpha, beta"):
    table = scaling.fit_eff(single, bootstrap=0, min_runs=1)
  assert {"A", "alpha", "E"} <= set(table.attrs["unidentified"])
  assert "D/N = 20" in table.attrs["unidentified"]["A"]
  for c, e in effs.items():  # eff, a shift along N, is still recovered
    assert table.eff[c] == pytest.approx(e, rel=0.08), c
  # The well-posed grid (five sizes, three budgets): nothing flagged, no warning.
  well = synthetic.unified_runs(effs, noise=0.002)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    table = scaling.fit_eff(well, bootstrap=0)
  assert table.attrs["unidentified"] == {}
  # Far from the irreducible loss: E at its bound is named.
  far = synthetic.unified_runs(effs, base={**synthetic.BASE, "E": 0.0}, noise=0.002)
  with pytest.warns(UserWarning, match="E = .* is at its lower bound 0"):
    table = scaling.fit_eff(far, bootstrap=0)
  assert "E" in table.attrs["unidentified"]
