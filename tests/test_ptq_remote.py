"""PTQ on gs:// workdirs, against the fake object store of tests/test_paths.py (gs://bucket is
a local folder behind compress_scaling.paths._epath; orbax, which reads object stores itself,
is pointed at the same folder)."""

import json
import pathlib

import pytest

from compress_scaling import checkpoint, logbook, paths, train
from compress_scaling.ptq import base_run, run
from configs import smoke


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  root = tmp_path / "bucket"
  root.mkdir()

  def local(p) -> str:
    return str(p).replace("gs://bucket", str(root))

  monkeypatch.setattr(paths, "_epath", lambda p: pathlib.Path(local(p)))
  init = checkpoint.Checkpointer.__init__
  monkeypatch.setattr(
    checkpoint.Checkpointer, "__init__", lambda self, d, *a, **k: init(self, local(d), *a, **k)
  )
  return root


def test_expand_workdirs_on_gs(bucket):
  for name in ("sweep/a", "sweep/b", "sweep/a-ptq", "sweep/_logs"):
    (bucket / name).mkdir(parents=True)
  for name in ("sweep/a", "sweep/b", "sweep/a-ptq"):
    (bucket / name / "log_entry.json").write_text("{}")
  assert run.expand_workdirs(["gs://bucket/sweep/*"]) == [
    "gs://bucket/sweep/a",
    "gs://bucket/sweep/b",
  ]
  assert run.expand_workdirs(["gs://bucket/sweep/_logs"]) == ["gs://bucket/sweep/_logs"]
  with pytest.raises(ValueError, match="matches no run folder"):
    run.expand_workdirs(["gs://bucket/sweep/_l*"])
  # The recursive form of logbook's expansion walks the fake store too, and keeps URLs.
  assert logbook._expand("gs://bucket/**/log_entry.json") == sorted(
    f"gs://bucket/sweep/{n}/log_entry.json" for n in ("a", "a-ptq", "b")
  )
  assert run.default_out("gs://bucket/sweep/a") == "gs://bucket/sweep/a-ptq"


def test_load_errors_name_the_gs_workdir(bucket):
  with pytest.raises(base_run.BaseRunError, match="gs://bucket/empty: no log_entry.json"):
    base_run.load("gs://bucket/empty")
  (bucket / "stopped").mkdir()
  (bucket / "stopped" / "log_entry.json").write_text(
    json.dumps({"schema": logbook.SCHEMA, "kind": "train", "status": "stopped"})
  )
  with pytest.raises(base_run.BaseRunError, match="status is 'stopped'"):
    base_run.load("gs://bucket/stopped")
  with pytest.raises(ValueError, match="must lie outside the base workdir"):
    run.quantize_run("gs://bucket/stopped", ["w4a16"], ["rtn"], out="gs://bucket/stopped/q")


@pytest.mark.slow  # trains 8 steps and runs RTN + evaluation (~40 s)
def test_quantize_run_reads_and_writes_gs(bucket):
  c = smoke.get_config()
  c.total_steps, c.eval_every, c.checkpoint_every, c.eval_batches = 8, 8, 8, 1
  c.batch_size, c.seq_len = 4, 32
  train.train_and_evaluate(c, str(bucket / "run"))  # written locally, read back as gs://
  opts = run.Options(calib_batches=1, radii=(0.0,), directions=1, probe_batches=1)
  written = run.quantize_run("gs://bucket/run", ["w4a16"], ["rtn"], opts=opts)
  assert written == ["gs://bucket/run-ptq/w4a16_rtn/log_entry.json"]
  entry = json.loads((bucket / "run-ptq" / "w4a16_rtn" / "log_entry.json").read_text())
  assert entry["kind"] == "ptq" and entry["status"] == "complete"
  assert entry["base_workdir"] == "gs://bucket/run" and entry["eval"]["delta_nll"] > -0.05
  # A re-run finds the entry through the store and skips it.
  assert run.quantize_run("gs://bucket/run", ["w4a16"], ["rtn"], opts=opts) == written
