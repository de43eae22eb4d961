"""Synthetic runs drawn from the laws, for tests, benchmarks and colab demos: a runs table with
known ground truth, and log entries (schema v1) written from such a table."""

from __future__ import annotations

import datetime
import hashlib
import os

import numpy as np
import pandas as pd

from compress_scaling.scaling import laws, specs

# A plausible small-model base law (Chinchilla-like exponents, small-corpus constants).
BASE = dict(A=400.0, B=1200.0, E=1.8, alpha=0.34, beta=0.30)
SIZES = (2e7, 5e7, 1e8, 2e8, 4e8)
TOKENS_PER_PARAM = (10, 20, 40)


def unified_runs(
  effs: dict,
  *,
  base=BASE,
  sizes=SIZES,
  tokens_per_param=TOKENS_PER_PARAM,
  noise: float = 0.003,
  seed: int = 0,
  d_model=None,
  seeds=None,
  seed_noise: float = 0.0,
) -> pd.DataFrame:
  """One run per (compression, N, D = r N[, training seed]) with L = unified law x
  exp(noise N(0, 1)). effs: {spec: eff}, 'dense' should be 1. d_model: optional {N: width}
  for a model.d_model column (the per-channel group size of the QAT law). seeds: training
  seeds (a `seed` column): every compression is run once per seed at every (N, D), and
  `seed_noise` is the SD of a log-loss effect shared by the runs of one (N, D, seed), the
  common random numbers of real sweeps (scaling/noise.py)."""
  rng = np.random.default_rng(seed)
  train_seeds = (None,) if seeds is None else tuple(seeds)
  # Shared effects drawn first, and only when asked for: seed_noise=0 draws the same run
  # noise as before seeds existed (the tests' golden tables depend on it).
  shared = {
    (N, r, s): seed_noise * rng.standard_normal() if seed_noise else 0.0
    for N in sizes
    for r in tokens_per_param
    for s in train_seeds
  }
  rows = []
  for c, e in effs.items():
    for N in sizes:
      for r in tokens_per_param:
        for s in train_seeds:
          eps = noise * rng.standard_normal() + shared[(N, r, s)]
          L = laws.unified(N, r * N, e, **base) * np.exp(eps)
          row = dict(
            run_id=f"{c}-N{N:.3g}-r{r}" + ("" if s is None else f"-s{s}"),
            compression=c,
            N=N,
            D=r * N,
            loss=float(L),
            eff_true=e,
          )
          if s is not None:
            row["seed"] = s
          if d_model is not None:
            row["model.d_model"] = d_model[N]
          rows.append(row)
  return pd.DataFrame(rows)


def qat_runs(
  params: dict,
  groups,
  *,
  base=BASE,
  sizes=SIZES,
  tokens_per_param=(10, 40),
  family="w4a4",
  noise: float = 0.001,
  seed: int = 0,
) -> pd.DataFrame:
  """Runs with L = base + Chen et al.'s delta(N, D, G), one per (G, N, D); G in the spec."""
  rng = np.random.default_rng(seed)
  rows = []
  for G in groups:
    for N in sizes:
      for r in tokens_per_param:
        D = r * N
        L = laws.chinchilla(N, D, **base) + laws.qat_delta(N, D, G, **params)
        rows.append(
          dict(
            run_id=f"{family}-g{G}-N{N:.3g}-r{r}",
            compression=f"{family}-g{G}",
            N=N,
            D=D,
            G=G,
            loss=float(L * np.exp(noise * rng.standard_normal())),
          )
        )
  return pd.DataFrame(rows)


# Frantar et al. 2023's sparse law in the notebook form, in the units of report._sparse_fit and
# colabs/sparse_law.ipynb (N = non-zero parameters / 1e6, D = tokens / 1e9).
SPARSE = dict(a=0.6, b=0.8, c=1.5, d=0.25, e=0.6, f=0.3, g=0.7)


def sparse_runs(
  params=SPARSE,
  sparsities=(0.0, 0.5, 0.75, 0.875),
  *,
  sizes=SIZES,
  tokens_per_param=TOKENS_PER_PARAM,
  suffix: str = "",
  noise: float = 0.003,
  seed: int = 0,
) -> pd.DataFrame:
  """One run per (S, dense-shape N, D = r N) with L = laws.sparse_notebook(S, N (1 - S) / 1e6,
  D / 1e9, **params) x exp(noise N(0, 1)); spec 'dense' or f's{100 S:g}{suffix}' (e.g. suffix
  '-every10'), and a model.n_nonzero = N (1 - S) column."""
  rng = np.random.default_rng(seed)
  rows = []
  for S in sparsities:
    c = "dense" if S == 0 else f"s{100 * S:g}{suffix}"
    for N in sizes:
      for r in tokens_per_param:
        L = laws.sparse_notebook(S, N * (1 - S) / 1e6, r * N / 1e9, **params)
        rows.append(
          {
            "run_id": f"{c}-N{N:.3g}-r{r}",
            "compression": c,
            "N": N,
            "D": r * N,
            "loss": float(L * np.exp(noise * rng.standard_normal())),
            "model.n_nonzero": N * (1 - S),
          }
        )
  return pd.DataFrame(rows)


def entry_from_row(row: dict, *, status: str = "complete", created=None) -> dict:
  """A schema-v1 log entry carrying a runs-table row (compression, N, D, loss)."""
  spec = str(row["compression"])
  try:
    bits = specs.bits_per_param(spec)
  except ValueError:
    bits = None
  created = created or datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
  d_model = row.get("model.d_model")
  d_model = 256 if d_model is None or not np.isfinite(d_model) else int(d_model)
  n_nonzero = row.get("model.n_nonzero")
  n_nonzero = row["N"] if n_nonzero is None or not np.isfinite(n_nonzero) else n_nonzero
  run_id = str(row.get("run_id") or hashlib.sha1(repr(sorted(row.items())).encode()).hexdigest())
  return {
    "schema": "compress_scaling/log_entry/v1",
    "run_id": run_id,
    "kind": row.get("kind", "train"),
    "created": created.isoformat(),
    "status": status,
    "config": {"compression": spec, "seed": 0},
    "config_hash": hashlib.sha1(run_id.encode()).hexdigest()[:16],
    "compression": {
      "spec": spec,
      "weights": None,
      "activations": None,
      "sparsity": None,
      "bits_per_param": bits,
    },
    "model": {
      "d_model": d_model,
      "n_layers": 4,
      "n_heads": 4,
      "d_ff": 1024,
      "vocab_size": 32000,
      "n_params": float(row["N"]),
      "n_params_total": float(row["N"]) * 1.2,
      "n_nonzero": float(n_nonzero),
      "bits_per_param": bits,
    },
    "data": {
      "source": "synthetic",
      "fingerprint": "0",
      "tokens_seen": float(row["D"]),
      "seq_len": 256,
      "batch_size": 32,
    },
    "train": {"steps": 1, "final_train_loss": row["loss"], "wall_s": 1.0},
    "eval": {"loss": row["loss"], "n_tokens": 1000, "curve": [[1, row["loss"]]]},
    "env": {"python": "3.11"},
  }


def write_entries(runs: pd.DataFrame, root: str) -> list[str]:
  """Writes each row as root/<run_id>/log_entry.json; returns the paths."""
  from compress_scaling import logbook

  paths = []
  for row in runs.to_dict("records"):
    entry = entry_from_row(row)
    path = os.path.join(root, entry["run_id"].replace("/", "_"), "log_entry.json")
    logbook.write_entry(path, entry)
    paths.append(path)
  return paths
