"""The sharded train state and the jitted train / eval steps of one validated config.

State = {step, params, opt_state, masks}: params carry logical axis names (model.py), turned
into NamedShardings over the mesh by `sharding.LOGICAL_RULES`; the state is built by
eval_shape -> shardings -> jitted init, so no device ever holds the unsharded model.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from compress_scaling import checkpoint, compression, config_lib, model, sharding


def make_optimizer(o, total_steps: int):
  """AdamW (betas, weight decay, clip from the config) with linear warmup + cosine decay."""
  warmup = int(o.warmup_frac * total_steps)
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, o.lr, warmup, max(total_steps, warmup + 1), end_value=o.lr * o.min_lr_ratio
  )
  # Decay matrices only, not norm scales (as Llama / OLMo).
  decay_mask = functools.partial(jax.tree_util.tree_map, lambda x: x.ndim >= 2)
  tx = optax.chain(
    optax.clip_by_global_norm(o.grad_clip),
    optax.adamw(
      schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask
    ),
  )
  return tx, schedule


@dataclasses.dataclass
class Setup:
  """Everything derived from a validated config; shared by training, eval and tests."""

  config: Any
  resolved: config_lib.Resolved
  mesh: jax.sharding.Mesh
  module: model.Transformer
  tx: optax.GradientTransformation
  schedule: Any
  state_shardings: Any
  abstract_state: Any

  @classmethod
  def create(cls, config) -> Setup:
    resolved = config_lib.validate(config, jax.device_count())
    mesh = sharding.make_mesh(config.mesh)
    module = model.Transformer(resolved.model, resolved.plan)
    tx, schedule = make_optimizer(config.optimizer, config.total_steps)
    setup = cls(config, resolved, mesh, module, tx, schedule, None, None)
    with mesh, nn.logical_axis_rules(sharding.LOGICAL_RULES):
      boxed = jax.eval_shape(setup._init_boxed, jax.random.key(0))
    setup.state_shardings = sharding.logical_shardings(mesh, boxed)
    setup.abstract_state = checkpoint.abstract_like(nn.meta.unbox(boxed), setup.state_shardings)
    return setup

  def _init_boxed(self, key):
    tokens = jnp.zeros((1, self.config.seq_len), jnp.int32)
    variables = self.module.init({"params": key, "quant": key}, tokens)
    params, masks = variables["params"], variables.get("masks", {})
    return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "opt_state": self.tx.init(params),
      "masks": masks,
    }

  def init_state(self, key):
    """Initialises directly into the target shardings: no device holds the whole model."""
    init = jax.jit(lambda k: nn.meta.unbox(self._init_boxed(k)), out_shardings=self.state_shardings)
    with self.mesh, nn.logical_axis_rules(sharding.LOGICAL_RULES):
      return init(key)

  # ------------------------------------------------------------------ steps ----------------

  def apply(self, params, masks, tokens_BxL, key):
    variables = {"params": params, "masks": masks} if masks else {"params": params}
    return self.module.apply(variables, tokens_BxL, rngs={"quant": key})

  def loss_fn(self, params, masks, batch_BxL1, key):
    logits_BxLxV = self.apply(params, masks, batch_BxL1[:, :-1], key)
    loss, _ = model.cross_entropy(logits_BxLxV, batch_BxL1[:, 1:])
    return loss

  def loss_and_grads(self, params, masks, batch_BxL1, key):
    """Mean loss and its gradient over the global batch, in config.microbatches pieces.

    With k > 1 microbatches (gradient accumulation, as optax.MultiSteps or MaxText's
    gradient_accumulation_steps, but inside one jitted step) a lax.scan runs forward and
    backward on one B/k slice at a time and sums float32 gradients, so activations are held
    for B/k rows only; the mean over the k equal-sized slices is the full batch's mean. Slice j
    takes rows j, j + k, j + 2k, ...: every data-parallel shard holds B/(n k) rows of each
    slice (n shards, k divides B/n: config_lib), so no rows move between devices. Stochastic
    rounding draws slice j's noise from fold_in(key, j). With k = 1 this is exactly
    value_and_grad of loss_fn (the golden numbers of tests/test_train.py).
    """
    k = self.resolved.microbatches
    grad_fn = jax.value_and_grad(self.loss_fn)
    if k == 1:
      return grad_fn(params, masks, batch_BxL1, key)
    B, L1 = batch_BxL1.shape
    # [B, L+1] -> [B/k, k, L+1] -> [k, B/k, L+1]: the leading (sharded) axis keeps its layout.
    micro_KxMxL1 = batch_BxL1.reshape(B // k, k, L1).swapaxes(0, 1)
    micro_KxMxL1 = jax.lax.with_sharding_constraint(
      micro_KxMxL1, NamedSharding(self.mesh, P(None, ("data", "fsdp"), None))
    )

    def accumulate(carry, xs):
      loss_sum, grad_sum = carry
      j, micro_MxL1 = xs
      loss, grads = grad_fn(params, masks, micro_MxL1, jax.random.fold_in(key, j))
      grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
      return (loss_sum + loss.astype(jnp.float32), grad_sum), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (loss_sum, grad_sum), _ = jax.lax.scan(
      accumulate, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(k), micro_KxMxL1)
    )
    grads = jax.tree.map(lambda g, p: (g / k).astype(p.dtype), grad_sum, params)
    return loss_sum / k, grads

  def train_step(self, state, batch_BxL1, root_key):
    step = state["step"]
    key = jax.random.fold_in(root_key, step)
    # Masks are (re)computed before the forward pass of their update steps (sparsity.py).
    masks = compression.update_masks(
      self.resolved.plan, state["params"], state["masks"], step, self.config.total_steps
    )
    params = compression.apply_masks(state["params"], masks)
    loss, grads = self.loss_and_grads(params, masks, batch_BxL1, key)
    updates, opt_state = self.tx.update(grads, state["opt_state"], params)
    # Re-applying the masks after the update keeps pruned weights exactly zero (jaxpruner's
    # post_gradient_update): Adam moments would otherwise move them.
    params = compression.apply_masks(optax.apply_updates(params, updates), masks)
    metrics = {
      "loss": loss,
      "grad_norm": optax.global_norm(grads),
      "params_finite": jnp.isfinite(optax.global_norm(params)),
      "lr": self.schedule(step),
    }
    new_state = {"step": step + 1, "params": params, "opt_state": opt_state, "masks": masks}
    return new_state, metrics

  def eval_step(self, params, masks, batch_BxL1):
    """Summed next-token NLL (nats) and token count of one batch."""
    logits_BxLxV = self.apply(params, masks, batch_BxL1[:, :-1], jax.random.key(0))
    loss, n = model.cross_entropy(logits_BxLxV, batch_BxL1[:, 1:])
    return loss * n, n

  def jit_train_step(self):
    batch_sh = sharding.batch_sharding(self.mesh)
    return jax.jit(
      self.train_step,
      in_shardings=(self.state_shardings, batch_sh, sharding.replicated(self.mesh)),
      out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
      donate_argnums=0,
    )

  def jit_eval_step(self, serving: bool = False):
    """The jitted eval step; `serving` runs quantized matmuls through the integer path."""
    step = self.eval_step
    if serving:
      module = model.Transformer(
        self.resolved.model, dataclasses.replace(self.resolved.plan, serving=True)
      )
      step = dataclasses.replace(self, module=module).eval_step
    return jax.jit(
      step,
      in_shardings=(
        self.state_shardings["params"],
        self.state_shardings["masks"],
        sharding.batch_sharding(self.mesh),
      ),
      out_shardings=sharding.replicated(self.mesh),
    )

  def diagnostics(self, state, batch_BxL1) -> dict[str, dict[str, float]]:
    """Per-layer quantization diagnostics on one batch: {layer path: {metric: value}}."""
    variables = {"params": state["params"], "masks": state["masks"]}
    with self.mesh, nn.logical_axis_rules(sharding.LOGICAL_RULES):
      _, sown = jax.jit(
        lambda v, b: self.module.apply(
          v, b[:, :-1], rngs={"quant": jax.random.key(0)}, mutable=["diagnostics"]
        )
      )(variables, self.global_batch(batch_BxL1))
    out: dict[str, dict[str, float]] = {}
    for path, value in jax.tree_util.tree_leaves_with_path(sown["diagnostics"]):
      keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
      keys = [k for k in keys if k not in ("dense", compression.MASK_MODULE) and not k.isdigit()]
      out.setdefault("/".join(keys[:-1]), {})[keys[-1]] = float(value)
    return out

  def global_batch(self, local_rows: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh), local_rows)


def evaluate(setup: Setup, eval_step, state, eval_batches) -> tuple[float, int]:
  """Token-weighted mean held-out loss (nats/token) over the fixed eval batches."""
  with setup.mesh, nn.logical_axis_rules(sharding.LOGICAL_RULES):
    sums = [eval_step(state["params"], state["masks"], setup.global_batch(b)) for b in eval_batches]
  total = sum(float(s) for s, _ in sums)
  n = sum(float(c) for _, c in sums)
  return total / n, int(n)


class Preemption:
  """Turns SIGTERM into a flag the loop checks, so the run saves and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
