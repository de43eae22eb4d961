"""Train-step throughput and MFU of compressed formats on an accelerator (TPU / GPU).

  python benchmarks/bench_accel.py [--sizes 30m,100m] [--formats dense,w4a16,w4a4,2:4,w4a16+2:4]
      [--batch_size 64] [--seq_len 512] [--dtype bfloat16] [--steps 10] [--rounds 3]
      [--remat none] [--microbatches 1]

For each size, every format's jitted train step (steps.Setup, as training runs it) is compiled,
then timed in --rounds interleaved rounds (dense, w4a16, ..., dense, w4a16, ...: slow drift of
the machine, clocks or other jobs hits every format alike), --steps steps per round after a
warm-up. Per format: the median step time over rounds, tokens/s, MFU and the compressed /
dense step-time ratio (median over rounds of the per-round ratios).

MFU = model FLOP/s / the device's peak dense bf16 FLOP/s (PEAK_BF16_FLOPS, a table by
device kind; unknown devices, e.g. CPU, print MFU n/a). Model FLOPs per token are those of the
dense model, whatever the format: 6 (N + d V) for the weights (incl. the LM head; Kaplan et
al. 2020) + 12 n_layers d L for attention (PaLM, Chowdhery et al. 2022, appendix B), as in
benchmarks/bench_train.py; fake quantization and masking are overhead, not model FLOPs, so a
compressed format's lower MFU is its training-time cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compress_scaling import cpu_flags  # noqa: E402

cpu_flags.apply()  # XLA:CPU settings of the training entry point (no-op off CPU)

import jax  # noqa: E402

from compress_scaling import data, sizes, steps  # noqa: E402
from configs import base  # noqa: E402

# Peak dense (no 2:4 sparsity) bf16 FLOP/s per chip, matched against jax's device_kind in
# order (first substring match wins).
PEAK_BF16_FLOPS = (
  # Google Cloud TPU docs, "System architecture" pages per version (cloud.google.com/tpu/docs):
  ("TPU v4", 275e12),  # v4: 275 TFLOPs bf16 per chip
  ("TPU v5 lite", 197e12),  # v5e (device_kind "TPU v5 lite"): 197 TFLOPs bf16
  ("TPU v5e", 197e12),
  ("TPU v5p", 459e12),  # v5p: 459 TFLOPs bf16
  ("TPU v5", 459e12),  # v5p reports device_kind "TPU v5"
  ("TPU v6 lite", 918e12),  # v6e Trillium (device_kind "TPU v6 lite"): 918 TFLOPs bf16
  ("TPU v6e", 918e12),
  # NVIDIA datasheets; their headline bf16 Tensor Core numbers are "with sparsity" (2:4) for
  # H100/H200, so the dense peak is half of it:
  ("A100", 312e12),  # A100 datasheet: BF16 Tensor Core 312 TFLOPS (624 with sparsity)
  ("H100 PCIe", 756e12),  # H100 datasheet, PCIe: 1,513 TFLOPS with sparsity
  ("H100", 989e12),  # H100 SXM: 1,979 TFLOPS with sparsity
  ("H200 NVL", 836e12),  # H200 datasheet, NVL: 1,671 TFLOPS with sparsity
  ("H200", 989e12),  # H200 SXM: 1,979 TFLOPS with sparsity
)

FORMATS = ("dense", "w4a16", "w4a4", "2:4", "w4a16+2:4")


def peak_flops(device_kind: str) -> float | None:
  for pattern, flops in PEAK_BF16_FLOPS:
    if pattern.lower() in device_kind.lower():
      return flops
  return None


def model_flops_per_token(setup) -> float:
  m = setup.resolved.model
  return sizes.train_flops_per_token(m.dims, m.vocab_size, setup.config.seq_len)


class Bench:
  """One format's compiled train step, its state and a fixed batch."""

  def __init__(self, args, size: str, spec: str, corpus):
    c = base.get_config()
    c.model.size, c.compression, c.model.dtype = size, spec, args.dtype
    c.model.remat, c.microbatches = args.remat, args.microbatches
    c.batch_size, c.seq_len = args.batch_size, args.seq_len
    c.total_steps = 10_000  # a schedule far from its end: the timed steps are ordinary ones
    self.spec = spec
    self.setup = steps.Setup.create(c)
    init_key, self.key = jax.random.split(jax.random.key(0))
    self.state = self.setup.init_state(init_key)
    rows = data.Batches(corpus, seed=0, batch_size=c.batch_size, seq_len=c.seq_len).train(0)
    self.batch = self.setup.global_batch(rows)
    self.step = self.setup.jit_train_step()
    self.run(1)  # compile + one step

  def run(self, n: int) -> float:
    """Seconds per step over n steps."""
    t = time.perf_counter()
    with self.setup.mesh:
      for _ in range(n):
        self.state, metrics = self.step(self.state, self.batch, self.key)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - t) / n


def bench_size(args, size: str, corpus) -> list[dict]:
  benches = [Bench(args, size, spec, corpus) for spec in args.formats]
  times = {b.spec: [] for b in benches}
  for _ in range(args.rounds):  # interleaved: every format once per round
    for b in benches:
      times[b.spec].append(b.run(args.steps))
  dense = times.get("dense")
  tokens = args.batch_size * args.seq_len
  peak = peak_flops(jax.devices()[0].device_kind)
  n_dev = jax.device_count()
  rows = []
  for b in benches:
    step_s = statistics.median(times[b.spec])
    flops = model_flops_per_token(b.setup) * tokens / step_s
    ratio = (
      statistics.median(t / d for t, d in zip(times[b.spec], dense)) if dense else float("nan")
    )
    rows.append(
      {
        "size": size,
        "format": b.spec,
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "mfu": flops / (peak * n_dev) if peak else None,
        "ratio": ratio,
      }
    )
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="30m,100m")
  parser.add_argument("--formats", default=",".join(FORMATS))
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--seq_len", type=int, default=512)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--remat", default="none", choices=["none", "full", "save_dots"])
  parser.add_argument("--microbatches", type=int, default=1)
  parser.add_argument("--steps", type=int, default=10, help="timed steps per format per round")
  parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
  args = parser.parse_args(argv)
  args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind)
  print(
    f"devices: {jax.device_count()} x {kind} (peak bf16 "
    f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown: MFU n/a'}), dtype {args.dtype}, "
    f"batch {args.batch_size} x {args.seq_len}, remat {args.remat}, microbatches "
    f"{args.microbatches}, {args.rounds} rounds x {args.steps} steps"
  )
  print(f"{'size':>6} {'format':>12} {'step ms':>9} {'tokens/s':>12} {'MFU':>6} {'/dense':>7}")
  corpus = data.load_corpus(base.get_config().data)
  for size in args.sizes.split(","):
    for r in bench_size(args, size.strip(), corpus):
      mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
      print(
        f"{r['size']:>6} {r['format']:>12} {r['step_s'] * 1e3:>9.2f} "
        f"{r['tokens_per_s']:>12,.0f} {mfu:>6} {r['ratio']:>7.3f}",
        flush=True,
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
