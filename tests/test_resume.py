"""Processes killed or preempted mid-run resume to the uninterrupted result; sharded runs
match single-device runs. Each test drives `python -m compress_scaling.main` subprocesses."""

import signal

import pytest

from tests.conftest import read_entry, run_main, start_main, wait_for_checkpoint

LONG = ("--config.total_steps=120", "--config.checkpoint_every=20", "--config.eval_every=60")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  run_main(workdir, *LONG)
  return read_entry(workdir)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, uninterrupted):
  proc = start_main(tmp_path, *LONG)
  wait_for_checkpoint(proc, tmp_path, 40)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "log_entry.json").exists()
  done = run_main(tmp_path, *LONG)
  assert "resumed" in done.stderr
  entry = read_entry(tmp_path)
  assert entry["status"] == "complete"
  assert entry["eval"]["loss"] == pytest.approx(uninterrupted["eval"]["loss"], rel=1e-6)
  assert entry["data"]["tokens_seen"] == uninterrupted["data"]["tokens_seen"]
  assert [s for s, _ in entry["eval"]["curve"]] == [60, 120]


@pytest.mark.slow  # default-suite time: CI runs the fast set in ~15 minutes on 2 cores
def test_sigterm_saves_and_exits_cleanly(tmp_path, uninterrupted):
  proc = start_main(tmp_path, *LONG)
  wait_for_checkpoint(proc, tmp_path, 20)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  stopped = read_entry(tmp_path)
  assert stopped["status"] == "stopped" and stopped["eval"]["loss"] is None
  step = stopped["train"]["steps"]
  assert 20 <= step < 120
  assert (tmp_path / "checkpoints" / str(step)).is_dir()  # saved at the stop step
  run_main(tmp_path, *LONG)
  entry = read_entry(tmp_path)
  assert entry["status"] == "complete" and entry["run_id"] == stopped["run_id"]
  assert entry["eval"]["loss"] == pytest.approx(uninterrupted["eval"]["loss"], rel=1e-6)


def test_sharded_matches_single_device(tmp_path):
  single, sharded = tmp_path / "single", tmp_path / "sharded"
  run_main(single)
  run_main(sharded, "--config.mesh.data=4", "--config.mesh.tensor=2", devices=8)
  a, b = read_entry(single), read_entry(sharded)
  assert b["train"]["devices"] == 8 and b["train"]["mesh"] == {"data": 4, "fsdp": 1, "tensor": 2}
  assert b["eval"]["loss"] == pytest.approx(a["eval"]["loss"], rel=1e-4)
