"""Calibration statistics for GPTQ: the Gram matrix X^T X of every block projection's input.

The inputs are captured with `flax.linen.intercept_methods` around `model.Projection`, so the
model needs no calibration hooks ("inject, don't branch"). Under jit the interceptor runs at
trace time and the Gram matrices leave the jitted function as outputs.

Sequential calibration (GPTQ's llama.py, Frantar et al. 2022): block l's Hessians come from
the model whose blocks < l are already quantized, so each block corrects the error of those
before it; within a block all projections see the inputs of the not yet quantized block.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from compress_scaling import model, sharding


def _capture_fn(setup, blocks: frozenset[int] | None):
  """jit(params, masks, batch) -> {projection path: (sum X^T X, rows)} for `blocks`."""

  def fn(params, masks, batch_BxL1):
    grams: dict[str, tuple[jax.Array, jax.Array]] = {}

    def interceptor(next_fun, args, kwargs, context):
      mod = context.module
      if isinstance(mod, model.Projection) and context.method_name == "__call__":
        path = mod.path
        in_scope = path[0].startswith("block_") and (
          blocks is None or int(path[0].removeprefix("block_")) in blocks
        )
        if in_scope:
          x = args[0].reshape(-1, args[0].shape[-1]).astype(jnp.float32)
          g, n = x.T @ x, jnp.asarray(x.shape[0], jnp.float32)
          key = "/".join(path)
          if key in grams:  # a projection called twice (not in this model) accumulates
            g, n = g + grams[key][0], n + grams[key][1]
          grams[key] = (g, n)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      setup.apply(params, masks, batch_BxL1[:, :-1], jax.random.key(0))
    return grams

  return jax.jit(fn)


def hessians(setup, params, masks, batches, blocks=None) -> dict[str, jax.Array]:
  """GPTQ's layer Hessian H = 2/n X^T X (n calibration tokens) per block projection.

  Args:
    setup: a steps.Setup (its module decides what the inputs are, e.g. the PTQ eval model).
    params, masks: the model's variables.
    batches: calibration batches [B, L+1] (global arrays or host rows).
    blocks: block indices to capture (None: all).
  Returns {"block_3/attn/q": H [D_in, D_in]}.
  """
  fn = _capture_fn(setup, None if blocks is None else frozenset(blocks))
  total: dict[str, list] = {}
  with setup.mesh, nn.logical_axis_rules(sharding.LOGICAL_RULES):
    for b in batches:
      for key, (g, n) in fn(params, masks, setup.global_batch(b)).items():
        if key in total:
          total[key][0] = total[key][0] + g
          total[key][1] = total[key][1] + n
        else:
          total[key] = [g, n]
  return {key: 2.0 * g / n for key, (g, n) in total.items()}
