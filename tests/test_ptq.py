"""Post-training quantization of a trained smoke model: CLI, entries, factors, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compress_scaling import compression
from compress_scaling.ptq import base_run, calibrate, factors, gptq, run
from tests.conftest import REPO, run_main, subprocess_env

FORMATS = ("w8a16", "w4a16", "w3a16", "w2a16")


def _ptq_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "compress_scaling.ptq", *args],
    cwd=REPO,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )


def _snapshot(root) -> dict:
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      st = os.stat(os.path.join(d, f))
      out[os.path.join(d, f)] = (st.st_size, st.st_mtime_ns)
  return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ptq") / "base"
  run_main(workdir, "--config.total_steps=100", "--config.checkpoint_every=50")
  return workdir


@pytest.fixture(scope="module")
def ptq_entries(base):
  before = _snapshot(base)
  out = base.parent / "ptq_out"
  proc = _ptq_cli(
    f"--workdir={base}",
    f"--formats={','.join(FORMATS)}",
    "--methods=rtn,gptq",
    f"--out={out}",
    "--calib_batches=8",
    "--radii=0,0.05,0.2",
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  entries = {}
  for fmt in FORMATS:
    for method in ("rtn", "gptq"):
      with open(out / f"{fmt}_{method}" / "log_entry.json") as f:
        entries[fmt, method] = json.load(f)
  return dict(base=base, out=out, before=before, entries=entries, stdout=proc.stdout)


def test_entries_name_their_base_run_and_format(ptq_entries):
  with open(ptq_entries["base"] / "log_entry.json") as f:
    base_entry = json.load(f)
  for (fmt, method), e in ptq_entries["entries"].items():
    assert e["kind"] == "ptq" and e["status"] == "complete"
    assert e["base_run_id"] == base_entry["run_id"]
    assert e["compression"]["spec"] == fmt and e["ptq"]["method"] == method
    assert e["data"]["tokens_seen"] == base_entry["data"]["tokens_seen"]
    # Evaluated on the run's own held-out batches: the unquantized loss is the run's.
    assert e["eval"]["base_loss"] == pytest.approx(base_entry["eval"]["loss"], rel=1e-6)
    assert e["eval"]["delta_nll"] == pytest.approx(e["eval"]["loss"] - e["eval"]["base_loss"])
    assert e["model"]["bits_per_param"] < 16


def test_delta_nll_falls_with_bits(ptq_entries):
  entries = ptq_entries["entries"]
  for method in ("rtn", "gptq"):
    d = [entries[fmt, method]["eval"]["delta_nll"] for fmt in FORMATS]  # 8, 4, 3, 2 bits
    assert d[0] < d[1] < d[2] < d[3], (method, d)
    assert abs(d[0]) < 2e-3, d  # 8-bit PTQ is nearly free


def test_gptq_reconstructs_better_than_rtn_at_3_and_4_bits(ptq_entries):
  entries = ptq_entries["entries"]
  for fmt in ("w4a16", "w3a16"):
    rtn_err = entries[fmt, "rtn"]["ptq"]["rel_reconstruction_error"]
    gptq_err = entries[fmt, "gptq"]["ptq"]["rel_reconstruction_error"]
    assert gptq_err < 0.8 * rtn_err, (fmt, gptq_err, rtn_err)


def test_factors_and_radial_probe_at_zero(ptq_entries):
  e = ptq_entries["entries"]["w4a16", "gptq"]
  f = e["factors"]
  assert f["n_params"] == e["model"]["n_params"]
  assert f["tokens_per_param"] == pytest.approx(e["data"]["tokens_seen"] / e["model"]["n_params"])
  radial = f["radial"]
  assert radial["radii"] == [0.0, 0.05, 0.2]
  assert set(radial["loss"]) == {"global", "block_0", "block_1"}
  # r = 0 is the unperturbed loss (smoke eval = the 2 probe batches), larger r costs loss
  for curve in radial["loss"].values():
    assert curve[0] == e["eval"]["base_loss"]
    assert curve[2] > curve[0]
  sqnr = {fmt: ptq_entries["entries"][fmt, "rtn"]["factors"]["weight_sqnr_db"] for fmt in FORMATS}
  # RTN SQNR grows ~6 dB per bit (uniform quantizer): 8 -> 4 -> 3 -> 2 bits
  assert sqnr["w8a16"] > sqnr["w4a16"] > sqnr["w3a16"] > sqnr["w2a16"]
  assert 4.5 < sqnr["w4a16"] - sqnr["w3a16"] < 8.0


def test_base_workdir_untouched_and_rerun_skips(ptq_entries):
  assert _snapshot(ptq_entries["base"]) == ptq_entries["before"]
  out = ptq_entries["out"]
  written = _snapshot(out)
  proc = _ptq_cli(
    f"--workdir={ptq_entries['base']}", "--formats=w4a16,w3a16", "--methods=gptq", f"--out={out}"
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert _snapshot(out) == written  # existing complete entries are kept, nothing rewritten
  assert _snapshot(ptq_entries["base"]) == ptq_entries["before"]


def test_blockwise_calibration_equals_full_forward_passes(base):
  """Carrying hidden states block to block gives block l the Hessians of a full forward pass
  through the model whose blocks < l are already quantized (the sequential GPTQ definition)."""
  m = run._Model(base_run.load(str(base)), run.Options(calib_batches=3))
  spec = compression.parse("w2a16").weights
  seen = []

  def quantize_block(q, layer, hs):
    seen.append((layer, q, hs))
    for path in (p for p in m.paths if p[0] == f"block_{layer}"):
      q = base_run.set_path(q, path, gptq.rtn(base_run.get_path(q, path), spec))
    return q

  assert m.blockwise.carries
  q = m.blockwise.quantize(m.params, quantize_block)
  assert [layer for layer, _, _ in seen] == [0, 1]  # the 0.1m smoke model has 2 blocks
  for layer, q_before, hs in seen:
    ref = calibrate.hessians(m.setup, q_before, m.masks, m.calib, [layer])
    assert sorted(hs) == sorted(ref) and len(hs) == 7  # q k v o gate up out
    for key in ref:
      np.testing.assert_allclose(hs[key], ref[key], rtol=2e-5, atol=1e-6 * float(ref[key].max()))
  # Over the memory limit nothing is carried: blocks 0..l rerun, with the same Hessians.
  rerun = calibrate.Blockwise(m.setup, m.masks, m.calib, max_carry_bytes=0)
  rows, length_plus_1 = m.calib[0].shape
  assert not rerun.carries  # 3 batches x rows x length tokens x d_model 64 x float32
  assert rerun.carry_bytes == 3 * rows * (length_plus_1 - 1) * 64 * 4
  carried_hs = [hs for _, _, hs in seen]
  seen.clear()
  rerun.quantize(m.params, quantize_block)
  for hs, ref in zip(carried_hs, (hs for _, _, hs in seen), strict=True):
    for key in ref:
      np.testing.assert_allclose(hs[key], ref[key], rtol=2e-5, atol=1e-6 * float(ref[key].max()))
  # Block 1 saw the 2-bit block 0: its Hessians are not the unquantized model's.
  h1 = seen[1][2]["block_1/attn/q"]
  assert float(jnp.max(jnp.abs(h1 - m.base_hessians["block_1/attn/q"]))) > 1e-3 * float(h1.max())
  np.testing.assert_array_equal(  # and every block kernel came back quantized
    base_run.get_path(q, m.paths[-1]), gptq.rtn(base_run.get_path(m.params, m.paths[-1]), spec)
  )
  # A fed block reads only its input: block 0's weights (here NaN) do not reach block 1.
  poisoned = jax.tree_util.tree_map_with_path(
    lambda path, x: x * jnp.nan if "block_0" in jax.tree_util.keystr(path) else x, m.params
  )
  with m.setup.mesh:
    batch = m.setup.global_batch(m.calib[0])
    x1 = calibrate._block_fn(m.setup, 0, False, "output")(m.params, m.masks, batch, None)
    x2 = calibrate._block_fn(m.setup, 1, True, "output")(poisoned, m.masks, batch, x1)
  assert bool(jnp.all(jnp.isfinite(x2)))


def test_radial_profile_is_exact_on_a_distance_loss():
  """loss(P) = sum_k ||P_k - W_k||^2 is r^2 sum_k ||W_k||^2 at radius r, for any direction."""
  params = {
    "block_0": {"a": {"kernel": jnp.arange(12.0).reshape(3, 4)}},
    "block_1": {"b": {"kernel": jnp.ones((4, 2)) * 3.0}},
  }
  paths = [("block_0", "a", "kernel"), ("block_1", "b", "kernel")]
  norms = {p[0]: float(jnp.sum(base_run.get_path(params, p) ** 2)) for p in paths}

  def loss_fn(p):
    return sum(
      float(jnp.sum((base_run.get_path(p, k) - base_run.get_path(params, k)) ** 2)) for k in paths
    )

  prof = factors.radial_profile(loss_fn, params, paths, radii=(0.0, 0.1, 0.5), n_directions=3)
  np.testing.assert_allclose(
    prof["loss"]["global"], [0, 0.01 * sum(norms.values()), 0.25 * sum(norms.values())], rtol=1e-5
  )
  np.testing.assert_allclose(
    prof["loss"]["block_1"], [0, 0.01 * norms["block_1"], 0.25 * norms["block_1"]], rtol=1e-5
  )


@pytest.mark.parametrize(
  "formats, needle",
  [
    ("w4a4", "not a weight-only quantization"),
    ("w4a16+s50", "not a weight-only quantization"),
    ("w4q16", "--formats"),
    ("s50", "not a weight-only quantization"),
    ("w4a16-sr", "stochastic rounding"),
    (" , ", "no format given"),
  ],
)
def test_bad_formats_are_named(formats, needle):
  with pytest.raises(ValueError, match=needle):
    run.parse_formats(formats)


def test_bad_methods_and_options():
  with pytest.raises(ValueError, match="--methods: unknown.*allowed: rtn, gptq"):
    run.parse_methods("rtn,awq")
  with pytest.raises(ValueError, match="--block_size must be >= 1.*--damp must be >= 0"):
    run.Options(block_size=0, damp=-1.0)
  with pytest.raises(ValueError, match="--max_carry_gib must be >= 0, got -1"):
    run.Options(max_carry_gib=-1)


def test_cli_reports_bad_format_with_exit_2(tmp_path):
  proc = _ptq_cli(f"--workdir={tmp_path}", "--formats=w4a4")
  assert proc.returncode == 2
  assert "--formats: 'w4a4' is not a weight-only quantization" in proc.stderr


def test_workdirs_without_a_finished_checkpoint(base, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(base_run.BaseRunError, match="no log_entry.json"):
    base_run.load(str(empty))

  stopped = tmp_path / "stopped"
  shutil.copytree(base, stopped)
  entry = json.loads((stopped / "log_entry.json").read_text())
  (stopped / "log_entry.json").write_text(json.dumps({**entry, "status": "stopped"}))
  with pytest.raises(base_run.BaseRunError, match="status is 'stopped'; PTQ needs a complete"):
    base_run.load(str(stopped))

  no_ckpt = tmp_path / "no_ckpt"
  shutil.copytree(base, no_ckpt)
  shutil.rmtree(no_ckpt / "checkpoints")
  with pytest.raises(base_run.BaseRunError, match="no checkpoints/ folder"):
    base_run.load(str(no_ckpt))

  early = tmp_path / "early"
  shutil.copytree(base, early)
  shutil.rmtree(early / "checkpoints" / "100")
  with pytest.raises(base_run.BaseRunError, match="step 50, not the final step 100"):
    base_run.load(str(early))

  with pytest.raises(ValueError, match="must lie outside the base workdir"):
    run.quantize_run(str(base), ["w4a16"], ["rtn"], out=str(base / "ptq"))
  assert jax.device_count() >= 1


@pytest.mark.slow  # ~3 minutes: trains a ladder of base runs
def test_ptq_colab_on_a_trained_ladder(ptq_entries, tmp_path, monkeypatch):
  """colabs/ptq.ipynb top to bottom on real entries: 4 models (3 sizes, 2 budgets at 0.1m)."""
  nbclient = pytest.importorskip("nbclient")
  nbformat = pytest.importorskip("nbformat")
  root = ptq_entries["base"].parent
  more = [("0.1m", 300), ("0.2m", 100), ("0.5m", 100)]
  for size, steps in more:
    run_main(
      root / f"{size}_T{steps}",
      f"--config.model.size={size}",
      f"--config.total_steps={steps}",
      f"--config.checkpoint_every={steps}",
      "--config.eval_batches=8",
    )
  proc = _ptq_cli(
    *(f"--workdir={root / f'{s}_T{t}'}" for s, t in more),
    "--formats=w8a16,w3a16,w2a16",
    "--calib_batches=8",
    "--radii=0,0.05,0.2",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  monkeypatch.setenv("CS_RUNS", str(root / "**" / "log_entry.json"))
  monkeypatch.setenv("CS_FIGURES", str(tmp_path / "figures"))
  nb = nbformat.read(REPO / "colabs" / "ptq.ipynb", as_version=4)
  nbclient.NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  ).execute()
  text = "".join(
    o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
    for cell in nb.cells
    if cell.cell_type == "code"
    for o in cell.outputs
  )
  assert "26 PTQ entries of 4 trained models, 3 sizes" in text
  falls = next(line for line in text.splitlines() if line.startswith("| ΔNLL falls with bits"))
  assert falls.split("|")[2].strip() == "1", falls  # holds in every case
  assert "| forest " in text and "| law " in text  # both predictors scored on held-out sizes
  for name in ("ptq_delta", "ptq_pred_vs_measured"):
    assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 10_000


def test_workdir_globs_keep_run_folders(tmp_path):
  for name in ("a", "b", "a-ptq", "_logs"):
    (tmp_path / name).mkdir()
  for name in ("a", "b", "a-ptq"):
    (tmp_path / name / "log_entry.json").write_text("{}")
  (tmp_path / "failures.json").write_text("{}")
  assert run.expand_workdirs([str(tmp_path / "*")]) == [str(tmp_path / "a"), str(tmp_path / "b")]
  assert run.expand_workdirs([str(tmp_path / "_logs")]) == [str(tmp_path / "_logs")]  # as given
  with pytest.raises(ValueError, match="matches no run folder"):
    run.expand_workdirs([str(tmp_path / "_l*")])


def test_format_that_does_not_fit_the_model_fails_before_writing(base, tmp_path):
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=r"--formats 'w4a16-g48' does not fit .*group_size=48"):
    run.quantize_run(str(base), ["w4a16", "w4a16-g48"], ["rtn"], out=str(out))
  assert not out.exists()  # checked before anything was quantized or written


def test_findings_on_a_hand_table():
  import pandas as pd  # noqa: PLC0415

  from compress_scaling.scaling import ptq_predictor  # noqa: PLC0415

  rows = []
  for d, scale in ((1e5, 1.0), (4e5, 2.0)):
    for method, gain in (("rtn", 1.0), ("gptq", 0.5)):
      for bits, delta in ((8, 1e-4), (4, 0.01), (3, 0.04)):
        noisy = -1e-4 if (bits == 8 and d == 4e5) else delta * scale * gain
        rows.append(
          dict(
            N=1e5,
            D=d,
            method=method,
            group=0.0,
            weight_bits=bits,
            compression=f"w{bits}a16",
            delta=noisy,
          )
        )
  rows[-1]["delta"] = 0.015  # 3-bit GPTQ at the larger D: below RTN, but below its D = 1e5 value
  f = ptq_predictor.findings(pd.DataFrame(rows)).set_index("finding")
  assert f.loc["ΔNLL falls with bits", "holds"] == 1.0
  assert f.loc["ΔNLL falls with bits", "cases"] == 4
  assert f.loc["GPTQ beats RTN at 3 bits", "holds"] == 1.0
  over = f.loc["more tokens per parameter, larger ΔNLL"]
  # 8-bit (below the 1e-3 noise floor) is not counted; 3 of the 4 others grow with D
  assert (over["cases"], over["holds"]) == (4, 0.75)
