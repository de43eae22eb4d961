"""QuantSpec validation, the term grammar and bits_per_param."""

import math

import pytest

from compress_scaling import quant
from compress_scaling.quant import QuantSpec, bits_per_param, format_quant_term, parse_quant_term

# -- QuantSpec defaults, normalisation, validation ----------------------------------------------


def test_defaults_are_filled_in_and_equal_specs_hash_equal():
  s = QuantSpec(4)
  assert (s.bits, s.numerics, s.granularity, s.scale, s.rounding, s.gradient, s.hadamard) == (
    4.0,
    "int",
    "channel",
    "absmax",
    "nearest",
    "ste",
    0,
  )
  assert s == QuantSpec(bits=4.0, granularity="channel", scale="absmax")
  assert hash(s) == hash(QuantSpec(bits=4.0, granularity="channel", scale="absmax"))
  assert len({QuantSpec(4), QuantSpec(4.0), QuantSpec(8)}) == 2
  with pytest.raises(AttributeError):
    s.bits = 8  # frozen


def test_derived_defaults_per_numerics():
  assert QuantSpec(4, group_size=32).granularity == "group"
  mx = QuantSpec(numerics="mx", fmt="e2m1")
  assert (mx.bits, mx.granularity, mx.group_size, mx.scale) == (4.0, "group", 32, "absmax")
  assert QuantSpec(bits=8, numerics="fp").fmt == "e4m3"
  assert QuantSpec(bits=6, numerics="fp").fmt == "e2m3"
  assert QuantSpec(numerics="fp", fmt="e5m2").bits == 8.0
  t = QuantSpec(numerics="ternary")
  assert (t.bits, t.scale) == (math.log2(3), "absmean")
  assert QuantSpec(numerics="binary").scale == "absmean"
  # int 1 bit is binary and int 1.58 bits is ternary (DESIGN: "1-bit int = binary sign x scale")
  assert QuantSpec(1) == QuantSpec(numerics="binary")
  assert QuantSpec(1.58) == QuantSpec(numerics="ternary")


@pytest.mark.parametrize(
  "kwargs, field",
  [
    (dict(bits=16), "bits"),
    (dict(bits=0), "bits"),
    (dict(bits=4.5), "bits"),
    (dict(bits=None), "bits"),
    (dict(bits=4, numerics="float"), "numerics"),
    (dict(bits=4, numerics="nf4"), "numerics"),
    (dict(numerics="fp", fmt="e3m3"), "fmt"),
    (dict(numerics="fp", fmt="e2m1", bits=8), "bits"),
    (dict(numerics="fp", bits=5), "bits"),
    (dict(numerics="mx", fmt="int", bits=12), "bits"),
    (dict(numerics="ternary", bits=2), "bits"),
    (dict(numerics="binary", bits=2), "bits"),
    (dict(bits=4, fmt="e2m1"), "fmt"),
    (dict(bits=4, granularity="row"), "granularity"),
    (dict(bits=4, granularity="group"), "group_size"),
    (dict(bits=4, granularity="group", group_size=0), "group_size"),
    (dict(bits=4, granularity="channel", group_size=32), "group_size"),
    (dict(numerics="mx", fmt="e2m1", granularity="channel"), "granularity"),
    (dict(bits=4, scale="percentile"), "scale"),
    (dict(bits=4, scale="absmean"), "scale"),
    (dict(numerics="mx", fmt="e2m1", scale="gaussian_mse"), "scale"),
    (dict(bits=12, scale="gaussian_mse"), "scale"),
    (dict(bits=4, rounding="up"), "rounding"),
    (dict(bits=4, gradient="lsq"), "gradient"),
    (dict(bits=4, hadamard=48), "hadamard"),
    (dict(bits=4, hadamard=1), "hadamard"),
  ],
)
def test_bad_fields_raise_naming_field_and_allowed_values(kwargs, field):
  with pytest.raises(ValueError, match=rf"QuantSpec\.{field}=") as e:
    QuantSpec(**kwargs)
  assert "allowed" in str(e.value) or "use None" in str(e.value)


