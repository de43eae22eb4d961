"""Calibration statistics for GPTQ: the Gram matrix X^T X of every block projection's input.

The inputs are captured with `flax.linen.intercept_methods` around `model.Projection`, so the
model needs no calibration hooks ("inject, don't branch"). Under jit the interceptor runs at
trace time and the Gram matrices leave the jitted function as outputs.

Sequential calibration (GPTQ's llama.py, Frantar et al. 2022): block l's Hessians come from
the model whose blocks < l are already quantized, so each block corrects the error of those
before it; within a block all projections see the inputs of the not yet quantized block.
`Blockwise` does this as llama.py does, carrying the hidden states from block to block: each
block runs twice (for its Hessians, then quantized for the next block's inputs) instead of the
model's first l + 1 blocks running for block l.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from compress_scaling import model, sharding


def _add_gram(grams: dict, path: tuple[str, ...], x) -> None:
  """grams[path] += (X^T X, rows) for the projection input x [..., D_in]."""
  x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  g, n = x.T @ x, jnp.asarray(x.shape[0], jnp.float32)
  key = "/".join(path)
  if key in grams:  # a projection called twice (not in this model) accumulates
    g, n = g + grams[key][0], n + grams[key][1]
  grams[key] = (g, n)


def _block_index(path: tuple[str, ...]) -> int | None:
  return int(path[0].removeprefix("block_")) if path[0].startswith("block_") else None


def _capture_fn(setup, blocks: frozenset[int] | None):
  """jit(params, masks, batch) -> {projection path: (sum X^T X, rows)} for `blocks`."""

  def fn(params, masks, batch_BxL1):
    grams: dict[str, tuple[jax.Array, jax.Array]] = {}

    def interceptor(next_fun, args, kwargs, context):
      mod = context.module
      if isinstance(mod, model.Projection) and context.method_name == "__call__":
        layer = _block_index(mod.path)
        if layer is not None and (blocks is None or layer in blocks):
          _add_gram(grams, mod.path, args[0])
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
  with setup.mesh, nn.logical_axis_rules(sharding.LOGICAL_RULES):
    return _to_hessians(fn(params, masks, setup.global_batch(b)) for b in batches)


def _to_hessians(grams_per_batch) -> dict[str, jax.Array]:
  """H = 2/n sum_batches X^T X from each batch's {path: (X^T X, rows)}."""
  total: dict[str, tuple] = {}
  for grams in grams_per_batch:
    for key, (g, n) in grams.items():
      total[key] = (g, n) if key not in total else (total[key][0] + g, total[key][1] + n)
  return {key: 2.0 * g / n for key, (g, n) in total.items()}


def _block_fn(setup, layer: int, feed: bool, want: str):
  """jit(params, masks, batch, x_in) -> block `layer`'s projection Gram sums (want="grams") or
  its output (want="output"). With `feed`, x_in replaces the block's input. Only the block's
  own work is compiled: what feeds a replaced input and everything after the block are dead
  code that XLA removes."""
  name = f"block_{layer}"

  def fn(params, masks, batch_BxL1, x_in):
    grams: dict[str, tuple[jax.Array, jax.Array]] = {}
    output = []

    def interceptor(next_fun, args, kwargs, context):
      mod = context.module
      if context.method_name == "__call__":
        if isinstance(mod, model.Block) and mod.name == name:
          y = next_fun(*((x_in,) + args[1:] if feed else args), **kwargs)
          output.append(y)
          return y
        if isinstance(mod, model.Projection) and _block_index(mod.path) == layer:
          _add_gram(grams, mod.path, args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      setup.apply(params, masks, batch_BxL1[:, :-1], jax.random.key(0))
    return grams if want == "grams" else output[0]

  return jax.jit(fn)


class Blockwise:
  """Sequential calibration carrying hidden states block by block (GPTQ's llama.py).

  `quantize(params, quantize_block)` calls quantize_block(params, layer, hessians) -> params
  for layer 0, 1, ...; block l's Hessians are taken on the outputs of blocks < l as already
  returned by quantize_block. The compiled block functions are kept for the next call.

  The carried states are one block's output for every calibration token (tokens x d_model in
  the activation dtype: 16 batches of 256 x 1024 tokens at d_model 1280 in float32 are 21 GiB).
  Above `max_carry_bytes` nothing is carried and block l's Hessians come from forward passes
  through blocks 0..l instead: the same numbers, more compute, no extra memory.
  """

  def __init__(self, setup, masks, batches, max_carry_bytes: float = 4 * 2**30):
    self.setup, self.masks = setup, masks
    cfg = setup.resolved.model
    self.n_layers = cfg.dims.n_layers
    with setup.mesh, nn.logical_axis_rules(sharding.LOGICAL_RULES):
      self.batches = [setup.global_batch(b) for b in batches]
    tokens = sum(b.shape[0] * (b.shape[1] - 1) for b in self.batches)
    self.carry_bytes = tokens * cfg.dims.d_model * jnp.dtype(cfg.dtype).itemsize
    self.carries = self.carry_bytes <= max_carry_bytes
    self._fns: dict[tuple, Callable] = {}

  def _fn(self, key: tuple, make: Callable) -> Callable:
    if key not in self._fns:
      self._fns[key] = make()
    return self._fns[key]

  def _run(self, params, layer: int, xs: list, want: str) -> list:
    feed = xs[0] is not None
    fn = self._fn((layer, feed, want), lambda: _block_fn(self.setup, layer, feed, want))
    with self.setup.mesh, nn.logical_axis_rules(sharding.LOGICAL_RULES):
      return [fn(params, self.masks, b, x) for b, x in zip(self.batches, xs)]

  def _rerun(self, params, layer: int) -> list:
    fn = self._fn(("full", layer), lambda: _capture_fn(self.setup, frozenset([layer])))
    with self.setup.mesh, nn.logical_axis_rules(sharding.LOGICAL_RULES):
      return [fn(params, self.masks, b) for b in self.batches]

  def quantize(self, params, quantize_block: Callable):
    xs = [None] * len(self.batches)  # block 0 reads the embedding of the tokens
    for layer in range(self.n_layers):
      if self.carries:
        grams = self._run(params, layer, xs, "grams")
      else:
        grams = self._rerun(params, layer)
      params = quantize_block(params, layer, _to_hessians(grams))
      if self.carries and layer + 1 < self.n_layers:
        xs = self._run(params, layer, xs, "output")
    return params
