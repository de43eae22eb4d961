"""Round-to-nearest and GPTQ post-training quantization of one Dense kernel, in pure JAX.

A kernel is w[D_in, F] (flax layout, y = x @ w); scales are shared over the contraction axis 0
as in `quantize(w, spec, axis=0)`. GPTQ (Frantar et al. 2022, arXiv 2210.17323, Algorithm 1)
quantizes the input rows of w one at a time and spreads each row's rounding error over the rows
not yet quantized, weighted by the inverse of the layer Hessian H = 2/n X^T X of the
calibration inputs X[n, D_in]; it greedily minimises the layer-wise objective
`reconstruction_error(w, w_hat, H)` = tr((w - w_hat)^T H (w - w_hat)).

This is a transcription of the reference implementation (github.com/IST-DASLab/gptq, `gptq.py`,
`GPTQ.fasterquant`, with static_groups=False) to our layout: GPTQ's weight W[out, in] is our
w.T, its "columns" are our input rows. Everything the reference does is kept:

  * channel/tensor scales are computed once, from the original w (before dead rows are zeroed),
    as the reference calls `find_params(W)` before the loop;
  * dead inputs (H_ii == 0) get H_ii = 1 and their weight rows zeroed before quantizing (they
    come out 0 on grids with a zero level, +-s/2 on binary and centred gaussian_mse int grids);
  * act_order permutes the inputs by decreasing diag(H) (after the dead-input fix) and the
    result is un-permuted at the end;
  * damp * mean(diag H) is added to the diagonal; Hinv = upper Cholesky factor of H^-1;
  * rows are processed in blocks of `block_size`; within a block each row's error is spread
    to the block's later rows at once, to the rows after the block lazily (one matmul);
  * group granularity: a group's scale is computed when the loop reaches its first row g0 (in
    the act_order permutation when act_order is on: groups are consecutive permuted rows),
    from the reference's `W[:, g0:g0+G]`, i.e. the weights updated by every *earlier block*.
    The updates from the rows of g0's block that precede g0 live in the block copy W1 and are
    not seen (nor, for a group running past its block, that block's updates to its rows past
    the block). That is the reference's behaviour, kept so our numbers match published GPTQ;
    when G is a multiple of block_size every group starts on a block boundary and its scale
    sees every update so far. mse_search (like the reference's `mse=True` grid search in
    find_params) searches its clip ratio on the same weights the scale is computed from (the
    original w for channel/tensor).

The reference's H is 2/(number of sequences) X^T X; ours divides by the number of rows
(tokens). GPTQ is invariant to a positive scale of H, so only `reconstruction_error` differs.

Supported specs: every deterministic weight spec of `quant.QuantSpec` without hadamard: int
(absmax, gaussian_mse, mse_search; 2..15 bits), fp formats, MX (int and fp elements), ternary
and binary (absmean, ...), at tensor, channel or group granularity. Rounding is `quantize`'s
(round half to even), so `w_hat / scale` are the spec's grid values.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from compress_scaling.quant.quantize import quant_scale, quantize, round_with_scale
from compress_scaling.quant.spec import QuantSpec

_HI = lax.Precision.HIGHEST  # float32 matmuls also on accelerators (no bf16/tf32 passes)


def _check_spec(spec: QuantSpec, fn: str) -> None:
  if spec.rounding != "nearest":
    raise ValueError(
      f"{fn}: QuantSpec.rounding={spec.rounding!r} is not supported (PTQ rounds "
      "deterministically); allowed: 'nearest'"
    )
  if spec.hadamard:
    raise ValueError(
      f"{fn}: QuantSpec.hadamard={spec.hadamard} is not supported (no rotation in RTN/GPTQ); "
      "allowed: 0"
    )


def _check_kernel(w, fn: str) -> None:
  if w.ndim != 2:
    raise ValueError(
      f"{fn}: w must be a 2-D kernel [D_in, F], got shape {tuple(w.shape)}; reshape "
      "multi-axis kernels to (contraction size, rest) first"
    )


def rtn(w: jax.Array, spec: QuantSpec | None) -> jax.Array:
  """Round-to-nearest: the forward value of `quantize(w, spec, axis=0)` as float32.

  Args:
    w: kernel [D_in, F].
    spec: deterministic weight spec (rounding='nearest', hadamard=0); None returns w (float32).
  Returns:
    w_hat [D_in, F] float32 on the spec's grid.
  """
  w = jnp.asarray(w)
  _check_kernel(w, "rtn")
  if spec is None:
    return w.astype(jnp.float32)
  _check_spec(spec, "rtn")
  spec.validate_for(w.shape[0], what="input dim D_in")
  return quantize(lax.stop_gradient(w.astype(jnp.float32)), spec, axis=0)


# -- calibration statistics ---------------------------------------------------------------------


def hessian_update(h: jax.Array, count, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Adds a calibration batch to a running Hessian H = 2/n X^T X (the reference's add_batch).

  Args:
    h: running H [D_in, D_in] (zeros to start).
    count: rows folded into h so far (0 to start; a Python int, or a scalar array under jit).
    x: inputs [..., D_in]; every leading index is one row (e.g. [B, L, D] -> B * L rows).
  Returns:
    (h, count) with h = 2/n X^T X over all n = count + rows rows (float32, a running mean, so
    batches of any size can be streamed) and the new count (same type as the one given).
  """
  h = jnp.asarray(h, jnp.float32)
  if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] != x.shape[-1]:
    raise ValueError(
      f"hessian_update: h must be square [D_in, D_in] with D_in = x.shape[-1] = "
      f"{x.shape[-1]}, got h of shape {tuple(h.shape)}"
    )
  x2 = jnp.asarray(x, jnp.float32).reshape(-1, x.shape[-1])
  if x2.shape[0] == 0:
    return h, count
  total = count + x2.shape[0]
  gram = jnp.matmul(x2.T, x2, precision=_HI)
  return h * (count / total) + gram * (2.0 / total), total


