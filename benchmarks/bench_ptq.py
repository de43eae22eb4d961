"""Post-training quantization cost: GPTQ vs RTN per layer, and PTQ of a whole model.

  python benchmarks/bench_ptq.py [--size 5m] [--steps 30] [--formats F,...] [--repeats 5]

1. Per layer: the block-0 projection kernels of the model from `configs/base.py` at --size
   (shapes [d, d], [d, d_ff], [d_ff, d]), a Hessian from random correlated inputs; the time of
   `gptq.gptq` and of `gptq.rtn` (jitted, compiled first, median of --repeats), in one run, and
   their ratio.
2. Whole model: trains --size for --steps steps into a temporary workdir (a finished run), then
   `ptq.run.quantize_run` to --formats (8 by default) with RTN and with GPTQ, timing each
   method's total (compile included: that is what a user waits for) and per format, plus the
   model-level costs paid once (restore, base eval, radial probe, Hessians).
Nothing is asserted; the numbers go into the issue's note.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compress_scaling import cpu_flags  # noqa: E402

cpu_flags.apply()  # the XLA:CPU settings of the training entry point

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from compress_scaling import compression, sizes  # noqa: E402
from compress_scaling.ptq import gptq, run  # noqa: E402

DEFAULT_FORMATS = "w8a16,w6a16,w4a16,w3a16,w2a16,w4a16-g32,wfp4a16,wmxint4a16"


def _median_time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def per_layer(size: str, fmt: str, repeats: int) -> None:
  dims = sizes.LADDER[size]
  spec = compression.parse(fmt).weights
  key = jax.random.key(0)
  print(f"\n## per layer, {size}, {fmt} (median of {repeats}, after compilation)\n")
  print("| kernel | shape | RTN ms | GPTQ ms | GPTQ / RTN |")
  print("|---|---|---|---|---|")
  for name, (d_in, d_out) in {
    "attn/q": (dims.d_model, dims.d_model),
    "mlp/up": (dims.d_model, dims.d_ff),
    "mlp/out": (dims.d_ff, dims.d_model),
  }.items():
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, d_in * 7 + d_out), 3)
    w = jax.random.normal(k1, (d_in, d_out)) / jnp.sqrt(d_in)
    mix = jax.random.normal(k2, (d_in, d_in)) / jnp.sqrt(d_in)
    x = jax.random.normal(k3, (4096, d_in)) @ mix
    h = gptq.hessian(x)
    rtn_fn = jax.jit(lambda w: gptq.rtn(w, spec))
    t_rtn = _median_time(lambda f=rtn_fn, w=w: f(w), repeats)
    t_gptq = _median_time(lambda w=w, h=h: gptq.gptq(w, h, spec), repeats)
    print(
      f"| {name} | {d_in}x{d_out} | {t_rtn * 1e3:.2f} | {t_gptq * 1e3:.1f} | "
      f"{t_gptq / t_rtn:.0f}x |"
    )


def whole_model(size: str, steps: int, formats: list[str]) -> None:
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, "base")
    t = time.perf_counter()
    subprocess.run(
      [
        sys.executable,
        "-m",
        "compress_scaling.main",
        "--config=configs/base.py",
        f"--workdir={workdir}",
        f"--config.model.size={size}",
        f"--config.total_steps={steps}",
        f"--config.checkpoint_every={steps}",
        f"--config.eval_every={steps}",
      ],
      check=True,
      capture_output=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    took = time.perf_counter() - t
    print(f"\n## whole model, {size} ({steps} training steps took {took:.0f} s)\n")
    print("| methods | formats | total s | s per format |")
    print("|---|---|---|---|")
    for methods in (["rtn"], ["gptq"]):
      out = os.path.join(tmp, f"ptq_{methods[0]}")
      t = time.perf_counter()
      run.quantize_run(workdir, formats, methods, out=out)
      total = time.perf_counter() - t
      print(f"| {methods[0]} | {len(formats)} | {total:.1f} | {total / len(formats):.1f} |")
    path = os.path.join(out, f"{run.slug(formats[0])}_gptq", "log_entry.json")
    entry = run.logbook.read_entry(path)
    print(f"\n(one GPTQ format alone, Hessians + quantize + eval: {entry['ptq']['wall_s']:.1f} s)")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", default="5m")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--formats", default=DEFAULT_FORMATS)
  p.add_argument("--layer_format", default="w4a16")
  p.add_argument("--repeats", type=int, default=5)
  a = p.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
  per_layer(a.size, a.layer_format, a.repeats)
  whole_model(a.size, a.steps, [f.strip() for f in a.formats.split(",") if f.strip()])


if __name__ == "__main__":
  main()