def test_unknown_numerics_lists_allowed():
  with pytest.raises(ValueError) as e:
    QuantSpec(4, numerics="float")
  for n in quant.NUMERICS:
    assert repr(n) in str(e.value)


def test_validate_for_group_and_hadamard_divisibility():
  QuantSpec(4, group_size=32).validate_for(256)
  with pytest.raises(ValueError, match=r"group_size=32 does not divide the contraction dim 100"):
    QuantSpec(4, group_size=32).validate_for(100)
  with pytest.raises(ValueError, match=r"hadamard=128 does not divide"):
    QuantSpec(4, hadamard=128).validate_for(192)
  QuantSpec(4).validate_for(7)  # channel: anything goes


def test_replace_revalidates():
  s = QuantSpec(4, group_size=32)
  assert s.replace(group_size=64).group_size == 64
  with pytest.raises(ValueError, match="bits"):
    s.replace(bits=99)


# -- bits_per_param -------------------------------------------------------------------------------


def test_bits_per_param_conventions():
  assert bits_per_param(None) == 16.0
  assert bits_per_param(QuantSpec(4)) == 4.0
  assert bits_per_param(QuantSpec(4), d_in=256) == 4.0 + 16 / 256
  assert bits_per_param(QuantSpec(4, granularity="tensor"), d_in=256) == 4.0
  assert bits_per_param(QuantSpec(4, group_size=32)) == 4.5
  assert bits_per_param(QuantSpec(4, group_size=128)) == 4.125
  assert bits_per_param(QuantSpec(numerics="mx", fmt="e2m1")) == 4.25  # OCP MXFP4: 4 + 8/32
  assert bits_per_param(QuantSpec(numerics="mx", fmt="int", bits=8)) == 8.25
  assert bits_per_param(QuantSpec(numerics="ternary")) == pytest.approx(1.58496, abs=1e-5)
  assert bits_per_param(QuantSpec(numerics="binary")) == 1.0


# -- grammar --------------------------------------------------------------------------------------

I4 = QuantSpec(4)
I8 = QuantSpec(8)


@pytest.mark.parametrize(
  "term, w, a",
  [
    ("w4a16", I4, None),
    ("w4a4", I4, I4),
    ("w8a8", I8, I8),
    ("w2a16", QuantSpec(2), None),
    ("w1a16", QuantSpec(numerics="binary"), None),
    ("w16a4", None, I4),
    ("w16a16", None, None),
    ("w4a4-g32", QuantSpec(4, group_size=32), QuantSpec(4, group_size=32)),
    ("wfp4a16", QuantSpec(numerics="fp", fmt="e2m1"), None),
    ("wfp8a8", QuantSpec(numerics="fp", fmt="e4m3"), I8),
    ("we5m2ae5m2", QuantSpec(numerics="fp", fmt="e5m2"), QuantSpec(numerics="fp", fmt="e5m2")),
    ("wmxfp4amxfp4", QuantSpec(numerics="mx", fmt="e2m1"), QuantSpec(numerics="mx", fmt="e2m1")),
    ("wmxint8a16", QuantSpec(numerics="mx", fmt="int", bits=8), None),
    ("w1.58a8", QuantSpec(numerics="ternary"), I8),
    ("w4a16-gmse", QuantSpec(4, scale="gaussian_mse"), None),
    ("w4a16-mse", QuantSpec(4, scale="mse_search"), None),
    ("w4a4-sr", QuantSpec(4, rounding="stochastic"), QuantSpec(4, rounding="stochastic")),
    ("w4a16-cste", QuantSpec(4, gradient="clipped_ste"), None),
    (
      "w4a4-gmse-trust-had128",
      QuantSpec(4, scale="gaussian_mse", gradient="trust", hadamard=128),
      QuantSpec(4, scale="gaussian_mse", gradient="trust", hadamard=128),
    ),
    ("w8a8-atensor", I8, QuantSpec(8, granularity="tensor")),
    ("w4a8-ag32", I4, QuantSpec(8, group_size=32)),
    ("w4a4-wg128-ag32", QuantSpec(4, group_size=128), QuantSpec(4, group_size=32)),
    ("w1a16-absmax", QuantSpec(numerics="binary", scale="absmax"), None),
    (
      "wmxfp4amxfp4-g16",
      QuantSpec(numerics="mx", fmt="e2m1", group_size=16),
      QuantSpec(numerics="mx", fmt="e2m1", group_size=16),
    ),
  ],
)
def test_canonical_terms_parse_and_round_trip(term, w, a):
  assert parse_quant_term(term) == (w, a)
  assert format_quant_term(w, a) == term


