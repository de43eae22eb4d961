"""Compression specs and the plan that injects them into every projection's matmul.

Lingo (as AQT): in `nn.Dense`, `dot_general(inputs, kernel)` has lhs = activations and
rhs = weights; both are contracted over the kernel's input axis.

A spec string is `+`-joined terms: `dense`; one quantization term `wXaY[-modifiers]` parsed by
`quant.parse_quant_term` (e.g. `w4a16`, `w4a4-g32`); one sparsity term parsed by
`sparsity.parse_term` (e.g. `s50`, `2:4`). Canonical order is quantization, then sparsity:
`w4a16+2:4`. `str(parse(s)) == s` for canonical strings.

Per-layer rules (`compression_rules` in the config) override the spec on layers whose path
matches a glob, e.g. Chen et al. 2025's "MLP output projection input at 8 bits while the rest
is W4A4" is `compression=w4a4`, `compression_rules="*/mlp/out=w4a8"`. Layer paths look like
`block_3/attn/q`, `block_3/mlp/out`, `lm_head`, `embed` (the lookup table: weights and
sparsity only, one scale per token vector), and for the two attention matmuls
`block_3/attn/scores` (q·k) and `block_3/attn/values` (probs·v). By default only the block
projections are compressed; a rule opts the head or the attention matmuls in (there the `w`
side quantizes the rhs operand, keys or values, and the `a` side queries or probabilities).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from compress_scaling import quant, sparsity

DENSE = "dense"
DEFAULT_SCOPE = "block_*"  # the global spec applies to every projection in every block
PROJECTIONS = ("attn/q", "attn/k", "attn/v", "attn/o", "mlp/gate", "mlp/up", "mlp/out")
ACTIVATION_MATMULS = ("attn/scores", "attn/values")  # both operands are activations
MASK_MODULE = "compress"  # name of the injected module; masks live at <layer>/dense/compress/mask


@dataclasses.dataclass(frozen=True)
class Compression:
  weights: quant.QuantSpec | None = None
  activations: quant.QuantSpec | None = None
  sparsity: sparsity.SparsitySpec | None = None

  def __str__(self) -> str:
    terms = []
    if self.weights is not None or self.activations is not None:
      terms.append(quant.format_quant_term(self.weights, self.activations))
    if self.sparsity is not None:
      terms.append(sparsity.format_term(self.sparsity))
    return "+".join(terms) or DENSE

  @property
  def is_dense(self) -> bool:
    return self.weights is None and self.activations is None and self.sparsity is None

  @property
  def density(self) -> float:
    """Target fraction of weights kept (1 for dense)."""
    s = self.sparsity
    if s is None:
      return 1.0
    return s.n / s.m if s.kind == "nm" else 1.0 - s.sparsity

  def bits_per_param(self, d_in: int | None = None) -> float:
    """Storage bits per (dense-shape) weight: kept values at the weight format's bits
    (scale overhead included, `quant.bits_per_param`; per-channel scales only when the
    contraction size `d_in` is given), plus sparse-index metadata: a 1-bit bitmap for
    unstructured sparsity, log2(C(m, n)) bits per group of m for n:m (2:4 -> log2(6)/4 =
    0.65 bits/weight, the information-theoretic index cost)."""
    bits = quant.bits_per_param(self.weights, d_in) * self.density
    s = self.sparsity
    if s is not None:
      bits += math.log2(math.comb(s.m, s.n)) / s.m if s.kind == "nm" else 1.0
    return bits

  def to_dict(self) -> dict[str, Any]:
    def asdict(x):
      return None if x is None else dataclasses.asdict(x)

    return {
      "spec": str(self),
      "weights": asdict(self.weights),
      "activations": asdict(self.activations),
      "sparsity": asdict(self.sparsity),
      "bits_per_param": self.bits_per_param(),
    }


def parse(spec: str) -> Compression:
  """Parses a spec string; raises ValueError naming the bad term and the allowed forms."""
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"compression: expected a spec string such as 'w4a16+2:4', got {spec!r}")
  terms = [t.strip() for t in spec.strip().split("+")]
  if terms == [DENSE]:
    return Compression()
  weights = activations = sparse = None
  seen_quant = False
  for term in terms:
    if sparsity.is_sparsity_term(term):
      if sparse is not None:
        raise ValueError(f"compression {spec!r}: more than one sparsity term")
      sparse = sparsity.parse_term(term)
    elif term.startswith("w"):
      if seen_quant:
        raise ValueError(f"compression {spec!r}: more than one quantization term")
      weights, activations = quant.parse_quant_term(term)
      seen_quant = True
    else:
      raise ValueError(
        f"compression {spec!r}: unknown term {term!r}; allowed: 'dense' alone, a quantization "
        "term 'wXaY[-modifiers]' (e.g. w4a16, w8a8, w4a4-g32, see quant.py), a sparsity term "
        "'sP' or 'n:m' (e.g. s50, s87.5, 2:4, see sparsity.py), joined with '+'"
      )
  return Compression(weights, activations, sparse)


def parse_rules(rules: str) -> tuple[tuple[str, Compression], ...]:
  """'glob=spec; glob=spec' -> ((glob, Compression), ...); first match wins."""
  out = []
  for item in filter(None, (r.strip() for r in rules.split(";"))):
    pattern, sep, spec = item.partition("=")
    if not sep or not pattern.strip():
      raise ValueError(
        f"compression_rules: expected 'layer_glob=spec' items separated by ';', got {item!r}"
      )
    out.append((pattern.strip(), parse(spec.strip())))
  return tuple(out)


def _apply_mask(module: nn.Module, w, spec: sparsity.SparsitySpec | None, axes):
  """(w with pruned entries zeroed, mask) for a sparse spec, (w, None) otherwise. The mask is
  `module`'s variable masks/mask (state, not a parameter), sharded like w."""
  if spec is None:
    return w, None
  mask = module.variable(
    "masks", "mask", nn.with_logical_partitioning(lambda: jnp.ones(w.shape, bool), axes)
  ).value
  return jnp.where(mask, w, jnp.zeros_like(w)), mask


