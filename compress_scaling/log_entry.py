"""Builds a run's log entry (schema compress_scaling/log_entry/v1, DESIGN.md).

The entry is the only coupling between training and fitting; `Progress` is the part of it
that accumulates during training and travels in every checkpoint, so a resumed run reports
the eval curve, tokens and times of all its sessions.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
import time

import flax
import jax
import numpy as np

from compress_scaling import compression, logbook, model


@dataclasses.dataclass
class Progress:
  step: int = 0
  eval_curve: list = dataclasses.field(default_factory=list)  # [[step, loss], ...]
  eval_tokens: int = 0
  last_train_loss: float | None = None
  last_finite_step: int = 0
  timed_tokens: int = 0  # tokens of steps after each session's first (compiling) step
  timed_s: float = 0.0
  wall_s: float = 0.0

  def record_train(self, step: int, loss: float) -> None:
    self.last_train_loss, self.last_finite_step = loss, step

  def record_eval(self, step: int, loss: float, n_tokens: int) -> None:
    self.eval_curve.append([step, loss])
    self.eval_tokens = n_tokens

  def add_time(self, tokens: int, seconds: float) -> None:
    self.timed_tokens += tokens
    self.timed_s += seconds

  def add_wall(self, seconds: float) -> None:
    self.wall_s += seconds

  def to_dict(self, fingerprint: str) -> dict:
    return {**dataclasses.asdict(self), "fingerprint": fingerprint}

  @classmethod
  def from_dict(cls, d: dict) -> Progress:
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in fields})


def _git_commit() -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(
      ["git", "-C", here, "rev-parse", "HEAD"],
      capture_output=True,
      text=True,
      timeout=5,
      check=True,
    )
    return out.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _sparsity_counts(masks) -> dict[str, tuple[int, int]]:
  """(kept, total) entries of the masks actually applied: over all of them ("all") and over
  the non-embedding ones ("non_embedding", the part of N)."""
  counts = {"all": (0, 0), "non_embedding": (0, 0)}
  for path, m in jax.tree_util.tree_leaves_with_path(masks):
    kept, size = int(np.asarray(jax.device_get(m)).sum()), int(m.size)
    groups = ["all"]
    if str(getattr(path[0], "key", path[0])) not in model.EMBEDDING_PARAMS:
      groups.append("non_embedding")
    for g in groups:
      counts[g] = (counts[g][0] + kept, counts[g][1] + size)
  return counts


def model_bits(plan: compression.Plan, params) -> float:
  """Mean storage bits over non-embedding params: each projection at its layer's
  Compression.bits_per_param, everything else (norm scales) at 16."""
  bits = count = 0.0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    keys = [str(getattr(k, "key", k)) for k in path]
    if keys[0] in model.EMBEDDING_PARAMS:
      continue
    size = leaf.size
    layer_bits = 16.0
    if keys[-1] == "kernel":
      layer_bits = plan.for_layer("/".join(keys[:-2])).bits_per_param(d_in=leaf.shape[0])
    bits, count = bits + size * layer_bits, count + size
  return bits / count


def environment() -> dict:
  """The software and machine a log entry was made on."""
  return {
    "python": sys.version.split()[0],
    "jax": jax.__version__,
    "flax": flax.__version__,
    "platform": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "host": platform.node(),
    "git_commit": _git_commit(),
  }


def build(
  meta: dict, status: str, setup, corpus, state, progress: Progress, message: str = ""
) -> dict:
  config, resolved = setup.config, setup.resolved
  dims = resolved.model.dims
  n_params, n_params_total = model.count_params(state["params"])
  counts = _sparsity_counts(state["masks"])
  kept, masked = counts["all"]
  kept_n, masked_n = counts["non_embedding"]
  plan = resolved.plan
  comp = plan.default.to_dict()
  comp["rules"] = [[pattern, str(c)] for pattern, c in plan.rules]
  comp["achieved_sparsity"] = (1 - kept / masked) if masked else 0.0
  # The final held-out loss belongs to finished runs only; a stopped or diverged run keeps
  # its curve but reports no final loss, so the fit never mistakes it for a complete run.
  eval_loss = progress.eval_curve[-1][1] if progress.eval_curve and status == "complete" else None
  return {
    "schema": logbook.SCHEMA,
    "run_id": meta["run_id"],
    "kind": "train",
    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "started": meta["created"],
    "status": status,
    "message": message,
    "config": meta["config"],
    "config_hash": meta["config_hash"],
    "compression": comp,
    "model": {
      "size": config.model.size,
      "d_model": dims.d_model,
      "n_layers": dims.n_layers,
      "n_heads": dims.n_heads,
      "n_kv_heads": dims.n_kv_heads,
      "d_ff": dims.d_ff,
      "vocab_size": resolved.model.vocab_size,
      "n_params": n_params,
      "n_params_total": n_params_total,
      "n_nonzero": n_params - (masked_n - kept_n),  # N and n_nonzero exclude embeddings
      "bits_per_param": model_bits(plan, state["params"]),
    },
    "data": {
      "source": config.data.source,
      "tokenizer": config.data.tokenizer,
      "fingerprint": corpus.fingerprint,
      "n_files": corpus.n_files,
      "train_tokens": int(len(corpus.train)),
      "val_tokens": int(len(corpus.val)),
      "tokens_seen": progress.step * config.batch_size * config.seq_len,
      "seq_len": config.seq_len,
      "batch_size": config.batch_size,
    },
    "train": {
      "steps": progress.step,
      "final_train_loss": progress.last_train_loss,
      "wall_s": progress.wall_s,
      "tokens_per_s": progress.timed_tokens / progress.timed_s if progress.timed_s else None,
      "devices": jax.device_count(),
      "processes": jax.process_count(),
      "mesh": dict(zip(setup.mesh.axis_names, map(int, setup.mesh.devices.shape))),
    },
    "eval": {"loss": eval_loss, "n_tokens": progress.eval_tokens, "curve": progress.eval_curve},
    "env": environment(),
  }
