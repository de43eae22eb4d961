"""A Llama-style decoder in Flax linen: RMSNorm, rotary positions, SwiGLU, no biases.

Every projection is an `nn.Dense` whose `dot_general_cls` comes from the compression plan
(`compression.Plan`), so quantization and sparsity are injected, never branched on here.
Shape suffixes: B batch, L length, D d_model, H heads, K kv heads, E head dim, F d_ff,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from compress_scaling import compression, quant, sizes


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  dims: sizes.Dims
  vocab_size: int
  tie_embeddings: bool = False
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-5
  dtype: Any = jnp.float32
  remat: str = "none"  # a key of REMAT_POLICIES

  @property
  def d_head(self) -> int:
    return self.dims.d_model // self.dims.n_heads


def _kernel_init(*axes: str | None):
  # fan-in truncated normal, as maxtext's default dense init.
  return nn.with_logical_partitioning(
    nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"), axes
  )


def _norm(cfg: ModelConfig, name: str) -> nn.RMSNorm:
  return nn.RMSNorm(
    epsilon=cfg.norm_eps,
    dtype=cfg.dtype,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
    name=name,
  )


class Projection(nn.Module):
  """A bias-free Dense whose matmul comes from the compression plan."""

  features: int
  axes: tuple[str | None, str | None]
  plan: compression.Plan
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    # Input kurtosis (Chen et al. 2025 find the MLP output projection's input the outlier
    # bottleneck); computed only when `diagnostics` is mutable (eval with diagnostics on).
    if self.is_mutable_collection("diagnostics"):
      self.sow("diagnostics", "input_kurtosis", quant.kurtosis(x.astype(jnp.float32)))
    # Mixed precision: the kernel is a float32 param (param_dtype), cast to `dtype` by Dense's
    # promote_dtype before the injected dot_general sees it, so under bf16 the weight quantizer
    # scales the bf16 kernel, as AQT's flax dot_general_cls does inside flax / MaxText Dense.
    # quant.quantize computes scales and rounding in float32 and rounds the result once to bf16
    # (tests/test_precision.py); gradients reach the float32 master weights through the cast.
    return nn.Dense(
      self.features,
      use_bias=False,
      dtype=self.dtype,
      kernel_init=_kernel_init(*self.axes),
      dot_general_cls=self.plan.dot_general_cls("/".join(self.path), self.axes),
      name="dense",
    )(x)


def rotary(x_BxLxHxE, theta: float):
  """RoFormer rotary embedding (arXiv 2104.09864), half-split layout as in Llama/maxtext."""
  _, L, _, E = x_BxLxHxE.shape
  freq_E2 = theta ** (-jnp.arange(0, E, 2, dtype=jnp.float32) / E)
  angle_LxE2 = jnp.arange(L, dtype=jnp.float32)[:, None] * freq_E2[None, :]
  sin, cos = jnp.sin(angle_LxE2)[None, :, None, :], jnp.cos(angle_LxE2)[None, :, None, :]
  x1, x2 = jnp.split(x_BxLxHxE.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxHxE.dtype)


class Attention(nn.Module):
  cfg: ModelConfig
  plan: compression.Plan

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg, dims = self.cfg, self.cfg.dims
    B, L, _ = x_BxLxD.shape
    H, K, E = dims.n_heads, dims.n_kv_heads, cfg.d_head

    def proj(name, features, axes):
      return Projection(features, axes, self.plan, cfg.dtype, name=name)

    q_BxLxHxE = proj("q", H * E, ("embed", "heads"))(x_BxLxD).reshape(B, L, H, E)
    k_BxLxKxE = proj("k", K * E, ("embed", "kv_heads"))(x_BxLxD).reshape(B, L, K, E)
    v_BxLxKxE = proj("v", K * E, ("embed", "kv_heads"))(x_BxLxD).reshape(B, L, K, E)
    q_BxLxHxE = rotary(q_BxLxHxE, cfg.rope_theta)
    k_BxLxKxE = rotary(k_BxLxKxE, cfg.rope_theta)
    # Grouped-query attention: each kv head serves H // K query heads.
    k_BxLxHxE = jnp.repeat(k_BxLxKxE, H // K, axis=2)
    v_BxLxHxE = jnp.repeat(v_BxLxKxE, H // K, axis=2)

    # Scores and softmax in float32 for stability under bfloat16 activations.
    # The two attention matmuls also take their dot_general from the plan (uncompressed by
    # default; quantizable by rule), so they are written as explicit dot_generals.
    path = "/".join(self.path)
    scores_dot = self.plan.dot_general(f"{path}/scores")
    values_dot = self.plan.dot_general(f"{path}/values")
    logits_BxHxLxL = scores_dot(  # contract E; batch over (B, H)
      q_BxLxHxE,
      k_BxLxHxE,
      (((3,), (3,)), ((0, 2), (0, 2))),
      precision=None,  # passed explicitly: peer dot_generals (aqtp) take it positionally
      preferred_element_type=jnp.float32,
    ) / jnp.sqrt(E).astype(jnp.float32)
    # Causal mask as an additive bias: XLA:CPU fuses an add into the softmax better than a
    # select (attention forward 2x faster, measured); exp(-1e30 - max) is exactly 0.
    causal_bias_LxL = jnp.where(jnp.tril(jnp.ones((L, L), dtype=bool)), 0.0, -1e30)
    logits_BxHxLxL = logits_BxHxLxL + causal_bias_LxL.astype(jnp.float32)
    probs_BxHxLxL = jax.nn.softmax(logits_BxHxLxL, axis=-1).astype(cfg.dtype)
    out_BxHxLxE = values_dot(  # contract the key axis; batch over (B, H)
      probs_BxHxLxL, v_BxLxHxE, (((3,), (1,)), ((0, 1), (0, 2))), precision=None
    )
    out_BxLxHxE = out_BxHxLxE.transpose(0, 2, 1, 3)
    return proj("o", dims.d_model, ("heads", "embed"))(out_BxLxHxE.reshape(B, L, H * E))


class Mlp(nn.Module):
  """SwiGLU (Shazeer 2020, arXiv 2002.05202): out(silu(gate(x)) * up(x))."""

  cfg: ModelConfig
  plan: compression.Plan

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    F = cfg.dims.d_ff
    gate_BxLxF = Projection(F, ("embed", "mlp"), self.plan, cfg.dtype, name="gate")(x_BxLxD)
    up_BxLxF = Projection(F, ("embed", "mlp"), self.plan, cfg.dtype, name="up")(x_BxLxD)
    h_BxLxF = nn.with_logical_constraint(nn.silu(gate_BxLxF) * up_BxLxF, ("batch", "length", "mlp"))
    return Projection(cfg.dims.d_model, ("mlp", "embed"), self.plan, cfg.dtype, name="out")(h_BxLxF)


class Block(nn.Module):
  cfg: ModelConfig
  plan: compression.Plan

  @nn.compact
  def __call__(self, x_BxLxD):
    h_BxLxD = Attention(self.cfg, self.plan, name="attn")(_norm(self.cfg, "attn_norm")(x_BxLxD))
    x_BxLxD = nn.with_logical_constraint(x_BxLxD + h_BxLxD, ("batch", "length", "embed"))
    h_BxLxD = Mlp(self.cfg, self.plan, name="mlp")(_norm(self.cfg, "mlp_norm")(x_BxLxD))
    return nn.with_logical_constraint(x_BxLxD + h_BxLxD, ("batch", "length", "embed"))


# Rematerialisation of a Block in the backward pass: None = no remat; otherwise the
# jax.checkpoint policy of nn.remat, i.e. which residuals of the block's forward pass are kept
# (all others are recomputed). "full" keeps nothing but the block's input (policy None of
# jax.checkpoint); "save_dots" keeps the outputs of the matmuls without batch dimensions (the
# projections) and recomputes norms, rotary, softmax and the two attention matmuls, whose
# [B, H, L, L] outputs are the largest activations and cheap to recompute: MaxText's
# remat_policy "minimal" (jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims).
REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def block_class(remat: str):
  """Block, or Block under nn.remat with the policy named by `remat` (REMAT_POLICIES). Param
  and mask paths are the same either way (block_<i>/...), so checkpoints are interchangeable."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat={remat!r}: allowed {', '.join(REMAT_POLICIES)}")
  if remat == "none":
    return Block
  # prevent_cse keeps XLA from merging the recomputation with the forward pass (the jax
  # default; needed outside scan).
  return nn.remat(Block, policy=REMAT_POLICIES[remat], prevent_cse=True)


