"""Rounding onto a grid, in *grid units* (x / scale), and the block-Hadamard matrix.

Three grid kinds cover every QuantSpec:

  "zero"      integers -Q..Q (int absmax/mse_search: Q = 2^(b-1) - 1, AQT IntSymmetric with
              preserve_zero; ternary: Q = 1; mx-int elements).
  "centered"  half-integers -K..K in steps of 1, K = (n - 1) / 2, no zero level (QuEST's
              centred grid for int + gaussian_mse, n = 2^b; binary: n = 2, levels +-1/2).
  "fp"        the values of a small float format (FpFormat), max `fmt.max_value`.

Each grid gives the rounded value q, the edge of its last bucket (beyond which a value is
"clipped", for clipped_ste), and half the local step (QuEST's trust threshold).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from compress_scaling.quant.spec import FpFormat, QuantSpec


@dataclasses.dataclass(frozen=True)
class Grid:
  kind: str  # "zero" | "centered" | "fp"
  outer: float  # the outermost level in grid units (Q, K or fmt.max_value)
  fmt: FpFormat | None = None

  @property
  def edge(self) -> float:
    """Edge of the last bucket: outer level + half of the last step (grid units)."""
    if self.kind == "fp":
      return self.outer + 0.5 * self.fmt.max_ulp
    return self.outer + 0.5


def grid_for(spec: QuantSpec) -> Grid:
  """The grid a spec rounds onto (see the module docstring)."""
  n = spec.numerics
  if n == "binary":
    return Grid("centered", 0.5)
  if n == "ternary":
    return Grid("zero", 1.0)
  if n == "int":
    b = int(spec.bits)
    if spec.scale == "gaussian_mse":  # QuEST: 2^b levels, centred (no zero level)
      return Grid("centered", (2**b - 1) / 2)
    return Grid("zero", float(2 ** (b - 1) - 1))
  if n == "mx" and spec.fmt == "int":  # MXINT: symmetric -(2^(b-1)-1)..2^(b-1)-1 (no -2^(b-1))
    return Grid("zero", float(2 ** (int(spec.bits) - 1) - 1))
  fmt = spec.fp_format
  return Grid("fp", fmt.max_value, fmt)


def _pow2(e: jax.Array) -> jax.Array:
  """2.0**e for int32 e in [-126, 127], exactly, by building the float32 bit pattern."""
  return lax.bitcast_convert_type((e + 127) << 23, jnp.float32)


def floor_log2(a: jax.Array) -> jax.Array:
  """floor(log2(a)) for positive normal float32 a, exactly (read from the exponent bits)."""
  return (lax.bitcast_convert_type(a, jnp.int32) >> 23) - 127


def fp_ulp(a_abs: jax.Array, fmt: FpFormat) -> jax.Array:
  """Spacing of `fmt`'s grid in the binade of |a| (subnormal spacing below 2^emin)."""
  e = jnp.maximum(floor_log2(a_abs), fmt.emin)
  return _pow2(e - fmt.mbits)


def round_to_grid(v: jax.Array, grid: Grid, u: jax.Array | None = None):
  """Round v (float32, grid units) onto `grid`.

  u: None for round-to-nearest (ties to even on "zero" and "fp" grids; on "centered" grids
  ties, i.e. exact multiples of the step, go up: AQT's floor(x) + 0.5, so 0 -> +1/2), or
  uniform [0, 1) noise of v's shape for unbiased stochastic rounding.
  Returns (q, half_step): the rounded value and half the local step (for the trust mask).
  Values beyond the outer level are clipped (saturating, as AQT and the OCP MX spec do).
  """
  c = jnp.clip(v, -grid.outer, grid.outer)
  if grid.kind == "zero":
    q = lax.round(c, lax.RoundingMethod.TO_NEAREST_EVEN) if u is None else jnp.floor(c + u)
    return q, 0.5
  if grid.kind == "centered":
    q = (jnp.floor(c) if u is None else jnp.floor(c - 0.5 + u)) + 0.5
    return q, 0.5
  ulp = fp_ulp(jnp.abs(c), grid.fmt)
  w = c / ulp  # exact: ulp is a power of two
  w = lax.round(w, lax.RoundingMethod.TO_NEAREST_EVEN) if u is None else jnp.floor(w + u)
  return w * ulp, 0.5 * ulp


def fp_grid_values(fmt: FpFormat) -> np.ndarray:
  """All non-negative values of `fmt`, ascending (for tests and the Gaussian-MSE tables)."""
  sub = [m * 2.0 ** (fmt.emin - fmt.mbits) for m in range(2**fmt.mbits)]
  normal = [
    (1 + m / 2**fmt.mbits) * 2.0**e
    for e in range(fmt.emin, fmt.emax + 1)
    for m in range(2**fmt.mbits)
  ]
  vals = np.array(sub + normal)
  return vals[vals <= fmt.max_value]


@functools.lru_cache(maxsize=None)
def hadamard_matrix(n: int) -> np.ndarray:
  """Orthonormal Sylvester-Hadamard matrix H_n / sqrt(n) (n a power of two), float32.

  QuEST (arXiv 2502.05003) rotates with block-diagonal Hadamards of size 128 before quantizing;
  H is symmetric and orthogonal, so H @ H = I.
  """
  if n < 1 or n & (n - 1):
    raise ValueError(f"hadamard block size must be a power of two, got {n}")
  h = np.ones((1, 1))
  while h.shape[0] < n:
    h = np.block([[h, h], [h, -h]])
  return (h / np.sqrt(n)).astype(np.float32)
