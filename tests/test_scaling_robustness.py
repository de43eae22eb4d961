"""Bad input gets a message naming what is missing, never a traceback from the optimiser."""

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from compress_scaling import scaling
from compress_scaling.scaling import FitError, laws, synthetic


def _runs(effs=None, sizes=synthetic.SIZES):
  return synthetic.unified_runs(effs or {"dense": 1.0, "w4a16": 0.9}, sizes=sizes, seed=3)


def test_fit_error_is_a_value_error():
  assert issubclass(FitError, ValueError)


def test_too_few_distinct_N_or_D():
  N = np.array([1e8, 1e8, 2e8, 2e8, 1e8, 2e8, 1e8])
  D = np.array([1e9, 2e9, 3e9, 4e9, 5e9, 6e9, 7e9])
  with pytest.raises(
    FitError, match=re.escape("fit_chinchilla needs at least 3 distinct N; got 2 (N=1e+08, 2e+08)")
  ):
    scaling.fit_chinchilla(N, D, laws.chinchilla(N, D, **synthetic.BASE))
  with pytest.raises(
    FitError, match=re.escape("fit_chinchilla needs at least 3 distinct D; got 1 (D=5e+09)")
  ):
    scaling.fit_chinchilla(D, np.full(7, 5e9), np.full(7, 3.0))
  with pytest.raises(
    FitError, match=re.escape("fit_chinchilla fits 5 parameters and needs more than 5 runs; got 4")
  ):
    scaling.fit_chinchilla([1e8, 2e8, 3e8, 4e8], [1e9, 2e9, 3e9, 4e9], [3, 2.9, 2.8, 2.7])
  two_sizes = _runs(sizes=(1e8, 2e8))
  with pytest.raises(
    FitError,
    match=re.escape(
      "fit_eff(paired) base law on the dense runs needs at least 3 distinct N; got 2"
    ),
  ):
    scaling.fit_eff(two_sizes)
  with pytest.raises(
    FitError, match=re.escape("fit_eff(joint) needs at least 3 distinct N; got 2 (N=1e+08, 2e+08)")
  ):
    scaling.fit_eff(two_sizes, protocol="joint")
  with pytest.raises(
    FitError,
    match=re.escape(
      "leave_one_size_out needs at least 4 distinct N (3 left to fit each fold); got 3"
    ),
  ):
    scaling.leave_one_size_out(_runs(sizes=(1e8, 2e8, 4e8)))


def test_non_positive_losses_named_by_run():
  runs = _runs()
  runs.loc[3, "loss"] = -1.0
  runs.loc[7, "loss"] = 0.0
  bad = ", ".join(runs.run_id[[3, 7]])
  with pytest.raises(
    FitError,
    match=re.escape(
      f"fit_eff(paired): 2 bad row(s): loss must be > 0 for the log-space fit; "
      f"non-positive (-1, 0) in {bad} (fix or drop them, or pass drop_invalid=True)"
    ),
  ):
    scaling.fit_eff(runs)
  with pytest.raises(
    FitError,
    match=r"fit_chinchilla: loss must be finite and > 0 for the "
    r"log-space fit; bad at positions \[1\]",
  ):
    scaling.fit_chinchilla([1e8, 2e8, 3e8], [1e9, 2e9, 3e9], [3.0, -2.0, 2.5])


def test_nan_rows_named_or_dropped_with_a_warning():
  runs = _runs()
  runs.loc[5, "loss"] = np.nan
  runs.loc[9, "D"] = np.nan
  with pytest.raises(
    FitError,
    match=re.escape(
      f"2 bad row(s): D is NaN/missing in {runs.run_id[9]}; loss is NaN/missing in {runs.run_id[5]}"
    ),
  ):
    scaling.fit_eff(runs)
  with pytest.warns(UserWarning, match="2 bad row"):
    t = scaling.fit_eff(runs, drop_invalid=True, bootstrap=0)
  assert t.n_runs.sum() == len(runs) - 2


def test_missing_columns_and_missing_compression():
  runs = _runs().drop(columns=["D"])
  with pytest.raises(
    FitError,
    match=re.escape(
      "fit_eff(paired): the runs table has no column(s) ['D']; it needs "
      "['compression', 'N', 'D', 'loss']"
    ),
  ):
    scaling.fit_eff(runs)
  runs = _runs()
  runs.loc[2, "compression"] = None
  with pytest.raises(FitError, match=re.escape(f"no compression in {runs.run_id[2]}")):
    scaling.fit_eff(runs)


def test_no_dense_runs():
  runs = _runs({"w4a16": 0.9, "w2a16": 0.7})
  with pytest.raises(
    FitError,
    match=re.escape(
      "fit_eff(paired) needs dense runs (compression == 'dense', eff = 1) to anchor the "
      "base law; found none among compressions ['w2a16', 'w4a16']"
    ),
  ):
    scaling.fit_eff(runs)


