"""`QuantSpec`: what one quantizer does, validated once, hashable (a static jit argument).

Lingo (after AQT v2): lhs = activations, rhs = weights; the *contraction axis* is the
axis a matmul sums over, and scales are shared over it ("channel" granularity gives one
scale per output channel of a Dense kernel w[D_in, F] and one per token of x[B, L, D]).

Every constant below names its source. "[D]" marks a constant we derived ourselves
(numerical integration on the format's grid, see `tests/test_quant_numerics.py`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

NUMERICS = ("int", "fp", "mx", "ternary", "binary")
GRANULARITIES = ("tensor", "channel", "group")
SCALES = ("absmax", "absmean", "gaussian_mse", "mse_search")
ROUNDINGS = ("nearest", "stochastic")
GRADIENTS = ("ste", "clipped_ste", "trust")

# log2(3) = 1.58496...: information content of a ternary digit (BitNet b1.58, arXiv 2402.17764).
TERNARY_BITS = math.log2(3)

# Element block size of the OCP Microscaling (MX) formats: one E8M0 (power-of-two) scale per
# 32 elements (OCP Microscaling Formats (MX) v1.0 spec, section 5, "k = 32").
MX_BLOCK = 32
# Storage of the shared MX scale: E8M0, 8 bits (same spec, section 5.2).
MX_SCALE_BITS = 8
# Storage we assume for a group / channel scale: one 16-bit float (bf16/fp16), the convention of
# Chen et al. 2025 (arXiv 2505.14302) and Frantar et al. 2025 when counting bits per parameter.
SCALE_BITS = 16


@dataclasses.dataclass(frozen=True)
class FpFormat:
  """A small IEEE-like float format without inf/nan at the top (OCP "fn" style) except e5m2.

  Values: subnormals m * 2^(emin - mbits) for |x| < 2^emin, normals up to `max_value`.
  """

  name: str
  ebits: int
  mbits: int
  emin: int  # exponent of the smallest normal (1 - bias)
  emax: int  # exponent of the largest normal ("emax_elem" of the OCP MX spec)
  max_value: float

  @property
  def bits(self) -> int:
    return 1 + self.ebits + self.mbits

  @property
  def max_ulp(self) -> float:
    """Gap between the two largest values (the last step of the grid)."""
    return 2.0 ** (self.emax - self.mbits)


# Source: OCP Microscaling Formats (MX) v1.0 spec, Table 2 (FP4 E2M1, FP6 E2M3/E3M2) and the OCP
# 8-bit Floating Point spec (E4M3 with max 448, no inf; E5M2 IEEE-like, max 57344). The same
# grids are ml_dtypes' float4_e2m1fn, float6_e2m3fn, float6_e3m2fn, float8_e4m3fn, float8_e5m2.
FP_FORMATS = {
  "e2m1": FpFormat("e2m1", 2, 1, emin=0, emax=2, max_value=6.0),
  "e2m3": FpFormat("e2m3", 2, 3, emin=0, emax=2, max_value=7.5),
  "e3m2": FpFormat("e3m2", 3, 2, emin=-2, emax=4, max_value=28.0),
  "e4m3": FpFormat("e4m3", 4, 3, emin=-6, emax=8, max_value=448.0),
  "e5m2": FpFormat("e5m2", 5, 2, emin=-14, emax=15, max_value=57344.0),
}
# Default fp format per bit width (fp4 = e2m1 as in MXFP4/NVFP4; fp6 = e2m3, the OCP format with
# more mantissa; fp8 = e4m3, the forward-pass format of AQT's `config_fwd_fp8` and of FP8 LLM
# training recipes).
DEFAULT_FP_FORMAT = {4: "e2m1", 6: "e2m3", 8: "e4m3"}

# MSE-optimal outermost level, as a multiple of the RMS, of a symmetric uniform grid for N(0, 1):
# QuEST's OPTIMAL_GAUSSIAN_SCALES (IST-DASLab/QuEST, src/models/quantization/base.py; PAPERS.md
# section 6). Integer grids use QuEST's *centred* convention: 2^b levels evenly spaced over
# [-a*RMS, +a*RMS], no zero level. Key 1.585 in QuEST = ternary {-a, 0, +a}.
OPTIMAL_GAUSSIAN_SCALES = {
  1: 0.7978845587140913,
  TERNARY_BITS: 1.2240089519030855,
  2: 1.4935346200015913,
  3: 2.051068354131873,
  4: 2.513930578568423,
  5: 2.9160938834961225,
  6: 3.276597282593217,
  7: 3.6010497188221655,
  8: 3.884938678807525,
}
# [D] The same for the fp grids (largest representable value = a*RMS), minimising the N(0, 1)
# MSE by numerical integration over the format's own grid (scipy bounded search). For e4m3/e5m2
# the curve is nearly flat (within 1% over a in [4, 100]); the global minimum is stored.
FP_GAUSSIAN_SCALES = {
  "e2m1": 2.922475,
  "e2m3": 3.747540,
  "e3m2": 4.541761,
  "e4m3": 9.128982,
  "e5m2": 9.036995,
}

# Clip ratios tried by scale="mse_search" (a fraction of the absmax bound; the ratio with the least
# squared error per scale group wins). 15 candidates 1.00, 0.95, ..., 0.30 (our choice; AQT's
# SnrBasedAutoCalibration searches a similar user-given list).
MSE_SEARCH_RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(15))


def _choice(field: str, value: Any, allowed) -> None:
  if value not in allowed:
    raise ValueError(
      f"QuantSpec.{field}={value!r} is not valid; allowed values: {', '.join(map(repr, allowed))}"
    )


def _is_ternary_bits(bits: float) -> bool:
  return abs(float(bits) - TERNARY_BITS) < 0.01


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """One quantizer. `None` (not a QuantSpec) means "unquantized" (16-bit) everywhere.

  Fields (unset ones are filled in by `__post_init__`, so equal quantizers compare equal):
    bits: storage bits of one element (float). int: 2..15 (1 becomes binary, 1.58 ternary);
      fp: 4, 6 or 8 from `fmt`; mx: the element's bits (int elements 2..8); ternary:
      log2(3); binary: 1.
    numerics: "int" symmetric integer; "fp" small float (`fmt`); "mx" OCP microscaling block
      format (power-of-two scale per block of `group_size`, default 32) over int (`fmt="int"`)
      or fp elements; "ternary" {-1, 0, 1} x scale (BitNet b1.58); "binary" {-1, 1} x scale.
    fmt: fp element format ("e2m1", "e3m2", "e2m3", "e4m3", "e5m2"); for mx also "int".
      Default from bits: 4 -> e2m1, 6 -> e2m3, 8 -> e4m3.
    granularity: "tensor" one scale; "channel" one scale per index of the non-contraction axes
      (per output channel of a kernel, per token of an activation); "group" the contraction
      axis split into groups of `group_size`, one scale per group. Default "channel", or
      "group" when `group_size` is given or numerics is "mx".
    group_size: G of "group" granularity (the MX block size for mx).
    scale: "absmax": the max |x| of the group maps to the edge of the last integer bucket
      (AQT IntSymmetric/AbsMax: s = max|x| / (2^(b-1) - 0.5)), to the largest finite value
      for fp (AQT fp8), to the OCP power-of-two rule for mx; "absmean": outer level = mean |x|
      (BitNet b1.58 ternary, XNOR-Net binary; the default for those two); "gaussian_mse":
      outer level = OPTIMAL_GAUSSIAN_SCALES[bits] * RMS (QuEST; int grids become centred,
      2^b levels and no zero); "mse_search": absmax times the MSE_SEARCH_RATIOS entry with the
      least squared error per group (a search: slower, meant for weights/PTQ studies).
    rounding: "nearest" (round half to even) or "stochastic" (unbiased; needs `key`).
    gradient: "ste" identity; "clipped_ste" zero where |x| lies beyond the edge of the last
      bucket (outer level + half the last step); "trust" QuEST's trust mask, zero where
      |Q(x) - x| exceeds half the local step. With nearest rounding on a uniform grid the two
      masks coincide; they differ under stochastic rounding and inside fp grids.
    hadamard: block size of a block-Hadamard rotation along the contraction axis before
      quantizing (QuEST uses 128, Quartet 32); 0 = off. `quantize` rotates back afterwards, so
      the result is a drop-in fake-quant of x (the matmul is the same as QuEST's).
  """

  bits: float | None = None
  numerics: str = "int"
  fmt: str | None = None
  granularity: str | None = None
  group_size: int | None = None
  scale: str | None = None
  rounding: str = "nearest"
  gradient: str = "ste"
  hadamard: int = 0

  def __post_init__(self):
    def put(name, value):
      object.__setattr__(self, name, value)

    _choice("numerics", self.numerics, NUMERICS)
    numerics = self.numerics
    if numerics == "int" and self.bits is not None:
      if _is_ternary_bits(self.bits):
        numerics = "ternary"
      elif float(self.bits) == 1.0:
        numerics = "binary"
    put("numerics", numerics)
    put("bits", self._checked_bits())
    put("granularity", self._checked_granularity())
    put("scale", self._checked_scale())
    _choice("rounding", self.rounding, ROUNDINGS)
    _choice("gradient", self.gradient, GRADIENTS)
    h = self.hadamard
    if not isinstance(h, int) or isinstance(h, bool) or h < 0 or (h and h & (h - 1)):
      raise ValueError(
        f"QuantSpec.hadamard={h!r} is not valid; allowed values: 0 (off) or a power of two >= 2"
      )
    if h == 1:
      raise ValueError("QuantSpec.hadamard=1 is not valid; allowed values: 0 (off) or 2, 4, 8, ..")

  # -- validation helpers (called once from __post_init__) --------------------------------------

  def _checked_bits(self) -> float:
    n, bits, fmt = self.numerics, self.bits, self.fmt
    if n in ("int", "ternary", "binary") and fmt is not None:
      raise ValueError(f"QuantSpec.fmt={fmt!r} is only valid for numerics 'fp' or 'mx'; use None")
    if n == "ternary":
      if bits is not None and not _is_ternary_bits(bits):
        raise ValueError(
          f"QuantSpec.bits={bits!r} is out of range for numerics='ternary'; "
          "allowed: 1.58 (log2 3) or None"
        )
      return TERNARY_BITS
    if n == "binary":
      if bits is not None and float(bits) != 1.0:
        raise ValueError(
          f"QuantSpec.bits={bits!r} is out of range for numerics='binary'; allowed: 1 or None"
        )
      return 1.0
    if n == "int":
      if bits is None or float(bits) != int(bits) or not 2 <= bits <= 15:
        raise ValueError(
          f"QuantSpec.bits={bits!r} is out of range for numerics='int': allowed integers 1..15 "
          "(1 = binary, 1.58 = ternary; 16-bit 'unquantized' is spelled None, not a QuantSpec)"
        )
      return float(bits)
    # fp / mx
    if n == "mx" and fmt == "int":
      if bits is None or float(bits) != int(bits) or not 2 <= bits <= 8:
        raise ValueError(
          f"QuantSpec.bits={bits!r} is out of range for numerics='mx', fmt='int'; "
          "allowed: integers 2..8"
        )
      return float(bits)
    if fmt is None:
      if bits is None or float(bits) not in DEFAULT_FP_FORMAT:
        raise ValueError(
          f"QuantSpec.bits={bits!r} is out of range for numerics={n!r} without fmt: allowed "
          f"4, 6, 8 (or give fmt one of {', '.join(FP_FORMATS)})"
        )
      fmt = DEFAULT_FP_FORMAT[int(bits)]
      object.__setattr__(self, "fmt", fmt)
    allowed = tuple(FP_FORMATS) + (("int",) if n == "mx" else ())
    _choice("fmt", fmt, allowed)
    width = FP_FORMATS[fmt].bits
    if bits is not None and float(bits) != width:
      raise ValueError(
        f"QuantSpec.bits={bits!r} does not match fmt={fmt!r} ({width} bits); "
        f"allowed: {width} or None"
      )
    return float(width)

  def _checked_granularity(self) -> str:
    g, gs = self.granularity, self.group_size
    if g is None:
      g = "group" if (gs is not None or self.numerics == "mx") else "channel"
    _choice("granularity", g, GRANULARITIES)
    if g == "group":
      if gs is None:
        gs = MX_BLOCK if self.numerics == "mx" else None
      if not isinstance(gs, int) or isinstance(gs, bool) or gs < 1:
        raise ValueError(
          f"QuantSpec.group_size={gs!r} is not valid for granularity='group'; "
          "allowed: a positive int"
        )
      object.__setattr__(self, "group_size", gs)
    elif gs is not None:
      raise ValueError(
        f"QuantSpec.group_size={gs!r} needs granularity='group' (got {g!r}); use None"
      )
    if self.numerics == "mx" and g != "group":
      raise ValueError(
        f"QuantSpec.granularity={g!r} is not valid for numerics='mx': MX formats are block-"
        "scaled, allowed: 'group' (group_size = block size, default 32)"
      )
    return g

  def _checked_scale(self) -> str:
    n, s = self.numerics, self.scale
    if s is None:
      s = "absmean" if n in ("ternary", "binary") else "absmax"
    _choice("scale", s, SCALES)
    if s == "absmean" and n not in ("ternary", "binary"):
      raise ValueError(
        f"QuantSpec.scale='absmean' is only valid for numerics 'ternary'/'binary' (got {n!r}); "
        "allowed: 'absmax', 'gaussian_mse', 'mse_search'"
      )
    if n == "mx" and s != "absmax":
      raise ValueError(
        f"QuantSpec.scale={s!r} is not valid for numerics='mx': the OCP shared exponent is "
        "fixed by the block's max; allowed: 'absmax'"
      )
    if s == "gaussian_mse" and n == "int" and self.bits > 8:
      raise ValueError(
        f"QuantSpec.scale='gaussian_mse' is not valid for {self.bits:g}-bit int: QuEST's "
        "constants cover bits 1..8; allowed: 'absmax', 'mse_search'"
      )
    return s

  # -- public helpers -----------------------------------------------------------------------------

  def replace(self, **changes) -> QuantSpec:
    """A copy with some fields changed (re-validated). Derived fields are re-derived."""
    return dataclasses.replace(self, **changes)

  @property
  def fp_format(self) -> FpFormat | None:
    return FP_FORMATS.get(self.fmt) if self.fmt is not None else None

  @property
  def is_integer_grid(self) -> bool:
    """True when the levels are integers x scale (int, mx-int, ternary, binary): servable."""
    return self.numerics in ("int", "ternary", "binary") or (
      self.numerics == "mx" and self.fmt == "int"
    )

  def validate_for(self, dim: int, *, what: str = "contraction dim") -> None:
    """Raise ValueError unless this spec can quantize along a contraction axis of size `dim`."""
    for field, size in (("group_size", self.group_size), ("hadamard", self.hadamard)):
      if size and dim % size:
        divisors = [d for d in range(1, min(dim, 4096) + 1) if dim % d == 0]
        raise ValueError(
          f"QuantSpec.{field}={size} does not divide the {what} {dim}; "
          f"allowed: a divisor of {dim}, e.g. {divisors[-6:]}"
        )


def bits_per_param(spec: QuantSpec | None, d_in: int | None = None) -> float:
  """Storage bits per weight, scale overhead included.

  Convention: unquantized (None) = 16 (bf16). Element bits (ternary counts log2(3) = 1.585, the
  information content; a 2-bit container would store 2) plus one 16-bit scale (SCALE_BITS) per
  group of G (16/G), or for mx one 8-bit E8M0 exponent per block (8/32 = 0.25). A per-channel
  scale adds 16/D_in, counted only when `d_in` (the contraction dim) is given; a per-tensor
  scale is counted as 0.
  """
  if spec is None:
    return 16.0
  bits = float(spec.bits)
  if spec.numerics == "mx":
    return bits + MX_SCALE_BITS / spec.group_size
  if spec.granularity == "group":
    return bits + SCALE_BITS / spec.group_size
  if spec.granularity == "channel" and d_in:
    return bits + SCALE_BITS / d_in
  return bits
