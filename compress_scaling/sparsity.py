"""Weight sparsity: keep-masks, pruning schedules, distributions and spec terms.

Lingo: `w` is a weight kernel, its *score* is |w|, a *mask* is a bool array of w's shape with
True = keep. For a Dense kernel [D_in, F] the contraction axis is 0; n:m groups run along it
(the layout of 2:4 sparse tensor cores; qwix `get_sparsity_mask(order='C')`). Masks are state,
not parameters: the caller stores them beside the optimizer state (as jaxpruner does) and
multiplies them into the kernels in its injected dot_general.

Maths follows google-research/jaxpruner (`mask_calculator.py`, `sparsity_schedules.py`,
`algorithms/global_pruners.py`, `projects/bigsparse/t5x/iterative_nm.py`) and the sparse
pretraining setup of Frantar et al. 2023 (arXiv 2309.08520): gradual magnitude pruning with a
cubic schedule from 25% to 75% of training, masks updated every 100 steps, uniform per layer.

Spec terms (the lead's `compression.parse` splits `w4a16+s50` on `+` and passes `s50` here):

    term := base ('-' modifier)*   canonical modifier order: dist, schedule, start, end, every
    base := 's' P                  unstructured, P% of the weights pruned, 0 <= P < 100
          | n ':' m                n KEPT of every m along the contraction axis, 1 <= n <= m
    | modifier | meaning                                                  | default (omitted) |
    |----------|----------------------------------------------------------|-------------------|
    | global   | one magnitude threshold over all pruned tensors (sP only) | uniform           |
    | oneshot  | prune once, at step round(end * T)                        | gradual           |
    | static   | masks from the initial weights, fixed from step 0         | gradual           |
    | startP   | gradual: ramp starts at P% of training                    | start25           |
    | endP     | gradual: ramp ends at P% of training; oneshot: the step   | end75             |
    | everyK   | gradual: masks updated every K steps                      | every100          |

Examples: `s50`, `s75`, `s87.5`, `2:4`, `1:4`, `4:8`, `2:8`, `s50-global`, `s50-oneshot`,
`s50-static`, `2:4-static`, `s75-global-start10-end90-every50`.

Gradual n:m (our definition, from jaxpruner bigsparse `iterative_nm.py`, the n:m runs of
Frantar et al. 2023): the cubic schedule ramps s(t) from 0 to 1 - n/m; at sparsity s the mask
keeps the n:m mask plus the largest other |w| up to round(size * (1 - s)) kept weights, so
every intermediate mask contains the final n:m pattern and at the end of the ramp it *is* n:m.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

KINDS = ("unstructured", "nm")
SCHEDULES = ("gradual", "oneshot", "static")
DISTRIBUTIONS = ("uniform", "global")
# Frantar et al. 2023 / jaxpruner bigsparse example config (5k -> 15k of 20k steps, every 100).
DEFAULT_START_FRAC, DEFAULT_END_FRAC, DEFAULT_UPDATE_EVERY = 0.25, 0.75, 100
ALLOWED_TERMS = (
  "sP (0 <= P < 100, e.g. s50, s87.5) or n:m (1 <= n <= m, e.g. 2:4, 1:4, 4:8, 2:8), "
  "optionally followed by -global, -oneshot, -static, -startP, -endP, -everyK"
)


# ---------------------------------------------------------------------------- masks


def _score_bits(w):
  """|w| as non-negative integers with the same order (IEEE bits; NaN ranks largest)."""
  a = jnp.asarray(w)
  if a.dtype != jnp.float64:
    a = a.astype(jnp.float32)  # exact for bf16 / f16 / f32 (and int8 -128, unlike abs first)
  a = jnp.abs(a)
  return lax.bitcast_convert_type(a, jnp.int64 if a.dtype == jnp.float64 else jnp.int32)


@jax.jit
def _topk_keep(bits, k):
  """Keep the k largest of flat non-negative int `bits`; ties keep lower indices first.

  Equals jaxpruner's stable `argsort(-score)` top-k without a sort: a radix select finds the
  k-th largest value bit by bit (31 or 63 passes of compare+count, ~30x faster than a sort
  on CPU), then ties at the threshold are kept in index order. k may be traced; k = 0 keeps
  nothing (the search ends at the all-ones threshold, which no score exceeds).
  """
  nbits = bits.dtype.itemsize * 8 - 1
  k = jnp.asarray(k, bits.dtype)
  one = jnp.ones((), bits.dtype)

  def body(i, thr):  # largest thr with count(bits >= thr) >= k
    cand = thr | lax.shift_left(one, (nbits - 1 - i).astype(bits.dtype))
    return jnp.where(jnp.sum(bits >= cand, dtype=bits.dtype) >= k, cand, thr)

  thr = lax.fori_loop(0, nbits, body, jnp.zeros((), bits.dtype))
  greater, tied = bits > thr, bits == thr
  need = k - jnp.sum(greater, dtype=bits.dtype)
  n_tied = jnp.sum(tied, dtype=bits.dtype)
  tie_keep = lax.cond(  # usual case (continuous weights): one tied entry, all ties kept
    need >= n_tied,
    lambda: tied,
    lambda: tied & (jnp.cumsum(tied, dtype=bits.dtype) <= need),
  )
  return greater | tie_keep


def _n_keep(size, sparsity):
  """round(size * (1 - s)): exact in Python for static s, float32 for traced s."""
  if _is_static(sparsity):
    return round(size * (1.0 - float(sparsity)))
  return jnp.round(size * (1.0 - jnp.asarray(sparsity, jnp.float32))).astype(jnp.int32)


def _is_static(x):
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_sparsity(sparsity, upper=1.0, what="[0, 1)"):
  if _is_static(sparsity) and not 0.0 <= float(sparsity) < upper:
    raise ValueError(f"sparsity must be in {what} (fraction pruned), got {sparsity!r}")


def magnitude_mask(w, sparsity):
  """Unstructured magnitude mask: keep exactly k = round(size * (1 - sparsity)) largest |w|.

  Tie-breaking as jaxpruner `_topk_mask_calculator_internal`: among equal |w| the lower flat
  (C-order) indices are kept, so the density is exactly k / size. Unlike jaxpruner we do not
  keep max(1, k): issue 4 asks for density round(size * (1 - s)) / size, so a tensor with
  size * (1 - s) < 0.5 is pruned entirely. sparsity == 0 gives all True.

  Args:
    w: weights (any shape, float or int dtype); the score is |w|.
    sparsity: fraction pruned in [0, 1). A Python float is validated and may be a jit static
      argument; a traced scalar is accepted unchecked (k then computed in float32).
  Returns:
    bool array of w's shape, True = keep.
  """
  _check_sparsity(sparsity)
  w = jnp.asarray(w)
  if _is_static(sparsity) and float(sparsity) == 0.0:
    return jnp.ones(w.shape, bool)
  bits = _score_bits(w).reshape(-1)
  return _topk_keep(bits, _n_keep(w.size, sparsity)).reshape(w.shape)


def _check_nm(shape, n, m, axis):
  for name, v in (("n", n), ("m", m), ("axis", axis)):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
      raise ValueError(f"n:m {name} must be a Python int, got {v!r}")
  if not 1 <= n <= m:
    raise ValueError(f"n:m needs 1 <= n <= m (n = number kept of every m), got n={n}, m={m}")
  if not -len(shape) <= axis < len(shape):
    raise ValueError(f"n:m axis={axis} out of range for a kernel of shape {shape}")
  axis %= len(shape)
  if shape[axis] % m:
    raise ValueError(
      f"n:m m={m} must divide the contraction dim: shape[{axis}]={shape[axis]} of a "
      f"kernel of shape {shape}"
    )
  return axis


@functools.partial(jax.jit, static_argnames=("n", "m", "axis"))
def _nm_keep(w, n, m, axis):
  bits = _score_bits(w)
  shape = bits.shape
  g = bits.reshape(shape[:axis] + (shape[axis] // m, m) + shape[axis + 1 :])
  ax = axis + 1  # position within a group of m
  idx = lax.broadcasted_iota(jnp.int32, g.shape, ax)
  beaten_by = jnp.zeros(g.shape, jnp.int32)
  for j in range(m):  # O(m^2) pairwise rank, fused by XLA; m is small
    gj = lax.slice_in_dim(g, j, j + 1, axis=ax)
    beaten_by += ((gj > g) | ((gj == g) & (j > idx))).astype(jnp.int32)
  return (beaten_by < n).reshape(shape)


def nm_mask(w, n, m, axis=0):
  """n:m mask: keep the n largest |w| of every m consecutive weights along `axis`.

  `axis` is the contraction axis (0 for a Dense kernel [D_in, F]). Tie-breaking as jaxpruner
  `topk_n_by_m_mask_calculator` (stable argsort rank >= m - n kept): among equal |w| the
  *higher* indices win, so all-equal scores keep the last n of each group. Computed as a
  pairwise rank within each group (no double argsort).

  Raises:
    ValueError: n, m, axis not ints; not 1 <= n <= m; m not dividing w.shape[axis].
  """
  w = jnp.asarray(w)
  axis = _check_nm(w.shape, n, m, axis)
  if n == m:
    return jnp.ones(w.shape, bool)
  return _nm_keep(w, n=n, m=m, axis=axis)


def gradual_nm_mask(w, n, m, sparsity, axis=0):
  """Gradual n:m (bigsparse `iterative_nm.py`): the n:m mask plus the largest other |w|.

  Keeps exactly round(size * (1 - sparsity)) weights for sparsity in [0, 1 - n/m]; the n:m
  entries always come first, so sparsity == 1 - n/m gives `nm_mask(w, n, m, axis)` exactly.
  A traced sparsity above 1 - n/m is treated as 1 - n/m.
  """
  w = jnp.asarray(w)
  axis = _check_nm(w.shape, n, m, axis)
  final = 1.0 - n / m
  _check_sparsity(sparsity, final + 1e-9, f"[0, 1 - n/m] = [0, {final:g}] for {n}:{m}")
  if _is_static(sparsity) and float(sparsity) == 0.0:
    return jnp.ones(w.shape, bool)
  nm = nm_mask(w, n, m, axis)
  if _is_static(sparsity) and float(sparsity) >= final - 1e-9:
    return nm
  n_nm = w.size // m * n
  k = jnp.maximum(_n_keep(w.size, sparsity), n_nm)
  bits = _score_bits(w)
  bits = jnp.where(nm, jnp.iinfo(bits.dtype).max, bits)  # n:m entries rank first
  return _topk_keep(bits.reshape(-1), k).reshape(w.shape)


def global_magnitude_masks(kernels: Mapping[str, jax.Array], sparsity) -> dict[str, jax.Array]:
  """One magnitude threshold over all `kernels`: exactly round(total * (1 - s)) kept.

  Ties keep lower indices of the concatenation in sorted-key order (as jaxpruner
  `GlobalPruningMixin.create_masks` orders keys). Unlike jaxpruner's default we do not
  L2-normalize each tensor: raw |w| against one threshold.
  """
  _check_sparsity(sparsity)
  keys = sorted(kernels)
  arrays = [jnp.asarray(kernels[k]) for k in keys]
  if _is_static(sparsity) and float(sparsity) == 0.0:
    return {k: jnp.ones(a.shape, bool) for k, a in zip(keys, arrays, strict=True)}
  flat = _score_bits(jnp.concatenate([a.reshape(-1) for a in arrays]))  # promotes dtypes
  keep = _topk_keep(flat, _n_keep(flat.size, sparsity))
  out, at = {}, 0
  for k, a in zip(keys, arrays, strict=True):
    out[k] = keep[at : at + a.size].reshape(a.shape)
    at += a.size
  return out


def density(masks) -> float:
  """Fraction of True over all mask leaves of a pytree (host-side, for logs)."""
  leaves = jax.tree.leaves(masks)
  return count_nonzero(leaves) / max(1, sum(int(np.size(x)) for x in leaves))


def count_nonzero(masks) -> int:
  """Exact number of True (kept weights) over all mask leaves of a pytree (host-side)."""
  return sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree.leaves(masks))


# ---------------------------------------------------------------------------- spec


_CHOICES = ("kind", "schedule", "distribution")
_UNUSED = {  # fields a schedule ignores; they must keep their defaults
  "gradual": (),
  "oneshot": ("start_frac", "update_every"),
  "static": ("start_frac", "end_frac", "update_every"),
}


def _snap(spec, name):
  """Store float(_pct(x)) / 100 (moves 1/3 by < 1e-12) so str(spec) round-trips exactly."""
  object.__setattr__(spec, name, float(_pct(float(getattr(spec, name)))) / 100)


def _require(ok, message):
  if not ok:
    raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class SparsitySpec:
  """What to prune, how much, and when. `str(spec)` is the canonical spec term.

  kind: "unstructured" (magnitude top-k) or "nm" (n kept of every m along contraction).
  sparsity: final fraction pruned; required for unstructured, derived as 1 - n/m for nm.
  n, m: the n:m pattern (nm only).
  schedule: "gradual" (cubic ramp from start_frac to end_frac, masks every update_every
    steps; Frantar et al. 2023), "oneshot" (prune once at round(end_frac * T)) or "static"
    (masks from the initial weights at step 0).
  distribution: "uniform" (each tensor at `sparsity`) or "global" (unstructured only).
  Fields a schedule does not use must stay at their defaults (so a spec means what it says).
  """

  kind: str = "unstructured"
  sparsity: float | None = None
  n: int | None = None
  m: int | None = None
  schedule: str = "gradual"
  start_frac: float = DEFAULT_START_FRAC
  end_frac: float = DEFAULT_END_FRAC
  update_every: int = DEFAULT_UPDATE_EVERY
  distribution: str = "uniform"

  def __post_init__(self):
    for name, allowed in zip(_CHOICES, (KINDS, SCHEDULES, DISTRIBUTIONS), strict=True):
      value = getattr(self, name)
      _require(value in allowed, f"SparsitySpec.{name} must be one of {allowed}, got {value!r}")
    if self.kind == "nm":
      _require(self.n is not None and self.m is not None, "kind='nm' needs n and m")
      _check_nm((self.m,), self.n, self.m, 0)
      final = 1.0 - self.n / self.m
      _require(
        self.sparsity is None or abs(self.sparsity - final) < 1e-9,
        f"SparsitySpec.sparsity={self.sparsity} contradicts {self.n}:{self.m}; leave None",
      )
      object.__setattr__(self, "sparsity", final)
      _require(self.distribution == "uniform", "distribution='global' needs kind='unstructured'")
    else:
      _require(self.n is None and self.m is None, "SparsitySpec.n/m are only for kind='nm'")
      _require(_is_static(self.sparsity), "SparsitySpec.sparsity (in [0, 1)) is required")
      _check_sparsity(self.sparsity)
      _snap(self, "sparsity")
    for name in ("start_frac", "end_frac"):
      value = getattr(self, name)
      _require(0.0 <= value <= 1.0, f"SparsitySpec.{name} must be in [0, 1], got {value!r}")
      _snap(self, name)
    every = self.update_every
    _require(isinstance(every, int) and every >= 1, f"update_every must be an int >= 1: {every!r}")
    for name in _UNUSED[self.schedule]:
      _require(
        getattr(self, name) == getattr(SparsitySpec, name),
        f"SparsitySpec.{name} is unused by schedule={self.schedule!r}; keep its default",
      )
    _require(
      self.schedule != "gradual" or self.start_frac <= self.end_frac,
      f"SparsitySpec.start_frac={self.start_frac} must be <= end_frac={self.end_frac}",
    )

  def __str__(self):
    return format_term(self)


_BASE_RE = re.compile(r"^(?:s(\d+(?:\.\d+)?)|(\d+):(\d+))$")
_MOD_RE = re.compile(r"^([a-z]+)(\d+(?:\.\d+)?)?$")
_FLAGS = {"uniform": "distribution", "global": "distribution"}
_FLAGS.update({"gradual": "schedule", "oneshot": "schedule", "static": "schedule"})
_NUMERIC = {"start": "start_frac", "end": "end_frac", "every": "update_every"}


def is_sparsity_term(term: str) -> bool:
  """True if `term` (one `+`-separated part of a compression spec) is a sparsity term."""
  return bool(_BASE_RE.match(term.split("-", 1)[0]))


def parse_term(term: str) -> SparsitySpec:
  """Parse a sparsity term (grammar in the module docstring) into a SparsitySpec."""
  base, *mods = term.split("-")
  match = _BASE_RE.match(base)
  if not match:
    raise ValueError(f"unknown sparsity term {term!r}; allowed: {ALLOWED_TERMS}")
  if match.group(1) is not None:
    kw = dict(kind="unstructured", sparsity=float(match.group(1)) / 100)
  else:
    kw = dict(kind="nm", n=int(match.group(2)), m=int(match.group(3)))
  for mod in mods:
    match = _MOD_RE.match(mod)
    word, num = match.groups() if match else (mod, None)
    field = _FLAGS.get(word) if not num else _NUMERIC.get(word)
    if field is None or field in kw or (word == "every" and "." in num):
      raise ValueError(f"bad or repeated modifier {mod!r} in {term!r}; {ALLOWED_TERMS}")
    kw[field] = word if not num else int(num) if word == "every" else float(num) / 100
  try:
    return SparsitySpec(**kw)
  except ValueError as e:
    raise ValueError(f"sparsity term {term!r}: {e}") from None


def _pct(frac: float) -> str:
  """Shortest decimal percent P with float(P) / 100 == frac, else within 1e-12 of it."""
  texts = [f"{frac * 100:.{digits}f}" for digits in range(13)]
  exact = [t for t in texts if float(t) / 100 == frac]
  return (exact or [t for t in texts if abs(float(t) / 100 - frac) <= 1e-12] or texts)[0]


def format_term(spec: SparsitySpec) -> str:
  """Canonical spec term of `spec`; parse_term(format_term(spec)) == spec."""
  if spec.kind == "nm":
    parts = [f"{spec.n}:{spec.m}"]
  else:
    parts = ["s" + _pct(spec.sparsity)]
  if spec.distribution != "uniform":
    parts.append(spec.distribution)
  if spec.schedule != "gradual":
    parts.append(spec.schedule)
  if spec.start_frac != DEFAULT_START_FRAC:
    parts.append("start" + _pct(spec.start_frac))
  if spec.end_frac != DEFAULT_END_FRAC:
    parts.append("end" + _pct(spec.end_frac))
  if spec.update_every != DEFAULT_UPDATE_EVERY:
    parts.append(f"every{spec.update_every}")
  return "-".join(parts)


# ---------------------------------------------------------------------------- schedules


def schedule_steps(spec: SparsitySpec, total_steps: int) -> tuple[int, int]:
  """(start, end) steps: round(start_frac * T), round(end_frac * T)."""
  if not isinstance(total_steps, (int, np.integer)) or total_steps < 1:
    raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
  return round(spec.start_frac * total_steps), round(spec.end_frac * total_steps)


def target_sparsity(step, spec: SparsitySpec, total_steps: int) -> jax.Array:
  """Sparsity the masks should have when recomputed at `step` (float32; step may be traced).

  gradual (jaxpruner `PolynomialSchedule`, power=3: cubic gradual magnitude pruning):
      s(t) = s_T * (1 - (1 - p)^3),  p = clip(t + 1 - start, 0, end - start) / (end - start),
  so s = 0 up to start - 1 and s_T from end - 1 on (p = step >= start when start == end).
  oneshot: 0 before end, s_T from end. static: s_T at every step.
  """
  start, end = schedule_steps(spec, total_steps)
  step = jnp.asarray(step)  # kept integer: float32 steps would be inexact past 2^24
  s_final = jnp.float32(spec.sparsity)
  if spec.schedule == "static":
    return jnp.broadcast_to(s_final, step.shape)
  if spec.schedule == "oneshot":
    return jnp.where(step >= end, s_final, jnp.float32(0.0))
  if end == start:
    p = (step >= start).astype(jnp.float32)
  else:
    p = jnp.clip(step + 1 - start, 0, end - start).astype(jnp.float32) / (end - start)
  # 1 - (1 - p)^3 == p * (3 - 3p + p^2), without float32 cancellation near p = 0.
  return s_final * p * (3 - 3 * p + p * p)


def is_update_step(step, spec: SparsitySpec, total_steps: int):
  """Whether masks are recomputed at `step` (a bool for an int step, traced otherwise).

  gradual: jaxpruner `PeriodicSchedule` (step % update_every == 0 and start <= step <= end),
  plus step == end, so the last update reaches s_T even if end is not a multiple of
  update_every. oneshot: step == end. static: step == 0.
  Usage: before the forward pass of `step`,
      if is_update_step(step, ...): masks = compute_masks(kernels, spec, target_sparsity(...))
  with masks all True before the first update.
  """
  start, end = schedule_steps(spec, total_steps)
  if spec.schedule == "static":
    return step == 0
  if spec.schedule == "oneshot":
    return step == end
  return ((step % spec.update_every == 0) | (step == end)) & (step >= start) & (step <= end)


def update_steps(spec: SparsitySpec, total_steps: int) -> list[int]:
  """All steps in [0, total_steps) at which is_update_step is true (for logs and tests)."""
  return [t for t in range(total_steps) if is_update_step(t, spec, total_steps)]


def compute_masks(
  kernels: Mapping[str, jax.Array],
  spec: SparsitySpec,
  sparsity_now=None,
  *,
  nm_axis: int | Mapping[str, int] = 0,
) -> dict[str, jax.Array]:
  """Masks for the pruned `kernels` at sparsity `sparsity_now` (default: spec.sparsity).

  Unstructured: `magnitude_mask` per tensor (uniform) or `global_magnitude_masks`. n:m:
  `gradual_nm_mask` (= `nm_mask` at s = 1 - n/m). `nm_axis` is the contraction axis, one int
  or one per key; for a kernel contracting over several axes pass the innermost one (its
  groups are consecutive in the flattened contraction dim). `sparsity_now` may be traced.
  """
  s = spec.sparsity if sparsity_now is None else sparsity_now
  if spec.kind == "nm":

    def axis_of(k):
      return nm_axis[k] if isinstance(nm_axis, Mapping) else nm_axis

    return {k: gradual_nm_mask(w, spec.n, spec.m, s, axis_of(k)) for k, w in kernels.items()}
  if spec.distribution == "global":
    return global_magnitude_masks(kernels, s)
  return {k: magnitude_mask(w, s) for k, w in kernels.items()}
