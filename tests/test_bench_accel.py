"""benchmarks/bench_accel.py: the device peak table, and a tiny CPU run printing every row
(no timing asserted: the CPU is shared)."""

import importlib.util

import pytest

from tests.conftest import REPO


def _bench():
  spec = importlib.util.spec_from_file_location("bench_accel", REPO / "benchmarks/bench_accel.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(
  "kind,tflops",
  [
    ("TPU v4", 275),
    ("TPU v5 lite", 197),
    ("TPU v5", 459),
    ("TPU v5p", 459),
    ("TPU v6 lite", 918),
    ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA H100 80GB HBM3", 989),
    ("NVIDIA H100 PCIe", 756),
    ("NVIDIA H200", 989),
    ("cpu", None),
  ],
)
def test_peak_flops_by_device_kind(kind, tflops):
  peak = _bench().peak_flops(kind)
  assert (peak is None) if tflops is None else peak == tflops * 1e12


@pytest.mark.slow  # compiles five train steps (~40 s on the 2-core box)
def test_tiny_cpu_run_prints_every_row(capsys):
  bench = _bench()
  args = ["--sizes=0.03m", "--batch_size=2", "--seq_len=16", "--dtype=float32"]
  assert bench.main([*args, "--steps=1", "--rounds=2"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert "unknown: MFU n/a" in out[0]
  rows = [line.split() for line in out[2:]]
  assert [r[:2] for r in rows] == [["0.03m", f] for f in bench.FORMATS]
  for r in rows:
    assert float(r[2]) > 0 and r[4] == "n/a"
  assert rows[0][5] == "1.000"  # dense / dense
