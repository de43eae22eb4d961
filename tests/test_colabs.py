"""Colab notebooks run top to bottom (nbclient) on log entries written in the test: synthetic
entries drawn from each law with a known answer, and the entries of a tiny real sweep
(conftest.mini_sweep), on which the fits cannot run and the notebooks say why."""

import pathlib

import numpy as np
import pandas as pd
import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

from compress_scaling import scaling  # noqa: E402
from compress_scaling.scaling import laws, synthetic  # noqa: E402
from tests.conftest import MINI_SWEEP_COMPRESSIONS  # noqa: E402

COLABS = pathlib.Path(__file__).resolve().parents[1] / "colabs"
EFFS = {"dense": 1.0, "w4a16": 0.92, "w4a4": 0.75, "s50": 0.87}


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> str:
  """A persistent JAX compilation cache shared by this module's kernels: the fits compile the
  same functions in every notebook (~8 s each time on 2 cores, ~1.5 s from the cache)."""
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture
def run_notebook(tmp_path, monkeypatch, jax_cache):
  """run_notebook(name, entries) executes colabs/<name>.ipynb in tmp_path on the log entries
  under `entries` and returns the text of all its outputs (stdout, stderr, text/plain);
  any cell's error fails the test."""

  def run(name: str, entries) -> str:
    monkeypatch.setenv("CS_RUNS", str(pathlib.Path(entries) / "**" / "log_entry.json"))
    monkeypatch.setenv("CS_BOOTSTRAP", "20")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax_cache)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    nb = nbformat.read(COLABS / f"{name}.ipynb", as_version=4)
    nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return "\n".join(
      o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
      for cell in nb.cells
      if cell.cell_type == "code"
      for o in cell.outputs
    )

  return run


def md_table(text: str, *columns: str) -> pd.DataFrame:
  """The first markdown table (report.markdown) in `text` whose header has all `columns`;
  indexed by its first column, numbers parsed where they parse."""
  lines = text.splitlines()
  for i, line in enumerate(lines):
    head = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("| ") and all(c in head for c in columns):
      rows = []
      for body in lines[i + 2 :]:
        if not body.startswith("|"):
          break
        rows.append([c.strip() for c in body.strip().strip("|").split("|")])
      df = pd.DataFrame(rows, columns=head).set_index(head[0]).replace("", np.nan)
      for col in df.columns:  # numbers where the whole column parses (empty cells are NaN)
        try:
          df[col] = pd.to_numeric(df[col])
        except ValueError:
          pass
      return df
  raise AssertionError(f"no markdown table with columns {columns} in:\n{text[-3000:]}")


def pngs(folder) -> set[str]:
  return {p.stem for p in pathlib.Path(folder).glob("*.png")}


# --------------------------------------------------------------- synthetic, known answers


def test_unified_law_notebook_recovers_eff(tmp_path, run_notebook):
  runs = synthetic.unified_runs(EFFS, noise=0.0, seed=0)
  synthetic.write_entries(runs, str(tmp_path / "runs"))
  out = run_notebook("unified_law", tmp_path / "runs")
  assert f"{len(runs)} complete runs, 4 compressions" in out
  # The eff table recovers the generating values (noise-free runs).
  for spec, eff in EFFS.items():
    line = next(line for line in out.splitlines() if line.startswith(f"| {spec} "))
    assert abs(float(line.split("|")[2]) - eff) < 0.01, line
  assert pngs(tmp_path) == {"eff_vs_bits"}


def test_qat_law_notebook_recovers_the_generating_constants(tmp_path, run_notebook):
  fc2 = dict(k=0.3519, gamma_N=0.2637, gamma_D=0.0964, gamma_G=0.3407)  # Chen Table 1 FC2 row
  groups = (32, 64, 128, 256)
  w4a4 = synthetic.qat_runs(laws.CHEN_QAT["w4a4"], groups, noise=0.0)
  w16a4 = synthetic.qat_runs(laws.CHEN_QAT["w16a4"], groups, family="w16a4", noise=0.0)
  # FC2-input-8-bit runs carry the rule in their label, as logbook.read_runs writes it.
  rule = synthetic.qat_runs(fc2, groups, noise=0.0)
  rule["compression"] = [f"w4a4-g{g}[*/mlp/out=w4a8-g{g}]" for g in rule.G]
  rule["run_id"] = "fc2-" + rule.run_id
  dense = synthetic.unified_runs({"dense": 1.0}, noise=0.0)
  synthetic.write_entries(pd.concat([dense, w4a4, w16a4, rule]), str(tmp_path / "runs"))
  out = run_notebook("qat_law", tmp_path / "runs")
  base = md_table(out, "A", "alpha").loc["fit"]
  for k, v in synthetic.BASE.items():
    assert base[k] == pytest.approx(v, rel=1e-3), k
  fits = md_table(out, "gamma_G", "gamma_G Chen")
  truth = {"w4a4": laws.CHEN_QAT["w4a4"], "w16a4": laws.CHEN_QAT["w16a4"]}
  truth["w4a4[*/mlp/out=w4a8]"] = fc2
  assert set(fits.index) == set(truth)
  for recipe, params in truth.items():
    assert fits.loc[recipe, "runs"] == 40
    for p, v in params.items():
      assert fits.loc[recipe, p] == pytest.approx(v, rel=0.01), (recipe, p)
      assert fits.loc[recipe, f"{p} Chen"] == pytest.approx(v, rel=1e-3), (recipe, p)
  assert pngs(tmp_path / "figures/chen2025") == {
    "qat_delta_w4a4",
    "qat_delta_w16a4",
    "qat_delta_w4a4_mlp_out=w4a8",
  }