def hessian(x: jax.Array) -> jax.Array:
  """GPTQ's layer Hessian H = 2/n X^T X (float32) of inputs x [..., D_in] (n rows)."""
  d = x.shape[-1]
  if x.size == 0:
    raise ValueError(f"hessian: x of shape {tuple(x.shape)} has no rows")
  h, _ = hessian_update(jnp.zeros((d, d), jnp.float32), 0, x)
  return h


def reconstruction_error(w: jax.Array, w_hat: jax.Array, h: jax.Array) -> jax.Array:
  """GPTQ's layer-wise objective tr((w - w_hat)^T H (w - w_hat)) (float32 scalar).

  With H = hessian(x) = 2/n X^T X this is (2/n) ||x @ w - x @ w_hat||_F^2: twice the mean over
  the n calibration rows of the squared output error summed over the F outputs.
  """
  d = jnp.asarray(w, jnp.float32) - jnp.asarray(w_hat, jnp.float32)
  return jnp.sum(d * jnp.matmul(jnp.asarray(h, jnp.float32), d, precision=_HI))


# -- GPTQ ---------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("spec", "block_size", "act_order"))
def _gptq(w, h, damp, *, spec: QuantSpec, block_size: int, act_order: bool):
  """(w_hat, scale per element), both [D_in, F] in the original input order."""
  d_in, f = w.shape
  group = spec.granularity == "group"
  if not group:  # reference: find_params(W) on the original weights, before the loop
    s_fixed = jnp.broadcast_to(quant_scale(w, spec, 0)[0].reshape(-1), (f,))

  diag = jnp.diagonal(h)
  dead = diag == 0.0
  idx = jnp.arange(d_in)
  h = h.at[idx, idx].set(jnp.where(dead, 1.0, diag))
  w = jnp.where(dead[:, None], 0.0, w)
  if act_order:
    perm = jnp.argsort(-jnp.diagonal(h))  # stable: ties keep the input order
    w, h = w[perm], h[perm][:, perm]
  h = h + (damp * jnp.mean(jnp.diagonal(h))) * jnp.eye(d_in, dtype=h.dtype)
  chol = jnp.linalg.cholesky(h)
  h_inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(d_in, dtype=h.dtype))
  u = jnp.linalg.cholesky(h_inv).T  # upper: H^-1 = u^T u

  q_blocks, s_blocks, group_scales = [], [], []
  for i1 in range(0, d_in, block_size):
    i2 = min(i1 + block_size, d_in)
    n = i2 - i1
    if group:
      g = spec.group_size
      g_lo, g_hi = -(-i1 // g), -(-i2 // g)  # groups whose first row lies in [i1, i2)
      if g_hi > g_lo:
        s, _ = quant_scale(w[g_lo * g : g_hi * g], spec, 0)  # [g_hi - g_lo, 1, F]
        group_scales.append(s.reshape(g_hi - g_lo, f))
      s1 = jnp.concatenate(group_scales)[np.arange(i1, i2) // g]
    else:
      s1 = jnp.broadcast_to(s_fixed, (n, f))
    u1 = u[i1:i2, i1:i2]

    def step(w1, xs):
      i, u_row, s = xs  # u_row = u1[i]
      row = w1[i]
      q = round_with_scale(row, s, spec)
      err = (row - q) / u_row[i]
      w1 = w1 - u_row[:, None] * err[None, :]  # rows < i are done (and u1[i, :i] == 0)
      return w1, (q, err)

    _, (q1, err1) = lax.scan(step, w[i1:i2], (jnp.arange(n), u1, s1))
    q_blocks.append(q1)
    s_blocks.append(s1)
    if i2 < d_in:
      w = w.at[i2:].add(-jnp.matmul(u[i1:i2, i2:].T, err1, precision=_HI))

  q, s = jnp.concatenate(q_blocks), jnp.concatenate(s_blocks)
  if act_order:
    inv = jnp.argsort(perm)
    q, s = q[inv], s[inv]
  return q, s


def gptq(
  w: jax.Array,
  h: jax.Array,
  spec: QuantSpec | None,
  *,
  block_size: int = 128,
  damp: float = 0.01,
  act_order: bool = False,
  return_scale: bool = False,
):
  """GPTQ-quantizes a kernel w[D_in, F] given the layer Hessian H of its inputs.

  Args:
    w: kernel [D_in, F] (any float dtype; computed in float32).
    h: Hessian [D_in, D_in], e.g. `hessian(x)` (any positive multiple of X^T X gives the same
      result up to float rounding: GPTQ is invariant to scaling H).
    spec: deterministic weight spec (rounding='nearest', hadamard=0); None returns w.
    block_size: rows quantized between two lazy updates of the rest of w (the reference's
      blocksize). It changes only speed and float rounding, except with group granularity,
      where it decides which updates a group's scale sees (module docstring).
    damp: added to diag(H) as damp * mean(diag H) (the reference's percdamp).
    act_order: quantize inputs in order of decreasing H_ii (the reference's actorder);
      w_hat comes back in the original input order.
    return_scale: also return the scale each weight was rounded with.
  Returns:
    w_hat [D_in, F] float32 on the spec's grid; with return_scale, (w_hat, scale) with scale
    [D_in, F] float32 such that `round_with_scale(w_hat, scale, spec) == w_hat` (for integer
    grids w_hat / scale are the integer codes; groups follow the act_order permutation).
  Raises:
    ValueError: a stochastic or hadamard spec, w not 2-D, H not [D_in, D_in], a group size not
      dividing D_in, a bad block_size, or (outside jit) H not positive definite after damping.
  """
  w = jnp.asarray(w)
  h = jnp.asarray(h)
  _check_kernel(w, "gptq")
  d_in = w.shape[0]
  if h.ndim != 2 or h.shape[0] != h.shape[1]:
    raise ValueError(f"gptq: H must be a square matrix [D_in, D_in], got shape {tuple(h.shape)}")
  if h.shape[0] != d_in:
    raise ValueError(
      f"gptq: H of shape {tuple(h.shape)} does not match w of shape {tuple(w.shape)}; "
      f"allowed: H [{d_in}, {d_in}] (the Hessian of the inputs of w[D_in, F])"
    )
  if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
    raise ValueError(f"gptq: block_size={block_size!r} is not valid; allowed: a positive int")
  if spec is None:
    w32 = w.astype(jnp.float32)
    return (w32, None) if return_scale else w32
  _check_spec(spec, "gptq")
  spec.validate_for(d_in, what="input dim D_in")
  q, s = _gptq(
    w.astype(jnp.float32),
    h.astype(jnp.float32),
    jnp.asarray(damp, jnp.float32),
    spec=spec,
    block_size=block_size,
    act_order=bool(act_order),
  )
  if not isinstance(q, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(q))):
    raise ValueError(
      f"gptq: the result is not finite: H (+ damp={damp} * mean diag) is not positive definite "
      "in float32 (Cholesky failed) or w/H hold inf/nan; allowed: a finite PSD H, raise damp"
    )
  return (q, s) if return_scale else q
