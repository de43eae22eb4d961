"""Quantization diagnostics: SQNR, kurtosis and the Gaussian MSE of a quantizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from compress_scaling.quant.quantize import quantize
from compress_scaling.quant.spec import QuantSpec


def sqnr_db(x: jax.Array, x_q: jax.Array, axis=None) -> jax.Array:
  """Signal-to-quantization-noise ratio 10 log10(sum x^2 / sum (x - x_q)^2), in dB.

  Computed in float32 over `axis` (None = all). +inf when x_q == x exactly.
  """
  x = jnp.asarray(x, jnp.float32)
  err = x - jnp.asarray(x_q, jnp.float32)
  signal = jnp.sum(jnp.square(x), axis=axis)
  noise = jnp.sum(jnp.square(err), axis=axis)
  return 10.0 * (jnp.log10(signal) - jnp.log10(noise))


def kurtosis(x: jax.Array, axis=None, *, fisher: bool = False) -> jax.Array:
  """Pearson kurtosis E[(x - mean)^4] / var^2 over `axis` (None = all); 3 for a Gaussian.

  fisher=True subtracts 3 (excess kurtosis, scipy's default). Chen et al. 2025 (arXiv
  2505.14302, Fig. 9) report the input kurtosis of each linear layer (FC2 input: 123 in BF16).
  """
  x = jnp.asarray(x, jnp.float32)
  d = x - jnp.mean(x, axis=axis, keepdims=True)
  var = jnp.mean(jnp.square(d), axis=axis)
  k = jnp.mean(jnp.square(jnp.square(d)), axis=axis) / jnp.square(var)
  return k - 3.0 if fisher else k


def gaussian_mse(
  spec: QuantSpec | None, n_samples: int = 2**20, seed: int = 0, dim: int = 1024
) -> float:
  """Mean squared error of `spec`'s fake quantizer on i.i.d. N(0, 1) samples.

  This is the GMSE of Panferov et al. 2025 (arXiv 2506.01863), the input of their capacity law.
  The samples form rows of `dim` elements quantized along the last (contraction) axis; for
  "group" granularity (and mx) a row holds one group (`dim` = group_size). With scale
  "gaussian_mse" at 1/2/3/4 bits this gives 0.3634/0.1189/0.0374/0.01154 (PAPERS.md section 6).
  None (unquantized) gives 0.0.
  """
  if spec is None:
    return 0.0
  if spec.granularity == "group":
    dim = spec.group_size
  spec.validate_for(dim)
  rows = max(1, n_samples // dim)
  x = jax.random.normal(jax.random.key(seed), (rows, dim), jnp.float32)
  key = jax.random.key(seed + 1)
  x_q = jax.jit(quantize, static_argnums=(1, 2))(x, spec, -1, key=key)
  return float(np.mean(np.square(np.asarray(x_q, np.float64) - np.asarray(x, np.float64))))
