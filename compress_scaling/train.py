"""Trains one config end to end and writes its log entry; or several seeds of it in one program.

`train_and_evaluate(config, workdir)`: validate (nothing is compiled or written before the
config passes) -> check the workdir -> restore or sharded init -> loop [step, NaN check, log,
eval, checkpoint, SIGTERM] -> final eval -> `<workdir>/log_entry.json`. Re-running on a
workdir resumes from its newest checkpoint. A finished workdir (complete or diverged) of the
same config (equal config hash) is reported and left untouched; one of another config is
refused, naming the differing fields, before anything runs.

`train_replicas(config, workdirs, seeds)` trains the config once per seed, each member in its
own workdir with its own checkpoints and log entry, the members stacked in one compiled
program (replicas.py). Every member's workdir is checked as above before anything is written.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time

import jax
import numpy as np
import tqdm

from compress_scaling import (
  checkpoint,
  config_identity,
  data,
  log_entry,
  logbook,
  paths,
  replicas,
  steps,
)

LOG_ENTRY = "log_entry.json"
RUN_META = "run.json"  # run_id, created and the config of the first start, checked on resume
FINISHED = ("complete", "diverged")


class WorkdirError(RuntimeError):
  """The workdir holds something this run must not overwrite."""


class Phases(dict):
  """Seconds spent per phase of a training process, recorded in each log entry as
  train.phases_s (benchmarks/bench_sweep.py reads them): setup (config, workdirs), corpus,
  restore, init (incl. its compilation), first_step (the train step's compilation and one
  step), steps, eval (incl. the eval step's compilation), checkpoint, entry."""

  @contextlib.contextmanager
  def timed(self, name: str):
    t = time.perf_counter()
    try:
      yield
    finally:
      self[name] = self.get(name, 0.0) + time.perf_counter() - t


@dataclasses.dataclass
class Member:
  """One run of a replica set: its seed's config, its workdir and what the workdir holds."""

  config: object
  workdir: str
  finished: dict | None = None  # the log entry of a finished run of this very config
  meta: dict | None = None  # run.json, once written or read

  @property
  def entry_path(self) -> str:
    return os.path.join(self.workdir, LOG_ENTRY)


def _inspect(config, workdir: str) -> Member:
  """Reads the workdir (nothing is written): finished, resumable, or refused."""
  member = Member(config, paths.absolute(workdir))
  cfg = config_identity.to_dict(config)
  if paths.exists(member.entry_path):
    try:
      entry = logbook.read_entry(member.entry_path)
    except ValueError as e:
      raise WorkdirError(f"{e}; not training over it (move it away to retrain)") from e
    if entry.get("status") in FINISHED:
      if fields := config_identity.mismatch(entry, cfg):
        raise WorkdirError(
          f"{member.entry_path} is a finished run (status {entry['status']}) of a different "
          f"config (fields {', '.join(fields)}); use a new workdir, nothing was changed"
        )
      member.finished = entry
      return member
  meta = paths.read_json(os.path.join(member.workdir, RUN_META))
  if meta is not None:
    if fields := config_identity.mismatch(meta, cfg):
      raise WorkdirError(
        f"workdir {member.workdir} holds a run with a different config (fields "
        f"{', '.join(fields)}); use a new workdir, nothing was changed"
      )
    member.meta = meta
  return member


def _write_meta(member: Member) -> None:
  if member.meta is not None:
    return
  digest = config_identity.config_hash(member.config)
  member.meta = {
    "run_id": f"{digest[:8]}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "config": config_identity.to_dict(member.config),
    "config_hash": digest,
  }
  paths.makedirs(member.workdir)
  if jax.process_index() == 0:
    logbook.write_entry(os.path.join(member.workdir, RUN_META), member.meta)


def with_seed(config, seed: int):
  c = copy.deepcopy(config)
  c.seed = int(seed)
  return c


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (or reports it finished); returns its log entry."""
  return train_replicas(config, [workdir], [config.seed])[0]


def train_replicas(config, workdirs: list[str], seeds: list[int]) -> list[dict]:
  """Trains `config` once per seed (workdirs[i] <- seeds[i]) in one program; returns the log
  entries in the same order (a finished member's entry as it was)."""
  if len(workdirs) != len(seeds) or not seeds:
    raise ValueError(f"train_replicas: {len(workdirs)} workdirs for {len(seeds)} seeds")
  if len(set(seeds)) != len(seeds) or len(set(map(paths.absolute, workdirs))) != len(workdirs):
    raise ValueError(f"train_replicas: seeds {seeds} and workdirs must be distinct")
  phases = Phases()
  with phases.timed("setup"):
    setup = steps.Setup.create(config)  # raises ConfigError before anything is read or written
    members = [_inspect(with_seed(config, s), w) for w, s in zip(workdirs, seeds)]
  for m in members:
    if m.finished is not None:
      logging.info(
        "%s is finished (status %s, eval loss %s); nothing to do",
        m.entry_path,
        m.finished["status"],
        m.finished.get("eval", {}).get("loss"),
      )
  todo = [m for m in members if m.finished is None]
  if todo:
    with phases.timed("setup"):
      for m in todo:
        _write_meta(m)
    _train(setup, todo, phases)
  return [m.finished for m in members]


def _train(setup: steps.Setup, members: list[Member], phases: Phases) -> None:
  config = setup.config
  logging.info(
    "devices: %d (%s), processes: %d, mesh %s; %d model(s) in one program",
    jax.device_count(),
    jax.devices()[0].device_kind,
    jax.process_count(),
    dict(zip(setup.mesh.axis_names, setup.mesh.devices.shape)),
    len(members),
  )
  with phases.timed("corpus"):
    corpus = data.load_corpus(config.data)
  eval_batches = None
  runs = []
  for m in members:
    batches = data.Batches(
      corpus,
      seed=m.config.seed,
      batch_size=config.batch_size,
      seq_len=config.seq_len,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    if eval_batches is None:  # held-out windows do not depend on the seed
      eval_batches = batches.eval(config.eval_batches)
    with phases.timed("restore"):
      ckpt = checkpoint.Checkpointer(
        os.path.join(m.workdir, "checkpoints"), config.checkpoints_to_keep
      )
      restored = ckpt.restore(setup.abstract_state, corpus.fingerprint)
    runs.append(_Run(m, batches, ckpt, restored))
  # Members resume together when their checkpoints are at the same step.
  by_step: dict[int, list[_Run]] = {}
  for r in runs:
    by_step.setdefault(r.progress.step, []).append(r)
  for group in by_step.values():
    reps = replicas.Replicas(setup, tuple(r.member.config.seed for r in group))
    init_keys, step_keys = reps.keys()
    with phases.timed("init"):
      if group[0].restored_state is None:
        state = reps.init_state(init_keys)
      else:
        state = reps.stack([r.restored_state for r in group])
        for r in group:
          r.restored_state = None
          logging.info("resumed %s from step %d", r.member.workdir, r.progress.step)
      jax.block_until_ready(state)
    loop = _Loop(reps, group, eval_batches, reps.step_keys(step_keys), phases)
    state = loop.run(state)
    with phases.timed("entry"):
      for i, r in enumerate(group):
        r.finish(setup, corpus, reps.member(state, i), eval_batches, len(group), phases)


class _Run:
  """A member while it trains: batches, checkpoints, progress, summaries, outcome."""

  def __init__(self, member: Member, batches, ckpt, restored):
    self.member, self.batches, self.ckpt = member, batches, ckpt
    if restored is None:
      self.restored_state, self.progress = None, log_entry.Progress()
    else:
      self.restored_state, position = restored
      self.progress = log_entry.Progress.from_dict(position)
    self.status, self.message = None, ""  # None while training
    self.summaries = _Summaries(member.workdir)

  @property
  def alive(self) -> bool:
    return self.status is None

  def finish(self, setup, corpus, state, eval_batches, n_members: int, phases: Phases) -> None:
    self.ckpt.close()
    self.summaries.close()
    status = self.status or "complete"
    entry = log_entry.build(
      self.member.meta, status, setup, corpus, state, self.progress, self.message
    )
    entry["train"]["replicas"] = n_members  # models trained together in one program
    entry["train"]["phases_s"] = {k: round(v, 3) for k, v in phases.items()}  # so far
    config = setup.config
    if status == "complete" and config.eval_serving:
      serving_loss, _ = steps.evaluate(
        setup, setup.jit_eval_step(serving=True), state, eval_batches
      )
      entry["eval"]["serving_loss"] = serving_loss
    if status == "complete" and config.eval_diagnostics:
      entry["eval"]["diagnostics"] = setup.diagnostics(state, eval_batches[0])
    if jax.process_index() == 0:
      logbook.write_entry(self.member.entry_path, entry)
    logging.info(
      "%s: %s (eval loss %s) -> %s",
      self.member.meta["run_id"],
      status,
      entry["eval"]["loss"],
      self.member.entry_path,
    )
    self.member.finished = entry


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


class _Loop:
  """Runs train steps until total_steps, divergence of every member, or SIGTERM.

  Metrics of step n are read after step n+1 is dispatched (as nanodo does), except at eval /
  checkpoint boundaries, where they are checked first so that no non-finite state is ever
  evaluated or saved. A member that diverges stops being evaluated and saved (its entry says
  diverged, its last good checkpoint is kept); the others train on.
  """

  def __init__(self, reps: replicas.Replicas, runs: list[_Run], eval_batches, step_keys, phases):
    self.reps, self.runs, self.eval_batches, self.step_keys = reps, runs, eval_batches, step_keys
    self.phases = phases
    self.config = reps.setup.config
    self.train_step, self.eval_step = reps.jit_train_step(), reps.jit_eval_step()

  @property
  def alive(self) -> list[int]:
    return [i for i, r in enumerate(self.runs) if r.alive]

  def run(self, state):
    """Trains until the end; each run's status is set (None left = complete). Returns state."""
    c, runs = self.config, self.runs
    tokens_per_step = c.batch_size * c.seq_len
    step = runs[0].progress.step
    bar = None
    if jax.process_index() == 0:
      bar = tqdm.tqdm(
        total=c.total_steps, initial=step, disable=None, dynamic_ncols=True, desc="train"
      )
    self.bar = bar
    t_session = time.perf_counter()
    t_timed, timed_steps = None, 0  # throughput excludes the first (compiling) step
    pending = None  # (step, metrics) of the last dispatched step
    with steps.Preemption() as preemption, _closing(bar):
      while step < c.total_steps:
        batch = self.reps.global_batch([r.batches.train(step) for r in runs])
        with self.reps.setup.mesh:
          state, metrics = self.train_step(state, batch, self.step_keys)
        if pending is not None and not self._check(*pending):
          return state
        pending, step = (step + 1, metrics), step + 1
        for i in self.alive:  # a diverged member's entry keeps the step it diverged at
          runs[i].progress.step = step
        if t_timed is None:
          jax.block_until_ready(metrics)
          t_timed = time.perf_counter()
          self.phases["first_step"] = self.phases.get("first_step", 0.0) + t_timed - t_session
        else:
          timed_steps += 1
        if bar is not None:
          bar.update(1)
        at_eval = step % c.eval_every == 0 or step == c.total_steps
        at_save = step % c.checkpoint_every == 0 or step == c.total_steps
        if not (at_eval or at_save or preemption.requested):
          continue
        alive_before = self._check(*pending)
        pending = None
        if not alive_before:
          return state
        # Stop the throughput clock before eval and checkpointing.
        elapsed = time.perf_counter() - t_timed
        self.phases["steps"] = self.phases.get("steps", 0.0) + elapsed
        for i in self.alive:
          runs[i].progress.add_time(timed_steps * tokens_per_step, elapsed)
        if at_eval:
          with self.phases.timed("eval"):
            self._evaluate(state, step)
        wall = time.perf_counter() - t_session
        for i in self.alive:
          runs[i].progress.add_wall(wall)
        t_session = time.perf_counter()
        if at_save or preemption.requested:
          with self.phases.timed("checkpoint"):
            for i in self.alive:
              r = runs[i]
              fp = r.batches.corpus.fingerprint
              r.ckpt.save(step, self.reps.member(state, i), r.progress.to_dict(fp))
        if preemption.requested:
          for i in self.alive:
            runs[i].ckpt.wait()
            runs[i].status = "stopped"
            runs[i].message = f"stopped by SIGTERM at step {step}; checkpoint saved"
          return state
        t_timed, timed_steps = time.perf_counter(), 0
    if pending is not None:
      self._check(*pending)
    return state

  def _evaluate(self, state, step: int) -> None:
    losses, n = self.reps.evaluate(self.eval_step, state, self.eval_batches)
    for i in self.alive:
      r = self.runs[i]
      r.progress.record_eval(step, float(losses[i]), n)
      r.summaries.scalars(step, {"eval/loss": float(losses[i])})
    shown = " / ".join(f"{losses[i]:.4f}" for i in self.alive)
    logging.info("step %d: eval loss %s over %d tokens", step, shown, n)

  def _check(self, step: int, metrics) -> bool:
    """Marks members whose step-`step` metrics are not finite diverged (logs the others);
    returns whether any member is still training."""
    m = jax.device_get(metrics)
    losses = np.asarray(m["loss"], np.float64).reshape(-1)
    finite = np.asarray(m["params_finite"]).reshape(-1)
    log_now = step % self.config.log_every == 0 or step == self.config.total_steps
    shown = []
    for i in self.alive:
      r, loss = self.runs[i], float(losses[i])
      if not (math.isfinite(loss) and bool(finite[i])):
        p = r.progress
        r.status = "diverged"
        r.message = (
          f"loss became {loss} (params finite: {bool(finite[i])}) at step {step}; "
          f"the last finite loss was at step {p.last_finite_step} ({p.last_train_loss}); "
          f"diverged between steps {p.last_finite_step} and {step}; "
          f"last good checkpoint: step {r.ckpt.latest_step()}"
        )
        logging.warning("%s: %s", r.member.workdir, r.message)
        continue
      r.progress.record_train(step, loss)
      if log_now:
        lr = float(np.asarray(m["lr"]).reshape(-1)[0])
        grad_norm = float(np.asarray(m["grad_norm"]).reshape(-1)[i])
        r.summaries.scalars(
          step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm}
        )
        shown.append(f"{loss:.4f}")
    if log_now and shown:
      lr = float(np.asarray(m["lr"]).reshape(-1)[0])
      line = f"step {step:6d}  loss {' / '.join(shown)}  lr {lr:.2e}"
      if self.bar is not None and not self.bar.disable:
        self.bar.write(line)
      else:
        logging.info(line)
    return bool(self.alive)


@contextlib.contextmanager
def _closing(bar):
  try:
    yield
  finally:
    if bar is not None:
      bar.close()