class InjectedDotGeneral(nn.Module):
  """The `dot_general` of one matmul: mask, then fake-quantize, then lax.dot_general.

  The mask is state in the `masks` collection (not a parameter), so scales of a quantized
  sparse kernel are computed over the kept weights only. With `serving`, the quantized
  operands go through the integer path (`quant.int_dot_general`: int8 codes, int32
  accumulation, rescale) instead of fake quant. Per-matmul SQNR of both operands is sown into
  the `diagnostics` collection (computed only when that collection is mutable). Works as
  `dot_general_cls` in `nn.Dense`; accepts and ignores extra keyword arguments (flax.nnx
  passes more).
  """

  compression: Compression
  kernel_axes: tuple[str | None, ...]
  serving: bool = False

  @nn.compact
  def __call__(
    self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs
  ):
    del kwargs
    c = self.compression
    (lhs_contract, rhs_contract), _ = dimension_numbers
    rhs, mask = _apply_mask(self, rhs, c.sparsity, self.kernel_axes)
    if self.serving:
      return quant.int_dot_general(
        lhs,
        rhs,
        dimension_numbers,
        precision=precision,
        preferred_element_type=preferred_element_type,
        lhs_spec=c.activations,
        rhs_spec=c.weights,
      )
    rhs_q = quant.quantize(
      rhs, c.weights, axis=tuple(rhs_contract), mask=mask, key=self._key(c.weights)
    )
    lhs_q = quant.quantize(
      lhs, c.activations, axis=tuple(lhs_contract), key=self._key(c.activations)
    )
    if self.is_mutable_collection("diagnostics"):
      self.sow("diagnostics", "weights_sqnr_db", quant.sqnr_db(rhs, rhs_q))
      self.sow("diagnostics", "activations_sqnr_db", quant.sqnr_db(lhs, lhs_q))
    return lax.dot_general(
      lhs_q,
      rhs_q,
      dimension_numbers,
      precision=precision,
      preferred_element_type=preferred_element_type,
    )

  def _key(self, spec):
    if spec is None or spec.rounding != "stochastic":
      return None
    return self.make_rng("quant")


class CompressedTable(nn.Module):
  """Masks and fake-quantizes an embedding table [V, D] for lookups: one scale per row
  (per token vector, shared over D), the mask in the `masks` collection as for kernels."""

  compression: Compression
  axes: tuple[str | None, ...]

  @nn.compact
  def __call__(self, table_VxD):
    c = self.compression
    table_VxD, mask = _apply_mask(self, table_VxD, c.sparsity, self.axes)
    key = self.make_rng("quant") if c.weights and c.weights.rounding == "stochastic" else None
    return quant.quantize(table_VxD, c.weights, axis=1, mask=mask, key=key)


