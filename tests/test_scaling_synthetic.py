"""Each law's fit recovers known parameters from synthetic data drawn from that law with noise."""

import numpy as np
import pytest

from compress_scaling import scaling
from compress_scaling.scaling import laws

TRUE = dict(A=400.0, B=1200.0, E=1.8, alpha=0.34, beta=0.30)


def _grid(*axes):
  return [m.ravel() for m in np.meshgrid(*axes, indexing="ij")]


def test_chinchilla_recovers_parameters_with_covering_intervals():
  rng = np.random.default_rng(11)  # one fixed draw; 95% intervals cover each truth here
  N, D = _grid(np.geomspace(1e7, 3e9, 7), np.geomspace(2e8, 2e11, 7))
  L = laws.chinchilla(N, D, **TRUE) * np.exp(0.002 * rng.standard_normal(N.size))
  fit = scaling.fit_chinchilla(N, D, L, bootstrap=300, seed=1)
  assert fit.converged
  assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.02)
  assert fit.beta == pytest.approx(TRUE["beta"], abs=0.02)
  assert fit.E == pytest.approx(TRUE["E"], rel=0.02)
  for k in TRUE:
    lo, hi = fit.ci[k]
    assert lo < TRUE[k] < hi, (k, fit.ci[k])
  # attributes and keys are the same numbers
  assert dict(fit) == fit.params and fit["A"] == fit.A


def test_sparse_law_recovers_exponents_and_eff():
  rng = np.random.default_rng(1)
  true = dict(a=0.6, b=0.8, c=1.5, d=0.25, e=0.6, f=0.3, g=0.7)
  S, N, D = _grid([0.0, 0.5, 0.75, 0.875], np.geomspace(1, 100, 5), [1.0, 3.0, 10.0])
  L = laws.sparse_notebook(S, N, D, *true.values()) * np.exp(5e-4 * rng.standard_normal(S.size))
  fit = scaling.fit_sparse(S, N, D, L)
  assert fit.d == pytest.approx(true["d"], abs=0.02)
  assert fit.f == pytest.approx(true["f"], abs=0.03)
  assert fit.g == pytest.approx(true["g"], rel=0.05)
  want = laws.sparse_eff([0.5, 0.75, 0.875], true["a"], true["b"], true["c"], true["d"])
  np.testing.assert_allclose(fit.eff([0.5, 0.75, 0.875]), want, rtol=0.03)


def test_qat_law_recovers_chen_w4a4_constants():
  rng = np.random.default_rng(2)
  chen = laws.CHEN_QAT["w4a4"]
  N, D, G = _grid([74e6, 145e6, 297e6, 595e6], [10e9, 20e9, 50e9, 100e9], [32, 64, 128, 256])
  L = (laws.chinchilla(N, D, **laws.CHEN_BASE) + laws.qat_delta(N, D, G, **chen)) * np.exp(
    2e-4 * rng.standard_normal(N.size)
  )
  import pandas as pd

  runs = pd.DataFrame(dict(compression=[f"w4a4-g{g}" for g in G], N=N, D=D, loss=L))
  fit = scaling.fit_qat(runs, laws.CHEN_BASE, bootstrap=100)
  for k in ("gamma_N", "gamma_D", "gamma_G"):
    assert fit[k] == pytest.approx(chen[k], abs=0.03), k
  assert fit.k == pytest.approx(chen["k"], rel=0.3)
  # PAPERS.md §3 check: N = 595M, D = 100B, G = 128 gives delta ~ 0.057
  assert fit.predict_delta(595e6, 100e9, 128) == pytest.approx(0.057, abs=0.003)
  assert fit.ci["gamma_G"][0] < chen["gamma_G"] < fit.ci["gamma_G"][1]
  assert set(fit.info["points"].G) == {32, 64, 128, 256}


def test_kumar_ptq_law_recovers_constants():
  rng = np.random.default_rng(3)
  N, D, P = _grid([30e6, 60e6, 110e6, 220e6], [1.5e9, 3e9, 6e9, 13e9, 26e9], [3, 4, 5, 6])
  delta = laws.kumar_ptq_delta(N, D, P, **laws.KUMAR_PTQ) * np.exp(
    0.01 * rng.standard_normal(N.size)
  )
  fit = scaling.fit_ptq(N, D, P, delta)
  for k in ("gamma_D", "gamma_N"):
    assert fit[k] == pytest.approx(laws.KUMAR_PTQ[k], abs=0.01), k
  assert fit.gamma_post == pytest.approx(laws.KUMAR_PTQ["gamma_post"], rel=0.02)
  assert fit.C_T == pytest.approx(laws.KUMAR_PTQ["C_T"], rel=0.1)


def _eff_table(comps, eff):
  import pandas as pd

  return pd.DataFrame(dict(eff=eff, n_runs=3), index=pd.Index(comps, name="compression"))


def test_kumar_exponential_eff_recovers_gammas():
  comps = ["w2a16", "w3a16", "w4a16", "w8a16", "w4a4", "w8a8", "w3a3", "w16a4"]
  info = [scaling.parse_spec(c) for c in comps]
  eff = [laws.kumar_eff(i.w_bits, i.a_bits, gamma_w=2.0, gamma_a=1.5) for i in info]
  fit = scaling.fit_eff_kumar(_eff_table(comps, np.array(eff, float) * 1.001))
  assert fit.gamma_w == pytest.approx(2.0, rel=0.01)
  assert fit.gamma_a == pytest.approx(1.5, rel=0.01)
  weight_only = scaling.fit_eff_kumar(_eff_table(comps[:4], eff[:4]))
  assert np.isnan(weight_only.gamma_a) and weight_only.gamma_w == pytest.approx(2.0, rel=1e-3)


def test_capacity_law_recovers_panferov_constants():
  # QuEST-grid GMSE at 1..4 and 8 bits (PAPERS.md §6), W-only and W = A, plus sparsity.
  g = np.array([0.3634, 0.1189, 0.0374, 0.01154, 9e-5])
  gs = laws.sparsity_gmse([0.5, 0.75])
  true = dict(L=0.95, F=0.41, C=1.39)
  eff = np.concatenate(
    [laws.capacity(g, **true), laws.capacity(g, **true) ** 2, laws.capacity(gs, **true)]
  )
  gw = np.concatenate([g, g, [np.nan, np.nan]])
  ga = np.concatenate([np.full(5, np.nan), g, [np.nan, np.nan]])
  gsp = np.concatenate([np.full(10, np.nan), gs])
  fit = scaling.fit_capacity(eff, gw, ga, gsp)
  for k, v in true.items():
    assert fit[k] == pytest.approx(v, rel=1e-3), k
  # our reconstruction of the law reproduces QuEST's fitted W = A eff at 3 and 4 bits
  assert laws.capacity(0.0374) ** 2 == pytest.approx(0.43, abs=0.03)
  assert laws.capacity(0.01154) ** 2 == pytest.approx(0.70, abs=0.03)


def test_sparsity_gmse_matches_monte_carlo():
  x = np.random.default_rng(0).standard_normal(1 << 20)
  for s in (0.5, 0.75):
    t = np.quantile(np.abs(x), s)
    assert laws.sparsity_gmse(s) == pytest.approx(
      np.mean(np.where(np.abs(x) < t, x * x, 0)), rel=0.01
    )
  from compress_scaling.scaling import neighbours

  # Unstructured sparsity drops the globally smallest values, so at equal sparsity it loses
  # less energy than 2:4, which must drop two of every four whatever their size.
  assert neighbours.nm_gmse(2, 4) > laws.sparsity_gmse(0.5)
