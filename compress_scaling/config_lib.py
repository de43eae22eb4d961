"""Reads and validates a run config before anything is compiled or written.

Every problem is reported at once, each naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os

import jax.numpy as jnp

from compress_scaling import compression, data, paths, sharding, sizes
from compress_scaling.config_identity import config_hash, to_dict  # noqa: F401 -- re-exported
from compress_scaling.model import REMAT_POLICIES, ModelConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT = tuple(REMAT_POLICIES)


class ConfigError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Resolved:
  model: ModelConfig
  plan: compression.Plan
  mesh_shape: tuple[int, int, int]
  microbatches: int = 1


def microbatches(c) -> int:
  """config.microbatches; 1 for a config recorded before the field existed (a log entry)."""
  return c.get("microbatches", 1)


def remat(c) -> str:
  """config.model.remat; 'none' for a config recorded before the field existed."""
  return c.model.get("remat", "none")


def _check(errors: list[str], ok: bool, message: str) -> None:
  if not ok:
    errors.append(message)


def _check_data(errors: list[str], d):
  """Checks the data fields; returns the tokenizer (None if it cannot be loaded)."""
  _check(
    errors, d.source in data.SOURCES, f"data.source={d.source!r}: allowed {', '.join(data.SOURCES)}"
  )
  _check(errors, 0 < d.val_percent < 100, f"data.val_percent={d.val_percent}: allowed 1..99")
  _check(
    errors,
    isinstance(d.docs_per_row, int) and d.docs_per_row >= 0,
    f"data.docs_per_row={d.docs_per_row!r}: allowed 0 (from the mean document length) or a "
    "positive integer",
  )
  # Remote paths (gs://) are not checked for existence (that needs the network and a GCS
  # filesystem); the tokenizer and the dataset are opened below, and a failure names the field.
  tokenizer_found = d.tokenizer in data.TOKENIZERS or (
    bool(d.tokenizer) and (paths.is_remote(d.tokenizer) or os.path.isfile(d.tokenizer))
  )
  _check(
    errors,
    tokenizer_found,
    f"data.tokenizer={d.tokenizer!r}: allowed {', '.join(map(repr, data.TOKENIZERS))} or the "
    "path (local or gs://) of a SentencePiece .model file; no such file",
  )
  if d.source == "tfds":
    n_errors = len(errors)
    _check(
      errors,
      bool(d.data_dir),
      "data.data_dir='': data.source='tfds' reads a dataset prepared (array_record) under a "
      "local or gs:// directory; nothing is downloaded. Set data.data_dir",
    )
    _check(
      errors,
      not d.data_dir or paths.is_remote(d.data_dir) or os.path.isdir(d.data_dir),
      f"data.data_dir={d.data_dir!r}: no such directory",
    )
    for field in ("tfds_name", "train_split", "val_split", "text_key"):
      _check(
        errors,
        isinstance(d[field], str) and bool(d[field]),
        f"data.{field}={d[field]!r}: must be a non-empty string for data.source='tfds'",
      )
    if len(errors) == n_errors:  # open the dataset: its name, format, splits and text feature
      from compress_scaling import data_tfds  # noqa: PLC0415 -- imports tfds

      errors += data_tfds.check(d)
  if not tokenizer_found:
    return None
  try:
    return data.make_tokenizer(d.tokenizer)
  except ValueError as e:
    errors.append(str(e))
    return None


def validate(c, n_devices: int) -> Resolved:
  """Returns the resolved model/plan/mesh or raises ConfigError listing every problem."""
  errors: list[str] = []
  for field in (
    "total_steps",
    "batch_size",
    "seq_len",
    "eval_every",
    "eval_batches",
    "checkpoint_every",
    "log_every",
    "checkpoints_to_keep",
  ):
    _check(
      errors,
      isinstance(c[field], int) and c[field] > 0,
      f"{field}={c[field]!r}: must be a positive integer",
    )
  for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab_size"):
    _check(
      errors,
      c.model[field] >= 0,
      f"model.{field}={c.model[field]}: must be > 0, or 0 for the default",
    )
  o = c.optimizer
  _check(errors, o.lr > 0, f"optimizer.lr={o.lr}: must be > 0")
  _check(errors, 0 <= o.warmup_frac < 1, f"optimizer.warmup_frac={o.warmup_frac}: allowed [0, 1)")
  _check(
    errors, 0 <= o.min_lr_ratio <= 1, f"optimizer.min_lr_ratio={o.min_lr_ratio}: allowed [0, 1]"
  )
  _check(errors, o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay}: must be >= 0")
  _check(errors, o.grad_clip > 0, f"optimizer.grad_clip={o.grad_clip}: must be > 0")
  _check(
    errors, 0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"optimizer.b1/b2=({o.b1}, {o.b2}): allowed [0, 1)"
  )
  _check(
    errors, c.model.dtype in DTYPES, f"model.dtype={c.model.dtype!r}: allowed {', '.join(DTYPES)}"
  )
  _check(
    errors,
    remat(c) in REMAT,
    f"model.remat={remat(c)!r}: allowed {', '.join(REMAT)}",
  )
  n_micro = microbatches(c)
  n_micro_ok = isinstance(n_micro, int) and not isinstance(n_micro, bool) and n_micro >= 1
  _check(
    errors,
    n_micro_ok,
    f"microbatches={n_micro!r}: must be a positive integer (1 = no gradient accumulation)",
  )
  tokenizer = _check_data(errors, c.data)

  dims = plan = mesh_shape = None
  try:
    dims = sizes.resolve_dims(c.model)
  except ValueError as e:
    errors.append(str(e))
  try:
    plan = compression.Plan.from_config(c.compression, c.compression_rules)
  except ValueError as e:
    errors.append(str(e) if "compression" in str(e) else f"compression={c.compression!r}: {e}")
  try:
    mesh_shape = sharding.mesh_shape(c.mesh, n_devices)
  except ValueError as e:
    errors.append(str(e))

  vocab = c.model.vocab_size
  if tokenizer is not None:
    if vocab == 0:
      vocab = tokenizer.vocab_size
    _check(
      errors,
      vocab >= tokenizer.vocab_size,
      f"model.vocab_size={vocab} is smaller than the {tokenizer.vocab_size} ids of "
      f"data.tokenizer={c.data.tokenizer!r}; use 0 (the tokenizer's) or more",
    )
  if dims is not None:
    d, h, k = dims.d_model, dims.n_heads, dims.n_kv_heads
    _check(
      errors,
      min(dims.d_model, dims.n_layers, dims.n_heads, dims.d_ff) > 0,
      f"model dims {dims}: all must be positive",
    )
    if h > 0 and k > 0:
      _check(errors, d % h == 0, f"model.n_heads={h} does not divide model.d_model={d}")
      _check(errors, h % k == 0, f"model.n_kv_heads={k} does not divide model.n_heads={h}")
      _check(
        errors,
        d % h or (d // h) % 2 == 0,
        f"model.d_model/n_heads={d // h}: the head dim must be even (rotary embedding)",
      )
  if mesh_shape is not None:
    data_par = mesh_shape[0] * mesh_shape[1]
    if c.batch_size > 0:
      _check(
        errors,
        c.batch_size % data_par == 0,
        f"batch_size={c.batch_size} is not divisible by the data-parallel size "
        f"mesh.data x mesh.fsdp = {data_par}",
      )
    if c.batch_size > 0 and c.batch_size % data_par == 0 and n_micro_ok:
      per_shard = c.batch_size // data_par
      _check(
        errors,
        per_shard % n_micro == 0,
        f"microbatches={n_micro} does not divide the batch per data-parallel shard, batch_size / "
        f"(mesh.data x mesh.fsdp) = {c.batch_size} / {data_par} = {per_shard}; allowed: "
        f"divisors of {per_shard}",
      )
    t = mesh_shape[2]
    if dims is not None and t > 1:
      for name, size in (
        ("model.n_heads", dims.n_heads),
        ("model.n_kv_heads", dims.n_kv_heads),
        ("model.d_ff", dims.d_ff),
        ("model.vocab_size", vocab),
      ):
        _check(errors, size % t == 0, f"mesh.tensor={t} does not divide {name}={size}")
  if plan is not None and c.eval_serving:
    comps = [plan.default] + [comp for _, comp in plan.rules]
    for spec in (q for comp in comps for q in (comp.weights, comp.activations) if q is not None):
      _check(
        errors,
        spec.is_integer_grid and spec.rounding == "nearest",
        f"eval_serving=True: the integer serving path needs integer formats with nearest "
        f"rounding; {spec.numerics} {spec.fmt or ''} {spec.rounding} is not one",
      )
  if plan is not None:
    embed = plan.for_layer("embed")
    _check(
      errors,
      embed.activations is None,
      f"compression_rules: embed={embed}: an embedding lookup has no activation operand; "
      "only weight quantization and sparsity apply",
    )
    _check(
      errors,
      not (
        c.model.tie_embeddings
        and any(fnmatch.fnmatchcase("lm_head", pattern) for pattern, _ in plan.rules)
      ),
      "compression_rules: with model.tie_embeddings the head reuses the embedding table; "
      "compress it with an 'embed=...' rule, not 'lm_head=...'",
    )
  if dims is not None and plan is not None and not errors:
    errors += _check_compression_shapes(plan, dims, c.seq_len)
  if errors:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
  model = ModelConfig(
    dims=dims,
    vocab_size=vocab,
    tie_embeddings=c.model.tie_embeddings,
    rope_theta=c.model.rope_theta,
    norm_eps=c.model.norm_eps,
    dtype=DTYPES[c.model.dtype],
    remat=remat(c),
  )
  return Resolved(model, plan, mesh_shape, microbatches(c))


def layer_contractions(dims: sizes.Dims, seq_len: int) -> dict[str, int]:
  """Every matmul's layer path -> its contraction size."""
  e = dims.d_model // dims.n_heads
  out = {}
  for i in range(dims.n_layers):
    out[f"block_{i}/attn/scores"], out[f"block_{i}/attn/values"] = e, seq_len
    for name in ("q", "k", "v"):
      out[f"block_{i}/attn/{name}"] = dims.d_model
    out[f"block_{i}/attn/o"] = dims.n_heads * e
    out[f"block_{i}/mlp/gate"] = out[f"block_{i}/mlp/up"] = dims.d_model
    out[f"block_{i}/mlp/out"] = dims.d_ff
  out["lm_head"] = dims.d_model
  return out


def _check_compression_shapes(plan: compression.Plan, dims: sizes.Dims, seq_len: int) -> list[str]:
  """Group sizes and n:m blocks must divide every compressed layer's contraction dim;
  sparsity applies to weight kernels only."""
  errors = []
  for path, k in layer_contractions(dims, seq_len).items():
    comp = plan.for_layer(path)
    if comp.sparsity is not None and path.endswith(compression.ACTIVATION_MATMULS):
      errors.append(
        f"compression_rules: {path} multiplies two activations; sparsity "
        f"({str(comp)!r}) applies to weight kernels only"
      )
    for side, spec in (("weights", comp.weights), ("activations", comp.activations)):
      if spec is not None and spec.group_size and k % spec.group_size:
        errors.append(
          f"compression={str(comp)!r}: {side} group size {spec.group_size} does not "
          f"divide the contraction dim {k} of {path}"
        )
    s = comp.sparsity
    if s is not None and s.kind == "nm" and k % s.m:
      errors.append(
        f"compression={str(comp)!r}: m={s.m} does not divide the contraction dim {k} of {path}"
      )
  errors = sorted(set(errors))
  return errors[:5] + ([f"... and {len(errors) - 5} more layers"] if len(errors) > 5 else [])
