"""Numerics of `quant.quantize`: hand tables, AQT maths, MX, Gaussian MSE, gradients."""

import itertools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from scipy import stats

from compress_scaling.quant import (
  FP_FORMATS,
  FP_GAUSSIAN_SCALES,
  OPTIMAL_GAUSSIAN_SCALES,
  QuantSpec,
  fp_grid_values,
  gaussian_mse,
  hadamard_matrix,
  quantize,
)

RNG = np.random.default_rng(0)
# One compiled program per (spec, axis) instead of one per primitive in eager mode.
quantize = jax.jit(quantize, static_argnums=(1, 2))


def _np(x):
  return np.asarray(x, np.float32)


# -- hand tables of every grid -------------------------------------------------------------------

# Non-negative representable values, written out by hand from the OCP MX v1.0 spec tables.
E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
E2M3 = (
  [i / 8 for i in range(8)]
  + [1 + i / 8 for i in range(8)]
  + [2 + i / 4 for i in range(8)]
  + [4 + i / 2 for i in range(8)]
)  # 0..0.875, 1..1.875, 2..3.75, 4..7.5
E3M2 = [
  0,
  0.0625,
  0.125,
  0.1875,
  0.25,
  0.3125,
  0.375,
  0.4375,
  0.5,
  0.625,
  0.75,
  0.875,
  1,
  1.25,
  1.5,
  1.75,
  2,
  2.5,
  3,
  3.5,
  4,
  5,
  6,
  7,
  8,
  10,
  12,
  14,
  16,
  20,
  24,
  28,
]


def test_fp_grid_hand_tables():
  assert list(fp_grid_values(FP_FORMATS["e2m1"])) == E2M1
  assert list(fp_grid_values(FP_FORMATS["e2m3"])) == E2M3
  assert list(fp_grid_values(FP_FORMATS["e3m2"])) == E3M2
  e4m3 = fp_grid_values(FP_FORMATS["e4m3"])
  assert (len(e4m3), e4m3[1], e4m3[-2], e4m3[-1]) == (127, 2.0**-9, 416, 448)
  e5m2 = fp_grid_values(FP_FORMATS["e5m2"])
  assert (len(e5m2), e5m2[1], e5m2[-2], e5m2[-1]) == (124, 2.0**-16, 49152, 57344)


@pytest.mark.parametrize("fmt, table", [("e2m1", E2M1), ("e2m3", E2M3), ("e3m2", E3M2)])
def test_fp_quantize_lands_on_hand_table(fmt, table):
  # Tensor scale with absmax == the format's max gives scale 1: x_hat must be on the grid.
  mx = table[-1]
  x = np.concatenate([[mx], RNG.uniform(-mx, mx, 4000)]).astype(np.float32)
  xq = _np(quantize(jnp.asarray(x), QuantSpec(numerics="fp", fmt=fmt, granularity="tensor"), 0))
  grid = np.array(sorted({v for t in table for v in (t, -t)}))
  assert np.isin(xq, grid).all()
  # ... and is the nearest grid value.
  nearest = np.min(np.abs(x[:, None] - grid[None, :]), axis=1)
  np.testing.assert_allclose(np.abs(xq - x), nearest, atol=1e-7)
  assert set(np.abs(xq)) == set(table)  # every level is used


def test_e2m1_ties_round_to_even():
  x = jnp.asarray([6.0, 5.0, 3.5, 2.5, 1.75, 1.25, 0.75, 0.25, -5.0, -0.25], jnp.float32)
  xq = quantize(x, QuantSpec(numerics="fp", fmt="e2m1", granularity="tensor"), 0)
  np.testing.assert_array_equal(_np(xq), [6, 4, 4, 2, 2, 1, 1, 0, -4, -0])


