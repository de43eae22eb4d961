"""Trains one config end to end and writes its log entry.

`train_and_evaluate(config, workdir)`: validate (nothing is compiled or written before the
config passes) -> restore or sharded init -> loop [step, NaN check, log, eval, checkpoint,
SIGTERM] -> final eval -> `<workdir>/log_entry.json`. Re-running on a workdir resumes from
its newest checkpoint; a finished workdir (complete or diverged) is reported and untouched.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time

import jax
import tqdm

from compress_scaling import checkpoint, config_lib, data, log_entry, logbook, paths, steps

LOG_ENTRY = "log_entry.json"
RUN_META = "run.json"  # run_id, created and the config of the first start, checked on resume
FINISHED = ("complete", "diverged")


class WorkdirError(RuntimeError):
  """The workdir holds something this run must not overwrite."""


def _run_meta(workdir: str, config) -> dict:
  """The run's identity; a resume with a different config is refused (nothing overwritten)."""
  path = os.path.join(workdir, RUN_META)
  cfg, digest = config_lib.to_dict(config), config_lib.config_hash(config)
  meta = paths.read_json(path)
  if meta is not None:
    if meta["config_hash"] != digest:
      diff = sorted(_diff(meta["config"], cfg))
      raise WorkdirError(
        f"workdir {workdir} holds a run with a different config (fields {', '.join(diff)}); "
        "use a new workdir, nothing was changed"
      )
    return meta
  meta = {
    "run_id": f"{digest[:8]}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "config": cfg,
    "config_hash": digest,
  }
  if jax.process_index() == 0:
    logbook.write_entry(path, meta)
  return meta


def _diff(a, b, prefix=""):
  for k in set(a) | set(b):
    va, vb = a.get(k), b.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      yield from _diff(va, vb, f"{prefix}{k}.")
    elif va != vb:
      yield f"{prefix}{k}"


class _Summaries:
  """TensorBoard scalars (tensorboardX: no TensorFlow needed), written by process 0 only."""

  def __init__(self, workdir: str):
    self.writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # noqa: PLC0415 -- import only where written

      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, values: dict) -> None:
    if self.writer is not None:
      for name, value in values.items():
        self.writer.add_scalar(name, value, step)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def train_and_evaluate(config, workdir: str) -> dict:
  workdir = paths.absolute(workdir)
  entry_path = os.path.join(workdir, LOG_ENTRY)
  existing = None
  if paths.exists(entry_path):
    try:
      existing = logbook.read_entry(entry_path)
    except ValueError as e:
      raise WorkdirError(f"{e}; not training over it (move it away to retrain)") from e
  if existing is not None and existing.get("status") in FINISHED:
    logging.info(
      "%s is finished (status %s, eval loss %s); nothing to do",
      entry_path,
      existing["status"],
      existing.get("eval", {}).get("loss"),
    )
    return existing

  setup = steps.Setup.create(config)  # raises ConfigError before anything is written
  paths.makedirs(workdir)
  meta = _run_meta(workdir, config)
  logging.info(
    "devices: %d (%s), processes: %d, mesh %s",
    jax.device_count(),
    jax.devices()[0].device_kind,
    jax.process_count(),
    dict(zip(setup.mesh.axis_names, setup.mesh.devices.shape)),
  )

  corpus = data.load_corpus(config.data)
  batches = data.Batches(
    corpus,
    seed=config.seed,
    batch_size=config.batch_size,
    seq_len=config.seq_len,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  eval_batches = batches.eval(config.eval_batches)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoints_to_keep)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  restored = ckpt.restore(setup.abstract_state, corpus.fingerprint)
  if restored is None:
    state, progress = setup.init_state(init_key), log_entry.Progress()
  else:
    state, position = restored
    progress = log_entry.Progress.from_dict(position)
    logging.info("resumed %s from step %d", workdir, progress.step)

  summaries = _Summaries(workdir)
  loop = _Loop(setup, batches, eval_batches, ckpt, summaries, progress, step_key)
  status, message, state = loop.run(state)
  ckpt.close()
  summaries.close()
  entry = log_entry.build(meta, status, setup, corpus, state, progress, message)
  if status == "complete" and config.eval_serving:
    serving_loss, _ = steps.evaluate(setup, setup.jit_eval_step(serving=True), state, eval_batches)
    entry["eval"]["serving_loss"] = serving_loss
  if status == "complete" and config.eval_diagnostics:
    entry["eval"]["diagnostics"] = setup.diagnostics(state, eval_batches[0])
  if jax.process_index() == 0:
    logbook.write_entry(entry_path, entry)
  logging.info(
    "%s: %s (eval loss %s) -> %s", meta["run_id"], status, entry["eval"]["loss"], entry_path
  )
  return entry


