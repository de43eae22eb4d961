"""The batched L-BFGS: agrees with scipy, pads and halves without changing answers, keeps x64
local to the fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from compress_scaling.scaling import fit as fit_mod
from compress_scaling.scaling import laws, optim


def _rosenbrock(theta, w, aux, data):
  x, y = theta[0], theta[1]
  return jnp.sum(w * ((data["a"] - x) ** 2 + data["b"] * (y - x**2) ** 2))


ROSEN_VG = optim.vg_from_objective(_rosenbrock)


def test_rosenbrock_from_many_starts_matches_known_minimum():
  starts = optim.grid([-1.5, 0.0, 1.5], [-1.0, 2.0])
  with optim.x64_cpu():
    res = optim.minimize_batch(
      ROSEN_VG,
      starts,
      np.ones((1, 1)),
      np.zeros((1, 0)),
      dict(a=np.ones(1), b=np.full(1, 100.0)),
      optim.LbfgsOptions(max_evals=2000, gtol=1e-10),
    )
  assert res.converged.all()
  np.testing.assert_allclose(res.x, np.ones_like(res.x), atol=1e-6)
  assert res.x.dtype == np.float64


def _epoch_like(seed=0, n=40):
  rng = np.random.default_rng(seed)
  N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n))
  D = np.exp(rng.uniform(np.log(1e9), np.log(1e11), n))
  L = laws.chinchilla(N, D, **laws.EPOCH_CHINCHILLA) * np.exp(0.01 * rng.standard_normal(n))
  return dict(lN=np.log(N), lD=np.log(D), target=np.log(L))


def _scipy_fit(data, x0, delta=1e-3):
  def fun(p):
    a, b, e, al, be = p
    t = np.stack([a - al * data["lN"], b - be * data["lD"], np.full_like(data["lN"], e)])
    r = np.logaddexp.reduce(t, axis=0) - data["target"]
    return np.sum(np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)))

  return scipy.optimize.minimize(
    fun, x0, method="L-BFGS-B", options=dict(ftol=1e-15, gtol=1e-12, maxiter=5000)
  )


def test_agrees_with_scipy_lbfgsb_on_the_chinchilla_objective():
  data = _epoch_like()
  starts = np.array([[5, 5, 0.5, 0.3, 0.3], [10, 10, 0.0, 0.5, 0.5], [6, 8, 0.6, 0.35, 0.35]])
  raw = fit_mod.run_law(
    fit_mod.CHINCHILLA, data, starts, who="t", opt=optim.LbfgsOptions(max_evals=3000)
  )
  ours = raw.batch.f * 1e-3  # back to Epoch's sum of Huber terms
  theirs = np.array([_scipy_fit(data, x0).fun for x0 in starts])
  # same optimum from the best start, never worse than scipy from any start
  assert abs(ours.min() - theirs.min()) < 1e-9
  assert np.all(ours <= theirs + 1e-9)


def test_hand_written_gradient_matches_autodiff():
  data = _epoch_like(1, 16)
  x = np.array([[6.0, 7.0, 0.5, 0.33, 0.37], [3.0, 12.0, -0.3, 0.2, 0.6]])
  w = np.random.default_rng(0).uniform(0, 2, (2, 16))
  auto = fit_mod.LogLaw(
    "auto",
    fit_mod.CHINCHILLA.theta_names,
    fit_mod._chinchilla_log_pred,
    fit_mod._chinchilla_natural,
  ).batched_vg
  with optim.x64_cpu():
    d = dict(data, delta=np.float64(1e-3))
    f1, g1 = fit_mod._chinchilla_vg(jnp.asarray(x), jnp.asarray(w), jnp.zeros((2, 0)), d)
    f2, g2 = auto(jnp.asarray(x), jnp.asarray(w), jnp.zeros((2, 0)), d)
  np.testing.assert_allclose(f1, f2, rtol=1e-12)
  np.testing.assert_allclose(g1, g2, rtol=1e-9, atol=1e-9)


@pytest.mark.slow  # ~35 s of compilation at many padded shapes
def test_padding_and_halving_do_not_change_the_optimum():
  data = _epoch_like(2, 50)  # n = 50 is padded to 64
  starts = fit_mod.EPOCH_GRID[::9]  # 500 starts
  opt = optim.LbfgsOptions(max_evals=1500)
  with optim.x64_cpu():
    d = dict(data, delta=np.float64(1e-3))
    w = np.ones((1, 50))
    full = optim.minimize_batch(
      fit_mod._chinchilla_vg, starts, w, np.zeros((1, 0)), d, opt, pad=False
    )
    padded = optim.minimize_batch(fit_mod._chinchilla_vg, starts, w, np.zeros((1, 0)), d, opt)
    halved = optim.minimize_batch(
      fit_mod._chinchilla_vg,
      starts,
      w,
      np.zeros((1, 0)),
      d,
      optim.LbfgsOptions(max_evals=1500, phase1_evals=30, keep=64),
    )
  best = full.f[full.best()]
  assert padded.f[padded.best()] == pytest.approx(best, rel=1e-10)
  assert halved.f[halved.best()] == pytest.approx(best, rel=1e-10)
  np.testing.assert_allclose(halved.x[halved.best()], full.x[full.best()], atol=1e-5)
  assert len(halved.lanes) == 64 and halved.lanes.max() < len(starts)


def test_x64_does_not_leak_to_the_caller():
  data = _epoch_like(3, 12)
  N, D, L = np.exp(data["lN"]), np.exp(data["lD"]), np.exp(data["target"])
  fit = fit_mod.fit_chinchilla(N, D, L, starts=fit_mod.EPOCH_GRID[::50])
  assert isinstance(fit.alpha, float)
  assert not jax.config.jax_enable_x64
  assert jnp.zeros(1).dtype == jnp.float32
