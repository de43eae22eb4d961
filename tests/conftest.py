"""Shared test helpers: running `compress_scaling.main` in a subprocess, reference data."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from compress_scaling import cpu_flags

cpu_flags.apply()  # in-process tests compile as the training entry point does

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


def main_command(workdir, *overrides: str, config: str = "configs/smoke.py") -> list[str]:
  return [
    sys.executable,
    "-m",
    "compress_scaling.main",
    f"--config={config}",
    f"--workdir={workdir}",
    *overrides,
  ]


def subprocess_env(devices: int | None = None) -> dict:
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  else:
    env.pop("XLA_FLAGS", None)
  return env


def run_main(
  workdir,
  *overrides: str,
  devices: int | None = None,
  check: bool = True,
  config: str = "configs/smoke.py",
) -> subprocess.CompletedProcess:
  proc = subprocess.run(
    main_command(workdir, *overrides, config=config),
    cwd=REPO,
    env=subprocess_env(devices),
    capture_output=True,
    text=True,
    timeout=600,
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"main failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def start_main(workdir, *overrides: str) -> subprocess.Popen:
  return subprocess.Popen(
    main_command(workdir, *overrides),
    cwd=REPO,
    env=subprocess_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def wait_for_checkpoint(proc, workdir, step: int, timeout: float = 300) -> None:
  """Waits until checkpoint `step` is finished (orbax renames its tmp folder at the end)."""
  target = pathlib.Path(workdir) / "checkpoints" / str(step)
  deadline = time.time() + timeout
  while not target.is_dir():
    if proc.poll() is not None:
      raise AssertionError(f"run ended before checkpoint {step}:\n{proc.stderr.read()[-3000:]}")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f"no checkpoint {step} after {timeout}s")
    time.sleep(0.02)


def read_entry(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / "log_entry.json").read_text())


@pytest.fixture
def reference_dir() -> pathlib.Path:
  if not REFERENCE.is_dir():
    pytest.skip(f"reference data not found at {REFERENCE}")
  return REFERENCE


# The tiny real sweep the colab tests read: configs/sweeps/unified.py:mini's key cells at 0.03m
# and 0.06m, seed 0, these compressions, every run cut to 20 steps of 8 x 64 tokens (~1 minute).
MINI_SWEEP_COMPRESSIONS = ("dense", "w4a16-gmse", "w4a4-gmse", "s50-every10")


@pytest.fixture(scope="session")
def mini_sweep(tmp_path_factory) -> pathlib.Path:
  """Runs the sweep once per session through `python -m launch.sweep` (each run a real
  `compress_scaling.main` training with its log entry); returns the sweep directory."""
  import re

  out = tmp_path_factory.mktemp("mini_sweep")
  names = "|".join(re.escape(c) for c in MINI_SWEEP_COMPRESSIONS)
  cmd = [
    sys.executable,
    "-m",
    "launch.sweep",
    "configs/sweeps/unified.py:mini",
    f"--out={out}",
    rf"--only=^0\.0[36]m_D(66|111)K_({names})_s0$",
    "--jobs=2",
    "--config.total_steps=20",
    "--config.eval_every=20",
    "--config.checkpoint_every=20",
    "--config.log_every=10",
    "--config.eval_batches=2",
    "--config.batch_size=8",
    "--config.seq_len=64",
  ]
  proc = subprocess.run(
    cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600
  )
  if proc.returncode != 0:
    raise AssertionError(f"mini sweep failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return out
