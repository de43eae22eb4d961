"""Quantizers for compressed pretraining: specs, fake quant, integer serving, diagnostics.

Public names (stable; see DESIGN.md):
  QuantSpec(bits, numerics, fmt, granularity, group_size, scale, rounding, gradient, hadamard)
  quantize(x, spec, axis, *, key=None) -> fake-quantized x with the spec's gradient
  parse_quant_term("w4a4-g32") -> (weights_spec, activations_spec); format_quant_term(w, a)
  bits_per_param(spec, d_in=None) -> storage bits per weight incl. scales (None -> 16)
  gaussian_mse(spec, n_samples=2**20, seed=0) -> MSE on N(0, 1) samples (capacity law input)
  int_dot_general(lhs, rhs, dims, ..., lhs_spec=, rhs_spec=), make_serving_dot_general(l, r)
  quantize_to_int(x, spec, axis) -> (int8 codes, scales, view shape)
  sqnr_db(x, x_q), kurtosis(x, axis=None)

The term grammar (w<SIDE>a<SIDE>[-<MODIFIER>...]) is tabulated in `quant/grammar.py`.

Lingo (AQT v2): lhs = activations, rhs = weights; scales are shared over the contraction
axis: kernel w[D_in, F] -> quantize(w, spec, axis=0), one scale per output channel;
activation x[B, L, D] -> quantize(x, spec, axis=-1), one scale per token.
"""

from compress_scaling.quant.diagnostics import gaussian_mse, kurtosis, sqnr_db
from compress_scaling.quant.grammar import format_quant_term, parse_quant_term
from compress_scaling.quant.numerics import fp_grid_values, hadamard_matrix
from compress_scaling.quant.quantize import quantize, quantize_to_int
from compress_scaling.quant.serving import int_dot_general, make_serving_dot_general
from compress_scaling.quant.spec import (
  FP_FORMATS,
  FP_GAUSSIAN_SCALES,
  GRADIENTS,
  GRANULARITIES,
  MSE_SEARCH_RATIOS,
  MX_BLOCK,
  NUMERICS,
  OPTIMAL_GAUSSIAN_SCALES,
  ROUNDINGS,
  SCALES,
  TERNARY_BITS,
  FpFormat,
  QuantSpec,
  bits_per_param,
)

__all__ = [
  "FP_FORMATS",
  "FP_GAUSSIAN_SCALES",
  "GRADIENTS",
  "GRANULARITIES",
  "MSE_SEARCH_RATIOS",
  "MX_BLOCK",
  "NUMERICS",
  "OPTIMAL_GAUSSIAN_SCALES",
  "ROUNDINGS",
  "SCALES",
  "TERNARY_BITS",
  "FpFormat",
  "QuantSpec",
  "bits_per_param",
  "format_quant_term",
  "fp_grid_values",
  "gaussian_mse",
  "hadamard_matrix",
  "int_dot_general",
  "kurtosis",
  "make_serving_dot_general",
  "parse_quant_term",
  "quantize",
  "quantize_to_int",
  "sqnr_db",
]
