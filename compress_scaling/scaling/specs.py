"""Light parsing of compression spec strings for the fitting code (no dependency on quant.py).

DESIGN.md fixes the meaning of these forms: `dense`; `wXaY[-gG]` = X-bit integer weights and
Y-bit integer activations (16 = unquantized), optional group size G; `sP` = P% unstructured
sparsity; `n:m` = n kept of every m; combinations joined with `+` (`w4a16+s50`). Unknown
quantization and sparsity modifiers (`-gmse`, `-every10`) are kept in the string and ignored here.
"""

from __future__ import annotations

import dataclasses
import math
import re

from compress_scaling.scaling.laws import UNQUANTIZED_BITS

DENSE = "dense"
_MODS = r"((?:-[A-Za-z0-9.]+)*)"  # modifiers such as -gmse, -g32, -every10 (quant/, sparsity.py)
_QUANT = re.compile(r"^w(\d+(?:\.\d+)?)a(\d+(?:\.\d+)?)" + _MODS + "$")
_SPARSE = re.compile(r"^s(\d+(?:\.\d+)?)" + _MODS + "$")
_NM = re.compile(r"^(\d+):(\d+)" + _MODS + "$")
_GROUP = re.compile(r"-g(\d+)")


@dataclasses.dataclass(frozen=True)
class SpecInfo:
  """What the fits need to know about one compression spec."""

  spec: str
  w_bits: float = UNQUANTIZED_BITS
  a_bits: float = UNQUANTIZED_BITS
  group: int | None = None  # quantization group size (None: per channel / per token)
  sparsity: float = 0.0  # fraction of weights removed
  nm: tuple[int, int] | None = None
  quant_term: str | None = None
  sparse_term: str | None = None

  @property
  def density(self) -> float:
    return 1.0 - self.sparsity

  @property
  def weight_quantized(self) -> bool:
    return self.w_bits < UNQUANTIZED_BITS

  @property
  def act_quantized(self) -> bool:
    return self.a_bits < UNQUANTIZED_BITS

  @property
  def kind(self) -> str:
    """dense | weight (weight-only quant) | weight+act | act | sparse | quant+sparse."""
    quant = self.weight_quantized or self.act_quantized
    if self.sparsity > 0 and quant:
      return "quant+sparse"
    if self.sparsity > 0:
      return "sparse"
    if self.weight_quantized and self.act_quantized:
      return "weight+act"
    if self.weight_quantized:
      return "weight"
    if self.act_quantized:
      return "act"
    return "dense"

  def bits_per_param(self) -> float:
    """Storage bits per dense-shape weight: kept weights at the weight format's bits (plus a
    16-bit scale per group of G when grouped), plus index metadata: a 1-bit bitmap for
    unstructured sparsity, log2(C(m, n)) / m for n:m. Mirrors compression.bits_per_param."""
    wb = self.w_bits
    if self.weight_quantized and self.group:
      wb += 16.0 / self.group
    bits = wb * self.density
    if self.nm is not None:
      n, m = self.nm
      bits += math.log2(math.comb(m, n)) / m
    elif self.sparsity > 0:
      bits += 1.0
    return bits


def parse_spec(spec: str) -> SpecInfo:
  """Parses `dense`, `wXaY[-gG...]`, `sP`, `n:m` and `+` combinations; ValueError otherwise."""
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"compression spec: expected a string such as 'w4a16+s50', got {spec!r}")
  # A label may carry per-layer rules, "w4a4-g32[*/mlp/out=w4a8-g32]" (logbook): the fields
  # describe the global spec.
  spec = spec.strip().split("[", 1)[0]
  if spec == DENSE:
    return SpecInfo(DENSE)
  fields: dict = {}
  for term in (t.strip() for t in spec.split("+")):
    if m := _QUANT.match(term):
      if "quant_term" in fields:
        raise ValueError(f"compression spec {spec!r}: more than one quantization term")
      g = _GROUP.search(m.group(3) or "")
      fields.update(
        w_bits=float(m.group(1)),
        a_bits=float(m.group(2)),
        quant_term=term,
        group=int(g.group(1)) if g else None,
      )
    elif m := _SPARSE.match(term):
      if "sparse_term" in fields:
        raise ValueError(f"compression spec {spec!r}: more than one sparsity term")
      fields.update(sparsity=float(m.group(1)) / 100.0, sparse_term=term)
    elif m := _NM.match(term):
      if "sparse_term" in fields:
        raise ValueError(f"compression spec {spec!r}: more than one sparsity term")
      n, mm = int(m.group(1)), int(m.group(2))
      if not 0 < n <= mm:
        raise ValueError(f"compression spec {spec!r}: n:m needs 0 < n <= m, got {term!r}")
      fields.update(sparsity=1.0 - n / mm, nm=(n, mm), sparse_term=term)
    else:
      raise ValueError(
        f"compression spec {spec!r}: unknown term {term!r}; allowed: 'dense', 'wXaY[-gG]' "
        "(e.g. w4a16, w4a4-g32), 'sP' (e.g. s50), 'n:m' (e.g. 2:4), joined with '+'"
      )
  return SpecInfo(spec, **fields)


def bits_per_param(spec: str) -> float:
  """Bits per dense-shape weight of a spec (used when a log entry does not carry it)."""
  return parse_spec(spec).bits_per_param()


def components(spec: str) -> tuple[str | None, str | None]:
  """(quantization term, sparsity term) of a spec, each None when absent."""
  info = parse_spec(spec)
  return info.quant_term, info.sparse_term
