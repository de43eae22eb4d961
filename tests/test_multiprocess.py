"""Two local processes under jax.distributed (CPU, gloo collectives) train the smoke config to
the single-process loss; only process 0 writes the log entry."""

import socket
import subprocess

import pytest

from tests.conftest import REPO, main_command, read_entry, run_main, subprocess_env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
  run_main(tmp_path / "single")
  port, workdir = _free_port(), tmp_path / "two"
  procs = []
  for pid in range(2):
    env = subprocess_env()
    env.update(
      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid)
    )
    procs.append(
      subprocess.Popen(
        main_command(workdir, "--config.mesh.data=2"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  entry = read_entry(workdir)
  assert entry["train"]["processes"] == 2 and entry["train"]["devices"] == 2
  assert entry["train"]["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}
  single = read_entry(tmp_path / "single")
  assert entry["eval"]["loss"] == pytest.approx(single["eval"]["loss"], rel=1e-4)
  assert entry["data"]["tokens_seen"] == single["data"]["tokens_seen"]