class Embedding(nn.Module):
  """Token embedding [V, D]; its table passes through the plan (path `embed`, uncompressed by
  default) for lookups and, when tied, for the output projection."""

  vocab_size: int
  d_model: int
  plan: compression.Plan
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param(
      "embedding",
      nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
      (self.vocab_size, self.d_model),
    )
    self.compress = self.plan.table_transform("embed", ("vocab", "embed"))

  def __call__(self, tokens_BxL):
    return jnp.take(self.compress(self.embedding), tokens_BxL, axis=0).astype(self.dtype)

  def attend(self, x_BxLxD):
    table_VxD = self.compress(self.embedding).astype(self.dtype)
    return jnp.einsum("bld,vd->blv", x_BxLxD, table_VxD)


class Transformer(nn.Module):
  """tokens [B, L] int32 -> next-token logits [B, L, V] float32."""

  cfg: ModelConfig
  plan: compression.Plan

  @nn.compact
  def __call__(self, tokens_BxL):
    cfg = self.cfg
    embed = Embedding(cfg.vocab_size, cfg.dims.d_model, self.plan, cfg.dtype, name="embed")
    x_BxLxD = nn.with_logical_constraint(embed(tokens_BxL), ("batch", "length", "embed"))
    block = block_class(cfg.remat)
    for i in range(cfg.dims.n_layers):
      x_BxLxD = block(cfg, self.plan, name=f"block_{i}")(x_BxLxD)
    x_BxLxD = _norm(cfg, "final_norm")(x_BxLxD)
    if cfg.tie_embeddings:
      logits_BxLxV = embed.attend(x_BxLxD)
    else:
      logits_BxLxV = Projection(
        cfg.vocab_size, ("embed", "vocab"), self.plan, cfg.dtype, name="lm_head"
      )(x_BxLxD)
    return logits_BxLxV.astype(jnp.float32)


EMBEDDING_PARAMS = ("embed", "lm_head")  # top-level modules excluded from non-embedding N


def count_params(params) -> tuple[int, int]:
  """(non-embedding, total) parameter counts of a params tree (abstract or concrete)."""
  total = non_embedding = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(params)):
    size = math.prod(leaf.shape)
    total += size
    if str(getattr(path[0], "key", path[0])) not in EMBEDDING_PARAMS:
      non_embedding += size
  return non_embedding, total


def cross_entropy(logits_BxLxV, targets_BxL, weights_BxL=None):
  """Token-weighted mean next-token cross-entropy (nats/token) and the token count."""
  logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  nll_BxL = -jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  if weights_BxL is None:
    weights_BxL = jnp.ones_like(nll_BxL)
  n_tokens = jnp.sum(weights_BxL)
  return jnp.sum(nll_BxL * weights_BxL) / jnp.maximum(n_tokens, 1.0), n_tokens