def make_dot_general(
  lhs_spec: quant.QuantSpec | None = None, rhs_spec: quant.QuantSpec | None = None
):
  """A plain fake-quant `dot_general` (lhs = activations, rhs = weights), e.g. for
  `nn.Dense(dot_general=make_dot_general(a_spec, w_spec))` outside a Plan: each side is
  quantized with its scale shared over its contraction axes. Deterministic specs only."""
  for side, spec in (("lhs", lhs_spec), ("rhs", rhs_spec)):
    if spec is not None and spec.rounding == "stochastic":
      raise ValueError(
        f"make_dot_general: {side}_spec uses stochastic rounding, which needs a "
        "PRNG key; use a Plan (InjectedDotGeneral) instead"
      )

  def dot_general(
    lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs
  ):
    del kwargs
    (lhs_contract, rhs_contract), _ = dimension_numbers
    return lax.dot_general(
      quant.quantize(lhs, lhs_spec, axis=tuple(lhs_contract)),
      quant.quantize(rhs, rhs_spec, axis=tuple(rhs_contract)),
      dimension_numbers,
      precision=precision,
      preferred_element_type=preferred_element_type,
    )

  return dot_general


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which compression each matmul gets; hands each layer its `dot_general`.

  `serving=True` evaluates quantized matmuls through the integer path (eval only).
  """

  default: Compression = Compression()
  rules: tuple[tuple[str, Compression], ...] = ()
  serving: bool = False

  @classmethod
  def from_config(cls, spec: str, rules: str = "") -> Plan:
    return cls(parse(spec), parse_rules(rules))

  def for_layer(self, path: str) -> Compression:
    for pattern, comp in self.rules:
      if fnmatch.fnmatchcase(path, pattern):
        return comp
    in_scope = any(fnmatch.fnmatchcase(path, f"{DEFAULT_SCOPE}/{p}") for p in PROJECTIONS)
    return self.default if in_scope else Compression()

  def dot_general_cls(self, path: str, kernel_axes):
    """For `nn.Dense(dot_general_cls=...)`: None (plain lax.dot_general) when uncompressed."""
    comp = self.for_layer(path)
    if comp.is_dense:
      return None
    return functools.partial(
      InjectedDotGeneral, comp, tuple(kernel_axes), self.serving, name=MASK_MODULE
    )

  def table_transform(self, path: str, axes):
    """For an embedding table (path `embed`): the masking / quantizing module, or the
    identity when uncompressed. Call inside setup / a compact method."""
    comp = self.for_layer(path)
    if comp.is_dense:
      return lambda table: table
    return CompressedTable(comp, tuple(axes), name=MASK_MODULE)

  def dot_general(self, path: str):
    """For matmuls without a kernel (attention scores / values), called inside a compact
    method: the injected module (named after the matmul), or lax.dot_general."""
    comp = self.for_layer(path)
    if comp.is_dense:
      return lax.dot_general
    if comp.sparsity is not None:
      raise ValueError(f"compression rule for {path}: sparsity applies to weight kernels only")
    return InjectedDotGeneral(comp, (), self.serving, name=path.rsplit("/", 1)[-1])


# --------------------------------------------------------------------------- masks ----------


def _path_keys(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", k)) for k in path)


def _owner(mask_path: tuple[str, ...]) -> tuple[str, ...]:
  """The module holding the masked weight: <layer>/dense for kernels, `embed` for tables."""
  assert mask_path[-2:] == (MASK_MODULE, "mask"), mask_path
  return mask_path[:-2]


def layer_of(mask_path: tuple[str, ...]) -> str:
  owner = _owner(mask_path)
  return "/".join(owner[:-1] if owner[-1] == "dense" else owner)


def _weight_paths(params, masks) -> dict[tuple[str, ...], tuple[str, ...]]:
  """mask path -> path of the one parameter of its owner (the kernel or the table)."""
  owners: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
  for p, _ in jax.tree_util.tree_leaves_with_path(params):
    keys = _path_keys(p)
    owners.setdefault(keys[:-1], []).append(keys)
  out = {}
  for p, _ in jax.tree_util.tree_leaves_with_path(masks):
    keys = _path_keys(p)
    (weight,) = owners[_owner(keys)]
    out[keys] = weight
  return out


def kernels_for_masks(params, masks) -> dict[tuple[str, ...], jax.Array]:
  flat = {_path_keys(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
  return {m: flat[w] for m, w in _weight_paths(params, masks).items()}


def apply_masks(params, masks):
  """Zeroes pruned weights (after every optimizer update, so they stay exactly zero)."""
  if not masks:
    return params
  flat_masks = {_path_keys(p): m for p, m in jax.tree_util.tree_leaves_with_path(masks)}
  by_weight = {w: flat_masks[m] for m, w in _weight_paths(params, masks).items()}
  return jax.tree_util.tree_map_with_path(
    lambda p, w: jnp.where(by_weight[k], w, 0) if (k := _path_keys(p)) in by_weight else w,
    params,
  )


def update_masks(plan: Plan, params, masks, step, total_steps: int):
  """Recomputes the masks of each sparsity spec on its schedule's update steps.

  Called at the start of a train step, before the forward pass (sparsity.is_update_step);
  under jit the recomputation runs in a lax.cond, so other steps pay only the predicate.
  """
  if not masks:
    return masks
  flat = {_path_keys(p): m for p, m in jax.tree_util.tree_leaves_with_path(masks)}
  kernels = kernels_for_masks(params, masks)
  by_spec: dict[sparsity.SparsitySpec, list[tuple[str, ...]]] = {}
  for path in flat:
    by_spec.setdefault(plan.for_layer(layer_of(path)).sparsity, []).append(path)
  new = dict(flat)
  for spec, paths in by_spec.items():
    names = ["/".join(p) for p in paths]
    old = {n: flat[p] for n, p in zip(names, paths)}
    sub = {n: kernels[p] for n, p in zip(names, paths)}

    def recompute(sub=sub, spec=spec):
      return sparsity.compute_masks(sub, spec, sparsity.target_sparsity(step, spec, total_steps))

    updated = lax.cond(
      sparsity.is_update_step(step, spec, total_steps), recompute, lambda old=old: old
    )
    new.update({p: updated[n] for n, p in zip(names, paths)})
  return jax.tree_util.tree_map_with_path(lambda p, _: new[_path_keys(p)], masks)
