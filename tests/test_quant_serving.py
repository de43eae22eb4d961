"""The integer serving dot_general, quantize_to_int and the diagnostics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from compress_scaling.quant import (
  QuantSpec,
  int_dot_general,
  kurtosis,
  make_serving_dot_general,
  quantize,
  quantize_to_int,
  sqnr_db,
)

RNG = np.random.default_rng(1)
quantize = jax.jit(quantize, static_argnums=(1, 2))
DENSE = (((1,), (0,)), ((), ()))  # x[B, D] @ w[D, F]


def _fake(lhs, rhs, dims, ls, rs):
  (lc, rc), _ = dims
  return lax.dot_general(quantize(lhs, ls, lc), quantize(rhs, rs, rc), dims)


def _check(lhs, rhs, dims, ls, rs, **kw):
  got = jax.jit(lambda a, b: int_dot_general(a, b, dims, lhs_spec=ls, rhs_spec=rs, **kw))(lhs, rhs)
  want = _fake(lhs, rhs, dims, ls, rs)
  assert got.shape == want.shape and got.dtype == want.dtype
  # Integer accumulation is exact; only float summation order differs.
  np.testing.assert_allclose(
    np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want)))
  )
  return got


X = jnp.asarray(RNG.normal(size=(16, 256)), jnp.float32)
W = jnp.asarray(RNG.normal(size=(256, 32)), jnp.float32)


@pytest.mark.parametrize(
  "ls, rs",
  [
    (QuantSpec(8), QuantSpec(8)),
    (QuantSpec(4), QuantSpec(4)),
    (QuantSpec(8), QuantSpec(2)),
    (QuantSpec(8, granularity="tensor"), QuantSpec(4)),
    (QuantSpec(4, group_size=32), QuantSpec(4, group_size=32)),
    (QuantSpec(8), QuantSpec(4, group_size=64)),
    (None, QuantSpec(4)),
    (None, QuantSpec(4, group_size=32)),
    (QuantSpec(8), QuantSpec(numerics="ternary")),
    (QuantSpec(8), QuantSpec(numerics="binary")),
    (QuantSpec(4, scale="gaussian_mse"), QuantSpec(4, scale="gaussian_mse")),
    (
      QuantSpec(4, scale="gaussian_mse", hadamard=64),
      QuantSpec(4, scale="gaussian_mse", hadamard=64),
    ),
    (QuantSpec(numerics="mx", fmt="int", bits=8), QuantSpec(numerics="mx", fmt="int", bits=8)),
    (QuantSpec(4, scale="mse_search"), QuantSpec(4, scale="mse_search")),
  ],
  ids=lambda s: "none" if s is None else f"{s.numerics}{s.bits:g}-{s.granularity}-{s.scale}",
)
def test_serving_matches_fake_quant_dense(ls, rs):
  _check(X, W, DENSE, ls, rs)


def test_serving_with_batch_dims_attention_like():
  # q[B, H, T, Dh] . k[B, H, S, Dh] -> [B, H, T, S], per-token scales on both sides.
  q = jnp.asarray(RNG.normal(size=(2, 3, 5, 64)), jnp.float32)
  k = jnp.asarray(RNG.normal(size=(2, 3, 7, 64)), jnp.float32)
  dims = (((3,), (3,)), ((0, 1), (0, 1)))
  _check(q, k, dims, QuantSpec(8), QuantSpec(8))
  _check(q, k, dims, QuantSpec(4, group_size=16), QuantSpec(4, group_size=16))


def test_serving_with_transposed_rhs():
  wt = W.T  # [F, D]: contraction on axis 1
  _check(X, wt, (((1,), (1,)), ((), ())), QuantSpec(8), QuantSpec(4))


def test_serving_uses_int8_operands_and_int32_accumulation():
  f = make_serving_dot_general(QuantSpec(8), QuantSpec(4))
  jaxpr = str(jax.make_jaxpr(lambda a, b: f(a, b, DENSE))(X, W))
  assert "i8[16,256]" in jaxpr and "i8[256,32]" in jaxpr
  assert "preferred_element_type=int32" in jaxpr


def test_quantize_to_int_round_trips_fake_quant_bit_exactly():
  for spec in (
    QuantSpec(4),
    QuantSpec(8, group_size=32),
    QuantSpec(numerics="ternary"),
    QuantSpec(3, scale="gaussian_mse"),
    QuantSpec(numerics="binary"),
  ):
    codes, scale, vshape = quantize_to_int(W, spec, 0)
    assert codes.dtype == jnp.int8 and codes.shape == W.shape
    back = (codes.reshape(vshape).astype(jnp.float32) * scale).reshape(W.shape)
    np.testing.assert_array_equal(np.asarray(back), np.asarray(quantize(W, spec, 0)))
  codes, _, _ = quantize_to_int(W, QuantSpec(3, scale="gaussian_mse"), 0)
  assert set(np.unique(np.asarray(codes))) <= {-7, -5, -3, -1, 1, 3, 5, 7}  # odd: centred grid


def test_flax_dense_injection():
  nn = pytest.importorskip("flax.linen")
  dense = nn.Dense(
    32, use_bias=False, dot_general=make_serving_dot_general(QuantSpec(8), QuantSpec(4))
  )
  params = dense.init(jax.random.key(0), X)
  out = dense.apply(params, X)
  w = params["params"]["kernel"]
  want = quantize(X, QuantSpec(8), -1) @ quantize(w, QuantSpec(4), 0)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
  "ls, rs, needle",
  [
    (QuantSpec(numerics="fp", fmt="e4m3"), QuantSpec(8), "no integer serving path"),
    (QuantSpec(8), QuantSpec(numerics="mx", fmt="e2m1"), "no integer serving path"),
    (QuantSpec(8, rounding="stochastic"), QuantSpec(8), "nearest"),
    (QuantSpec(4, hadamard=64), QuantSpec(4), "hadamard"),
    (QuantSpec(4, group_size=32), QuantSpec(4, group_size=64), "group sizes"),
    (QuantSpec(8, scale="gaussian_mse"), QuantSpec(8), "beyond int8"),
  ],
)
def test_serving_rejects_unsupported_specs(ls, rs, needle):
  with pytest.raises(ValueError, match=needle):
    int_dot_general(X, W, DENSE, lhs_spec=ls, rhs_spec=rs)


# -- diagnostics ----------------------------------------------------------------------------------


def test_sqnr_db_hand_values():
  x = jnp.asarray([3.0, 4.0])
  assert float(sqnr_db(x, x + jnp.asarray([0.0, 0.5]))) == pytest.approx(10 * np.log10(25 / 0.25))
  assert float(sqnr_db(x, x)) == np.inf
  per_row = sqnr_db(
    jnp.asarray([[1.0, 1.0], [2.0, 2.0]]), jnp.asarray([[1.1, 1.0], [2.0, 2.0]]), axis=-1
  )
  assert per_row.shape == (2,) and float(per_row[1]) == np.inf


def test_kurtosis_hand_values_and_gaussian():
  # Two-point +-1: E[x^4] / var^2 = 1; [0, 0, 0, 4] has mean 1: m4 = (3 + 81) / 4, var = 3.
  assert float(kurtosis(jnp.asarray([1.0, -1.0, 1.0, -1.0]))) == pytest.approx(1.0)
  assert float(kurtosis(jnp.asarray([0.0, 0.0, 0.0, 4.0]))) == pytest.approx(21 / 9)
  g = jnp.asarray(RNG.normal(size=(4, 200_000)), jnp.float32)
  np.testing.assert_allclose(np.asarray(kurtosis(g, axis=-1)), 3.0, atol=0.05)
  assert float(kurtosis(g, fisher=True)) == pytest.approx(0.0, abs=0.03)
  t = jnp.asarray(RNG.standard_t(5, size=400_000), jnp.float32)  # excess kurtosis 6 / (5 - 4)
  assert float(kurtosis(t)) > 6.0
