"""`python -m compress_scaling.fit` end to end on synthetic log entries; spec parsing; GMSE."""

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from compress_scaling import fit as cli
from compress_scaling import logbook
from compress_scaling.scaling import specs, synthetic

EFFS = {"dense": 1.0, "w4a16": 0.92, "w4a4": 0.75, "w2a16": 0.7, "s50": 0.87, "w4a16+s50": 0.80}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  runs = synthetic.unified_runs(EFFS, sizes=(2e7, 5e7, 1e8, 2e8), tokens_per_param=(10, 40))
  synthetic.write_entries(runs, str(root))
  # a corrupt file, a diverged run, a compression with a single run
  (root / "broken").mkdir()
  (root / "broken" / "log_entry.json").write_text("{")
  diverged = synthetic.entry_from_row(
    dict(run_id="div", compression="w1a1", N=1e8, D=1e9, loss=9.0), status="diverged"
  )
  logbook.write_entry(root / "div" / "log_entry.json", diverged)
  logbook.write_entry(
    root / "one" / "log_entry.json",
    synthetic.entry_from_row(dict(run_id="one-w3a16", compression="w3a16", N=1e8, D=1e9, loss=4.0)),
  )
  return root


def test_cli_writes_table_and_figures(run_dir, tmp_path, capsys):
  out = tmp_path / "out"
  with pytest.warns(UserWarning):
    rc = cli.main(
      [
        "--runs",
        str(run_dir / "**" / "log_entry.json"),
        "--out",
        str(out),
        "--bootstrap",
        "50",
        "--no-gmse",
        "--min-runs",
        "2",
      ]
    )
  assert rc == 0
  printed = capsys.readouterr().out
  table = pd.read_csv(out / "eff_table.csv", index_col=0)
  assert list(table.index) == ["dense", "s50", "w4a16", "w4a4", "w4a16+s50", "w2a16"]
  for c, e in EFFS.items():
    assert table.eff[c] == pytest.approx(e, rel=0.06), c
  md = (out / "eff_table.md").read_text()
  assert md.startswith("| compression | eff | eff_lo | eff_hi |")
  assert md.split("\n\n")[0].count("\n") == len(table) + 1  # the table, then its footer
  assert "Intervals: 95%, 50 parametric-bootstrap draws" in md
  for name in ("loss_vs_N", "eff_vs_bits", "eff_vs_sparsity", "pred_vs_measured", "eff_per_bit"):
    for ext in ("png", "pdf"):
      path = out / f"{name}.{ext}"
      assert path.stat().st_size > 1000, path
      assert str(path) in printed
  assert (out / "composition.csv").exists() and (out / "holdout.csv").exists()
  assert "| w4a16+s50 |" in printed and "Base law: A=" in printed
  ords = pd.read_csv(out / "orderings.csv")
  assert list(ords.columns[:4]) == ["higher", "lower", "p", "resolved"]
  assert len(ords) == len(table) * (len(table) - 1) // 2
  assert "w4a16 > w4a4" in printed and "standard orderings" in printed
  summary = json.loads((out / "fit_summary.json").read_text())
  assert summary["protocol"] == "paired" and summary["noise"]["source"].startswith("fit resid")
  # nothing dropped silently: the corrupt file and the single-run compression are reported
  assert "broken" in printed and "not valid JSON" in printed
  assert "'w3a16' has 1 run (one-w3a16)" in printed
  assert "w1a1" not in table.index  # the diverged run is left out (status != complete)


