"""logbook: atomic JSON entries and read_runs (DESIGN.md 'Log entry')."""

import json
import math
import os
import warnings

import numpy as np
import pytest

from compress_scaling import logbook


def entry(
  run_id="r1",
  *,
  status="complete",
  compression="w4a16",
  N=1e6,
  D=2e7,
  loss=3.5,
  created="2025-01-01T00:00:00+00:00",
  **extra,
):
  comp = (
    compression
    if not isinstance(compression, str)
    else {
      "spec": compression,
      "weights": {"bits": 4},
      "activations": None,
      "sparsity": None,
      "bits_per_param": 4.0,
    }
  )
  e = {
    "schema": logbook.SCHEMA,
    "run_id": run_id,
    "created": created,
    "status": status,
    "config": {"seed": 0, "model": {"size": "tiny"}},
    "config_hash": "abc",
    "compression": comp,
    "model": {
      "d_model": 64,
      "n_layers": 2,
      "n_heads": 2,
      "d_ff": 256,
      "vocab_size": 100,
      "n_params": N,
      "n_params_total": 2 * N if N else None,
      "n_nonzero": N,
      "bits_per_param": 4.0,
    },
    "data": {"source": "x", "fingerprint": "f", "tokens_seen": D, "seq_len": 8, "batch_size": 2},
    "train": {"steps": 10, "wall_s": 1.5},
    "eval": {"loss": loss, "n_tokens": 100, "curve": [[5, 4.0], [10, loss]]},
    "env": {"python": "3.11"},
  }
  e.update(extra)
  return e


def test_write_read_roundtrip_keeps_order_and_nulls_nonfinite(tmp_path):
  path = tmp_path / "a" / "log_entry.json"
  e = entry(loss=float("nan"))
  e["train"]["tokens_per_s"] = float("inf")
  e["eval"]["curve"] = np.array([[1.0, 2.0]])
  logbook.write_entry(path, e)
  text = path.read_text()
  assert text.startswith('{\n  "schema"')  # indent=2, insertion order kept
  assert "NaN" not in text and "Infinity" not in text
  back = logbook.read_entry(path)
  assert list(back) == list(e)
  assert back["eval"]["loss"] is None and back["train"]["tokens_per_s"] is None
  assert back["eval"]["curve"] == [[1.0, 2.0]]
  assert os.listdir(path.parent) == ["log_entry.json"]  # temp file renamed, none left


def test_write_replaces_whole_file(tmp_path):
  path = tmp_path / "log_entry.json"
  logbook.write_entry(path, entry(loss=1.0, message="x" * 1000))
  logbook.write_entry(path, entry(loss=2.0))
  assert json.loads(path.read_text())["eval"]["loss"] == 2.0
  assert "xxx" not in path.read_text()


def test_read_entry_errors_name_the_file(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match=r"bad\.json: corrupt log entry, not valid JSON"):
    logbook.read_entry(bad)
  other = tmp_path / "other.json"
  other.write_text(json.dumps({"schema": "something/else"}))
  with pytest.raises(ValueError, match=r"other\.json: unknown log-entry schema 'something/else'"):
    logbook.read_entry(other)
  arr = tmp_path / "arr.json"
  arr.write_text("[1, 2]")
  with pytest.raises(ValueError, match=r"arr\.json: corrupt log entry, expected a JSON object"):
    logbook.read_entry(arr)


def test_read_runs_columns_and_recursive_glob(tmp_path):
  logbook.write_entry(tmp_path / "a" / "b" / "c" / "log_entry.json", entry("deep", N=2e6))
  logbook.write_entry(
    tmp_path / "top" / "log_entry.json", entry("top", compression="dense", kind="train")
  )
  df = logbook.read_runs(str(tmp_path / "**" / "log_entry.json"))
  assert sorted(df.run_id) == ["deep", "top"]
  row = df.set_index("run_id").loc["deep"]
  assert row.compression == "w4a16" and row.N == 2e6 and row.D == 2e7 and row.loss == 3.5
  assert row["model.n_params"] == 2e6 and row["train.wall_s"] == 1.5
  assert row["eval.curve"] == [[5, 4.0], [10, 3.5]]  # lists stay objects
  assert row.kind == "train" and row.bits_per_param == 4.0
  assert row["config.model.size"] == "tiny"
  # a directory means every log_entry.json below it
  assert len(logbook.read_runs(str(tmp_path))) == 2