def test_compression_with_a_single_run():
  runs = _runs()
  single = pd.DataFrame([dict(run_id="lonely-w2a16", compression="w2a16", N=1e8, D=2e9, loss=4.0)])
  runs = pd.concat([runs, single], ignore_index=True)
  with pytest.raises(
    FitError,
    match=re.escape(
      "fit_eff(paired): compression 'w2a16' has 1 run (lonely-w2a16); each compression "
      "needs at least 2 runs (min_runs=2)"
    ),
  ):
    scaling.fit_eff(runs, uncertainty="resample")  # resampling needs two runs per C
  with pytest.warns(UserWarning, match="'w2a16' has 1 run"):
    t = scaling.fit_eff(runs, on_insufficient="skip", bootstrap=0, min_runs=2)
  assert "w2a16" not in t.index and t.attrs["skipped"] == ["w2a16"]
  t1 = scaling.fit_eff(runs, min_runs=1, bootstrap=0)  # asked for: one run, no interval
  assert "w2a16" in t1.index
  # With the seed-noise bootstrap (the default) one run has an interval: from the noise model.
  t2 = scaling.fit_eff(runs, bootstrap=50)
  assert t2.eff_lo["w2a16"] < t2.eff["w2a16"] < t2.eff_hi["w2a16"]


def test_optimiser_that_never_converges_is_reported():
  N, D = [m.ravel() for m in np.meshgrid(np.geomspace(1e7, 1e9, 4), np.geomspace(1e9, 1e11, 4))]
  L = laws.chinchilla(N, D, **synthetic.BASE)
  with pytest.raises(
    FitError,
    match=r"fit_chinchilla: the optimiser did not converge from any "
    r"of the 8 starts \(best objective .* after 3 evaluations, stop reason "
    r"max_evals\); raise max_evals or check the data",
  ):
    scaling.fit_chinchilla(N, D, L, starts=scaling.EPOCH_GRID[:8], max_evals=3)


def test_neighbour_laws_name_their_missing_inputs():
  runs = synthetic.qat_runs(laws.CHEN_QAT["w4a4"], [64])
  with pytest.raises(
    FitError,
    match=re.escape("fit_qat needs at least 2 distinct group sizes G; got 1 (group sizes G=64)"),
  ):
    scaling.fit_qat(runs, synthetic.BASE)
  per_channel = runs.drop(columns=["G"]).assign(compression="w4a4")
  with pytest.raises(FitError, match="fit_qat: no group size for .*; give a G column"):
    scaling.fit_qat(per_channel, synthetic.BASE, per_channel_G=None)
  with pytest.raises(
    FitError,
    match=re.escape(
      "fit_ptq: the PTQ loss increase must be > 0 for the log-space fit; bad at positions [1]"
    ),
  ):
    scaling.fit_ptq(
      [1e8, 2e8, 3e8, 4e8, 5e8],
      [1e9, 2e9, 3e9, 4e9, 5e9],
      [3, 4, 3, 4, 3],
      [0.1, -0.01, 0.05, 0.02, 0.04],
    )
  table = pd.DataFrame(dict(eff=[1.0, 0.8]), index=pd.Index(["dense", "s50"]))
  with pytest.raises(
    FitError,
    match=re.escape(
      "fit_eff_kumar needs eff values of at least 2 quantized compressions (no sparsity); got []"
    ),
  ):
    scaling.fit_eff_kumar(table)
  with pytest.raises(FitError, match="fit_capacity needs at least 3 compressions"):
    scaling.fit_capacity([0.9, 0.8], [0.01, 0.04])
  with pytest.raises(ValueError, match="unknown term 'fp4'"):
    scaling.parse_spec("w4a16+fp4")


def test_quiet_on_good_input():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    t = scaling.fit_eff(_runs(), bootstrap=0)
  assert set(t.index) == {"dense", "w4a16"}


def test_runaway_bootstrap_resamples_are_counted_and_left_out():
  """A resample whose fit ran off (here log A = 800, where exp overflows, and log E = 400, whose
  square overflows) is NaN in the draws, counted, warned about, and kept out of the intervals."""
  from compress_scaling.scaling import fit as fit_mod

  N, D = np.meshgrid([1e7, 3e7, 1e8, 3e8], [1e9, 3e9, 1e10])
  N, D = N.ravel(), D.ravel()
  L = laws.chinchilla(N, D, **synthetic.BASE)
  data = dict(lN=np.log(N), lD=np.log(D), target=np.log(L))
  raw = fit_mod.run_law(fit_mod.CHINCHILLA, data, fit_mod.EPOCH_GRID[::45], who="test")
  raw.boot = np.tile(raw.theta, (10, 1))
  raw.boot[3, 0], raw.boot[7, 2] = 800.0, 400.0
  with pytest.warns(UserWarning, match="chinchilla law: 2 of 10 bootstrap resamples ran off"):
    with np.errstate(all="raise"):  # and no floating-point error on the way
      fit = fit_mod.make_law_fit(
        fit_mod.ChinchillaFit, fit_mod.CHINCHILLA, raw, len(L), delta=1e-3, normalize="sum"
      )
  assert fit.info["boot_runaway"] == 2
  assert (
    fit.bootstrap.iloc[[3, 7]].isna().all().all() and fit.bootstrap.drop([3, 7]).notna().all().all()
  )
  for k in ("A", "E"):  # the 8 kept draws are all the optimum
    assert fit.ci[k] == pytest.approx((fit[k], fit[k]), rel=1e-12) and fit.se[k] == 0