def test_cli_reads_a_plain_csv_and_reports_errors(tmp_path, capsys):
  runs = synthetic.unified_runs(
    {"dense": 1.0, "w8a8": 0.9}, sizes=(2e7, 5e7, 1e8, 2e8), tokens_per_param=(10, 40)
  )
  path = tmp_path / "runs.csv"
  runs.to_csv(path, index=False)
  rc = cli.main(
    [
      "--runs",
      str(path),
      "--out",
      str(tmp_path / "o"),
      "--bootstrap",
      "0",
      "--no-figures",
      "--no-gmse",
    ]
  )
  assert rc == 0 and "| w8a8 |" in capsys.readouterr().out
  runs[runs.compression != "dense"].to_csv(path, index=False)
  assert cli.main(["--runs", str(path), "--out", str(tmp_path / "o2"), "--no-figures"]) == 2
  assert "needs dense runs" in capsys.readouterr().err
  # --max_evals reaches the fits: too few evaluations is reported, with the flag to raise.
  runs.to_csv(path, index=False)
  fast = ["--runs", str(path), "--bootstrap", "0", "--no-figures", "--no-gmse"]
  for protocol, who in (("joint", "fit_eff(joint)"), ("two_stage", "base law on the dense runs")):
    argv = [*fast, "--out", str(tmp_path / protocol), "--protocol", protocol, "--max_evals", "40"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert who in err and "did not converge" in err and "after 40 evaluations" in err, err
    assert "raise max_evals" in err


def test_module_entry_point_help():
  out = subprocess.run(
    [sys.executable, "-m", "compress_scaling.fit", "--help"],
    capture_output=True,
    text=True,
    check=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert "--runs" in out.stdout and "--out" in out.stdout


def test_bits_per_param_of_spec_strings():
  assert specs.bits_per_param("dense") == 16
  assert specs.bits_per_param("w4a16") == 4
  assert specs.bits_per_param("w8a8") == 8
  assert specs.bits_per_param("w4a4-g32") == pytest.approx(4.5)  # + a 16-bit scale per 32
  assert specs.bits_per_param("s50") == pytest.approx(9.0)  # 8 kept bits + 1-bit bitmap
  assert specs.bits_per_param("2:4") == pytest.approx(8 + math.log2(6) / 4)
  assert specs.bits_per_param("w4a16+s75") == pytest.approx(2.0)
  info = specs.parse_spec("w4a4-g32+2:4")
  assert (info.w_bits, info.a_bits, info.group, info.nm, info.sparsity) == (4, 4, 32, (2, 4), 0.5)
  assert specs.components("w4a16+s50") == ("w4a16", "s50")
  assert specs.parse_spec("w16a4").kind == "act"
  with pytest.raises(ValueError, match="more than one sparsity term"):
    specs.parse_spec("s50+2:4")


def test_entries_carry_the_fields_the_fit_reads(tmp_path):
  row = dict(run_id="x", compression="w4a16+s50", N=1e8, D=2e9, loss=3.0)
  logbook.write_entry(tmp_path / "x" / "log_entry.json", synthetic.entry_from_row(row))
  e = json.loads((tmp_path / "x" / "log_entry.json").read_text())
  assert e["compression"]["spec"] == "w4a16+s50" and e["model"]["n_params"] == 1e8
  df = logbook.read_runs(str(tmp_path / "x" / "log_entry.json"))
  assert df.loc[0, ["compression", "N", "D", "loss"]].tolist() == ["w4a16+s50", 1e8, 2e9, 3.0]
  assert df.bits_per_param[0] == pytest.approx(3.0)


def test_gaussian_mse_for_spec_uses_our_quantizers():
  quant = pytest.importorskip("compress_scaling.quant")
  if not hasattr(quant, "gaussian_mse") or not hasattr(quant, "parse_quant_term"):
    pytest.skip("compress_scaling.quant has no gaussian_mse / parse_quant_term yet")
  from compress_scaling.scaling import laws, neighbours

  g4 = neighbours.gaussian_mse_for_spec("w4a16", n_samples=1 << 14)
  g2 = neighbours.gaussian_mse_for_spec("w2a2+s50", n_samples=1 << 14)
  assert set(g4) == {"w"} and set(g2) == {"w", "a", "s"}
  assert 0 < g4["w"] < 0.05 < g2["w"] < 0.5  # 4-bit vs 2-bit RTN on N(0, 1)
  assert g2["s"] == pytest.approx(laws.sparsity_gmse(0.5))
