"""Train-step throughput against a matmul roofline measured in the same run.

  python benchmarks/bench_train.py [--sizes 0.5m,1m,2m,5m] [--batch 32] [--seq 128]

For each size: tokens/s and achieved FLOP/s of the jitted train step, with FLOPs per token =
6 (N + d V) (weights incl. the LM head; Kaplan et al. 2020) + 12 L d T (attention, PaLM
appendix B), and the ratio to the FLOP/s of a plain jitted `jnp.dot` of the model's largest
matmul shape (tokens x d_model @ d_model x d_ff, float32; fastest of 30 calls) timed on the
same machine. The train step is the median of --repeats steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compress_scaling import cpu_flags  # noqa: E402

cpu_flags.apply()  # the XLA:CPU settings of the training entry point

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from compress_scaling import data, sizes, steps  # noqa: E402
from configs import base  # noqa: E402


def _time(fn, *args, repeats: int) -> float:
  """Median seconds per call after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def matmul_roofline(m: int, k: int, n: int, repeats: int = 30) -> float:
  """Peak FLOP/s of one jitted float32 matmul of this shape: the fastest of `repeats` calls
  (a roofline is the best the machine does; the median would fold in other jobs' noise)."""
  a = jnp.ones((m, k), jnp.float32)
  b = jnp.ones((k, n), jnp.float32)
  f = jax.jit(jnp.dot)
  jax.block_until_ready(f(a, b))
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(a, b))
    best = min(best, time.perf_counter() - t)
  return 2 * m * k * n / best


def bench_size(size: str, batch: int, seq: int, repeats: int, compression: str = "dense"):
  c = base.get_config()
  c.model.size, c.batch_size, c.seq_len, c.compression = size, batch, seq, compression
  c.total_steps = 10_000
  setup = steps.Setup.create(c)
  init_key, step_key = jax.random.split(jax.random.key(0))
  state = setup.init_state(init_key)
  batches = data.Batches(data.load_corpus(c.data), seed=0, batch_size=batch, seq_len=seq)
  batch_arr = setup.global_batch(batches.train(0))
  step = setup.jit_train_step()
  holder = [state]

  def one():
    holder[0], metrics = step(holder[0], batch_arr, step_key)
    return metrics["loss"]

  dt = _time(lambda: one(), repeats=repeats)
  dims, vocab = setup.resolved.model.dims, setup.resolved.model.vocab_size
  n = sizes.non_embedding_params(dims)
  flops_per_token = sizes.train_flops_per_token(dims, vocab, seq)
  tokens = batch * seq
  roof = matmul_roofline(tokens, dims.d_model, dims.d_ff)
  return {
    "size": size,
    "N": n,
    "step_s": dt,
    "tokens_per_s": tokens / dt,
    "flops": flops_per_token * tokens / dt,
    "roofline": roof,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="0.5m,1m,2m,5m")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"devices: {jax.devices()}  XLA_FLAGS: {os.environ.get('XLA_FLAGS', '')!r}")
  print(
    f"{'size':>6} {'N':>10} {'step ms':>9} {'tokens/s':>10} {'GFLOP/s':>9} "
    f"{'matmul GFLOP/s':>15} {'ratio':>6}"
  )
  for size in args.sizes.split(","):
    r = bench_size(size, args.batch, args.seq, args.repeats)
    print(
      f"{r['size']:>6} {r['N']:>10,} {r['step_s'] * 1e3:>9.1f} {r['tokens_per_s']:>10,.0f} "
      f"{r['flops'] / 1e9:>9.1f} {r['roofline'] / 1e9:>15.1f} {r['flops'] / r['roofline']:>6.2f}"
    )


if __name__ == "__main__":
  main()
