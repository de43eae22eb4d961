"""Colab notebooks run top to bottom (nbclient) on log entries written in the test."""

import pathlib

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

from compress_scaling.scaling import synthetic  # noqa: E402

COLABS = pathlib.Path(__file__).resolve().parents[1] / "colabs"
EFFS = {"dense": 1.0, "w4a16": 0.92, "w4a4": 0.75, "s50": 0.87}


def test_unified_law_notebook_recovers_eff(tmp_path, monkeypatch):
  runs = synthetic.unified_runs(EFFS, noise=0.0, seed=0)
  synthetic.write_entries(runs, str(tmp_path / "runs"))
  monkeypatch.setenv("CS_RUNS", str(tmp_path / "runs" / "**" / "log_entry.json"))
  monkeypatch.setenv("CS_BOOTSTRAP", "20")
  nb = nbformat.read(COLABS / "unified_law.ipynb", as_version=4)
  nbclient.NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  ).execute()
  outputs = "".join(
    o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
    for cell in nb.cells
    if cell.cell_type == "code"
    for o in cell.outputs
  )
  assert f"{len(runs)} complete runs, 4 compressions" in outputs
  # The eff table recovers the generating values (noise-free runs).
  for spec, eff in EFFS.items():
    line = next(line for line in outputs.splitlines() if line.startswith(f"| {spec} "))
    assert abs(float(line.split("|")[2]) - eff) < 0.01, line
  assert any("image/png" in o.get("data", {}) for o in nb.cells[-1].outputs)