@pytest.mark.parametrize(
  "fmt, dtype",
  [
    ("e2m1", ml_dtypes.float4_e2m1fn),
    ("e2m3", ml_dtypes.float6_e2m3fn),
    ("e3m2", ml_dtypes.float6_e3m2fn),
    ("e4m3", ml_dtypes.float8_e4m3fn),
    ("e5m2", ml_dtypes.float8_e5m2),
  ],
)
def test_fp_rounding_equals_ml_dtypes_cast(fmt, dtype):
  mx = FP_FORMATS[fmt].max_value
  mags = np.exp(RNG.uniform(np.log(mx) - 20, np.log(mx), 20000))  # include subnormals
  x = np.concatenate([[mx], mags * RNG.choice([-1, 1], mags.shape)]).astype(np.float32)
  xq = _np(quantize(jnp.asarray(x), QuantSpec(numerics="fp", fmt=fmt, granularity="tensor"), 0))
  np.testing.assert_array_equal(xq, x.astype(dtype).astype(np.float32))


def test_int4_levels_hand_table():
  # Per-tensor absmax 7.5 -> scale 7.5 / (2^3 - 0.5) = 1: AQT int4 levels are -7..7.
  x = jnp.asarray([7.5, 7.25, 6.5, 5.5, 2.5, 0.5, -0.5, -1.5, -7.5, 0.2, -0.7], jnp.float32)
  xq = quantize(x, QuantSpec(4, granularity="tensor"), 0)
  np.testing.assert_array_equal(_np(xq), [7, 7, 6, 6, 2, 0, -0, -2, -7, 0, -1])
  y = jnp.linspace(-7.5, 7.5, 1001)
  assert sorted(set(_np(quantize(y, QuantSpec(4, granularity="tensor"), 0)))) == list(range(-7, 8))


def test_int8_levels_hand_table():
  y = jnp.linspace(-127.5, 127.5, 4001)
  levels = sorted(set(_np(quantize(y, QuantSpec(8, granularity="tensor"), 0))))
  assert levels == list(range(-127, 128))


def test_ternary_absmean_hand_table():
  # BitNet b1.58: gamma = mean|W|, W~ = RoundClip(W / gamma, -1, 1).
  x = jnp.asarray([0.2, -1.0, 3.0, 0.0, -0.4, 0.6], jnp.float32)
  gamma = 5.2 / 6
  xq = quantize(x, QuantSpec(numerics="ternary", granularity="tensor"), 0)
  np.testing.assert_allclose(_np(xq), np.float32(gamma) * np.array([0, -1, 1, 0, 0, 1]), rtol=1e-6)


def test_binary_hand_tables():
  x = jnp.asarray([0.5, -2.0, 0.0, 1.5], jnp.float32)
  # absmean (XNOR-Net): +-mean|x| = +-1; sign(0) = +1.
  xq = quantize(x, QuantSpec(numerics="binary", granularity="tensor"), 0)
  np.testing.assert_array_equal(_np(xq), [1, -1, 1, 1])
  # absmax (AQT 1-bit, preserve_zero=False: floor(x) + 0.5 of x / max|x|): +-max|x| / 2.
  xq = quantize(x, QuantSpec(numerics="binary", scale="absmax", granularity="tensor"), 0)
  np.testing.assert_array_equal(_np(xq), [1, -1, 1, 1])
  # gaussian_mse: +-0.7979 * RMS (QuEST 1-bit).
  rms = np.sqrt(np.mean(np.square(_np(x))))
  xq = quantize(x, QuantSpec(numerics="binary", scale="gaussian_mse", granularity="tensor"), 0)
  np.testing.assert_allclose(_np(xq), 0.7978845587140913 * rms * np.array([1, -1, 1, 1]), rtol=1e-6)


