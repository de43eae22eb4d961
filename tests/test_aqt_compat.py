"""Cross-checks against the `aqtp` package (optional `compat` extra; skipped when absent).

AQT v2 is end-of-life (google/aqt README) and is never imported by library code; it is an
oracle for the int (IntSymmetric + AbsMax) and fp8 maths only.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

aqt_config = pytest.importorskip("aqt.jax.v2.config")
from aqt.jax.v2 import aqt_quantizer, calibration, utils  # noqa: E402
from aqt.jax.v2.flax import aqt_flax  # noqa: E402
from aqt.jax.v2.numerics import fp8_numerics, int_numerics  # noqa: E402

from compress_scaling.quant import QuantSpec, quantize  # noqa: E402

nn = pytest.importorskip("flax.linen")
RNG = np.random.default_rng(2)
quantize = jax.jit(quantize, static_argnums=(1, 2))


def _aqt_quantizer(numerics):
  q = aqt_quantizer.Quantizer(
    numerics=numerics,
    calib_shared_axes=None,
    scale_stop_grad=True,
    calibration=calibration.AbsMaxCalibration,
    context=utils.Context(key=None, train_step=None),
  )
  q.init_calibration()
  return q


def _int_numerics(bits):
  return int_numerics.IntSymmetric(
    bits=bits,
    preserve_zero=True,
    preserve_max_val=False,
    clip=True,
    clip_gradient=False,
    round=True,
    noise_fn=None,
    dtype=jnp.int8,
  )


@functools.partial(jax.jit, static_argnums=(1, 2))
def _aqt_int(x, bits, axes):
  qt, _ = _aqt_quantizer(_int_numerics(bits)).quant(x, calibration_axes=list(axes))
  return qt.qvalue, qt.scale[0], qt.dequant()


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_int_per_channel_matches_aqt_quantizer(bits):
  w = RNG.normal(size=(256, 64)).astype(np.float32)
  w[:, 0] = 0.0
  qv, scale, deq = _aqt_int(jnp.asarray(w), bits, (0,))
  assert qv.dtype == jnp.int8
  np.testing.assert_array_equal(
    np.asarray(quantize(jnp.asarray(w), QuantSpec(bits), 0)), np.asarray(deq)
  )
  assert int(jnp.max(jnp.abs(qv))) == 2 ** (bits - 1) - 1


@pytest.mark.parametrize("bits", [8, 4])
def test_int_per_token_and_per_group_match_aqt_quantizer(bits):
  x = RNG.standard_t(4, size=(4, 32, 256)).astype(np.float32)
  _, _, deq = _aqt_int(jnp.asarray(x), bits, (2,))
  np.testing.assert_array_equal(
    np.asarray(quantize(jnp.asarray(x), QuantSpec(bits), -1)), np.asarray(deq)
  )
  # Groups of 32 along the contraction axis = AQT calibration over a reshaped group axis.
  _, _, deq = _aqt_int(jnp.asarray(x.reshape(4, 32, 8, 32)), bits, (3,))
  got = quantize(jnp.asarray(x), QuantSpec(bits, group_size=32), -1)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(deq).reshape(x.shape))


@pytest.mark.parametrize("fmt, dtype", [("e4m3", jnp.float8_e4m3fn), ("e5m2", jnp.float8_e5m2)])
def test_fp8_matches_aqt_fp8_numerics(fmt, dtype):
  x = RNG.normal(size=(8, 256)).astype(np.float32)
  num = fp8_numerics.Fp8Numerics(dtype=dtype, exponent_bits=int(fmt[1]), mantissa_bits=int(fmt[3]))
  qt, _ = jax.jit(lambda x: _aqt_quantizer(num).quant(x, calibration_axes=[1]))(jnp.asarray(x))
  deq = np.asarray(qt.dequant())
  got = np.asarray(quantize(jnp.asarray(x), QuantSpec(numerics="fp", fmt=fmt), -1))
  np.testing.assert_array_equal(got, deq)


def _dense_pair(dot_general, x, seed=0):
  dense = nn.Dense(32, use_bias=False, dot_general=dot_general)
  params = dense.init(jax.random.key(seed), x)
  return dense, params


@pytest.mark.parametrize("bits", [8, 4])
def test_dense_forward_matches_aqt_dot_general(bits):
  x = jnp.asarray(RNG.normal(size=(16, 128)), jnp.float32)
  cfg = aqt_config.config_v4(fwd_bits=bits, dlhs_bits=None, drhs_bits=None)
  dense, params = _dense_pair(aqt_flax.AqtDotGeneral(cfg, prng_name=None), x)
  want = dense.apply(params, x)
  w = params["params"]["kernel"]
  got = quantize(x, QuantSpec(bits), -1) @ quantize(w, QuantSpec(bits), 0)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_weight_only_forward_and_gradient_match_aqt():
  x = jnp.asarray(RNG.normal(size=(16, 128)), jnp.float32)
  g = jnp.asarray(RNG.normal(size=(16, 32)), jnp.float32)
  dg = aqt_config.dot_general_make(lhs_bits=None, rhs_bits=4)
  dense, params = _dense_pair(aqt_flax.AqtDotGeneral(dg, prng_name=None), x)
  w = params["params"]["kernel"]

  def aqt_loss(w):
    return jnp.sum(g * dense.apply({"params": {"kernel": w}}, x))

  def our_loss(w):
    return jnp.sum(g * lax.dot_general(x, quantize(w, QuantSpec(4), 0), (((1,), (0,)), ((), ()))))

  np.testing.assert_allclose(float(our_loss(w)), float(aqt_loss(w)), rtol=1e-5)
  np.testing.assert_allclose(
    np.asarray(jax.grad(our_loss)(w)), np.asarray(jax.grad(aqt_loss)(w)), rtol=1e-6, atol=1e-6
  )
