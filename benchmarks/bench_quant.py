"""Train-step time of quantization specs against dense and against aqtp, measured in one run.

  python benchmarks/bench_quant.py [--sizes 1m,5m] [--specs w4a16,w4a4,w4a4-g32,wmxfp4amxfp4,w1a1]
                                   [--batch 32] [--seq 128] [--repeats 5] [--aqt-tiled] [--no-aqt]

What: the whole jitted train step (`steps.Setup.jit_train_step`: mask update, forward, backward,
AdamW) of the model from `configs/base.py` at each size, for `dense`, for each spec, and for
the same model with aqtp's `aqt_flax.AqtDotGeneral` injected (prng_name=None) into exactly the
layers our plan compresses (`plan.for_layer(path)` non-dense: the block projections), with the
aqtp config that computes the same thing (`aqt_equivalent`):

  int / binary sides   dot_general_make(lhs_bits=a, rhs_bits=w, bwd_bits=None, use_fwd_quant=True)
                       (for w4a4 = config_v4(fwd_bits=4, dlhs_bits=None, drhs_bits=None) with
                       use_fwd_quant: the backward matmuls use the quantized operands, as our
                       straight-through fake quant does); w4a16 has lhs_bits=None
  group gG (w4a4-g32)  the same with a tiling_fn cutting the contraction axis into tiles of G
                       (only with --aqt-tiled: aqtp runs K/G batched depth-G matmuls, ~5x dense)
  binary (w1a1)      ~ 1 bit with AbsMeanCalibration(clipping_scale=2): sign(x) * mean|x| as
                       ours, but aqtp averages over the NONZERO entries only, which differs once
                       exact zeros appear (binary q, k, v make attention outputs cancel)
  mxfp4 (--aqt-tiled) ~ FpNumerics(e2m1_ocp), computed in bfloat16, tiles of 32, power-of-2
                       scale rounded up (OCP MX, ours, rounds the shared exponent down)
"~" marks approximate equivalents in the table; other specs (fp, ternary, gmse, hadamard, sr,
sparsity) get no aqtp column (a printed note). The first step's loss and gradient norm of each
pair (same init, same batch) are printed as a check that the configs are equivalent.

How: every variant of a size is built from the same init key and batch, compiled and warmed up
(one step), then timed in `--repeats` interleaved rounds (one step of each variant per round, in
a rotating order) so machine noise hits all alike; the table gives the median time per variant and,
as ratios, the median over rounds of the per-round ratio (robust to load that comes and goes on
a shared machine), all from this one run (STYLE.md 7; nothing here is asserted in tests).
Targets (the issue, on the 2-core CPU box): w4a4 <= 1.25x dense at 5m, and w4a4 no slower than
aqtp's w4a4 (ratio <= 1.00).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compress_scaling import cpu_flags  # noqa: E402

cpu_flags.apply()  # the XLA:CPU settings of the training entry point

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from compress_scaling import compression, data, model, steps  # noqa: E402
from configs import base  # noqa: E402

try:
  from aqt.jax.v2 import calibration as aqt_calibration
  from aqt.jax.v2 import config as aqt_config
  from aqt.jax.v2 import tiled_dot_general
  from aqt.jax.v2.flax import aqt_flax
  from aqt.jax.v2.numerics import fp_numerics
except ImportError:  # aqtp is an optional peer (STYLE.md 8)
  aqt_config = None

DEFAULT_SPECS = "w4a16,w4a4,w4a4-g32,wmxfp4amxfp4,w1a1"
W4A4_TARGET = 1.25  # the issue: w4a4 step <= 1.25x dense at 5m on this CPU
TARGET_SIZE = "5m"


# ------------------------------------------------------------------- aqtp configs -----------


def _contraction_tiles(tile: int):
  """aqtp tiling_fn: every contraction axis of both operands split into tiles of `tile`, so
  each tile gets its own scale (= our granularity='group' along the contraction axis)."""

  def tiling_fn(lhs, rhs, dimension_numbers):
    del lhs, rhs
    (lhs_ca, rhs_ca), _ = dimension_numbers

    def side(axes):
      return tiled_dot_general.TensorTiling(
        contraction_axes=[tiled_dot_general.AxisTiling(axis=a, tile_size=tile) for a in axes],
        remaining_axes=[],
      )

    return tiled_dot_general.Cfg(lhs=side(lhs_ca), rhs=side(rhs_ca))

  return tiling_fn


def _plain(q) -> bool:
  """A side aqtp computes as we do: unquantized, or symmetric absmax int / binary absmean per
  channel or group, nearest rounding, straight-through gradient, no rotation."""
  return q is None or (
    q.numerics in ("int", "binary")
    and q.scale == ("absmean" if q.numerics == "binary" else "absmax")
    and q.granularity in ("channel", "group")
    and (q.rounding, q.gradient, q.hadamard) == ("nearest", "ste", 0)
  )


def _make_int(w, a):
  """aqtp config for int / binary sides: dot_general_make(lhs_bits, rhs_bits, bwd_bits=None)
  (for w4a4 the same as config_v4(fwd_bits=4, dlhs_bits=None, drhs_bits=None)) with
  use_fwd_quant, so the backward matmuls use the quantized operands (our straight-through
  fake quant); a binary side gets AbsMeanCalibration(clipping_scale=2): aqtp's 1-bit grid is
  +-0.5 * scale, so a bound of 2 mean|x| gives sign(x) * mean|x| as ours."""
  cfg = aqt_config.dot_general_make(
    lhs_bits=None if a is None else int(a.bits),
    rhs_bits=None if w is None else int(w.bits),
    bwd_bits=None,
    use_fwd_quant=True,
  )
  absmean = functools.partial(aqt_calibration.AbsMeanCalibration, clipping_scale=2.0, p=1.0)
  for q, quantizer in ((a, cfg.fwd.dg_quantizer.lhs), (w, cfg.fwd.dg_quantizer.rhs)):
    if q is not None and q.numerics == "binary":
      quantizer.calibration = absmean
  return cfg


def _make_mxfp4():
  cfg = _make_int(None, None)
  fp4 = fp_numerics.FpNumerics(cfg=fp_numerics.e2m1_ocp)
  aqt_config.set_numerics(cfg.fwd, fp4, fp4)
  aqt_config.set_fwd_calibration(
    cfg, functools.partial(aqt_calibration.AbsMaxCalibration, po2_scale=True)
  )
  aqt_config.set_use_fwd_quant(cfg, dlhs_use_fwd_quant=True, drhs_use_fwd_quant=True)
  return cfg


def aqt_equivalent(c: compression.Compression):
  """(aqtp config factory, tiling_fn, mark) for `c`; factory None (mark = why) if aqtp has no
  equivalent. mark '~': approximate (module docstring), '' same numerics."""
  w, a = c.weights, c.activations
  if c.sparsity is not None:
    return None, None, "aqtp has no sparsity"
  if w is not None and w == a and w.numerics == "mx" and w.fmt == "e2m1":
    return _make_mxfp4, _contraction_tiles(w.group_size), "~"
  if not (_plain(w) and _plain(a)):
    return None, None, "aqtp has no such quantizer"
  groups = {q.group_size for q in (w, a) if q is not None and q.granularity == "group"}
  channel = any(q is not None and q.granularity == "channel" for q in (w, a))
  if len(groups) > 1 or (groups and channel):
    return None, None, "aqtp tiles both operands alike"
  tiling = _contraction_tiles(groups.pop()) if groups else None
  binary = any(q is not None and q.numerics == "binary" for q in (w, a))
  return functools.partial(_make_int, w, a), tiling, "~" if binary else ""


@dataclasses.dataclass(frozen=True)
class AqtPlan(compression.Plan):
  """Our plan's layer choice, with aqtp's AqtDotGeneral (the `aqt_equivalent` of each layer's
  compression) as every compressed layer's matmul."""

  def _aqt(self, path: str, **kwargs):
    comp = self.for_layer(path)
    make_cfg, tiling_fn, why = aqt_equivalent(comp)
    if make_cfg is None:
      raise ValueError(f"{path}: no aqtp equivalent of {comp} ({why})")
    return aqt_flax.AqtDotGeneral(make_cfg(), prng_name=None, tiling_fn=tiling_fn, **kwargs)

  def dot_general_cls(self, path: str, kernel_axes):
    del kernel_axes
    if self.for_layer(path).is_dense:
      return None
    return functools.partial(self._aqt, path)

  def dot_general(self, path: str):
    # Attention matmuls (compressed only through a rule), named as ours; aqtp's `precision`
    # is positional, and the model leaves it out here.
    if self.for_layer(path).is_dense:
      return super().dot_general(path)
    return functools.partial(self._aqt(path, name=path.rsplit("/", 1)[-1]), precision=None)


