"""Per-device memory of a config's train step: params, optimizer state, masks, activations.

Two sources, each result says which it is:

  compiled   `jax.jit(train_step).lower(abstract state, batch spec).compile().memory_analysis()`
             on this backend (CPU, TPU and GPU report it): XLA's own buffer assignment for
             the mesh, dtype, remat policy and microbatching chosen. Lowering uses the
             eval_shape'd state of `steps.Setup` (ShapeDtypeStructs with shardings), so nothing
             is allocated; only compile time is spent (seconds for CPU-sized models, minutes
             for billion-parameter ones).
  analytic   arithmetic on the dims (`analytic`), JAX-free, so `launch.sweep --dry_run` prints
             it for paper-sized configs instantly. The state (params f32, Adam's two f32
             moments, bool masks) is counted exactly up to rounding of shard sizes; the
             activations are the residuals the backward pass keeps per block under the remat
             policy (model.REMAT_POLICIES), one block's recomputed residuals and backward
             workspace, the head's logits, the float32 gradient accumulator under
             microbatching and the masked / fake-quantized kernels. Its per-tensor counts
             were fitted to XLA:CPU's buffer assignment (with cpu_flags) at float32, remat
             none: 0.97-1.01 of `compiled` there, 0.97 on a held-out config
             (tests/test_memory.py).

Two places where XLA:CPU's compiled numbers are not what an accelerator does, so `analytic`
deliberately differs there: bfloat16 (XLA:CPU upcasts bf16 matmuls to float32 and keeps the f32
copies: a bf16 step compiles to about the f32 step's memory on CPU, analytic ~0.72 of it) and
remat (XLA:CPU schedules the recomputation early and keeps most residuals: 1m full / save_dots
compile to 0.92 / 0.94 of remat none on CPU; analytic 0.52 / 0.73, the savings remat is
meant to give, not measured on an accelerator here). On an accelerator, trust `compiled`.

"Activations" is everything the step allocates beyond the state it is given: activations,
gradients, optimizer temporaries and the batch; total = params + opt_state + masks +
activations is the per-device peak (compiled: argument + output - aliased + temp bytes).
"""

from __future__ import annotations

import dataclasses
import math
import re

from compress_scaling import sizes

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
BYTE_VOCAB = 256  # tokenizers.ByteTokenizer.vocab_size (this module imports no JAX or numpy)
ASSUMED_VOCAB = 32_128  # T5's SentencePiece vocabulary, when a tokenizer file is not opened


def fmt_bytes(b: float) -> str:
  return f"{b / GIB:.2f} GiB" if b >= GIB else f"{b / 2**20:.1f} MiB"


def scaled(f: Footprint, k: int) -> Footprint:
  """K replicas stacked in one program (replicas.py): every part K times."""
  if k == 1:
    return f
  return dataclasses.replace(
    f,
    params=f.params * k,
    opt_state=f.opt_state * k,
    masks=f.masks * k,
    activations=f.activations * k,
    note="; ".join(filter(None, [f.note, f"{k} replicas"])),
  )


@dataclasses.dataclass(frozen=True)
class Footprint:
  """Bytes per device of one train step."""

  params: int
  opt_state: int
  masks: int  # sparsity masks (the only quantizer/compression state: scales are recomputed)
  activations: int  # activations, gradients, optimizer temporaries, batch
  source: str  # "compiled" (XLA memory_analysis) or "analytic" (this module's arithmetic)
  note: str = ""

  @property
  def total(self) -> int:
    return self.params + self.opt_state + self.masks + self.activations

  def line(self, device_memory_gib: float | None = None) -> str:
    out = (
      f"memory/device ({self.source}): params {fmt_bytes(self.params)}, opt_state "
      f"{fmt_bytes(self.opt_state)}, masks {fmt_bytes(self.masks)}, activations "
      f"{fmt_bytes(self.activations)}, total {fmt_bytes(self.total)}"
    )
    if self.note:
      out += f" ({self.note})"
    warning = self.warning(device_memory_gib)
    return out + (f"\n{warning}" if warning else "")

  def warning(self, device_memory_gib: float | None) -> str | None:
    """A WARNING line when the total exceeds `device_memory_gib` (None: no device named)."""
    if device_memory_gib is None or self.total <= device_memory_gib * GIB:
      return None
    return (
      f"WARNING: needs {fmt_bytes(self.total)} per device ({self.source}), more than "
      f"--device_memory_gib={device_memory_gib:g}; will not fit: raise mesh.fsdp / "
      "mesh.tensor, microbatches, or model.remat"
    )