@pytest.mark.slow  # default-suite time: CI runs the fast set in ~15 minutes on 2 cores
def test_sparse_law_notebook_recovers_the_generating_law(tmp_path, run_notebook):
  runs = synthetic.sparse_runs(noise=0.0, suffix="-every10")  # labels as the sparse_law sweep
  synthetic.write_entries(runs, str(tmp_path / "runs"))
  out = run_notebook("sparse_law", tmp_path / "runs")
  assert f"{len(runs)} runs, sparsities [0.0, 0.5, 0.75, 0.875]" in out
  coef = md_table(out, "fit", "T5 (official notebook)")
  true = synthetic.SPARSE
  for k in ("b", "d", "f", "g"):
    assert coef.loc[k, "fit"] == pytest.approx(true[k], rel=0.02), k
  eff = md_table(out, "eff", "eff (sparse law)")
  want = laws.sparse_eff(eff.S.to_numpy(float), *(true[k] for k in "abcd"))
  np.testing.assert_allclose(eff["eff (sparse law)"].to_numpy(float), want, rtol=2e-3)
  # The unified law's per-S eff is the same number: the sparse law is the unified law in N eff.
  np.testing.assert_allclose(eff.eff.to_numpy(float), want, rtol=2e-3)
  assert list(eff.index) == ["dense", "s50-every10", "s75-every10", "s87.5-every10"]
  assert pngs(tmp_path / "figures/frantar2023") == {"eff_vs_sparsity", "loss_vs_N"}


FRANTAR_EFFS = {
  "dense": 1.0,
  "w8a8-gmse": 0.86,
  "w4a16-gmse": 0.92,
  "w4a4-gmse": 0.75,
  "w2a16-gmse": 0.7,
  "s50-every10": 0.87,
  "2:4-every10": 0.8,
  "w4a16-gmse+s50-every10": 0.92 * 0.87,
}


def test_figures_frantar2025_notebook(tmp_path, run_notebook):
  runs = synthetic.unified_runs(FRANTAR_EFFS, noise=0.0)
  synthetic.write_entries(runs, str(tmp_path / "runs"))
  out = run_notebook("figures_frantar2025", tmp_path / "runs")
  table = md_table(out, "eff", "paper")
  for spec, eff in FRANTAR_EFFS.items():
    assert table.loc[spec, "eff"] == pytest.approx(eff, abs=2e-3), spec
  assert table.loc["w4a16-gmse", "paper"] == laws.FRANTAR_2025_EFF["w4a16"]
  assert np.isnan(table.loc["w4a16-gmse+s50-every10", "paper"])
  comp = md_table(out, "eff_product", "ratio")
  assert comp.loc["w4a16-gmse+s50-every10", "ratio"] == pytest.approx(1.0, abs=3e-3)
  figures = tmp_path / "figures/frantar2025"
  want = {"loss_vs_N", "collapse", "eff_vs_bits", "eff_vs_sparsity", "composition", "eff_per_bit"}
  assert pngs(figures) == want | {"pred_vs_measured"}
  assert {p.stem for p in figures.glob("*.pdf")} == pngs(figures)