def with_plan(setup: steps.Setup, plan: compression.Plan) -> steps.Setup:
  """The same Setup with `plan`'s dot_generals (Setup.create takes no plan argument).

  Valid when the plan adds no state (aqtp in TRAIN mode without freezers adds no variables):
  checked by comparing the state tree with the original's.
  """
  resolved = dataclasses.replace(setup.resolved, plan=plan)
  new = dataclasses.replace(
    setup, resolved=resolved, module=model.Transformer(resolved.model, plan)
  )
  before = jax.tree.structure(jax.eval_shape(setup._init_boxed, jax.random.key(0)))
  after = jax.tree.structure(jax.eval_shape(new._init_boxed, jax.random.key(0)))
  if before != after:
    raise RuntimeError(f"plan {plan} changes the train state: {before} != {after}")
  return new


# ------------------------------------------------------------------- timing -----------------


def make_config(size: str, spec: str, batch: int, seq: int, total_steps: int = 10_000):
  c = base.get_config()
  c.model.size, c.batch_size, c.seq_len, c.compression = size, batch, seq, spec
  c.total_steps = total_steps
  return c


@dataclasses.dataclass
class Variant:
  """One jitted train step with its own state; `at_step` pins state['step'] before each call."""

  label: str
  setup: steps.Setup
  at_step: int | None = None
  times: list[float] = dataclasses.field(default_factory=list)
  first: dict[str, float] = dataclasses.field(default_factory=dict)
  compile_s: float = 0.0

  def build(self, batch_rows, seed: int = 0):
    """Fresh state from `seed` (the same for every variant), compile and one warm-up step."""
    init_key, self.key = jax.random.split(jax.random.key(seed))
    self.state = self.setup.init_state(init_key)
    self.batch = self.setup.global_batch(batch_rows)
    self.step = self.setup.jit_train_step()
    metrics, self.compile_s = self.run()
    self.first = {k: float(v) for k, v in metrics.items()}

  def run(self):
    """One train step: (metrics, seconds). Pinning the step counter is not timed."""
    if self.at_step is not None:
      pinned = jnp.asarray(self.at_step, jnp.int32)
      pinned = jax.device_put(pinned, self.setup.state_shardings["step"])
      self.state = {**self.state, "step": jax.block_until_ready(pinned)}
    t = time.perf_counter()
    self.state, metrics = self.step(self.state, self.batch, self.key)
    jax.block_until_ready((self.state, metrics))
    return metrics, time.perf_counter() - t

  def timed(self):
    self.times.append(self.run()[1])

  @property
  def median_s(self) -> float:
    return statistics.median(self.times)

  def ratio(self, other: Variant) -> float:
    """Median over rounds of this step's time / `other`'s in the same round: the two ran
    seconds apart, so load from other processes (which comes and goes over tens of seconds
    on a shared box) mostly cancels, unlike in a ratio of medians."""
    return statistics.median(a / b for a, b in zip(self.times, other.times, strict=True))

  def free(self):
    self.state = self.batch = self.step = None