def test_centred_int2_gaussian_mse_hand_table():
  # QuEST 2-bit: 4 levels +-L/3, +-L with L = 1.4935 * RMS; no zero level.
  x = np.array([1.0, -1.0, 0.3, -0.2, 2.5, 0.0, -2.4, -1.0], np.float32)
  L = 1.4935346200015913 * np.sqrt(np.mean(x.astype(np.float64) ** 2))
  levels = np.array([-L, -L / 3, L / 3, L])
  want = levels[np.argmin(np.abs(x[:, None] - levels[None]), axis=1)]
  want[5] = L / 3  # the tie at 0 goes up (AQT's floor(x) + 0.5)
  xq = quantize(jnp.asarray(x), QuantSpec(2, scale="gaussian_mse", granularity="tensor"), 0)
  np.testing.assert_allclose(_np(xq), want, rtol=1e-6)
  assert len(set(_np(xq))) == 4


# -- AQT IntSymmetric / AbsMax maths (CODEBASES.md section 3.1), hand-rolled in numpy -------------


def aqt_reference(x, bits, axes):
  """AQT v2: s = max|x| (0 -> 1) / (2^(b-1) - 0.5), q = round_even(clip(x * inv(s), +-Q))."""
  x = np.asarray(x, np.float32)
  amax = np.max(np.abs(x), axis=axes, keepdims=True)
  amax = np.where(amax == 0, np.float32(1), amax)
  # AQT divides by the constant quant bound; XLA executes that as a multiplication by its
  # reciprocal (algebraic simplifier), which is what runs on every backend.
  s = (amax * np.float32(1.0 / (2.0 ** (bits - 1) - 0.5))).astype(np.float32)
  with np.errstate(divide="ignore"):
    inv = np.float32(1) / s
  inv = np.where(np.isinf(inv), np.float32(1), inv)
  bound = np.float32(2.0 ** (bits - 1) - 1)
  q = np.round(np.clip(x * inv, -bound, bound))  # numpy rounds half to even
  return q.astype(np.float32) * s, q, s


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_int_per_channel_bit_identical_to_aqt_maths(bits):
  w = RNG.normal(size=(256, 96)).astype(np.float32)
  w[:, 3] = 0.0  # an all-zero channel: AQT's 0 -> 1 scale rule
  w[7, 5] = 40.0  # an outlier
  want, q, _ = aqt_reference(w, bits, (0,))
  got = _np(quantize(jnp.asarray(w), QuantSpec(bits), 0))
  np.testing.assert_array_equal(got, want)
  assert np.abs(q).max() == 2 ** (bits - 1) - 1


@pytest.mark.parametrize("bits", [8, 4])
def test_int_per_token_bit_identical_to_aqt_maths(bits):
  x = RNG.standard_t(3, size=(4, 16, 128)).astype(np.float32)
  want, _, _ = aqt_reference(x, bits, (2,))
  np.testing.assert_array_equal(_np(quantize(jnp.asarray(x), QuantSpec(bits), -1)), want)