@pytest.mark.slow  # default-suite time: CI runs the fast set in ~15 minutes on 2 cores
def test_figures_kumar2024_notebook_recovers_gammas(tmp_path, run_notebook):
  bits = (2, 3, 4, 6, 8)
  effs = {"dense": 1.0}
  effs |= {f"w{p}a16": float(laws.kumar_eff(P_w=p)) for p in bits}
  effs |= {f"w16a{p}-tensor": float(laws.kumar_eff(P_a=p)) for p in bits}
  synthetic.write_entries(synthetic.unified_runs(effs, noise=0.0), str(tmp_path / "runs"))
  out = run_notebook("figures_kumar2024", tmp_path / "runs")
  gammas = md_table(out, "fit", "Kumar")
  for k in "wa":
    assert gammas.loc[f"gamma_{k}", "fit"] == pytest.approx(laws.KUMAR_GAMMA[k], rel=0.01), k
  assert "fitted on 10 quantized compressions" in out
  assert "no PTQ entries" in out
  assert pngs(tmp_path / "figures/kumar2024") == {"eff_vs_bits", "loss_vs_N"}


PANFEROV_SPECS = (
  "w2a16-gmse",
  "w3a16-gmse",
  "w4a16-gmse",
  "w8a16-gmse",
  "w3a3-gmse",
  "w4a4-gmse",
  "s50-every10",
  "w4a16-gmse+s50-every10",
)


@pytest.mark.slow  # default-suite time: CI runs the fast set in ~15 minutes on 2 cores
def test_figures_panferov2025_notebook_recovers_capacity_law(tmp_path, run_notebook):
  true = dict(L=0.95, F=0.41, C=1.39)
  effs = {"dense": 1.0}
  for c in PANFEROV_SPECS:  # the notebook's GMSE (same samples), capacities multiplied
    g = scaling.gaussian_mse_for_spec(c, n_samples=1 << 16)
    effs[c] = float(np.prod([laws.capacity(v, **true) for v in g.values()]))
  synthetic.write_entries(synthetic.unified_runs(effs, noise=0.0), str(tmp_path / "runs"))
  out = run_notebook("figures_panferov2025", tmp_path / "runs")
  fit = md_table(out, "fit", "Panferov")
  for k, v in true.items():
    assert fit.loc[k, "fit"] == pytest.approx(v, rel=0.01), k
    assert fit.loc[k, "Panferov"] == laws.PANFEROV_CAPACITY[k]
  comp = md_table(out, "eff_product", "ratio")
  assert comp.loc["w4a16-gmse+s50-every10", "ratio"] == pytest.approx(1.0, abs=3e-3)
  assert pngs(tmp_path / "figures/panferov2025") == {"eff_vs_gmse", "composition"}


# ------------------------------------------------------------------ a real mini sweep


@pytest.mark.slow  # the mini_sweep fixture trains real runs (~1.5 minutes)
def test_unified_law_notebook_on_a_real_mini_sweep(mini_sweep, tmp_path, run_notebook):
  out = run_notebook("unified_law", mini_sweep)
  n = len(MINI_SWEEP_COMPRESSIONS)
  assert f"{2 * n} complete runs, {n} compressions, 2 sizes; skipped: 0" in out
  for spec in MINI_SWEEP_COMPRESSIONS:  # the runs-per-compression table
    assert any(line.split() == [spec, "2"] for line in out.splitlines()), spec
  # Two sizes cannot fit the base law: the library's reason, then the measured runs.
  assert "needs at least 3 distinct N; got 2" in out
  assert pngs(tmp_path) == {"loss_vs_N"}


# Per notebook: the library's reason it printed (2 sizes and one D are too few for every fit),
# and the figures it still drew (the measured runs).
ON_MINI_SWEEP = {
  "qat_law": ("skipped: base law (dense) needs at least 3 distinct N; got 2", {}),
  "sparse_law": ("skipped: fit_sparse needs at least 2 distinct D; got 1", {"loss_vs_N"}),
  "figures_frantar2025": (
    "skipped: fit_eff(paired) base law on the dense runs needs at least 3 distinct N",
    {"loss_vs_N"},
  ),
  "figures_kumar2024": ("needs at least 3 distinct N; got 2", {"loss_vs_N"}),
  "figures_panferov2025": ("needs at least 3 distinct N; got 2", {}),
}


@pytest.mark.slow  # shares the mini_sweep fixture
@pytest.mark.parametrize("name", sorted(ON_MINI_SWEEP))
def test_notebook_on_a_real_mini_sweep(name, mini_sweep, tmp_path, run_notebook):
  out = run_notebook(name, mini_sweep)
  summary = md_table(out, "runs", "sizes")  # the runs per compression
  assert set(summary.index) == set(MINI_SWEEP_COMPRESSIONS)
  assert (summary.runs == 2).all() and (summary.sizes == 2).all()
  message, figures = ON_MINI_SWEEP[name]
  assert message in out
  assert pngs(tmp_path / "figures") == set(), "figures go to figures/<paper>/"
  written = {p.stem for p in tmp_path.glob("figures/*/*.png")}
  assert written == set(figures)