class _Loop:
  """Runs train steps until total_steps, divergence or SIGTERM.

  Metrics of step n are read after step n+1 is dispatched (as nanodo does), except at eval /
  checkpoint boundaries, where they are checked first so that no non-finite state is ever
  evaluated or saved.
  """

  def __init__(self, setup, batches, eval_batches, ckpt, summaries, progress, step_key):
    self.setup, self.config = setup, setup.config
    self.batches, self.eval_batches = batches, eval_batches
    self.ckpt, self.summaries, self.progress, self.step_key = ckpt, summaries, progress, step_key
    self.train_step, self.eval_step = setup.jit_train_step(), setup.jit_eval_step()

  def run(self, state):
    """Returns (status, message, state)."""
    c, progress = self.config, self.progress
    tokens_per_step = c.batch_size * c.seq_len
    bar = None
    if jax.process_index() == 0:
      bar = tqdm.tqdm(
        total=c.total_steps, initial=progress.step, disable=None, dynamic_ncols=True, desc="train"
      )
    self.bar = bar
    t_session = time.perf_counter()
    t_timed, timed_steps = None, 0  # throughput excludes the first (compiling) step
    pending = None  # (step, metrics) of the last dispatched step
    with steps.Preemption() as preemption, _closing(bar):
      while progress.step < c.total_steps:
        step = progress.step
        batch = self.setup.global_batch(self.batches.train(step))
        with self.setup.mesh:
          state, metrics = self.train_step(state, batch, self.step_key)
        if pending is not None and (problem := self._check(*pending)):
          return "diverged", problem, state
        pending, progress.step = (step + 1, metrics), step + 1
        if t_timed is None:
          jax.block_until_ready(metrics)
          t_timed = time.perf_counter()
        else:
          timed_steps += 1
        if bar is not None:
          bar.update(1)
        at_eval = progress.step % c.eval_every == 0 or progress.step == c.total_steps
        at_save = progress.step % c.checkpoint_every == 0 or progress.step == c.total_steps
        if not (at_eval or at_save or preemption.requested):
          continue
        if problem := self._check(*pending):
          return "diverged", problem, state
        pending = None
        # Stop the throughput clock before eval and checkpointing.
        progress.add_time(timed_steps * tokens_per_step, time.perf_counter() - t_timed)
        if at_eval:
          loss, n = steps.evaluate(self.setup, self.eval_step, state, self.eval_batches)
          progress.record_eval(progress.step, loss, n)
          self.summaries.scalars(progress.step, {"eval/loss": loss})
          logging.info("step %d: eval loss %.4f over %d tokens", progress.step, loss, n)
        progress.add_wall(time.perf_counter() - t_session)
        t_session = time.perf_counter()
        if at_save or preemption.requested:
          self.ckpt.save(progress.step, state, progress.to_dict(self.batches.corpus.fingerprint))
        if preemption.requested:
          self.ckpt.wait()
          return "stopped", f"stopped by SIGTERM at step {progress.step}; checkpoint saved", state
        t_timed, timed_steps = time.perf_counter(), 0
    if pending is not None and (problem := self._check(*pending)):
      return "diverged", problem, state
    return "complete", "", state

  def _check(self, step: int, metrics) -> str | None:
    """None if step's metrics are finite (and logs them), else the divergence message."""
    m = jax.device_get(metrics)
    loss = float(m["loss"])
    if not (math.isfinite(loss) and bool(m["params_finite"])):
      p = self.progress
      return (
        f"loss became {loss} (params finite: {bool(m['params_finite'])}) at step {step}; "
        f"the last finite loss was at step {p.last_finite_step} ({p.last_train_loss}); "
        f"diverged between steps {p.last_finite_step} and {step}; "
        f"last good checkpoint: step {self.ckpt.latest_step()}"
      )
    self.progress.record_train(step, loss)
    if step % self.config.log_every == 0 or step == self.config.total_steps:
      values = {
        "train/loss": loss,
        "train/lr": float(m["lr"]),
        "train/grad_norm": float(m["grad_norm"]),
      }
      self.summaries.scalars(step, values)
      line = f"step {step:6d}  loss {loss:.4f}  lr {values['train/lr']:.2e}"
      if self.bar is not None and not self.bar.disable:
        self.bar.write(line)
      else:
        logging.info(line)
    return None


@contextlib.contextmanager
def _closing(bar):
  try:
    yield
  finally:
    if bar is not None:
      bar.close()
