"""Per-model factors that predict PTQ degradation (Xu et al. 2024, arXiv 2410.12119).

Xu et al. predict the post-quantization NLL of a pretrained model from its pre-trained NLL,
its size, the SQNR of round-to-nearest quantization of its weights, the data type, and the
*local loss landscape*: the loss along random radial directions around the pretrained
weights, which they find flatter for larger models and "step-like" in the radius. This
module measures the last two on our models:

  weight_sqnr_db(params, paths, spec): 10 log10(sum ||W||^2 / sum ||W - RTN(W)||^2) over the
    quantized kernels.
  radial_profile(loss_fn, params, paths, radii, ...): mean loss at W + delta with
    ||delta_k|| = r ||W_k|| for every perturbed kernel k, over random Gaussian directions;
    globally (all kernels at once) and per transformer block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from compress_scaling.ptq import gptq
from compress_scaling.ptq.base_run import get_path, set_path

DEFAULT_RADII = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def weight_sqnr_db(params, paths: Sequence[tuple[str, ...]], spec) -> float:
  """SQNR (dB) of RTN-quantizing the kernels at `paths` with `spec`, pooled over kernels."""
  signal = noise = 0.0
  for path in paths:
    w = jnp.asarray(get_path(params, path), jnp.float32)
    err = w - gptq.rtn(w, spec)
    signal += float(jnp.sum(w * w))
    noise += float(jnp.sum(err * err))
  return float("inf") if noise == 0.0 else 10.0 * float(np.log10(signal / noise))


def _perturb(params, paths, r: float, key):
  for i, path in enumerate(paths):
    w = get_path(params, path)
    u = jax.random.normal(jax.random.fold_in(key, i), w.shape, jnp.float32)
    delta = u * (r * jnp.linalg.norm(w) / jnp.linalg.norm(u))
    params = set_path(params, path, (w + delta).astype(w.dtype))
  return params


def radial_profile(
  loss_fn: Callable,
  params,
  paths: Sequence[tuple[str, ...]],
  *,
  radii: Sequence[float] = DEFAULT_RADII,
  n_directions: int = 2,
  seed: int = 0,
  per_block: bool = True,
) -> dict:
  """Loss along random radial directions around `params`.

  Args:
    loss_fn: params -> scalar loss (held-out batches; called once per point).
    paths: the kernels to perturb (block projections).
    radii: relative radii r (||delta_k|| = r ||W_k||); r = 0 gives loss_fn(params) itself.
    n_directions: random directions averaged per radius (the same directions at every r,
      so the profile along each direction is a proper 1-D slice).
    per_block: also perturb each block's kernels alone.
  Returns {"radii": [...], "n_directions": k, "loss": {"global": [...], "block_0": [...]}}.
  """
  groups = {"global": list(paths)}
  if per_block:
    for path in paths:
      groups.setdefault(path[0], []).append(path)
  base = float(loss_fn(params))
  root = jax.random.key(seed)
  out = {}
  for g, (name, group) in enumerate(groups.items()):
    curve = []
    for r in radii:
      if r == 0.0:
        curve.append(base)
        continue
      losses = [
        float(loss_fn(_perturb(params, group, r, jax.random.fold_in(root, g * 1000 + d))))
        for d in range(n_directions)
      ]
      curve.append(float(np.mean(losses)))
    out[name] = curve
  return {"radii": [float(r) for r in radii], "n_directions": n_directions, "loss": out}
