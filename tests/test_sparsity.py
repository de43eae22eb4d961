"""Tests for compress_scaling.sparsity: masks, distributions, schedules and spec terms.

Golden tables are copied literally from google-research/jaxpruner `mask_calculator_test.py`;
numpy references below re-state jaxpruner's tie-breaking (stable argsort) independently of
the radix-select / pairwise-rank implementation under test.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compress_scaling import sparsity as sp

# --- jaxpruner mask_calculator_test.py hand tables (scores -> masks, including ties) ---------
SCORE_1 = [
  [
    [0.69, 0.37, 0.96, 0.81],
    [0.79, 0.55, 0.88, 0.53],
    [0.66, 0.88, 0.4, 0.83],
    [0.13, 0.8, 0.91, 0.96],
  ],
  [
    [0.34, 0.17, 0.07, 0.74],
    [0.13, 0.13, 0.83, 0.76],
    [0.13, 0.92, 0.25, 0.75],
    [0.37, 0.42, 0.65, 0.46],
  ],
]
MASK_UNS_1 = [
  [[0, 0, 1, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1]],
  [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]],
]
MASK_N2_M4_1 = [
  [[0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]],
  [[1, 0, 0, 1], [0, 0, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1]],
]
MASK_N2_M4_AXIS1_1 = [
  [[1, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 1], [0, 1, 1, 1]],
  [[1, 0, 0, 0], [0, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 0]],
]
SCORE_2 = [1, 1, 1, 1, 1, 1, 1, 1]
MASK_UNS_2 = [1, 1, 1, 1, 0, 0, 0, 0]
MASK_N2_M4_2 = [0, 0, 1, 1, 0, 0, 1, 1]  # ties: the LAST n of each group are kept
SCORE_3 = [1, 2, 3, 4, 5, 6, 7, 8]
SCORE_4 = [1, 0.5, 0.3, 0.2, 1, 1.5, 1.8, 2.0, 1, 1]
MASK_UNS_4 = [1, 0, 0, 0, 1, 1, 1, 1, 0, 0]
SCORE_5 = [
  [1, 0.5, 0.3, 0.2, 1, 1.5, 1.8, 2.0, 1, 1],
  [1, 0.5, 0.3, 0.2, 1, 1.5, 1.8, 2.0, 1, 1],
]
MASK_UNS_5 = [[1, 0, 0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]]

PATTERNS = [(2, 4), (1, 4), (4, 8), (2, 8)]


def ref_topk(score, k):
  """jaxpruner reference: stable argsort of -score, keep the first k (lower index on ties)."""
  flat = np.asarray(score, np.float64).reshape(-1)
  keep = np.zeros(flat.size, bool)
  keep[np.argsort(-flat, kind="stable")[:k]] = True
  return keep.reshape(np.shape(score))


def ref_nm(score, n, m, axis):
  """jaxpruner NByM reference: double stable argsort within groups, rank >= m - n kept."""
  s = np.moveaxis(np.abs(np.asarray(score, np.float64)), axis, -1)
  g = s.reshape(-1, m)
  ranks = np.argsort(np.argsort(g, axis=-1, kind="stable"), axis=-1, kind="stable")
  return np.moveaxis((ranks >= m - n).reshape(s.shape), -1, axis)


def rng_weights(shape, seed=0, ties=False):
  rng = np.random.default_rng(seed)
  if ties:  # few distinct magnitudes and both signs: many ties in |w|
    return (rng.integers(-3, 4, size=shape)).astype(np.float32)
  return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
  "score, s, expected",
  [
    (SCORE_1, 0.8, MASK_UNS_1),
    (SCORE_2, 0.5, MASK_UNS_2),
    (SCORE_4, 0.5, MASK_UNS_4),
    (SCORE_5, 0.5, MASK_UNS_5),
  ],
)
def test_magnitude_mask_jaxpruner_tables(score, s, expected):
  score = jnp.array(score)
  np.testing.assert_array_equal(sp.magnitude_mask(score, s), np.array(expected, bool))
  np.testing.assert_array_equal(sp.magnitude_mask(-score, s), np.array(expected, bool))
  jitted = jax.jit(sp.magnitude_mask, static_argnums=1)
  np.testing.assert_array_equal(jitted(score, s), np.array(expected, bool))
  traced = jax.jit(sp.magnitude_mask)  # sparsity traced too
  np.testing.assert_array_equal(traced(score, s), np.array(expected, bool))


@pytest.mark.parametrize(
  "score, axis, expected",
  [
    (SCORE_1, -1, MASK_N2_M4_1),  # jaxpruner NByM default axis=-1
    (SCORE_1, 2, MASK_N2_M4_1),
    (SCORE_2, 0, MASK_N2_M4_2),
    (SCORE_1, 1, MASK_N2_M4_AXIS1_1),
  ],
)
def test_nm_mask_jaxpruner_tables(score, axis, expected):
  score = jnp.array(score)
  expected = np.array(expected, bool)
  np.testing.assert_array_equal(sp.nm_mask(score, 2, 4, axis=axis), expected)
  np.testing.assert_array_equal(sp.nm_mask(-score, 2, 4, axis=axis), expected)
  jitted = jax.jit(sp.nm_mask, static_argnums=(1, 2, 3))
  np.testing.assert_array_equal(jitted(score, 2, 4, axis), expected)


@pytest.mark.parametrize("n, m", PATTERNS)
@pytest.mark.parametrize("ties", [False, True])
def test_nm_mask_exact_on_random_weights(n, m, ties):
  for shape, axis in (((64, 48), 0), ((64, 48), 1), ((4, 16, 8), 1)):
    w = rng_weights(shape, seed=n * 10 + m, ties=ties)
    mask = np.asarray(sp.nm_mask(jnp.asarray(w), n, m, axis=axis))
    assert mask.dtype == bool and mask.shape == w.shape
    groups = np.moveaxis(mask, axis, -1).reshape(-1, m)
    np.testing.assert_array_equal(groups.sum(-1), n)  # exactly n of every m kept
    np.testing.assert_array_equal(mask, ref_nm(w, n, m, axis))
    scores = np.moveaxis(np.abs(w), axis, -1).reshape(-1, m)
    kept_min = np.where(groups, scores, np.inf).min(-1)
    pruned_max = np.where(groups, -np.inf, scores).max(-1)
    assert np.all(kept_min >= pruned_max)


def test_nm_mask_contraction_axis_layout():
  # Dense kernel [D_in, F]: groups of m consecutive input rows per output column.
  w = np.array([[4.0, 1.0], [3.0, 2.0], [2.0, 3.0], [1.0, 4.0]])
  expected = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], bool)
  np.testing.assert_array_equal(sp.nm_mask(jnp.asarray(w), 2, 4), expected)


@pytest.mark.parametrize("s", [0.3, 0.5, 0.75, 0.875, 0.9, 0.99])
@pytest.mark.parametrize("ties", [False, True])
def test_magnitude_mask_exact_density(s, ties):
  for shape in ((37, 29), (256,)):
    w = rng_weights(shape, seed=int(s * 1000), ties=ties)
    size = int(np.prod(shape))
    k = round(size * (1 - s))
    mask = np.asarray(sp.magnitude_mask(jnp.asarray(w), s))
    assert mask.dtype == bool and mask.sum() == k
    np.testing.assert_array_equal(mask, ref_topk(np.abs(w), k))


def test_magnitude_mask_edge_cases():
  w = jnp.asarray(rng_weights((5, 7)))
  assert bool(sp.magnitude_mask(w, 0.0).all())
  assert bool(sp.magnitude_mask(w, 0).all())
  # Exact round(size * (1 - s)), no jaxpruner max(1, k): 35 * 0.01 rounds to 0 kept.
  assert int(sp.magnitude_mask(w, 0.99).sum()) == 0
  assert int(sp.magnitude_mask(w, 0.98).sum()) == 1  # 0.7 rounds to 1
  int8 = jnp.array([-128, 1, 2, 3], jnp.int8)  # |-128| does not wrap around
  np.testing.assert_array_equal(sp.magnitude_mask(int8, 0.75), [True, False, False, False])
  # bf16 weights and a traced sparsity give the same mask as f32 / static.
  wb = w.astype(jnp.bfloat16)
  ref = np.asarray(sp.magnitude_mask(wb.astype(jnp.float32), 0.6))
  np.testing.assert_array_equal(sp.magnitude_mask(wb, 0.6), ref)
  np.testing.assert_array_equal(jax.jit(sp.magnitude_mask)(wb, 0.6), ref)


def test_magnitude_masks_are_nested_as_sparsity_grows():
  w = jnp.asarray(rng_weights((32, 32), ties=True))
  masks = [np.asarray(sp.magnitude_mask(w, s)) for s in (0.1, 0.4, 0.6, 0.8, 0.95)]
  for looser, tighter in zip(masks, masks[1:], strict=False):
    assert np.all(looser >= tighter)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_magnitude_mask_rejects_sparsity_out_of_range(bad):
  with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
    sp.magnitude_mask(jnp.ones((4, 4)), bad)


def test_nm_mask_errors_name_the_field():
  w = jnp.ones((6, 8))
  with pytest.raises(ValueError, match=r"m=4 must divide the contraction dim: shape\[0\]=6"):
    sp.nm_mask(w, 2, 4)
  with pytest.raises(ValueError, match=r"1 <= n <= m .*n=4, m=2"):
    sp.nm_mask(jnp.asarray(SCORE_3, jnp.float32), 4, 2)  # jaxpruner NByM(n=4, m=2) raises
  with pytest.raises(ValueError, match=r"n=0"):
    sp.nm_mask(w, 0, 4, axis=1)
  with pytest.raises(ValueError, match=r"axis=2 out of range"):
    sp.nm_mask(w, 2, 4, axis=2)
  with pytest.raises(ValueError, match=r"n must be a Python int"):
    sp.nm_mask(w, 2.0, 4, axis=1)
  assert bool(sp.nm_mask(w, 4, 4, axis=1).all())  # n == m keeps everything


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (2, 8)])
def test_gradual_nm_mask(n, m):
  w = jnp.asarray(rng_weights((64, 32), seed=3, ties=True))
  final = 1 - n / m
  nm = np.asarray(sp.nm_mask(w, n, m))
  np.testing.assert_array_equal(sp.gradual_nm_mask(w, n, m, final), nm)
  np.testing.assert_array_equal(
    jax.jit(sp.gradual_nm_mask, static_argnums=(1, 2))(w, n, m, final), nm
  )  # traced sparsity reaches exactly n:m at the end of the ramp
  assert bool(sp.gradual_nm_mask(w, n, m, 0.0).all())
  prev = np.ones(w.shape, bool)
  for frac in (0.2, 0.5, 0.8):
    s = frac * final
    mask = np.asarray(sp.gradual_nm_mask(w, n, m, s))
    traced = jax.jit(sp.gradual_nm_mask, static_argnums=(1, 2))(w, n, m, s)
    np.testing.assert_array_equal(traced, mask)
    assert mask.sum() == round(w.size * (1 - s))
    assert np.all(mask >= nm) and np.all(prev >= mask)  # contains n:m; nested ramp
    rest = np.abs(np.asarray(w))[~nm]  # the extra kept are the largest non-n:m |w|
    np.testing.assert_array_equal(mask[~nm], ref_topk(rest, int(mask.sum() - nm.sum())))
    prev = mask
  with pytest.raises(ValueError, match="sparsity must be in"):
    sp.gradual_nm_mask(w, n, m, final + 0.01)


def test_global_magnitude_masks_one_threshold_exact_count():
  rng = np.random.default_rng(7)
  kernels = {
    "b": rng.standard_normal((16, 24)).astype(np.float32) * 10.0,  # larger scale
    "a": rng.integers(-2, 3, size=(40,)).astype(np.float32),  # ties
    "c": rng.standard_normal((8, 8)).astype(np.float32),
  }
  for s in (0.5, 0.75, 0.9):
    masks = sp.global_magnitude_masks({k: jnp.asarray(v) for k, v in kernels.items()}, s)
    total = sum(v.size for v in kernels.values())
    assert sp.count_nonzero(masks) == round(total * (1 - s))
    # Reference: one stable top-k over the concatenation in sorted-key order.
    cat = np.concatenate([np.abs(kernels[k]).ravel() for k in sorted(kernels)])
    ref = ref_topk(cat, round(total * (1 - s)))
    got = np.concatenate([np.asarray(masks[k]).ravel() for k in sorted(kernels)])
    np.testing.assert_array_equal(got, ref)
  assert np.asarray(masks["b"]).mean() > np.asarray(masks["c"]).mean()  # not uniform


def test_compute_masks_per_distribution_and_kind():
  rng = np.random.default_rng(1)
  kernels = {
    "q": jnp.asarray(rng.standard_normal((32, 16))),
    "o": jnp.asarray(rng.standard_normal((2, 8, 16))),
  }
  uni = sp.compute_masks(kernels, sp.parse_term("s75"))
  for k, w in kernels.items():
    np.testing.assert_array_equal(uni[k], sp.magnitude_mask(w, 0.75))
  glob = sp.compute_masks(kernels, sp.parse_term("s75-global"), 0.5)
  assert sp.count_nonzero(glob) == (512 + 256) // 2
  nm = sp.compute_masks(kernels, sp.parse_term("2:4"), nm_axis={"q": 0, "o": 1})
  np.testing.assert_array_equal(nm["q"], sp.nm_mask(kernels["q"], 2, 4, axis=0))
  np.testing.assert_array_equal(nm["o"], sp.nm_mask(kernels["o"], 2, 4, axis=1))
  assert sp.density(nm) == 0.5
  spec = sp.parse_term("s50")
  jitted = jax.jit(lambda ks, s: sp.compute_masks(ks, spec, s))
  for k, mask in jitted(kernels, 0.3).items():
    np.testing.assert_array_equal(mask, sp.magnitude_mask(kernels[k], 0.3))


def test_density_and_count_nonzero():
  masks = {"a": jnp.array([True, False, True, True]), "b": {"c": jnp.zeros((2, 2), bool)}}
  assert sp.count_nonzero(masks) == 3
  assert sp.density(masks) == 3 / 8
  assert sp.density(jnp.array([True, False])) == 0.5


# ---------------------------------------------------------------------------- schedules


def cubic(t, start, end, s_final):
  """Closed form of jaxpruner PolynomialSchedule(power=3), restated."""
  p = min(max(t + 1 - start, 0), end - start) / (end - start)
  return s_final * (1 - (1 - p) ** 3)


def test_gradual_schedule_closed_form():
  spec = sp.parse_term("s75")  # Frantar et al. 2023 defaults: 25% -> 75%, every 100
  total = 20_000
  assert sp.schedule_steps(spec, total) == (5000, 15000)
  values = {
    t: float(sp.target_sparsity(t, spec, total)) for t in (0, 4999, 5000, 9999, 14999, 15000, 19999)
  }
  assert values[0] == 0.0 and values[4999] == 0.0  # start - 1: p = 0
  assert values[5000] == pytest.approx(0.75 * (1 - (1 - 1 / 10_000) ** 3), rel=1e-5)  # start
  assert values[9999] == pytest.approx(0.75 * (1 - 0.5**3))  # midpoint: p = 1/2
  assert values[14999] == pytest.approx(0.75) and values[15000] == pytest.approx(0.75)  # end
  assert values[19999] == pytest.approx(0.75)
  steps = jnp.arange(0, total, 37)
  traced = jax.jit(lambda t: sp.target_sparsity(t, spec, total))(steps)
  ref = [cubic(int(t), 5000, 15000, 0.75) for t in steps]
  np.testing.assert_allclose(traced, ref, rtol=1e-5, atol=1e-7)


def test_gradual_update_steps():
  spec = sp.parse_term("s50")
  # jaxpruner PeriodicSchedule: step % 100 == 0 and start <= step <= end.
  assert sp.update_steps(spec, 20_000) == list(range(5000, 15001, 100))
  # End not a multiple of update_every: we add step == end so s_T is reached exactly.
  assert sp.update_steps(spec, 1000) == [300, 400, 500, 600, 700, 750]
  assert float(sp.target_sparsity(750, spec, 1000)) == 0.5
  steps = jnp.arange(1000)
  traced = jax.jit(lambda t: sp.is_update_step(t, spec, 1000))(steps)
  assert np.flatnonzero(np.asarray(traced)).tolist() == [300, 400, 500, 600, 700, 750]
  assert sp.is_update_step(300, spec, 1000) is True
  assert sp.update_steps(sp.parse_term("s50-start10-end20-every7"), 100) == [14, 20]


def test_oneshot_static_and_nm_schedules():
  oneshot = sp.parse_term("s50-oneshot-end40")
  assert sp.update_steps(oneshot, 100) == [40]
  assert float(sp.target_sparsity(39, oneshot, 100)) == 0.0
  assert float(sp.target_sparsity(40, oneshot, 100)) == 0.5
  static = sp.parse_term("s87.5-static")
  assert sp.update_steps(static, 100) == [0]
  assert float(sp.target_sparsity(0, static, 100)) == 0.875
  nm = sp.parse_term("2:8")  # gradual n:m ramps to 1 - n/m = 0.75
  assert sp.update_steps(nm, 400) == [100, 200, 300]
  assert float(sp.target_sparsity(299, nm, 400)) == pytest.approx(0.75)
  assert float(sp.target_sparsity(199, nm, 400)) == pytest.approx(0.75 * (1 - 0.5**3))
  # start == end: a step at start jumps to s_T (the limit of the closed form).
  jump = sp.SparsitySpec(sparsity=0.5, start_frac=0.5, end_frac=0.5)
  assert [float(sp.target_sparsity(t, jump, 10)) for t in (4, 5)] == [0.0, 0.5]
  assert sp.update_steps(jump, 10) == [5]
  with pytest.raises(ValueError, match="total_steps"):
    sp.schedule_steps(jump, 0)


# ---------------------------------------------------------------------------- spec terms

CANONICAL = [
  "s50",
  "s75",
  "s87.5",
  "2:4",
  "1:4",
  "4:8",
  "2:8",
  "s0",
  "s33.3",
  "s50-global",
  "s50-oneshot",
  "s50-static",
  "2:4-static",
  "2:4-oneshot-end50",
  "s75-global-start10-end90-every50",
  "s90-oneshot-end12.5",
  "4:8-every25",
]


@pytest.mark.parametrize("term", CANONICAL)
def test_terms_round_trip(term):
  assert sp.is_sparsity_term(term)
  spec = sp.parse_term(term)
  assert sp.format_term(spec) == term and str(spec) == term
  assert sp.parse_term(str(spec)) == spec


def test_parse_fields():
  assert sp.parse_term("s87.5") == sp.SparsitySpec(kind="unstructured", sparsity=0.875)
  s24 = sp.parse_term("2:4")  # n KEPT of every m
  assert (s24.kind, s24.n, s24.m, s24.sparsity, s24.schedule) == ("nm", 2, 4, 0.5, "gradual")
  assert sp.parse_term("1:4").sparsity == 0.75 and sp.parse_term("4:8").sparsity == 0.5
  g = sp.parse_term("s50-global-oneshot-end40")
  assert (g.distribution, g.schedule, g.end_frac, g.start_frac) == (
    "global",
    "oneshot",
    0.4,
    0.25,
  )
  e = sp.parse_term("s75-start10-end90-every50")
  assert (e.start_frac, e.end_frac, e.update_every) == (0.1, 0.9, 50)


@pytest.mark.parametrize(
  "term, canonical",
  [
    ("s50.0", "s50"),
    ("s50-uniform-gradual", "s50"),
    ("s50-oneshot-global", "s50-global-oneshot"),
    ("s75-every100-start25", "s75"),
    ("2:4-uniform", "2:4"),
  ],
)
def test_non_canonical_terms_normalize(term, canonical):
  assert str(sp.parse_term(term)) == canonical


def test_spec_formats_constructed_specs():
  spec = sp.SparsitySpec(sparsity=0.3, start_frac=0.1, end_frac=0.6, update_every=10)
  assert str(spec) == "s30-start10-end60-every10" and sp.parse_term(str(spec)) == spec
  assert str(sp.SparsitySpec(kind="nm", n=1, m=4, schedule="static")) == "1:4-static"


@pytest.mark.parametrize(
  "term, pattern",
  [
    ("s100", r"sparsity must be in \[0, 1\)"),
    ("s150", r"sparsity must be in \[0, 1\)"),
    ("5:4", r"1 <= n <= m"),
    ("0:4", r"1 <= n <= m"),
    ("x50", r"unknown sparsity term 'x50'; allowed: sP"),
    ("s50-foo", r"bad or repeated modifier 'foo'.*-oneshot"),
    ("s50-global-global", r"bad or repeated modifier 'global'"),
    ("s50-global-uniform", r"bad or repeated modifier 'uniform'"),
    ("s50-global7", r"bad or repeated modifier"),
    ("s50-start", r"bad or repeated modifier"),
    ("s50-every2.5", r"bad or repeated modifier"),
    ("s50-every0", r"update_every must be an int >= 1"),
    ("2:4-global", r"distribution='global' needs kind='unstructured'"),
    ("s50-static-start10", r"start_frac is unused by schedule='static'"),
    ("s50-oneshot-every5", r"update_every is unused by schedule='oneshot'"),
    ("s50-start80-end20", r"start_frac=0.8 must be <= end_frac=0.2"),
    ("s50-end150", r"end_frac must be in \[0, 1\]"),
  ],
)
def test_bad_terms_fail_clearly(term, pattern):
  with pytest.raises(ValueError, match=pattern):
    sp.parse_term(term)


def test_is_sparsity_term():
  for term in ("s50", "s87.5", "2:4", "s50-global", "s50-foo"):
    assert sp.is_sparsity_term(term), term
  for term in ("dense", "w4a16", "w4a4-g32", "s", "2:", ":4", "", "sx", "fp4"):
    assert not sp.is_sparsity_term(term), term


def test_spec_validation_names_fields():
  bad = [
    (dict(kind="block", sparsity=0.5), "SparsitySpec.kind must be one of"),
    (dict(sparsity=0.5, schedule="cosine"), "SparsitySpec.schedule must be one of"),
    (dict(sparsity=0.5, distribution="erk"), "SparsitySpec.distribution must be one of"),
    (dict(), re.escape("SparsitySpec.sparsity (in [0, 1)) is required")),
    (dict(sparsity=1.0), r"sparsity must be in \[0, 1\)"),
    (dict(kind="nm", n=2), "kind='nm' needs n and m"),
    (dict(kind="nm", n=2, m=4, sparsity=0.75), "contradicts 2:4"),
    (dict(sparsity=0.5, n=2, m=4), "n/m are only for kind='nm'"),
    (dict(sparsity=0.5, update_every=0), "update_every must be an int >= 1"),
    (dict(sparsity=0.5, start_frac=-0.1), r"start_frac must be in \[0, 1\]"),
  ]
  for kwargs, pattern in bad:
    with pytest.raises(ValueError, match=pattern):
      sp.SparsitySpec(**kwargs)


def test_awkward_floats_round_trip_exactly():
  for s in (0.1 + 0.2, 1 / 3, float(np.nextafter(0.5, 1.0)), 0.123456789):
    spec = sp.SparsitySpec(sparsity=s, start_frac=s / 2)
    assert sp.parse_term(str(spec)) == spec, str(spec)
    assert abs(spec.sparsity - s) <= 1e-12 and abs(spec.start_frac - s / 2) <= 1e-12
  assert str(sp.SparsitySpec(sparsity=0.1 + 0.2)) == "s30"
  assert str(sp.SparsitySpec(sparsity=1 / 3)) == "s33.3333333333"
