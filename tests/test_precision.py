"""Mixed precision: model.dtype=bfloat16 computes in bf16 on float32 master params and
optimizer state; the quantizers compute in float32 and round once to bf16; the loss is float32.

Shapes and dtypes are checked with jax.eval_shape / make_jaxpr (nothing compiled), the
quantizer numerics on small arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compress_scaling import model, quant, steps
from compress_scaling.quant import numerics
from configs import smoke


def _bf16_setup(compression: str):
  c = smoke.get_config()
  c.model.dtype, c.compression = "bfloat16", compression
  c.batch_size, c.seq_len = 2, 16
  return steps.Setup.create(c)


def _float_dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def _dot_operand_dtypes(jaxpr) -> list[tuple[str, str]]:
  """(lhs, rhs) dtypes of every dot_general in a jaxpr, nested jaxprs (pjit, cond) included."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      out.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for p in eqn.params.values():
      for sub in p if isinstance(p, (tuple, list)) else (p,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          out += _dot_operand_dtypes(inner)
  return out


@pytest.mark.parametrize("compression", ["dense", "w4a4+2:4"])
def test_bf16_compute_float32_state_and_loss(compression):
  setup = _bf16_setup(compression)
  state = setup.abstract_state
  assert _float_dtypes(state["params"]) == {"float32"}
  assert _float_dtypes(state["opt_state"]) == {"float32"}  # Adam moments of f32 params
  batch = jax.ShapeDtypeStruct((2, 17), jnp.int32)
  key = jax.random.key(0)
  new_state, metrics = jax.eval_shape(setup.train_step, state, batch, key)
  assert _float_dtypes(new_state["params"]) == _float_dtypes(new_state["opt_state"]) == {"float32"}
  assert metrics["loss"].dtype == jnp.float32 and metrics["grad_norm"].dtype == jnp.float32
  # ... while every matmul of the forward pass really runs on bf16 operands.
  jaxpr = jax.make_jaxpr(setup.loss_fn)(state["params"], state["masks"], batch, key).jaxpr
  dots = _dot_operand_dtypes(jaxpr)
  assert len(dots) >= 7 * 2 + 1 and set(dots) == {("bfloat16", "bfloat16")}, set(dots)


def test_loss_accumulates_in_float32():
  """bf16 logits: the cross-entropy still equals a float64 reference to float32 precision
  (a bf16 log-softmax or sum would be off by ~1e-3 relative)."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(0, 3, (4, 64, 256)), jnp.bfloat16)
  targets = jnp.asarray(rng.integers(0, 256, (4, 64)), jnp.int32)
  loss, n = model.cross_entropy(logits, targets)
  assert loss.dtype == jnp.float32 and float(n) == 4 * 64
  x = np.asarray(logits.astype(jnp.float32), np.float64)
  logp = x - x.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  ref = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1).mean()
  assert float(loss) == pytest.approx(ref, rel=2e-6)


SPECS = ["w4a16", "w4a16-g32", "w4a16-gmse", "wfp4a16", "wmxint4a16", "w8a16"]


@pytest.mark.parametrize("term", SPECS)
def test_fake_quant_bf16_equals_float32_on_the_grid(term):
  spec, _ = quant.parse_quant_term(term)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_t(4, (64, 48)), jnp.bfloat16)
  out = quant.quantize(x, spec, axis=0)
  assert out.dtype == jnp.bfloat16
  # bf16 in -> float32 quantizer -> one rounding to bf16: bitwise the float32 result, rounded.
  ref = quant.quantize(x.astype(jnp.float32), spec, axis=0)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref.astype(jnp.bfloat16)))
  if spec.is_integer_grid:
    # The bf16 value still names its grid point: dividing by the scale gives the integer code
    # back (bf16 keeps 8 significant bits: the rounding, <= 2^-8 relative, is far below half a
    # grid step). It is not exactly q * s: a non-power-of-two scale times q needs more bits.
    codes, scale, view = quant.quantize_to_int(x.astype(jnp.float32), spec, axis=0)
    back = np.asarray(out.astype(jnp.float32)).reshape(view) / np.asarray(scale)
    np.testing.assert_array_equal(np.rint(back), np.asarray(codes, np.float64).reshape(view))
    codes = np.asarray(codes, np.float64).reshape(view)
    assert np.all(np.abs(back - codes) <= 2.0**-8 * np.abs(codes) + 1e-6)


def test_low_bit_grids_exact_in_bf16():
  """The int4 codes -8..7, the fp4 e2m1 / fp8 e4m3 levels, and their products with any
  power-of-two scale (MX's E8M0) are exactly bf16 values: an 8-bit significand holds them."""
  ints = np.arange(-8, 8, dtype=np.float32)
  fp4 = numerics.fp_grid_values(quant.parse_quant_term("wfp4a16")[0].fp_format)
  fp8 = numerics.fp_grid_values(quant.parse_quant_term("wfp8a16")[0].fp_format)
  for levels in (ints, fp4, fp8):
    levels = np.concatenate([levels, -levels]).astype(np.float32)
    for e in (-20, -7, 0, 5):
      v = jnp.asarray(levels * np.float32(2.0**e))
      np.testing.assert_array_equal(np.asarray(v.astype(jnp.bfloat16).astype(jnp.float32)), v)
  assert numerics.grid_for(quant.parse_quant_term("w4a16")[0]).outer == 7.0
