"""Local or object-store paths (gs://, s3://) for workdirs and log entries.

Workdirs on TPU VMs live on gs://: orbax writes checkpoints there itself, and everything else
the training loop touches (run.json, the log entry, the folder) goes through these helpers,
which use plain `os` for local paths and etils.epath (imported only then) for URLs.
"""

from __future__ import annotations

import json
import os
import tempfile

REMOTE_PREFIXES = ("gs://", "s3://", "http://", "https://")


def is_remote(path) -> bool:
  return str(path).startswith(REMOTE_PREFIXES)


def _epath(path):
  from etils import epath  # noqa: PLC0415 -- only object stores need it

  return epath.Path(path)


def absolute(path: str) -> str:
  """os.path.abspath for local paths; URLs unchanged."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def is_dir(path: str) -> bool:
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def join(path: str, *parts: str) -> str:
  """os.path.join for local paths; '/'-joined for URLs (os.path.join is the same on POSIX,
  spelled out so that no URL ever meets an OS-specific separator)."""
  if is_remote(path):
    return "/".join([str(path).rstrip("/"), *parts])
  return os.path.join(path, *parts)


def makedirs(path: str) -> None:
  if is_remote(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def read_text(path: str) -> str:
  if is_remote(path):
    return _epath(path).read_text()
  with open(path) as f:
    return f.read()


def read_json(path: str) -> dict | None:
  """The JSON object at `path`, or None when there is no file."""
  return json.loads(read_text(path)) if exists(path) else None


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` as a whole, creating its folder: locally through a temporary file
  and a rename, so a reader never sees a partial file; on an object store as one upload
  (atomic per object on GCS; a rename there would be a copy plus a delete)."""
  if is_remote(path):
    p = _epath(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
  )
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
