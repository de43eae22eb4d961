"""Trains one config end to end and writes its log entry.

`train_and_evaluate(config, workdir)`: validate (nothing is compiled or written before the
config passes) -> restore or sharded init -> loop [step, NaN check, log, eval, checkpoint,
SIGTERM] -> final eval -> `<workdir>/log_entry.json`. Re-running on a workdir resumes from
its newest checkpoint; a finished workdir (complete or diverged) is reported and untouched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time

import jax
import tqdm

from compress_scaling import checkpoint, config_lib, data, log_entry, logbook, steps

LOG_ENTRY = "log_entry.json"
RUN_META = "run.json"  # run_id, created and the config of the first start, checked on resume
FINISHED = ("complete", "diverged")


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _run_meta(workdir: str, config) -> dict:
  """The run's identity; a resume with a different config is refused (nothing overwritten)."""
  path = os.path.join(workdir, RUN_META)
  cfg, digest = config_lib.to_dict(config), config_lib.config_hash(config)
  meta = _read_json(path)
  if meta is not None:
    if meta["config_hash"] != digest:
      diff = sorted(_diff(meta["config"], cfg))
      raise config_lib.ConfigError(
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
  workdir = os.path.abspath(workdir)
  entry_path = os.path.join(workdir, LOG_ENTRY)
  existing = _read_json(entry_path) if os.path.exists(entry_path) else None
  if existing is not None and existing.get("status") in FINISHED:
    logging.info(
      "%s is finished (status %s, eval loss %s); nothing to do",
      entry_path,
      existing["status"],
      existing.get("eval", {}).get("loss"),
    )
    return existing

  setup = steps.Setup.create(config)  # raises ConfigError before anything is written
  os.makedirs(workdir, exist_ok=True)
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

  train_step, eval_step = setup.jit_train_step(), setup.jit_eval_step()
  summaries = _Summaries(workdir)
  status, message = _loop(
    setup,
    config,
    state_box := [state],
    progress,
    batches,
    eval_batches,
    train_step,
    eval_step,
    step_key,
    ckpt,
    summaries,
  )
  state = state_box[0]
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


@contextlib.contextmanager
def _closing(bar):
  try:
    yield
  finally:
    if bar is not None:
      bar.close()


def _loop(
  setup,
  config,
  state_box,
  progress,
  batches,
  eval_batches,
  train_step,
  eval_step,
  step_key,
  ckpt,
  summaries,
):
  """Runs steps until total_steps, divergence or SIGTERM; returns (status, message)."""
  tokens_per_step = config.batch_size * config.seq_len
  bar = (
    tqdm.tqdm(
      total=config.total_steps,
      initial=progress.step,
      disable=None,
      dynamic_ncols=True,
      desc="train",
    )
    if jax.process_index() == 0
    else None
  )
  t_session = time.perf_counter()
  t_timed, timed_steps = None, 0  # throughput excludes the first (compiling) step
  pending = None  # metrics of the last dispatched step, read after the next is queued

  def save():
    ckpt.save(progress.step, state_box[0], progress.to_dict(corpus_fingerprint))

  corpus_fingerprint = batches.corpus.fingerprint

  def check(step_metrics) -> str | None:
    step, metrics = step_metrics
    m = jax.device_get(metrics)
    if not (math.isfinite(float(m["loss"])) and bool(m["params_finite"])):
      last = ckpt.latest_step()
      return (
        f"loss became {m['loss']} (params finite: {bool(m['params_finite'])}) at step "
        f"{step}; the last finite loss was at step {progress.last_finite_step} "
        f"({progress.last_train_loss}); diverged between steps {progress.last_finite_step} "
        f"and {step}; last good checkpoint: step {last}"
      )
    progress.record_train(step, float(m["loss"]))
    if step % config.log_every == 0 or step == config.total_steps:
      summaries.scalars(
        step,
        {
          "train/loss": float(m["loss"]),
          "train/lr": float(m["lr"]),
          "train/grad_norm": float(m["grad_norm"]),
        },
      )
      line = f"step {step:6d}  loss {float(m['loss']):.4f}  lr {float(m['lr']):.2e}"
      (bar.write(line) if bar is not None and not bar.disable else logging.info(line))
    return None

  with steps.Preemption() as preemption, _closing(bar):
    while progress.step < config.total_steps:
      step = progress.step
      batch = setup.global_batch(batches.train(step))
      with setup.mesh:
        state_box[0], metrics = train_step(state_box[0], batch, step_key)
      if pending is not None and (problem := check(pending)):
        return "diverged", problem
      pending = (step + 1, metrics)
      progress.step = step + 1
      if t_timed is None:
        jax.block_until_ready(metrics)
        t_timed = time.perf_counter()
      else:
        timed_steps += 1
      if bar is not None:
        bar.update(1)
      boundary = (
        progress.step % config.eval_every == 0
        or progress.step % config.checkpoint_every == 0
        or progress.step == config.total_steps
        or preemption.requested
      )
      if not boundary:
        continue
      if problem := check(pending):
        return "diverged", problem
      pending = None
      if progress.step % config.eval_every == 0 or progress.step == config.total_steps:
        loss, n = steps.evaluate(setup, eval_step, state_box[0], eval_batches)
        progress.record_eval(progress.step, loss, n)
        summaries.scalars(progress.step, {"eval/loss": loss})
        logging.info("step %d: eval loss %.4f over %d tokens", progress.step, loss, n)
      if t_timed is not None and timed_steps:
        progress.add_time(timed_steps * tokens_per_step, time.perf_counter() - t_timed)
        t_timed, timed_steps = time.perf_counter(), 0
      progress.add_wall(time.perf_counter() - t_session)
      t_session = time.perf_counter()
      if (
        progress.step % config.checkpoint_every == 0
        or progress.step == config.total_steps
        or preemption.requested
      ):
        save()
      if preemption.requested:
        ckpt.wait()
        return "stopped", f"stopped by SIGTERM at step {progress.step}; checkpoint saved"
  if pending is not None and (problem := check(pending)):
    return "diverged", problem
  return "complete", ""