def test_read_runs_reports_corrupt_and_unknown_schema(tmp_path):
  logbook.write_entry(tmp_path / "ok" / "log_entry.json", entry("ok"))
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "log_entry.json").write_text('{"schema": ')
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "log_entry.json").write_text(json.dumps({"schema": "v0", "run_id": "x"}))
  with pytest.warns(UserWarning) as rec:
    df = logbook.read_runs(str(tmp_path / "*" / "log_entry.json"))
  assert list(df.run_id) == ["ok"]
  skipped = dict(df.attrs["skipped"])
  assert set(skipped) == {
    str(tmp_path / "broken" / "log_entry.json"),
    str(tmp_path / "old" / "log_entry.json"),
  }
  assert "not valid JSON" in skipped[str(tmp_path / "broken" / "log_entry.json")]
  assert "unknown log-entry schema 'v0'" in skipped[str(tmp_path / "old" / "log_entry.json")]
  messages = " ".join(str(w.message) for w in rec)
  assert "broken" in messages and "old" in messages
  with pytest.raises(ValueError, match="strict=True"):
    logbook.read_runs(str(tmp_path / "*" / "log_entry.json"), strict=True)


def test_incomplete_runs_excluded_unless_asked(tmp_path):
  logbook.write_entry(tmp_path / "a" / "log_entry.json", entry("a"))
  logbook.write_entry(tmp_path / "b" / "log_entry.json", entry("b", status="diverged", loss=None))
  with pytest.warns(UserWarning, match="status != complete"):
    df = logbook.read_runs(str(tmp_path / "*" / "log_entry.json"))
  assert list(df.run_id) == ["a"]
  assert df.attrs["incomplete"] == [(str(tmp_path / "b" / "log_entry.json"), "diverged")]
  with pytest.warns(UserWarning, match="without"):  # b has no loss: reported, kept
    df = logbook.read_runs(str(tmp_path / "*" / "log_entry.json"), include_incomplete=True)
  assert sorted(df.status) == ["complete", "diverged"]
  assert df.attrs["missing"] == [(str(tmp_path / "b" / "log_entry.json"), ["loss"])]


def test_duplicates_keep_newest_created(tmp_path):
  logbook.write_entry(
    tmp_path / "x1" / "log_entry.json", entry("dup", loss=3.0, created="2025-01-01T00:00:00+00:00")
  )
  logbook.write_entry(
    tmp_path / "x2" / "log_entry.json", entry("dup", loss=2.5, created="2025-03-01T00:00:00+00:00")
  )
  logbook.write_entry(
    tmp_path / "x3" / "log_entry.json", entry("dup", loss=2.9, created="2025-02-01T00:00:00+00:00")
  )
  with pytest.warns(UserWarning, match="duplicate run_id"):
    df = logbook.read_runs(str(tmp_path / "*" / "log_entry.json"))
  assert len(df) == 1 and df.loss.iloc[0] == 2.5
  ((rid, kept, dropped),) = df.attrs["duplicates"]
  assert rid == "dup" and kept.endswith(os.path.join("x2", "log_entry.json"))
  assert sorted(os.path.basename(os.path.dirname(d)) for d in dropped) == ["x1", "x3"]


def test_missing_fields_reported_by_file_not_dropped(tmp_path):
  e = entry("nocomp")
  del e["compression"]
  logbook.write_entry(tmp_path / "n" / "log_entry.json", e)
  logbook.write_entry(tmp_path / "m" / "log_entry.json", entry("noN", N=None, D=None))
  with pytest.warns(UserWarning, match="without"):
    df = logbook.read_runs(str(tmp_path / "*" / "log_entry.json"))
  assert sorted(df.run_id) == ["noN", "nocomp"]
  missing = dict(df.attrs["missing"])
  assert missing[str(tmp_path / "m" / "log_entry.json")] == ["N", "D"]
  assert missing[str(tmp_path / "n" / "log_entry.json")] == ["compression"]
  assert math.isnan(df.set_index("run_id").loc["noN", "N"])


def test_plain_string_compression_and_kind_column(tmp_path):
  e = entry("ptq1", kind="ptq", base_run_id="r0")
  e["compression"] = "w3a16"  # tolerated: a plain spec string
  logbook.write_entry(tmp_path / "p" / "log_entry.json", e)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    df = logbook.read_runs([str(tmp_path / "p" / "log_entry.json")])
  assert df.compression.iloc[0] == "w3a16" and df.kind.iloc[0] == "ptq"
  assert df.base_run_id.iloc[0] == "r0"


def test_no_match_warns_and_gives_the_columns(tmp_path):
  with pytest.warns(UserWarning, match="no files match"):
    df = logbook.read_runs(str(tmp_path / "**" / "log_entry.json"))
  assert df.empty and {"run_id", "status", "compression", "N", "D", "loss"} <= set(df.columns)


def test_compression_label_carries_per_layer_rules(tmp_path):
  from compress_scaling import logbook as lb

  entry = {"spec": "w4a4-g32", "rules": [["*/mlp/out", "w4a8-g32"]]}
  assert lb._compression_string(entry) == "w4a4-g32[*/mlp/out=w4a8-g32]"
  assert lb._compression_string({"spec": "w4a4-g32", "rules": []}) == "w4a4-g32"
  assert lb._compression_string("w4a16") == "w4a16"
