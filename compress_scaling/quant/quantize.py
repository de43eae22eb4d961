"""`quantize(x, spec, axis)`: fake quantization with a chosen gradient estimator.

Usage inside a matmul (lhs = activations, rhs = weights; dims = the dot_general dims):

    lax.dot_general(quantize(lhs, a_spec, axis=lhs_contract),
                    quantize(rhs, w_spec, axis=rhs_contract), dims)

The forward value is exactly `q * s` (bit-identical to AQT's IntSymmetric/AbsMax dequant for
int absmax); the gradient is applied with the stop-gradient identity
`out = sg(x_hat) + (m*x - sg(m*x))`, which adds an exact 0.0 in the forward pass, so no
custom_vjp is needed and jit/vmap/grad/jvp all work. Scales get no gradient (AQT's
scale_stop_grad=True, QuEST's detached scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from compress_scaling.quant.numerics import (
  Grid,
  floor_log2,
  grid_for,
  hadamard_matrix,
  round_to_grid,
)
from compress_scaling.quant.spec import (
  FP_GAUSSIAN_SCALES,
  MSE_SEARCH_RATIOS,
  OPTIMAL_GAUSSIAN_SCALES,
  QuantSpec,
)

Axis = int | Sequence[int]


def _norm_axes(axis: Axis, ndim: int) -> tuple[int, ...]:
  try:
    axes = tuple(int(a) for a in axis)
  except TypeError:  # a single axis (int or numpy integer)
    axes = (int(axis),)
  if not axes:
    raise ValueError("quantize: axis must name at least one contraction axis")
  out = []
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(f"quantize: axis {a} is out of range for an array of rank {ndim}")
    out.append(a % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f"quantize: repeated axis in {axis}")
  return tuple(sorted(out))


def _merged_view(shape: tuple[int, ...], axes: tuple[int, ...], spec: QuantSpec):
  """Shape with the contraction axes merged into one (they must be adjacent) and its index."""
  if len(axes) > 1 and axes != tuple(range(axes[0], axes[-1] + 1)):
    raise ValueError(
      f"quantize: granularity='group' / hadamard need one contraction axis or adjacent ones, "
      f"got axes {axes} for shape {shape}"
    )
  a0 = axes[0]
  dim = math.prod(shape[a] for a in axes)
  spec.validate_for(dim)
  return shape[:a0] + (dim,) + shape[axes[-1] + 1 :], a0


def _rotate(x: jax.Array, block: int, ax: int) -> jax.Array:
  """Block-Hadamard rotation of x along axis `ax` (its size a multiple of `block`).

  The orthonormal H is symmetric and self-inverse, so the same call also rotates back. On the
  last axis a matmul with H is fastest on CPU; elsewhere a fast Walsh-Hadamard transform
  (log2(block) butterfly stages, no transposes) is (3-5x faster than tensordot + moveaxis).
  """
  shape = x.shape
  if ax == x.ndim - 1:
    h = jnp.asarray(hadamard_matrix(block), x.dtype)
    return (x.reshape(shape[:-1] + (shape[-1] // block, block)) @ h).reshape(shape)
  k = block.bit_length() - 1
  y = x.reshape(shape[:ax] + (shape[ax] // block,) + (2,) * k + shape[ax + 1 :])
  for i in range(k):
    a = ax + 1 + i
    u, v = lax.index_in_dim(y, 0, a), lax.index_in_dim(y, 1, a)
    y = jnp.concatenate([u + v, u - v], axis=a)
  return (y * (1.0 / math.sqrt(block))).reshape(shape)


def _safe(stat: jax.Array) -> jax.Array:
  # AQT AbsMaxCalibration: a zero statistic (all-zero group) becomes 1.
  return jnp.where(stat == 0.0, jnp.ones_like(stat), stat)


def _scale(xs, spec: QuantSpec, grid: Grid, red: tuple[int, ...], m=None, ratio=None):
  """Scale s (keepdims over `red`) such that x_hat = s * round_to_grid(x / s).

  m: optional boolean keep-mask in xs's shape; statistics then use the kept elements only.
  """
  ax = jnp.abs(xs) if m is None else jnp.where(m, jnp.abs(xs), 0.0)
  if spec.numerics == "mx":
    # OCP MX v1.0 section 6.3: X = 2^(floor(log2(max|V|)) - emax_elem), clamped to E8M0's range.
    amax = _safe(jnp.max(ax, axis=red, keepdims=True))
    emax = 0 if spec.fmt == "int" else spec.fp_format.emax  # MXINT8 emax_elem = 0
    e = floor_log2(amax) - emax
    if spec.fmt == "int":  # element k * 2^-(b-2) (MXINT8: 2^-6)
      e = e - (int(spec.bits) - 2)
    e = jnp.clip(e, -126, 127)
    return lax.bitcast_convert_type((e + 127) << 23, jnp.float32)
  if spec.scale in ("absmax", "mse_search"):
    # AQT AbsMax: the bound maps to the edge of the last bucket (int: 2^(b-1) - 0.5) or, for
    # fp (AQT fp8_numerics), to the largest finite value.
    bound = _safe(jnp.max(ax, axis=red, keepdims=True))
    if ratio is not None:
      bound = bound * ratio
    # XLA's algebraic simplifier turns `bound / const` into `bound * (1 / const)` (so AQT's
    # `bound / quant_bound` runs as this product); spelling it out keeps eager == jit == AQT.
    return bound * (1.0 / (grid.outer if grid.kind == "fp" else grid.edge))

  # s = outer level / grid.outer. Means are sum * (1/n) and constants are folded in Python:
  # XLA rewrites `/ n` and reassociates constant products under jit, so this spelling keeps
  # eager and jit bitwise equal. A zero statistic keeps s = 0 (x_hat = 0 through _inv's
  # guard): grids without a zero level (binary, centred int) would otherwise map 0 to +-1.
  def mean(t):
    if m is None:
      return jnp.sum(t, axis=red, keepdims=True) * (1.0 / math.prod(xs.shape[a] for a in red))
    count = jnp.sum(m, axis=red, keepdims=True, dtype=jnp.float32)
    return jnp.sum(t, axis=red, keepdims=True) / jnp.maximum(count, 1.0)

  if spec.scale == "absmean":  # BitNet b1.58 / XNOR-Net: outer level = mean|x|
    return mean(ax) * (1.0 / grid.outer)
  # gaussian_mse (QuEST): outer level = a* * RMS
  alpha = (
    FP_GAUSSIAN_SCALES[spec.fmt] if spec.numerics == "fp" else (OPTIMAL_GAUSSIAN_SCALES[spec.bits])
  )
  return jnp.sqrt(mean(jnp.square(ax))) * (alpha / grid.outer)


def _inv(s: jax.Array) -> jax.Array:
  # AQT QTensor.quant: s_inv = where(isinf(1/s), 1, 1/s).
  s_inv = lax.reciprocal(s)
  return jnp.where(jnp.isinf(s_inv), jnp.ones_like(s_inv), s_inv)


def _quant_fixed(xs, spec, grid, red, u, m=None, ratio=None):
  """(q, s, v, half_step): grid value, scale, x in grid units, trust threshold."""
  s = _scale(xs, spec, grid, red, m, ratio)
  v = xs * _inv(s)
  q, half = round_to_grid(v, grid, u)
  return q, s, v, half


def _quant_grid(xs: jax.Array, spec: QuantSpec, red: tuple[int, ...], key, m=None):
  """Quantize the stop-gradient'ed xs (float32) over `red`: returns (q, s, v, half_step)."""
  grid = grid_for(spec)
  u = None
  if spec.rounding == "stochastic":
    if key is None:
      raise ValueError(
        "quantize: QuantSpec.rounding='stochastic' needs a PRNG key: quantize(..., key=key)"
      )
    u = jax.random.uniform(key, xs.shape, jnp.float32)
  if spec.scale != "mse_search":
    return _quant_fixed(xs, spec, grid, red, u, m)
  # Search the clip ratio with the least squared error per scale group (nearest rounding).
  best_err, best_ratio = None, None
  for r in MSE_SEARCH_RATIOS:
    q, s, _, _ = _quant_fixed(xs, spec, grid, red, None, m, r)
    d2 = jnp.square(q * s - xs)
    err = jnp.sum(d2 if m is None else jnp.where(m, d2, 0.0), axis=red, keepdims=True)
    if best_err is None:
      best_err, best_ratio = err, jnp.full_like(err, r)
    else:
      better = err < best_err
      best_err = jnp.where(better, err, best_err)
      best_ratio = jnp.where(better, r, best_ratio)
  return _quant_fixed(xs, spec, grid, red, u, m, best_ratio)


