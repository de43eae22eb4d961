"""The quantization term of a compression spec string: `parse_quant_term` / `format_quant_term`.

A term is `w<SIDE>a<SIDE>` followed by zero or more `-<MODIFIER>`; the first side is the
weights (rhs), the second the activations (lhs). The fixed meanings of DESIGN.md hold:
`wXaY` = X-bit symmetric integer weights per output channel, Y-bit integer activations per
token (AQT absmax scales), 16 = unquantized, 1 = binary (sign x scale).

  SIDE        meaning                                              example
  ----------  ---------------------------------------------------  --------------
  16          unquantized (None)                                   w4a16
  2..15       int, symmetric, absmax (AQT IntSymmetric)            w4a4, w8a8
  1           binary {-1, +1} x scale (absmean = mean|x|)          w1a16
  1.58 | t    ternary {-1, 0, +1} x absmean (BitNet b1.58)         w1.58a8, wta8
  fp4 fp6 fp8 fp e2m1 / e2m3 / e4m3, absmax -> largest value       wfp4a16, wfp8afp8
  e2m1 e2m3 e4m3 e3m2 e5m2    fp with that exact format            we5m2a16
  mxfp4 mxfp6 mxfp8 mx<FMT>   OCP MX fp elements, E8M0 scale per 32  wmxfp4amxfp4
  mxint2..mxint8              OCP MX int elements (MXINT8)         wmxint8amxint8

  MODIFIER    effect (on every quantized side; prefix `w` or `a` for one side only)
  ----------  -----------------------------------------------------------------------
  g<G>        granularity "group", G elements along the contraction axis (mx: block size)
  tensor      granularity "tensor" (one scale)          e.g. w8a8-atensor (Kumar et al.)
  absmax      scale "absmax" (the default except for binary/ternary)
  absmean     scale "absmean" (the default for binary/ternary)
  gmse        scale "gaussian_mse" (QuEST: a* x RMS, centred int grid)
  mse         scale "mse_search" (clip ratio search)
  sr          rounding "stochastic" (default: nearest, ties to even)
  ste         gradient "ste" (the default)
  cste        gradient "clipped_ste"
  trust       gradient "trust" (QuEST trust mask)
  had<B>      block-Hadamard rotation of size B along the contraction axis

Canonical form (what `format_quant_term` writes): the first spelling in each SIDE row
(`1.58` for ternary, `fp4`/`fp6`/`fp8` for e2m1/e2m3/e4m3, `mxfp4`.. likewise), then only
non-default modifiers in the order g/tensor, scale, sr, gradient, had. A modifier is written
once without prefix when applying it to every quantized side gives the same specs, else once
per side with its `w`/`a` prefix. Examples: `w4a4-g32`, `w4a4-gmse-trust-had128`,
`w4a8-ag32`, `wmxfp4amxfp4`, `w1.58a8`.
"""

from __future__ import annotations

import re

from compress_scaling.quant.spec import FP_FORMATS, QuantSpec

_FP_ALIAS = {"fp4": "e2m1", "fp6": "e2m3", "fp8": "e4m3"}
_FP_CANON = {v: k for k, v in _FP_ALIAS.items()}
_SIDE_FORMS = (
  "16 (unquantized), 2..15 (int), 1 (binary), 1.58 or t (ternary), fp4/fp6/fp8, "
  "e2m1/e2m3/e3m2/e4m3/e5m2, mxfp4/mxfp6/mxfp8/mx<fmt>, mxint2..mxint8"
)
_MOD_FORMS = (
  "g<G>, tensor, absmax, absmean, gmse, mse, sr, ste, cste, trust, had<B>, "
  "each optionally prefixed by w or a (one side only)"
)
_SCALE_TOKENS = {
  "absmax": "absmax",
  "absmean": "absmean",
  "gmse": "gaussian_mse",
  "mse": "mse_search",
}
_GRAD_TOKENS = {"ste": "ste", "cste": "clipped_ste", "trust": "trust"}
_CATEGORIES = ("granularity", "scale", "rounding", "gradient", "hadamard")


def _side_fields(tok: str, term: str) -> dict | None:
  """Fields of a QuantSpec for one SIDE token (None = unquantized)."""

  def bad():
    return ValueError(f"quant term {term!r}: unknown side {tok!r}; allowed: {_SIDE_FORMS}")

  if tok == "16":
    return None
  if tok in ("1.58", "t"):
    return {"numerics": "ternary"}
  if re.fullmatch(r"\d+", tok):
    b = int(tok)
    if b == 1:
      return {"numerics": "binary"}
    if not 2 <= b <= 15:
      raise ValueError(f"quant term {term!r}: {b} bits is out of range; allowed: {_SIDE_FORMS}")
    return {"numerics": "int", "bits": b}
  numerics = "fp"
  if tok.startswith("mx"):
    numerics, tok = "mx", tok[2:]
    m = re.fullmatch(r"int(\d)", tok)
    if m:
      if not 2 <= int(m.group(1)) <= 8:
        raise bad()
      return {"numerics": "mx", "fmt": "int", "bits": int(m.group(1))}
  fmt = _FP_ALIAS.get(tok, tok)
  if fmt not in FP_FORMATS:
    raise bad()
  return {"numerics": numerics, "fmt": fmt}


