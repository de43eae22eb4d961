"""A true low-precision `dot_general` for evaluation: integer codes, int32 accumulation, rescale.

    out = dot_general(codes_lhs, codes_rhs, preferred_element_type=int32) * s_lhs * s_rhs

equals the fake-quant forward `dot_general(quantize(lhs), quantize(rhs))` up to float
accumulation order (the integer part is exact). Containers: int8 everywhere; int4 operands
(`int4_container=True`) only where the backend compiles an s4 x s4 -> s32 dot: XLA:TPU. XLA:CPU
rejects it (checked with jax 0.10.2: "does not support custom element sizes"), so the default
(`None`) picks int4 on TPU for specs of <= 4 bits and int8 holding the int4 values elsewhere.

Supported: integer grids (int, ternary, binary, mx-int; int + gaussian_mse up to 7 bits via odd
codes), scales "tensor", "channel" (shared over exactly the dot's contraction axes, as
`quantize(..., axis=contract)` does) and "group": the contraction is split into groups that
become an extra batch dimension, each group's int32 partial sum is rescaled, and the groups are
summed in float32. A side whose spec is None stays in float (weight-only serving: the codes are
cast to float for the matmul). fp / mx-fp numerics, stochastic rounding and unequal Hadamard
blocks raise ValueError.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from compress_scaling.quant.quantize import quantize_to_int
from compress_scaling.quant.spec import QuantSpec


def _check(spec: QuantSpec | None, side: str) -> None:
  if spec is None:
    return
  if not spec.is_integer_grid:
    raise ValueError(
      f"int_dot_general: {side}_spec numerics={spec.numerics!r} fmt={spec.fmt!r} has no integer "
      "serving path; allowed: int, ternary, binary, mx with fmt='int' (or None)"
    )
  if spec.rounding != "nearest":
    raise ValueError(f"int_dot_general: {side}_spec.rounding must be 'nearest' for serving")


def _side(x, spec, contract, group):
  """(operand, scale) in the grouped view; the scale has size 1 on the contraction axis.

  Without grouping the view is x itself. With grouping the single contraction axis c is split
  as (D/G, G): a group-granular side has one scale per group; a channel/tensor side (or a
  float side, scale 1) broadcasts its scale over the groups.
  """
  if spec is None:
    op, scale = x, jnp.ones((1,) * x.ndim, jnp.float32)
  else:
    op, scale, vshape = quantize_to_int(x, spec, contract, rotate_back=False)
    if spec.granularity == "group":
      return op.reshape(vshape), scale
  if group:
    c = contract[0]
    op = op.reshape(op.shape[:c] + (op.shape[c] // group, group) + op.shape[c + 1 :])
    scale = jnp.expand_dims(scale, c + 1)
  return op, scale


def _arrange(scale, contract, batch, n_free_other, lhs: bool):
  """Scale (operand rank) -> broadcastable to the dot_general output (batch, lhs free, rhs free)."""
  nd = scale.ndim
  free = [d for d in range(nd) if d not in contract and d not in batch]
  s = jnp.transpose(scale, tuple(batch) + tuple(free) + tuple(contract))
  s = s.reshape(s.shape[: len(batch) + len(free)])
  nb = len(batch)
  if lhs:
    return s.reshape(s.shape + (1,) * n_free_other)
  return s.reshape(s.shape[:nb] + (1,) * n_free_other + s.shape[nb:])


def int_dot_general(
  lhs: jax.Array,
  rhs: jax.Array,
  dimension_numbers,
  precision=None,
  preferred_element_type=None,
  *,
  lhs_spec: QuantSpec | None,
  rhs_spec: QuantSpec | None,
  int4_container: bool | None = None,
  **kwargs,
) -> jax.Array:
  """`lax.dot_general` on integer codes of lhs/rhs with int32 accumulation, then rescaled.

  Extra keyword arguments (e.g. flax.nnx's `out_sharding`) are accepted and ignored. The
  result dtype is `preferred_element_type` or the operands' float dtype.
  """
  del precision, kwargs
  _check(lhs_spec, "lhs")
  _check(rhs_spec, "rhs")
  (lc, rc), (lb, rb) = dimension_numbers
  lc, rc, lb, rb = (
    tuple(a % n for a in t)
    for t, n in ((lc, lhs.ndim), (rc, rhs.ndim), (lb, lhs.ndim), (rb, rhs.ndim))
  )
  out_dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
  specs = [s for s in (lhs_spec, rhs_spec) if s is not None]
  hads = {s.hadamard for s in specs}
  groups = {s.group_size for s in specs if s.granularity == "group"}
  if len(hads) > 1 or (hads and hads != {0} and len(specs) < 2):
    raise ValueError(
      f"int_dot_general: hadamard blocks {sorted(hads)} differ between lhs and rhs (or one side "
      "is float); the serving path needs the same rotation on both operands"
    )
  hadamard = hads.pop() if hads else 0
  if len(groups) > 1:
    raise ValueError(f"int_dot_general: group sizes {sorted(groups)} differ between lhs and rhs")
  group = groups.pop() if groups else 0
  if (group or hadamard) and (len(lc) != 1 or len(rc) != 1):
    raise ValueError("int_dot_general: group scales / hadamard need one contraction axis per side")
  lop, ls = _side(lhs, lhs_spec, lc, group)
  rop, rs = _side(rhs, rhs_spec, rc, group)
  if group:  # the group axis (at the old contraction position) becomes a trailing batch dim
    sh = lambda t, c: tuple(a + (a > c) for a in t)  # noqa: E731
    lb, rb = sh(lb, lc[0]) + (lc[0],), sh(rb, rc[0]) + (rc[0],)
    lc, rc = (lc[0] + 1,), (rc[0] + 1,)
  if lhs_spec is None or rhs_spec is None:
    lop, rop = lop.astype(jnp.float32), rop.astype(jnp.float32)
    acc = lax.dot_general(lop, rop, ((lc, rc), (lb, rb)), preferred_element_type=jnp.float32)
  else:
    use4 = int4_container
    if use4 is None:
      use4 = jax.default_backend() == "tpu" and max(lhs_spec.bits, rhs_spec.bits) <= 4
    if use4:
      lop, rop = lop.astype(jnp.int4), rop.astype(jnp.int4)
    acc = lax.dot_general(lop, rop, ((lc, rc), (lb, rb)), preferred_element_type=jnp.int32)
    acc = acc.astype(jnp.float32)
  n_lfree = lop.ndim - len(lc) - len(lb)
  n_rfree = rop.ndim - len(rc) - len(rb)
  out = acc * _arrange(ls, lc, lb, n_rfree, True) * _arrange(rs, rc, rb, n_lfree, False)
  if group:
    out = jnp.sum(out, axis=len(lb) - 1)
  return out.astype(out_dtype)


def make_serving_dot_general(lhs_spec: QuantSpec | None, rhs_spec: QuantSpec | None, **options):
  """A `dot_general`-compatible function (for `nn.Dense(dot_general=...)`) bound to two specs."""
  _check(lhs_spec, "lhs")
  _check(rhs_spec, "rhs")

  def dot_general(
    lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs
  ):
    return int_dot_general(
      lhs,
      rhs,
      dimension_numbers,
      precision,
      preferred_element_type,
      lhs_spec=lhs_spec,
      rhs_spec=rhs_spec,
      **options,
      **kwargs,
    )

  return dot_general