def time_interleaved(variants: list[Variant], batch_rows, repeats: int, log=print):
  """Compile + warm up each variant, then `repeats` rounds of one step each (rotating order)."""
  for v in variants:
    v.build(batch_rows)
    log(f"  compiled {v.label:<24} {v.compile_s:6.1f} s (first step incl. compile)")
  for r in range(repeats):
    order = variants[r % len(variants) :] + variants[: r % len(variants)]
    for v in order:
      v.timed()
  for v in variants:
    v.free()
    lo, hi = min(v.times) * 1e3, max(v.times) * 1e3
    log(f"  timed    {v.label:<24} {v.median_s * 1e3:6.0f} ms median (min {lo:.0f}, max {hi:.0f})")


def batch_rows_for(c):
  batches = data.Batches(
    data.load_corpus(c.data), seed=0, batch_size=c.batch_size, seq_len=c.seq_len
  )
  return batches.train(0)


def verdict(ok: bool) -> str:
  return "PASS" if ok else "MISS"


# ------------------------------------------------------------------- main -------------------


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="1m,5m")
  parser.add_argument("--specs", default=DEFAULT_SPECS)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
  parser.add_argument("--no-aqt", action="store_true", help="skip the aqtp variants")
  parser.add_argument(
    "--aqt-tiled",
    action="store_true",
    help="also time aqtp's tiled equivalents of w4a4-g32 and mxfp4 (slow: ~5x dense)",
  )
  args = parser.parse_args()
  specs = [s.strip() for s in args.specs.split(",") if s.strip()]
  for s in specs:
    compression.parse(s)  # fail before compiling anything
  print(f"devices: {jax.devices()}  batch {args.batch} x seq {args.seq}, {args.repeats} rounds")
  equivalents = {}
  if aqt_config is None:
    print("aqtp is not installed: the aqtp columns are skipped (pip install aqtp)")
  elif not args.no_aqt:
    for spec in specs:
      make_cfg, tiling_fn, mark = aqt_equivalent(compression.parse(spec))
      if make_cfg is None:
        print(f"{spec}: no aqtp column ({mark})")
      elif tiling_fn is not None and not args.aqt_tiled:
        print(f"{spec}: no aqtp column (its tiled equivalent is slow; --aqt-tiled times it)")
      else:
        equivalents[spec] = (make_cfg, tiling_fn, mark)

  rows = []
  for size in args.sizes.split(","):
    print(f"size {size}:")
    dense_setup = steps.Setup.create(make_config(size, "dense", args.batch, args.seq))
    batch_rows = batch_rows_for(dense_setup.config)
    variants = {"dense": Variant("dense", dense_setup)}
    for spec in specs:
      setup = steps.Setup.create(make_config(size, spec, args.batch, args.seq))
      variants[spec] = Variant(spec, setup)
      if spec in equivalents:
        ours = setup.resolved.plan
        plan = AqtPlan(**{f.name: getattr(ours, f.name) for f in dataclasses.fields(ours)})
        variants["aqtp:" + spec] = Variant("aqtp:" + spec, with_plan(setup, plan))
    time_interleaved(list(variants.values()), batch_rows, args.repeats)
    dense = variants["dense"]
    for spec in ["dense", *specs]:
      ours, peer = variants[spec], variants.get("aqtp:" + spec)
      row = {
        "size": size,
        "spec": spec,
        "ms": ours.median_s * 1e3,
        "x_dense": ours.ratio(dense),
        "aqt_ms": None if peer is None else peer.median_s * 1e3,
        "x_aqt": None if peer is None else ours.ratio(peer),
        "mark": equivalents[spec][2] if peer is not None else "",
      }
      if peer is not None:
        row["dloss"] = abs(ours.first["loss"] - peer.first["loss"])
        row["dgrad"] = abs(ours.first["grad_norm"] / peer.first["grad_norm"] - 1)
      rows.append(row)

  print()
  print(
    f"{'size':>5} {'spec':<14} {'step ms':>8} {'x dense':>8} {'aqtp ms':>8} {'x aqtp':>7}"
    f"   first-step check vs aqtp"
  )
  for r in rows:
    aqt_cols = (
      f"{r['mark'] + format(r['aqt_ms'], '.1f'):>8} {r['mark'] + format(r['x_aqt'], '.2f'):>7}"
      if r["aqt_ms"] is not None
      else f"{'-':>8} {'-':>7}"
    )
    check = f"   |dloss| {r['dloss']:.1e}, grad-norm rel {r['dgrad']:.1e}" if "dloss" in r else ""
    print(f"{r['size']:>5} {r['spec']:<14} {r['ms']:>8.1f} {r['x_dense']:>8.2f} {aqt_cols}{check}")
  if any(r["mark"] == "~" for r in rows):
    print("~ = aqtp config only approximately equivalent (see the module docstring)")

  print()
  w4a4 = {r["size"]: r for r in rows if r["spec"] == "w4a4"}
  if TARGET_SIZE in w4a4:
    r = w4a4[TARGET_SIZE]
    print(
      f"target w4a4 <= {W4A4_TARGET:.2f}x dense at {TARGET_SIZE}: {r['x_dense']:.2f}x  "
      f"{verdict(r['x_dense'] <= W4A4_TARGET)}"
    )
    if r["x_aqt"] is not None:
      print(
        f"target w4a4 no slower than aqtp at {TARGET_SIZE}: {r['x_aqt']:.2f}x aqtp  "
        f"{verdict(r['x_aqt'] <= 1.0)}"
      )
  else:
    print(f"targets need w4a4 at {TARGET_SIZE} (add it to --specs / --sizes)")


if __name__ == "__main__":
  main()
