"""Post-training quantization of a finished run: quantize, evaluate, write one log entry per
(format, method).

    quantize_run(workdir, formats=["w4a16", "w3a16-g32"], methods=["rtn", "gptq"], out=DIR)

For each format (a weight-only compression spec) and method, every block projection kernel
(compression.DEFAULT_SCOPE x PROJECTIONS: the layers a training spec compresses; embeddings
and the head stay unquantized, as in GPTQ) is quantized post hoc and the model is evaluated
on the run's held-out batches. The entry (kind "ptq") records the base run's id, the loss
before and after, ΔNLL, the method's settings, the layer-wise reconstruction error, and the
model's PTQ factors (ptq/factors.py). Entries go to `<out>/<format>_<method>/log_entry.json`
(default out: `<workdir>-ptq`, beside the run): the base workdir is only read. An entry that
already exists complete is kept and skipped, so a re-run resumes.

Activation quantization and sparsity masks of the base run stay as trained (PTQ of a sparse
run keeps its masks; GPTQ's updates to pruned weights are masked away again at evaluation).
A run trained with quantized weights is quantized from its latent float weights.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time

import jax
import jax.numpy as jnp

from compress_scaling import compression, log_entry, logbook, paths, steps
from compress_scaling.ptq import base_run, calibrate, factors, gptq

METHODS = ("rtn", "gptq")
STATUS = "complete"


@dataclasses.dataclass(frozen=True)
class Options:
  """GPTQ and measurement settings (defaults: Frantar et al. 2022's block 128, damp 0.01)."""

  calib_batches: int = 16  # training batches of the base run used for the Hessians
  block_size: int = 128
  damp: float = 0.01
  act_order: bool = False
  sequential: bool = True  # block l calibrated on the model with blocks < l quantized
  max_carry_gib: float = 4.0  # sequential GPTQ carries hidden states up to this size (calibrate)
  radii: tuple[float, ...] = factors.DEFAULT_RADII
  directions: int = 2
  probe_batches: int = 2  # eval batches per radial-probe point

  def __post_init__(self):
    problems = [
      f"--{name} must be {rule}, got {value!r}"
      for name, value, ok, rule in (
        ("calib_batches", self.calib_batches, self.calib_batches >= 1, ">= 1"),
        ("block_size", self.block_size, self.block_size >= 1, ">= 1"),
        ("damp", self.damp, self.damp >= 0, ">= 0"),
        ("max_carry_gib", self.max_carry_gib, self.max_carry_gib >= 0, ">= 0"),
        ("directions", self.directions, self.directions >= 1, ">= 1"),
        ("radii", self.radii, all(r >= 0 for r in self.radii), "non-negative numbers"),
        ("probe_batches", self.probe_batches, self.probe_batches >= 1, ">= 1"),
      )
      if not ok
    ]
    if problems:
      raise ValueError("; ".join(problems))


def parse_formats(formats) -> list[tuple[str, compression.Compression]]:
  """--formats values -> [(canonical spec, Compression)]; weight-only deterministic specs."""
  if isinstance(formats, str):
    formats = formats.split(",")
  out = []
  for raw in formats:
    text = raw.strip()
    if not text:
      continue
    try:
      comp = compression.parse(text)
    except ValueError as e:
      raise ValueError(f"--formats: {e}") from e
    w = comp.weights
    if w is None or comp.activations is not None or comp.sparsity is not None:
      raise ValueError(
        f"--formats: {text!r} is not a weight-only quantization; PTQ formats quantize weights "
        "only (allowed: 'w<bits>a16[-modifiers]', e.g. w4a16, w3a16-g128, wfp4a16, wmxint4a16)"
      )
    if w.rounding == "stochastic" or w.hadamard:
      what = "stochastic rounding" if w.rounding == "stochastic" else "a Hadamard rotation"
      raise ValueError(
        f"--formats: {text!r} uses {what}, which post-training quantization does not support "
        "(allowed: nearest rounding, no hadamard)"
      )
    out.append((str(comp), comp))
  if not out:
    raise ValueError("--formats: no format given (e.g. --formats=w8a16,w4a16,w3a16)")
  return out


def parse_methods(methods) -> list[str]:
  if isinstance(methods, str):
    methods = methods.split(",")
  out = [m.strip() for m in methods if m.strip()]
  bad = [m for m in out if m not in METHODS]
  if bad or not out:
    raise ValueError(f"--methods: unknown {bad or methods!r}; allowed: {', '.join(METHODS)}")
  return out


def expand_workdirs(patterns) -> list[str]:
  """Run folders: a plain path is taken as is (and fails later if it holds no finished run);
  a glob (local or gs://, expanded by logbook's glob expansion as the fit reads runs) keeps
  the folders holding a log_entry.json (not the sweep's _logs/ or the -ptq outputs of an
  earlier call)."""
  out = []
  for p in patterns:
    if not any(c in p for c in "*?["):
      out.append(p)
      continue
    entries = logbook._expand(paths.join(p.rstrip("/"), "log_entry.json"))
    matches = [m for m in (e[: -len("/log_entry.json")] for e in entries) if not m.endswith("-ptq")]
    if not matches:
      raise ValueError(f"--workdir {p!r} matches no run folder (one holding a log_entry.json)")
    out += matches
  return out


def slug(spec: str) -> str:
  return re.sub(r"[^A-Za-z0-9.\-]+", "_", spec)


def default_out(workdir: str) -> str:
  return paths.absolute(workdir).rstrip("/") + "-ptq"


class _Model:
  """The base run's model under the PTQ evaluation plan, with its loss functions."""

  def __init__(self, base: base_run.BaseRun, opts: Options):
    self.base, self.opts = base, opts
    self.setup = base.eval_setup()
    self.params, self.masks = base.state["params"], base.state["masks"]
    self.paths = base.kernel_paths
    self.eval_step = self.setup.jit_eval_step()
    cfg = base.setup.config
    self.eval_batches = base.batches.eval(cfg.eval_batches)
    self.probe = self.eval_batches[: max(1, opts.probe_batches)]
    self.calib = [base.batches.train(s) for s in range(opts.calib_batches)]
    # The unquantized model's Hessians: GPTQ's without --sequential, and the reference of
    # every entry's reconstruction error (whose denominator is therefore fixed per model).
    self.base_hessians = calibrate.hessians(self.setup, self.params, self.masks, self.calib)
    self.blockwise = calibrate.Blockwise(
      self.setup, self.masks, self.calib, max_carry_bytes=opts.max_carry_gib * 2**30
    )
    self._recon_den = sum(
      float(gptq.reconstruction_error(w, jnp.zeros_like(w), self._hessian_of(path)))
      for path, w in ((p, base_run.get_path(self.params, p)) for p in self.paths)
    )

  def loss(self, params, batches=None) -> tuple[float, int]:
    state = {"params": params, "masks": self.masks}
    return steps.evaluate(self.setup, self.eval_step, state, batches or self.eval_batches)

  def _hessian_of(self, path):
    return self.base_hessians["/".join(path[:-2])]

  def quantize(self, spec, method: str) -> jax.Array:
    """params with every block kernel quantized by `method`."""
    o = self.opts

    def quantize_block(q, layer: int, hs):
      for path in (p for p in self.paths if p[0] == f"block_{layer}"):
        w = jnp.asarray(base_run.get_path(q, path), jnp.float32)
        if method == "rtn":
          w_hat = gptq.rtn(w, spec)
        else:
          h = hs["/".join(path[:-2])]
          w_hat = gptq.gptq(w, h, spec, block_size=o.block_size, damp=o.damp, act_order=o.act_order)
        q = base_run.set_path(q, path, w_hat.astype(base_run.get_path(q, path).dtype))
      return q

    if method == "gptq" and o.sequential:
      return self.blockwise.quantize(self.params, quantize_block)
    q = self.params
    for layer in range(self.setup.resolved.model.dims.n_layers):
      q = quantize_block(q, layer, self.base_hessians)
    return q

  def reconstruction_error(self, qparams) -> float:
    """sum_k tr(dW_k^T H_k dW_k) / sum_k tr(W_k^T H_k W_k) over kernels, with the Hessians of
    the unquantized model: the relative output error GPTQ minimises layer by layer."""
    num = sum(
      float(
        gptq.reconstruction_error(
          base_run.get_path(self.params, p), base_run.get_path(qparams, p), self._hessian_of(p)
        )
      )
      for p in self.paths
    )
    return num / self._recon_den


def _check_shapes(base: base_run.BaseRun, todo) -> None:
  """Every requested format fits every kernel (e.g. a group size must divide each input
  dim), checked before anything of this run is quantized or written."""
  for spec, comp, _, _ in todo:
    for path in base.kernel_paths:
      d_in = base_run.get_path(base.state["params"], path).shape[0]
      try:
        comp.weights.validate_for(d_in, what=f"input dim of {'/'.join(path[:-2])}")
      except ValueError as e:
        raise ValueError(f"--formats {spec!r} does not fit {base.workdir}: {e}") from e


def model_factors(m: _Model, base_loss: float) -> dict:
  entry = m.base.entry
  n, d = entry["model"]["n_params"], entry["data"]["tokens_seen"]
  profile = factors.radial_profile(
    lambda p: m.loss(p, m.probe)[0],
    m.params,
    m.paths,
    radii=m.opts.radii,
    n_directions=m.opts.directions,
  )
  return {
    "base_loss": base_loss,
    "n_params": n,
    "tokens_per_param": d / n,
    "radial": profile,
  }


def quantize_run(workdir: str, formats, methods, *, out: str | None = None, opts=Options()):
  """PTQ of one finished run; returns the paths of the entries written or already there."""
  fmts, meths = parse_formats(formats), parse_methods(methods)
  out = paths.absolute(out or default_out(workdir))
  base_dir = paths.absolute(workdir).rstrip("/")
  if out.rstrip("/") == base_dir or out.startswith(base_dir + "/"):
    raise ValueError(f"--out {out}: must lie outside the base workdir (it is only read)")
  todo, done = [], []
  for spec, comp in fmts:
    for method in meths:
      path = paths.join(out, f"{slug(spec)}_{method}", "log_entry.json")
      if paths.exists(path) and logbook.read_entry(path).get("status") == STATUS:
        logging.info("%s exists; skipped", path)
        done.append(path)
      else:
        todo.append((spec, comp, method, path))
  if not todo:
    return done
  t0 = time.perf_counter()
  base = base_run.load(workdir)
  _check_shapes(base, todo)
  m = _Model(base, opts)
  base_loss, n_tokens = m.loss(m.params)
  logging.info("base %s: eval loss %.4f (%d tokens)", base.entry["run_id"], base_loss, n_tokens)
  model_f = model_factors(m, base_loss)
  sqnr = {}
  for spec, comp, method, path in todo:
    t = time.perf_counter()
    if spec not in sqnr:
      sqnr[spec] = factors.weight_sqnr_db(m.params, m.paths, comp.weights)
    qparams = m.quantize(comp.weights, method)
    loss, _ = m.loss(qparams)
    entry = _entry(
      m,
      comp,
      method,
      loss=loss,
      base_loss=base_loss,
      n_tokens=n_tokens,
      recon=m.reconstruction_error(qparams),
      sqnr=sqnr[spec],
      model_f=model_f,
      wall_s=time.perf_counter() - t,
    )
    if jax.process_index() == 0:
      logbook.write_entry(path, entry)
    logging.info(
      "%s %s: loss %.4f (ΔNLL %+.4f, SQNR %.1f dB) -> %s",
      spec,
      method,
      loss,
      loss - base_loss,
      sqnr[spec],
      path,
    )
    done.append(path)
  logging.info("PTQ of %s: %d entries in %.1f s", workdir, len(todo), time.perf_counter() - t0)
  return done


def _entry(m: _Model, comp, method, *, loss, base_loss, n_tokens, recon, sqnr, model_f, wall_s):
  base = m.base.entry
  plan = m.base.setup.resolved.plan
  full = dataclasses.replace(plan.default, weights=comp.weights)
  ptq_plan = dataclasses.replace(
    plan,
    default=full,
    rules=tuple((p, dataclasses.replace(c, weights=comp.weights)) for p, c in plan.rules),
  )
  o = m.opts
  calib_tokens = sum(int(b[:, :-1].size) for b in m.calib)
  spec = str(full)
  return {
    "schema": logbook.SCHEMA,
    "run_id": f"{base['run_id']}.ptq.{slug(str(comp))}.{method}",
    "kind": "ptq",
    "base_run_id": base["run_id"],
    "base_workdir": m.base.workdir,
    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "status": STATUS,
    "message": "",
    "config": base["config"],
    "config_hash": base["config_hash"],
    "compression": {**full.to_dict(), "rules": [[p, str(c)] for p, c in ptq_plan.rules]},
    "model": {**base["model"], "bits_per_param": log_entry.model_bits(ptq_plan, m.params)},
    "data": base["data"],
    "eval": {
      "loss": loss,
      "n_tokens": n_tokens,
      "base_loss": base_loss,
      "base_entry_loss": base["eval"]["loss"],
      "delta_nll": loss - base_loss,
    },
    "ptq": {
      "method": method,
      "format": spec,
      "weight_bits": comp.weights.bits,
      "weight_sqnr_db": sqnr,
      "rel_reconstruction_error": recon,
      "kernels": len(m.paths),
      "calib_batches": o.calib_batches if method == "gptq" else 0,
      "calib_tokens": calib_tokens if method == "gptq" else 0,
      "block_size": o.block_size,
      "damp": o.damp,
      "act_order": o.act_order,
      "sequential": o.sequential,
      "wall_s": wall_s,
    },
    "factors": {**model_f, "weight_sqnr_db": sqnr, "weight_bits": comp.weights.bits},
    "env": log_entry.environment(),
  }
