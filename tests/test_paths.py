"""Workdir paths: local via os, gs:// via etils.epath (here a fake store backed by a folder)."""

import pathlib

from compress_scaling import paths


def test_local_and_remote_paths(tmp_path, monkeypatch):
  root = tmp_path / "bucket"
  monkeypatch.setattr(
    paths, "_epath", lambda p: pathlib.Path(str(p).replace("gs://bucket", str(root)))
  )
  assert paths.absolute("gs://bucket/run") == "gs://bucket/run"  # no abspath on URLs
  assert paths.absolute("run") == str(pathlib.Path("run").resolve())
  assert not paths.exists("gs://bucket/run/run.json")
  paths.makedirs("gs://bucket/run/sub")
  assert (root / "run" / "sub").is_dir()
  assert paths.read_json("gs://bucket/run/run.json") is None
  (root / "run" / "run.json").write_text('{"run_id": "x"}')
  assert paths.exists("gs://bucket/run/run.json")
  assert paths.read_json("gs://bucket/run/run.json") == {"run_id": "x"}
  # local paths never touch epath
  monkeypatch.setattr(paths, "_epath", None)
  (tmp_path / "a.json").write_text("{}")
  assert paths.read_json(str(tmp_path / "a.json")) == {}
  assert paths.is_remote("gs://b/x") and paths.is_remote("s3://b/x")
  assert not paths.is_remote(str(tmp_path))