@pytest.mark.parametrize(
  "alias, canonical",
  [
    ("we2m1a16", "wfp4a16"),
    ("we4m3ae4m3", "wfp8afp8"),
    ("wta16", "w1.58a16"),
    ("w4a4-ste", "w4a4"),
    ("w4a4-g32-ste-absmax", "w4a4-g32"),
    ("w4a4-trust-gmse", "w4a4-gmse-trust"),  # canonical modifier order
    ("w4a4-wg32-ag32", "w4a4-g32"),
    ("w4amxfp4-g32", "w4amxfp4-g32"),  # g32 is mx's default: unprefixed form still exact
    ("w4a16-wg32", "w4a16-g32"),
    ("wmxe2m1a16", "wmxfp4a16"),
  ],
)
def test_aliases_normalise(alias, canonical):
  assert format_quant_term(*parse_quant_term(alias)) == canonical
  assert parse_quant_term(canonical) == parse_quant_term(alias)


def test_prefixed_modifier_overrides_shared():
  w, a = parse_quant_term("w4a4-g32-ag64")
  assert (w.group_size, a.group_size) == (32, 64)
  assert format_quant_term(w, a) == "w4a4-wg32-ag64"


@pytest.mark.parametrize(
  "term, needle",
  [
    ("dense", "not of the form"),
    ("s50", "not of the form"),
    ("w4", "not of the form"),
    ("w4a", "not of the form"),
    ("w17a16", "out of range"),
    ("w0a16", "out of range"),
    ("wfp5a16", "unknown side"),
    ("wmxint9a16", "unknown side"),
    ("w4a4-g32x", "unknown modifier"),
    ("w4a4-foo", "unknown modifier"),
    ("w4a16-ag32", "unquantized side"),
    ("w16a16-g32", "both sides are unquantized"),
    ("w4a4-g32-g64", "two granularity"),
    ("wmxfp4a16-gmse", "scale"),
    ("w4a4-had48", "hadamard"),
  ],
)
def test_bad_terms_raise_with_allowed_forms(term, needle):
  with pytest.raises(ValueError, match=needle):
    parse_quant_term(term)


def test_error_lists_allowed_forms():
  with pytest.raises(ValueError) as e:
    parse_quant_term("wq4a16")
  assert "mxfp4" in str(e.value) and "1.58" in str(e.value)
  with pytest.raises(ValueError) as e:
    parse_quant_term("w4a4-zz")
  assert "gmse" in str(e.value) and "had<B>" in str(e.value)


def test_random_specs_round_trip():
  """Every spec the grammar can express formats to a string that parses back to it."""
  sides = [
    None,
    I4,
    QuantSpec(8, granularity="tensor"),
    QuantSpec(3, scale="gaussian_mse"),
    QuantSpec(4, group_size=64, gradient="trust", rounding="stochastic"),
    QuantSpec(numerics="ternary", scale="gaussian_mse", hadamard=32),
    QuantSpec(numerics="fp", fmt="e3m2", scale="mse_search", gradient="clipped_ste"),
    QuantSpec(numerics="mx", fmt="int", bits=4, group_size=128),
    QuantSpec(numerics="mx", fmt="e5m2"),
    QuantSpec(numerics="binary", scale="absmax"),
  ]
  for w in sides:
    for a in sides:
      term = format_quant_term(w, a)
      assert parse_quant_term(term) == (w, a), term
      assert format_quant_term(*parse_quant_term(term)) == term