def _prepare(x: jax.Array, spec: QuantSpec, axis: Axis, mask=None):
  """Float32 view of x ready for scaling: (view, red_axes, undo, mask_view).

  undo(view) gives back x's shape (rotating back when hadamard is on); mask_view is the keep
  mask broadcast to x.shape and laid out like the view (None without a mask).
  """
  axes = _norm_axes(axis, x.ndim)
  y = x.astype(jnp.float32) if x.dtype != jnp.float32 else x
  shape = x.shape
  if mask is not None:
    if spec.hadamard:
      raise ValueError(
        "quantize: a sparsity mask cannot be combined with hadamard (the rotation mixes kept "
        "and pruned entries); allowed: hadamard=0 with a mask"
      )
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), shape)
  if spec.granularity == "group" or spec.hadamard:
    mshape, ax = _merged_view(shape, axes, spec)
    y = y.reshape(mshape)
    if spec.hadamard:
      y = _rotate(y, spec.hadamard, ax)
    if spec.granularity == "group":
      g = spec.group_size
      vshape = mshape[:ax] + (mshape[ax] // g, g) + mshape[ax + 1 :]
      red = (ax + 1,)
    else:
      vshape = mshape
      red = (ax,) if spec.granularity == "channel" else tuple(range(len(mshape)))
    y = y.reshape(vshape)

    def undo(z):
      z = z.reshape(mshape)
      if spec.hadamard:
        z = _rotate(z, spec.hadamard, ax)
      return z.reshape(shape)

    return y, red, undo, (None if mask is None else mask.reshape(vshape))
  red = axes if spec.granularity == "channel" else tuple(range(x.ndim))
  return y, red, lambda z: z, mask


def quantize(x: jax.Array, spec: QuantSpec | None, axis: Axis, *, key=None, mask=None) -> jax.Array:
  """Fake-quantize x (same shape and dtype) with the spec's gradient estimator.

  Args:
    x: float array (computed in float32, returned in x.dtype).
    spec: the quantizer; None returns x unchanged (unquantized).
    axis: the contraction axis (int or tuple) the scale is shared over: kernel w[D_in, F] ->
      axis=0 (one scale per output channel); activation x[B, L, D] -> axis=-1 (one per
      token). "tensor" shares one scale over all axes; "group" splits the contraction axis
      (several adjacent axes are merged first) into groups of group_size.
    key: PRNG key, required for rounding="stochastic" (ignored otherwise).
    mask: optional boolean keep-mask broadcastable to x (sparsity + quantization): scales are
      computed from the kept entries only (absmax is unchanged, means/RMS divide by the kept
      count), pruned entries come out exactly 0 (even on grids without a zero level) and get
      no gradient. Not combinable with hadamard (ValueError).

  Gradient: "ste" passes the cotangent through; "clipped_ste" zeroes it where |x| is beyond
  the edge of the last bucket; "trust" where |x_hat - x| exceeds half the local step (QuEST).
  The scale never receives a gradient.
  """
  if spec is None:
    return x
  y, red, undo, m = _prepare(x, spec, axis, mask)
  ys = lax.stop_gradient(y)
  q, s, v, half = _quant_grid(ys, spec, red, key, m)
  x_hat = q * s  # AQT dequant: qvalue * scale
  keep = m
  if spec.gradient == "clipped_ste":
    keep = (
      (jnp.abs(v) <= grid_for(spec).edge)
      if m is None
      else (m & (jnp.abs(v) <= grid_for(spec).edge))
    )
  elif spec.gradient == "trust":
    keep = (jnp.abs(q - v) <= half) if m is None else (m & (jnp.abs(q - v) <= half))
  if m is not None:
    x_hat = jnp.where(m, x_hat, 0.0)
  if keep is None:  # plain STE
    out = x_hat + (y - lax.stop_gradient(y))
  else:
    ym = y * keep.astype(y.dtype)
    out = x_hat + (ym - lax.stop_gradient(ym))
  return undo(out).astype(x.dtype)


def quantize_to_int(x: jax.Array, spec: QuantSpec, axis: Axis, *, rotate_back: bool = True):
  """Integer codes and scales of a servable spec (int, mx-int, ternary, binary grids).

  Returns (codes, scale, view_shape): int8 `codes` with x.shape, float32 `scale` broadcastable
  to `view_shape`, where view_shape is x.shape with the contraction axes merged and, for group
  granularity, split into (D / G, G). Then
      (codes.reshape(view_shape) * scale).reshape(x.shape) == quantize(x, spec, axis)
  bit for bit when hadamard is off. Centred grids (int + gaussian_mse, binary) store the odd
  integers 2q with scale s / 2. With hadamard, codes are in the rotated basis (rotate_back must
  be False): a matmul of two equally rotated operands needs no rotation back.
  """
  if not spec.is_integer_grid:
    raise ValueError(
      f"quantize_to_int: numerics={spec.numerics!r} fmt={spec.fmt!r} has no integer codes; "
      "allowed: int, ternary, binary, mx with fmt='int'"
    )
  if spec.rounding != "nearest":
    raise ValueError(
      "quantize_to_int: the serving path rounds to nearest; use spec.replace(rounding='nearest')"
    )
  if spec.hadamard and rotate_back:
    raise ValueError(
      "quantize_to_int: with hadamard the codes live in the rotated basis; "
      "pass rotate_back=False and rotate the other operand too"
    )
  y, red, _, _ = _prepare(lax.stop_gradient(x), spec, axis)
  q, s, _, _ = _quant_grid(y, spec, red, None)
  grid = grid_for(spec)
  if grid.kind == "centered":
    if 2 * grid.outer > 127:
      raise ValueError(
        f"quantize_to_int: a centred {spec.bits:g}-bit grid needs codes beyond "
        "int8 (2^b - 1 > 127); allowed bits <= 7 with scale='gaussian_mse'"
      )
    q, s = 2.0 * q, s * 0.5
  elif grid.outer > 127:
    raise ValueError(f"quantize_to_int: {spec.bits:g}-bit codes do not fit int8; allowed bits <= 8")
  return q.astype(jnp.int8).reshape(x.shape), s, y.shape


def quant_scale(x: jax.Array, spec: QuantSpec, axis: Axis) -> tuple[jax.Array, tuple[int, ...]]:
  """The scales `quantize(x, spec, axis)` rounds with, for fixed-scale rounding (e.g. GPTQ).

  Returns (scale, view_shape) laid out as in `quantize_to_int`: float32 `scale` broadcastable
  to `view_shape`, which is x.shape with the contraction axes merged and, for group
  granularity, split into (D / G, G). For a kernel w[D, F] and axis=0: channel -> scale
  [1, F], tensor -> [1, 1], group -> [D / G, 1, F] with view (D / G, G, F). mse_search runs
  its clip-ratio search on x. Then, with nearest rounding,
      round_with_scale(x.reshape(view_shape), scale, spec).reshape(x.shape)
  equals `quantize(x, spec, axis)` bit for bit. Not defined with hadamard (ValueError).
  """
  if spec.hadamard:
    raise ValueError(
      f"quant_scale: QuantSpec.hadamard={spec.hadamard} is not supported (scales would live in "
      "the rotated basis); allowed: hadamard=0"
    )
  y, red, _, _ = _prepare(lax.stop_gradient(x), spec, axis)
  _, s, _, _ = _quant_grid(y, spec.replace(rounding="nearest"), red, None)
  return s, y.shape


def round_with_scale(x: jax.Array, scale: jax.Array, spec: QuantSpec) -> jax.Array:
  """Forward value `q * scale` of x rounded to nearest on spec's grid with a given scale.

  x and scale broadcast elementwise (float32 result); the scale is not recomputed, so x beyond
  the outer level saturates. The rounding is `quantize`'s (round half to even; centred grids
  round ties up); a zero scale gives 0 as in `quantize`. Stochastic specs raise ValueError.
  """
  if spec.rounding != "nearest":
    raise ValueError(
      f"round_with_scale: QuantSpec.rounding={spec.rounding!r} is not supported; allowed: 'nearest'"
    )
  s = jnp.asarray(scale, jnp.float32)
  q, _ = round_to_grid(jnp.asarray(x, jnp.float32) * _inv(s), grid_for(spec))
  return q * s