def _modifier(body: str, term: str) -> tuple[str, dict]:
  """(category, field changes) of one modifier body (without its side prefix)."""
  m = re.fullmatch(r"g(\d+)", body)
  if m:
    return "granularity", {"granularity": "group", "group_size": int(m.group(1))}
  if body == "tensor":
    return "granularity", {"granularity": "tensor", "group_size": None}
  if body in _SCALE_TOKENS:
    return "scale", {"scale": _SCALE_TOKENS[body]}
  if body == "sr":
    return "rounding", {"rounding": "stochastic"}
  if body in _GRAD_TOKENS:
    return "gradient", {"gradient": _GRAD_TOKENS[body]}
  m = re.fullmatch(r"had(\d+)", body)
  if m:
    return "hadamard", {"hadamard": int(m.group(1))}
  raise ValueError(f"quant term {term!r}: unknown modifier {body!r}; allowed: {_MOD_FORMS}")


def parse_quant_term(term: str) -> tuple[QuantSpec | None, QuantSpec | None]:
  """Parse `w<SIDE>a<SIDE>[-<MODIFIER>]...` into (weights, activations) specs (see table)."""
  m = re.fullmatch(r"w([^a\-]+)a([^\-]+)((?:-[^\-]+)*)", term)
  if not m:
    raise ValueError(
      f"quant term {term!r} is not of the form w<SIDE>a<SIDE>[-<MODIFIER>...]; SIDE: "
      f"{_SIDE_FORMS}; MODIFIER: {_MOD_FORMS}"
    )
  sides = {"w": _side_fields(m.group(1), term), "a": _side_fields(m.group(2), term)}
  mods = [t for t in m.group(3).split("-") if t]
  shared: dict[str, dict] = {}
  per_side: dict[str, dict[str, dict]] = {"w": {}, "a": {}}
  for tok in mods:
    prefix = None  # "absmax"/"absmean" start with "a": try the unprefixed reading first
    try:
      category, changes = _modifier(tok, term)
    except ValueError:
      if tok[0] not in "wa" or len(tok) == 1:
        raise
      prefix = tok[0]
      category, changes = _modifier(tok[1:], term)
    target = shared if prefix is None else per_side[prefix]
    if category in target:
      raise ValueError(f"quant term {term!r}: two {category} modifiers for the same side")
    if prefix and sides[prefix] is None:
      raise ValueError(f"quant term {term!r}: modifier {tok!r} names an unquantized side")
    target[category] = changes
  if shared and sides["w"] is None and sides["a"] is None:
    raise ValueError(f"quant term {term!r}: modifiers given but both sides are unquantized")
  out = []
  for name in ("w", "a"):
    fields = sides[name]
    if fields is None:
      out.append(None)
      continue
    fields = dict(fields)
    for category in _CATEGORIES:
      fields.update(per_side[name].get(category, shared.get(category, {})))
    try:
      out.append(QuantSpec(**fields))
    except ValueError as e:
      raise ValueError(f"quant term {term!r}, {name} side: {e}") from None
  return out[0], out[1]


def _side_token(spec: QuantSpec | None) -> str:
  if spec is None:
    return "16"
  n = spec.numerics
  if n == "int":
    return str(int(spec.bits))
  if n == "binary":
    return "1"
  if n == "ternary":
    return "1.58"
  if n == "mx" and spec.fmt == "int":
    return f"mxint{int(spec.bits)}"
  fmt = _FP_CANON.get(spec.fmt, spec.fmt)
  return ("mx" if n == "mx" else "") + fmt


def _tokens(spec: QuantSpec) -> dict[str, str | None]:
  """Per category, the modifier token this spec needs beyond its side's defaults."""
  base = QuantSpec(
    **_side_fields(_side_token(spec), "")  # the side's defaults
  )
  tok: dict[str, str | None] = dict.fromkeys(_CATEGORIES)
  if (spec.granularity, spec.group_size) != (base.granularity, base.group_size):
    tok["granularity"] = "tensor" if spec.granularity == "tensor" else f"g{spec.group_size}"
  if spec.scale != base.scale:
    tok["scale"] = {v: k for k, v in _SCALE_TOKENS.items()}[spec.scale]
  if spec.rounding != base.rounding:
    tok["rounding"] = "sr"
  if spec.gradient != base.gradient:
    tok["gradient"] = {v: k for k, v in _GRAD_TOKENS.items()}[spec.gradient]
  if spec.hadamard:
    tok["hadamard"] = f"had{spec.hadamard}"
  return tok


def _applies_cleanly(token: str, category: str, spec: QuantSpec) -> bool:
  _, changes = _modifier(token, "")
  try:
    return spec.replace(**changes) == spec
  except ValueError:
    return False


def format_quant_term(w: QuantSpec | None, a: QuantSpec | None) -> str:
  """Canonical term for (weights, activations); `parse_quant_term` inverts it exactly."""
  out = f"w{_side_token(w)}a{_side_token(a)}"
  sides = {k: s for k, s in (("w", w), ("a", a)) if s is not None}
  toks = {k: _tokens(s) for k, s in sides.items()}
  for category in _CATEGORIES:
    needed = {k: t[category] for k, t in toks.items() if t[category] is not None}
    values = set(needed.values())
    if not values:
      continue
    if len(values) == 1:
      (token,) = values
      if all(k in needed or _applies_cleanly(token, category, s) for k, s in sides.items()):
        out += f"-{token}"
        continue
    for k in ("w", "a"):
      if k in needed:
        out += f"-{k}{needed[k]}"
  return out