@pytest.mark.parametrize("bits, g", [(8, 32), (4, 32), (4, 128)])
def test_int_per_group_bit_identical_to_aqt_maths(bits, g):
  w = RNG.normal(size=(256, 48)).astype(np.float32)
  want, _, _ = aqt_reference(w.reshape(256 // g, g, 48), bits, (1,))
  got = _np(quantize(jnp.asarray(w), QuantSpec(bits, group_size=g), 0))
  np.testing.assert_array_equal(got, want.reshape(256, 48))
  x = RNG.normal(size=(8, 256)).astype(np.float32)
  want, _, _ = aqt_reference(x.reshape(8, 256 // g, g), bits, (2,))
  got = _np(quantize(jnp.asarray(x), QuantSpec(bits, group_size=g), -1))
  np.testing.assert_array_equal(got, want.reshape(8, 256))


def test_per_tensor_matches_aqt_maths():
  w = RNG.normal(size=(64, 32)).astype(np.float32)
  want, _, _ = aqt_reference(w, 8, (0, 1))
  np.testing.assert_array_equal(
    _np(quantize(jnp.asarray(w), QuantSpec(8, granularity="tensor"), 0)), want
  )


def test_channel_scale_is_per_output_channel():
  # Scaling one output column by a power of two scales its quantized column exactly.
  w = RNG.normal(size=(128, 16)).astype(np.float32)
  c = 2.0 ** RNG.integers(-3, 4, size=16).astype(np.float32)
  a = _np(quantize(jnp.asarray(w * c), QuantSpec(4), 0))
  np.testing.assert_array_equal(a, _np(quantize(jnp.asarray(w), QuantSpec(4), 0)) * c)


def test_adjacent_contraction_axes_merge_for_groups():
  x = RNG.normal(size=(3, 4, 64)).astype(np.float32)  # e.g. [T, heads, head_dim]
  spec = QuantSpec(4, group_size=32)
  a = quantize(jnp.asarray(x), spec, (1, 2))
  b = quantize(jnp.asarray(x.reshape(3, 256)), spec, -1).reshape(3, 4, 64)
  np.testing.assert_array_equal(_np(a), _np(b))
  with pytest.raises(ValueError, match="adjacent"):
    quantize(jnp.asarray(x), spec, (0, 2))
  with pytest.raises(ValueError, match="group_size=32 does not divide the contraction dim 48"):
    quantize(jnp.ones((2, 48)), spec, -1)


# -- MX (OCP Microscaling v1.0) -------------------------------------------------------------------


def test_mxfp4_block_scale_and_values():
  # Block 0: max 5.0 -> X = 2^(floor(log2 5) - emax_e2m1=2) = 1; 5 ties between 4 and 6 -> 4.
  # Block 1: max 100 -> X = 2^(6 - 2) = 16; 100 / 16 = 6.25 saturates to 6 -> 96.
  b0 = np.array([5.0, 0.26, -1.3, 0.0] + [0.1] * 28, np.float32)
  b1 = np.array([100.0, 24.0, -40.0, 7.9] + [1.0] * 28, np.float32)
  x = jnp.asarray(np.concatenate([b0, b1])[None])
  xq = _np(quantize(x, QuantSpec(numerics="mx", fmt="e2m1"), -1))[0]
  np.testing.assert_array_equal(xq[:4], [4.0, 0.5, -1.5, 0.0])
  np.testing.assert_array_equal(xq[32:36], [96.0, 24.0, -32.0, 8.0])
  assert np.isin(xq[32:] / 16, [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, -1, -1.5, -2, -3, -4, -6]).all()


def test_mxint8_elements():
  # MXINT8: X = 2^floor(log2 max), elements k * 2^-6 with |k| <= 127.
  x = np.array([1.0, 0.5 + 1 / 256, -0.999, 1 / 200] + [0.0] * 28, np.float32)
  xq = _np(quantize(jnp.asarray(x), QuantSpec(numerics="mx", fmt="int", bits=8), 0))
  np.testing.assert_array_equal(xq[:4], [1.0, 0.5, -64 / 64, 0.015625 * 0])  # 1/200*64=0.32->0
  assert np.all(np.abs(xq * 64 - np.round(xq * 64)) == 0)


# -- Gaussian MSE (PAPERS.md section 6) -----------------------------------------------------------


@pytest.mark.parametrize("bits, target", [(1, 0.3634), (2, 0.1189), (3, 0.0374), (4, 0.01154)])
def test_gaussian_mse_matches_papers(bits, target):
  assert gaussian_mse(QuantSpec(bits, scale="gaussian_mse")) == pytest.approx(target, rel=0.01)


def _integrated_mse(levels):
  """E[(x - nearest level)^2] for x ~ N(0, 1), by exact integration cell by cell."""
  levels = np.sort(np.asarray(levels, np.float64))
  t = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
  a, b = t[:-1], t[1:]
  m0 = stats.norm.cdf(b) - stats.norm.cdf(a)
  m1 = stats.norm.pdf(a) - stats.norm.pdf(b)
  with np.errstate(invalid="ignore"):
    xa = a * stats.norm.pdf(a)
    xb = b * stats.norm.pdf(b)
  xa[0], xb[-1] = 0.0, 0.0  # x * pdf(x) -> 0 at -inf / +inf
  return float(np.sum(m0 + xa - xb - 2 * levels * m1 + levels**2 * m0))


def _fp_levels(fmt, alpha):
  v = fp_grid_values(FP_FORMATS[fmt])
  v = np.concatenate([-v[1:], v]) / v[-1]
  return v * alpha


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7])
def test_quest_constants_are_mse_optimal_for_centred_grid(bits):
  # (QuEST's 8-bit constant 3.8849 is ~1% below the integrated optimum: MSE +0.15%.)
  n = 2**bits
  grid = (np.arange(n) - (n - 1) / 2) * 2 / (n - 1)
  a = OPTIMAL_GAUSSIAN_SCALES[bits]
  best = _integrated_mse(grid * a)
  assert best <= _integrated_mse(grid * a * 1.01) and best <= _integrated_mse(grid * a * 0.99)


@pytest.mark.parametrize("fmt", list(FP_FORMATS))
def test_fp_gaussian_constants_are_mse_optimal(fmt):
  a = FP_GAUSSIAN_SCALES[fmt]
  best = _integrated_mse(_fp_levels(fmt, a))
  for r in (0.99, 1.01, 0.9, 1.1, 0.5, 2.0):
    assert best <= _integrated_mse(_fp_levels(fmt, a * r)) + 1e-12
  # Monte Carlo agrees with the integral.
  mc = gaussian_mse(QuantSpec(numerics="fp", fmt=fmt, scale="gaussian_mse"), n_samples=2**18)
  assert mc == pytest.approx(best, rel=0.02)


def test_gaussian_mse_orderings():
  """Fewer bits, coarser scales: higher MSE; INT4 beats FP4 at equal bits (Panferov+ 2025)."""
  int4 = gaussian_mse(QuantSpec(4, scale="gaussian_mse"), n_samples=2**18)
  fp4 = gaussian_mse(QuantSpec(numerics="fp", fmt="e2m1", scale="gaussian_mse"), n_samples=2**18)
  assert int4 < fp4
  ternary = gaussian_mse(QuantSpec(numerics="ternary", scale="gaussian_mse"), n_samples=2**18)
  assert ternary == pytest.approx(
    _integrated_mse([-1.2240089519030855, 0, 1.2240089519030855]), rel=0.01
  )
  g32 = gaussian_mse(QuantSpec(4, group_size=32), n_samples=2**18)
  ch = gaussian_mse(QuantSpec(4), n_samples=2**18)
  assert g32 < ch  # finer absmax groups clip less of the range away
  assert gaussian_mse(None) == 0.0


# -- gradients ------------------------------------------------------------------------------------


def _grad(spec, x, g, axis=-1, key=None):
  return _np(jax.grad(lambda x: jnp.sum(quantize(x, spec, axis, key=key) * g))(x))


def test_ste_gradient_is_identity():
  x = jnp.asarray(RNG.normal(size=(8, 64)), jnp.float32)
  g = jnp.asarray(RNG.normal(size=(8, 64)), jnp.float32)
  for spec in [
    QuantSpec(4),
    QuantSpec(2, scale="gaussian_mse"),
    QuantSpec(numerics="ternary"),
    QuantSpec(numerics="mx", fmt="e2m1"),
    QuantSpec(4, scale="mse_search"),
  ]:
    np.testing.assert_array_equal(_grad(spec, x, g), _np(g))


def test_clipped_ste_zeroes_outside_last_bucket_edge():
  # int2 gaussian_mse, one row: RMS r, outer level L = 1.4935 r, step 2L/3, edge L + L/3.
  x = np.array([10.0, 1.0, -1.0, 0.5] + [1.0] * 96, np.float32)
  r = np.sqrt(np.mean(x.astype(np.float64) ** 2))
  edge = 1.4935346200015913 * r * 4 / 3  # = 2.81 < 10
  spec = QuantSpec(2, scale="gaussian_mse", gradient="clipped_ste")
  g = np.arange(1, 101, dtype=np.float32)
  want = g * (np.abs(x) <= edge)
  np.testing.assert_array_equal(_grad(spec, jnp.asarray(x), jnp.asarray(g)), want)
  assert want[0] == 0 and (want[1:] == g[1:]).all()


def test_clipped_ste_with_absmax_is_ste():
  # With absmax scales nothing lies beyond the edge (the max maps to the edge itself).
  x = jnp.asarray(RNG.normal(size=(4, 64)), jnp.float32)
  g = jnp.ones_like(x)
  np.testing.assert_array_equal(_grad(QuantSpec(4, gradient="clipped_ste"), x, g), _np(g))


def test_clipped_ste_with_mse_search_masks_clipped_values():
  x = np.concatenate([RNG.normal(size=255), [30.0]]).astype(np.float32)[None]
  spec = QuantSpec(3, scale="mse_search", gradient="clipped_ste")
  gr = _grad(spec, jnp.asarray(x), jnp.ones_like(jnp.asarray(x)))
  assert gr[0, -1] == 0 or gr.sum() == x.size  # the outlier is clipped iff a ratio < 1 won
  assert set(np.unique(gr)) <= {0.0, 1.0}


def test_trust_equals_clipped_ste_for_nearest_rounding_on_uniform_grids():
  x = jnp.asarray(RNG.standard_t(2, size=(16, 128)), jnp.float32)
  g = jnp.ones_like(x)
  for bits in (1, 2, 4):
    t = _grad(QuantSpec(bits, scale="gaussian_mse", gradient="trust"), x, g)
    c = _grad(QuantSpec(bits, scale="gaussian_mse", gradient="clipped_ste"), x, g)
    np.testing.assert_array_equal(t, c)
    assert 0 < (t == 0).sum() < t.size  # heavy tails: some masked


def test_trust_masks_far_stochastic_roundings():
  x = jnp.asarray(RNG.normal(size=(16, 128)), jnp.float32)
  spec = QuantSpec(4, scale="gaussian_mse", gradient="trust", rounding="stochastic")
  gr = _grad(spec, x, jnp.ones_like(x), key=jax.random.key(0))
  assert 0.2 < (gr == 0).mean() < 0.8  # rounding more than half a step away


def test_weight_only_matmul_gradient_is_pure_ste():
  # d/dW sum(g * (x @ Q(W))) = x^T g exactly (AQT's dKernel check, CODEBASES section 3.1).
  x = jnp.asarray(RNG.normal(size=(8, 64)), jnp.float32)
  w = jnp.asarray(RNG.normal(size=(64, 16)), jnp.float32)
  g = jnp.asarray(RNG.normal(size=(8, 16)), jnp.float32)
  dw = jax.grad(lambda w: jnp.sum(g * (x @ quantize(w, QuantSpec(4), 0))))(w)
  dw_float = jax.grad(lambda w: jnp.sum(g * (x @ w)))(w)  # = x^T g, same accumulation order
  np.testing.assert_array_equal(_np(dw), _np(dw_float))
  np.testing.assert_allclose(_np(dw), _np(x.T @ g), rtol=1e-5, atol=1e-5)


def test_hadamard_is_orthonormal_and_rotation_preserves_ste():
  for n in (2, 32, 128):
    h = hadamard_matrix(n)
    np.testing.assert_allclose(h @ h, np.eye(n), atol=1e-6)
  x = jnp.asarray(RNG.normal(size=(4, 128)), jnp.float32)
  g = jnp.asarray(RNG.normal(size=(4, 128)), jnp.float32)
  np.testing.assert_allclose(_grad(QuantSpec(4, hadamard=64), x, g), _np(g), atol=1e-5)


def test_hadamard_quantizes_in_the_rotated_basis():
  x = np.zeros((1, 64), np.float32)
  x[0, 0] = 1.0  # an outlier spreads over the whole block after rotation
  spec = QuantSpec(2, scale="gaussian_mse", hadamard=64)
  xq = _np(quantize(jnp.asarray(x), spec, -1))
  h = hadamard_matrix(64)
  want = _np(quantize(jnp.asarray(x @ h), spec.replace(hadamard=0), -1)) @ h
  np.testing.assert_allclose(xq, want, atol=1e-6)
  # Without rotation the outlier is clipped to 1.49 * RMS = 0.19; rotated, it is spread out.
  err_rot = np.sum((xq - x) ** 2)
  err_plain = np.sum((_np(quantize(jnp.asarray(x), spec.replace(hadamard=0), -1)) - x) ** 2)
  assert err_rot < 0.5 * err_plain


def test_hadamard_on_a_non_last_axis_matches_the_matrix():
  w = RNG.normal(size=(128, 8)).astype(np.float32)  # kernel, contraction axis 0
  spec = QuantSpec(4, scale="gaussian_mse", hadamard=32)
  h = np.kron(np.eye(4), hadamard_matrix(32))  # block-diagonal over the 128 rows
  want = h.T @ _np(quantize(jnp.asarray(h @ w), spec.replace(hadamard=0), 0))
  np.testing.assert_allclose(_np(quantize(jnp.asarray(w), spec, 0)), want, atol=1e-5)


def test_eager_equals_jit():
  w = jnp.asarray(RNG.normal(size=(64, 16)), jnp.float32)
  for spec in (QuantSpec(4), QuantSpec(4, scale="gaussian_mse"), QuantSpec(numerics="ternary")):
    np.testing.assert_array_equal(_np(quantize.__wrapped__(w, spec, 0)), _np(quantize(w, spec, 0)))


# -- stochastic rounding ------------------------------------------------------------------------


def test_stochastic_rounding_is_unbiased_and_on_grid():
  spec = QuantSpec(4, granularity="tensor", rounding="stochastic")
  x = jnp.asarray([7.5, 0.3, -2.7, 6.9, 0.0], jnp.float32)  # scale 1: int levels
  keys = jax.random.split(jax.random.key(0), 4000)
  xs = _np(jax.vmap(lambda k: quantize(x, spec, 0, key=k))(keys))
  assert np.all(xs == np.round(xs)) and np.abs(xs).max() <= 7
  np.testing.assert_allclose(xs.mean(0), [7.0, 0.3, -2.7, 6.9, 0.0], atol=0.03)
  assert set(np.unique(xs[:, 1])) == {0.0, 1.0}


def test_stochastic_rounding_fp_is_unbiased():
  spec = QuantSpec(numerics="fp", fmt="e2m1", granularity="tensor", rounding="stochastic")
  x = jnp.asarray([6.0, 5.0, 0.3, -2.2], jnp.float32)
  keys = jax.random.split(jax.random.key(1), 4000)
  xs = _np(jax.vmap(lambda k: quantize(x, spec, 0, key=k))(keys))
  assert np.isin(np.abs(xs), E2M1).all()
  np.testing.assert_allclose(xs.mean(0), _np(x), atol=0.05)


def test_stochastic_rounding_needs_a_key():
  with pytest.raises(ValueError, match="needs a PRNG key"):
    quantize(jnp.ones((2, 4)), QuantSpec(4, rounding="stochastic"), -1)


# -- transforms, dtypes, edge cases -------------------------------------------------------------


SPECS = [
  QuantSpec(4),
  QuantSpec(8, granularity="tensor"),
  QuantSpec(4, group_size=32),
  QuantSpec(3, scale="gaussian_mse", hadamard=32),
  QuantSpec(numerics="ternary"),
  QuantSpec(numerics="binary"),
  QuantSpec(numerics="fp", fmt="e4m3"),
  QuantSpec(numerics="mx", fmt="e2m1"),
  QuantSpec(4, scale="mse_search"),
]


@pytest.mark.parametrize("spec", SPECS, ids=range(len(SPECS)))
def test_jit_vmap_zero_input_and_dtype(spec):
  w = jnp.asarray(RNG.normal(size=(3, 64, 8)), jnp.float32)
  f = jax.jit(lambda w: quantize(w, spec, 0))
  batched = jax.vmap(f)(w)
  for i in range(3):
    want = _np(quantize(w[i], spec, 0))
    if spec.hadamard:  # the rotation's float accumulation order may differ under vmap
      np.testing.assert_allclose(_np(batched[i]), want, atol=1e-5)
    else:
      np.testing.assert_array_equal(_np(batched[i]), want)
  z = quantize(jnp.zeros((64, 8)), spec, 0)
  assert np.all(_np(z) == 0)
  b = quantize(w[0].astype(jnp.bfloat16), spec, 0)
  assert b.dtype == jnp.bfloat16 and b.shape == (64, 8)


def test_quantize_none_is_identity_and_bad_axis_errors():
  x = jnp.ones((2, 3))
  assert quantize.__wrapped__(x, None, -1) is x
  with pytest.raises(ValueError, match="out of range"):
    quantize(x, QuantSpec(4), 2)


def test_sqnr_grows_about_6db_per_bit():
  from compress_scaling.quant import sqnr_db

  x = jnp.asarray(RNG.normal(size=(64, 256)), jnp.float32)
  s = [float(sqnr_db(x, quantize(x, QuantSpec(b), -1))) for b in (4, 5, 6, 7, 8)]
  steps = np.diff(s)
  assert np.all((steps > 5.0) & (steps < 7.0)), s


def test_all_specs_reduce_error_vs_fewer_bits():
  x = jnp.asarray(RNG.normal(size=(16, 256)), jnp.float32)
  errs = {}
  for num, fmt, bits in itertools.product(["int"], [None], [2, 3, 4, 8]):
    errs[bits] = float(jnp.mean((quantize(x, QuantSpec(bits, numerics=num, fmt=fmt), -1) - x) ** 2))
  assert errs[2] > errs[3] > errs[4] > errs[8]


# -- sparsity masks -------------------------------------------------------------------------------


def test_mask_scales_from_kept_entries_and_zeroes_pruned():
  x = np.array([[0.2, -1.0, 3.0, 5.0, -0.4, 0.6]], np.float32)
  keep = np.array([[True, True, True, False, True, True]])
  # Ternary absmean over the kept entries only: gamma = (0.2 + 1 + 3 + 0.4 + 0.6) / 5.
  xq = _np(quantize(jnp.asarray(x), QuantSpec(numerics="ternary"), -1, mask=keep))
  gamma = np.float32(5.2 / 5)
  np.testing.assert_allclose(xq, gamma * np.array([[0, -1, 1, 0, 0, 1]]), rtol=1e-6)
  # Binary has no zero level: pruned entries still come out exactly 0.
  xb = _np(quantize(jnp.asarray(x), QuantSpec(numerics="binary"), -1, mask=keep))
  assert xb[0, 3] == 0 and np.all(xb[keep] != 0)
  # Int absmax with pruned entries already zeroed equals the unmasked quantizer.
  xz = np.where(keep, x, 0).astype(np.float32)
  np.testing.assert_array_equal(
    _np(quantize(jnp.asarray(xz), QuantSpec(4), -1, mask=keep)),
    _np(quantize(jnp.asarray(xz), QuantSpec(4), -1)),
  )


def test_mask_blocks_gradient_and_rejects_hadamard():
  x = jnp.asarray(RNG.normal(size=(4, 64)), jnp.float32)
  keep = jnp.asarray(RNG.random((4, 64)) > 0.5)
  for spec in (QuantSpec(4), QuantSpec(4, group_size=32, gradient="clipped_ste")):
    gr = jax.grad(lambda x, spec=spec: jnp.sum(quantize(x, spec, -1, mask=keep)))(x)
    np.testing.assert_array_equal(_np(gr), _np(keep).astype(np.float32))
  with pytest.raises(ValueError, match="hadamard"):
    quantize(x, QuantSpec(4, hadamard=32), -1, mask=keep)