# ------------------------------------------------------------------------------- analytic


@dataclasses.dataclass(frozen=True)
class Shape:
  """What the analytic estimate needs of a config (all per run, not per device)."""

  dims: sizes.Dims
  vocab: int
  batch_size: int
  seq_len: int
  act_bytes: int = 4  # model.dtype
  remat: str = "none"
  microbatches: int = 1
  mesh: tuple[int, int, int] = (1, 1, 1)  # data, fsdp, tensor
  tie_embeddings: bool = False
  sparse: bool = False  # a sparsity term on the block projections
  act_quant: bool = False  # activation quantization of the block projections
  weight_quant: bool = False


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def analytic(s: Shape) -> Footprint:
  d, n_layers, h, kv, f = (
    s.dims.d_model,
    s.dims.n_layers,
    s.dims.n_heads,
    s.dims.n_kv_heads,
    s.dims.d_ff,
  )
  e = d // h
  data, fsdp, t = s.mesh
  # Params: every matrix has one axis over fsdp ("embed") and one over tensor (heads, mlp,
  # vocab); norm scales are replicated (sharding.LOGICAL_RULES).
  kernels = d * (h + 2 * kv) * e + h * e * d + 3 * d * f  # per block
  matrices = n_layers * kernels + s.vocab * d * (1 if s.tie_embeddings else 2)
  norms = (2 * n_layers + 1) * d
  params = 4 * (_ceil_div(matrices, fsdp * t) + norms)
  opt_state = 2 * params + 8  # Adam mu and nu (float32, sharded as the params) + counts
  masks = _ceil_div(n_layers * kernels, fsdp * t) if s.sparse else 0

  # Activations of one microbatch on one device: rows b, tokens T, per-device heads / mlp /
  # vocab widths (tensor parallelism splits them).
  a = s.act_bytes
  b = max(1, s.batch_size // (data * fsdp * s.microbatches))
  tok, L = b * s.seq_len, s.seq_len
  hh, kh, fh, vh = _ceil_div(h, t), _ceil_div(kv, t), _ceil_div(f, t), _ceil_div(s.vocab, t)
  # Residuals a block keeps for its backward pass without remat (counted from the jaxpr,
  # then scaled to XLA:CPU's buffer assignment with cpu_flags, which fuses the scores into the
  # softmax and the norms into their neighbours; tests/test_memory.py): token x d_model for
  # the norms and the o / out outputs; q, k, v, rotated q and the repeated k / v per head;
  # the float32 probabilities and their cast (token x heads x L); gate, up, silu, product.
  cast = a if a < 4 else 0  # a float32 model's casts to the compute dtype are no-ops
  r_tok = tok * d * a * 4
  r_heads = tok * e * a * (4 * hh + 2 * kh)
  r_attn = tok * hh * L * (4 + cast)
  r_mlp = tok * fh * a * 4
  r_quant = tok * (6 * d + fh) if s.act_quant else 0  # STE keep masks (bool) per operand
  block_all = r_tok + r_heads + r_attn + r_mlp + r_quant
  if s.remat == "none":
    kept = block_all
  elif s.remat == "full":  # the block input only
    kept = tok * d * a
  else:  # save_dots: block input and the outputs of the projections (no batch dims)
    kept = tok * a * (2 * d + (hh + 2 * kh) * e + 2 * fh)
  # Backward workspace of the block being differentiated: cotangents of the scores and
  # probabilities and of the MLP (float32); with remat, that block's other residuals are live
  # again too. The head: logits (float32 and cast), their cotangent, the final norm's output.
  workspace = tok * hh * L * 8 + tok * fh * 16 + (block_all - kept)
  head = tok * vh * (4 + cast) + tok * d * 4
  # Gradients appear block by block as the backward pass frees that block's residuals, and
  # the optimizer's outputs alias the donated state: neither raises the peak, except the
  # scan's float32 accumulator under microbatching.
  extra = params if s.microbatches > 1 else 0
  if s.sparse or s.weight_quant:
    extra += params  # the masked / fake-quantized kernels the backward multiplies with
  batch = s.batch_size // (data * fsdp) * (s.seq_len + 1) * 4
  activations = n_layers * kept + workspace + head + extra + batch
  notes = []
  if s.vocab == ASSUMED_VOCAB:
    notes.append(f"vocab {ASSUMED_VOCAB} assumed")
  return Footprint(params, opt_state, masks, activations, "analytic", "; ".join(notes))


def _mesh(mesh, n_devices: int) -> tuple[int, int, int]:
  """sharding.mesh_shape without its imports (-1 fills the devices; validated by main)."""
  axes = [int(mesh[a]) for a in ("data", "fsdp", "tensor")]
  fixed = math.prod(a for a in axes if a != -1)
  return tuple(max(1, n_devices // fixed) if a == -1 else a for a in axes)


def _spec_flags(spec: str) -> tuple[bool, bool, bool]:
  """(sparse, weight_quant, act_quant) of the global compression spec, by its grammar
  (compression.parse) without importing JAX; per-layer rules are not looked at."""
  sparse = wq = aq = False
  for term in (t.strip() for t in spec.split("+")):
    if re.match(r"(s\d|\d+:\d+)", term):
      sparse = True
    elif m := re.fullmatch(r"w([^a\-]+)a([^\-]+)(-.*)?", term):
      wq, aq = m.group(1) != "16", m.group(2) != "16"
  return sparse, wq, aq


def shape_from_config(c, n_devices: int) -> Shape:
  """The analytic Shape of a config: a ConfigDict or the plain dict of config_identity.to_dict
  (what launch.sweep builds per run). JAX-free. Fields added later default as main does."""
  m = c["model"]
  vocab = m["vocab_size"] or (BYTE_VOCAB if c["data"]["tokenizer"] == "byte" else ASSUMED_VOCAB)
  sparse, wq, aq = _spec_flags(c["compression"])
  return Shape(
    dims=sizes.resolve_dims(m),
    vocab=vocab,
    batch_size=c["batch_size"],
    seq_len=c["seq_len"],
    act_bytes=DTYPE_BYTES[m["dtype"]],
    remat=m.get("remat", "none"),
    microbatches=c.get("microbatches", 1),
    mesh=_mesh(c["mesh"], n_devices),
    tie_embeddings=m["tie_embeddings"],
    sparse=sparse,
    act_quant=aq,
    weight_quant=wq,
  )


# ------------------------------------------------------------------------------- compiled


def state_bytes(setup) -> tuple[int, int, int]:
  """(params, opt_state, masks) bytes on the most loaded device, from the eval_shape'd state
  and its shardings (nothing allocated)."""
  import jax  # noqa: PLC0415

  out = []
  for part in ("params", "opt_state", "masks"):
    total = 0
    for leaf, sh in zip(
      jax.tree.leaves(setup.abstract_state[part]), jax.tree.leaves(setup.state_shardings[part])
    ):
      total += math.prod(sh.shard_shape(leaf.shape)) * leaf.dtype.itemsize
    out.append(total)
  return tuple(out)


def compiled(setup) -> Footprint:
  """XLA's memory analysis of the jitted train step of `setup` (a steps.Setup)."""
  import flax.linen as nn  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from compress_scaling import sharding  # noqa: PLC0415

  c = setup.config
  batch = jax.ShapeDtypeStruct(
    (c.batch_size, c.seq_len + 1), jnp.int32, sharding=sharding.batch_sharding(setup.mesh)
  )
  key = jax.random.key(0)
  with setup.mesh, nn.logical_axis_rules(sharding.LOGICAL_RULES):
    exe = setup.jit_train_step().lower(setup.abstract_state, batch, key).compile()
  m = exe.memory_analysis()
  if m is None:  # a backend without memory analysis
    return analytic_for_setup(setup)
  params, opt_state, masks = state_bytes(setup)
  peak = (
    m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  )
  return Footprint(params, opt_state, masks, peak - params - opt_state - masks, "compiled")


def analytic_for_setup(setup) -> Footprint:
  """The analytic estimate for a built Setup, its state bytes taken exactly from the
  eval_shape'd state (only the activations are arithmetic)."""
  import jax  # noqa: PLC0415

  r = setup.resolved
  plan = r.plan.default
  shape = Shape(
    dims=r.model.dims,
    vocab=r.model.vocab_size,
    batch_size=setup.config.batch_size,
    seq_len=setup.config.seq_len,
    act_bytes=jax.numpy.dtype(r.model.dtype).itemsize,
    remat=r.model.remat,
    microbatches=r.microbatches,
    mesh=r.mesh_shape,
    tie_embeddings=r.model.tie_embeddings,
    sparse=plan.sparsity is not None,
    act_quant=plan.activations is not None,
    weight_quant=plan.weights is not None,
  )
  est = analytic(shape)
  params, opt_state, masks = state_bytes(setup)
  return dataclasses.replace(est, params=params, opt_state=opt_state, masks=masks)
