"""Sweep configs: run counts, unique and stable names, every mini run validates, the CLI flags
of a run rebuild exactly its config."""

import hashlib

import pytest
from absl import flags
from ml_collections import config_flags

from compress_scaling import compression, config_lib
from configs import base
from configs.sweeps import common, precision, ptq, qat_law, sparse_law, unified
from tests.conftest import REPO

SWEEPS = {
  "unified": unified,
  "qat_law": qat_law,
  "precision": precision,
  "sparse_law": sparse_law,
  "ptq": ptq,
}
COUNTS = {  # (paper, mini, quick); the module docstrings derive each
  "unified": (204, 71, 18),
  "qat_law": (416, 104, 26),
  "precision": (340, 102, 17),
  "sparse_law": (48, 36, 4),
  "ptq": (12, 9, 2),
}
# Run names are workdir names, the resume key of a sweep: renaming a run orphans its finished
# workdir. A digest of all names per variant catches accidental renames; update it on purpose.
NAME_DIGESTS = {
  ("unified", "paper"): "ccd91d40a740",
  ("unified", "mini"): "306917e15e73",
  ("qat_law", "paper"): "7ef54d8b6906",
  ("qat_law", "mini"): "a0907a969c4e",
  ("precision", "paper"): "c456c3b3e452",
  ("precision", "mini"): "7f4d3b65258f",
  ("sparse_law", "paper"): "44f1e508eadd",
  ("sparse_law", "mini"): "ed30e1151af9",
  ("ptq", "paper"): "7e8f8cd634f1",
  ("ptq", "mini"): "703e1b5573a7",
}


def _names_digest(runs) -> str:
  return hashlib.sha256("\n".join(r.name for r in runs).encode()).hexdigest()[:12]


@pytest.mark.parametrize("sweep", SWEEPS)
def test_counts_unique_and_deterministic(sweep):
  module = SWEEPS[sweep]
  for variant, expected in zip(("paper", "mini", "quick"), COUNTS[sweep]):
    runs = module.runs(variant)
    assert len(runs) == expected, (sweep, variant)
    assert len({r.name for r in runs}) == len(runs)
    assert [(r.name, r.overrides) for r in module.runs(variant)] == [
      (r.name, r.overrides) for r in runs
    ]
  mini = {r.name: r.overrides for r in module.runs("mini")}
  for run in module.runs("quick"):  # quick is a slice of mini, so a later mini run skips it
    assert mini[run.name] == run.overrides


def test_golden_names():
  assert [r.name for r in unified.runs("quick")][:3] == [
    "0.03m_D66K_dense_s0",
    "0.03m_D66K_w4a16-gmse_s0",
    "0.03m_D66K_w2a16-gmse_s0",
  ]
  assert unified.runs("mini")[-1].name == "0.32m_D316K_dense_s0"
  assert unified.runs("paper")[-1].name == "200m_tpp200_w4a16-gmse+2of4"
  assert qat_law.runs("paper")[-1].name == "595m_D100B_w16a4_fc2a8"
  assert precision.runs("paper")[0].name == "30m_D1.5B_dense"
  assert sparse_law.runs("mini")[-1].name == "0.5m_T500_s87.5-every10"
  assert ptq.runs("paper")[-1].name == "200m_tpp320_dense"
  digests = {(s, v): _names_digest(SWEEPS[s].runs(v)) for s in SWEEPS for v in ("paper", "mini")}
  assert digests == NAME_DIGESTS


def test_unified_design():
  comps = unified.compressions()
  assert len(comps) == 17 and comps[0] == "dense"
  assert {"w1a1-gmse", "w8a8-gmse", "s87.5", "2:4", "w4a16-gmse+s50", "w4a16-gmse+2:4"} <= set(
    comps
  )
  (run,) = unified.runs("mini/0.1m_D214K_w4a4-gmse_s1")
  o = run.overrides  # 418 x 4 x 128 = 214,016 tokens = 2 N; seed 1
  assert (o["total_steps"], o["batch_size"], o["seed"], run.pack) == (
    418,
    4,
    1,
    "0.1m_D214K_w4a4-gmse_s{seed}",
  )
  cells: dict[str, set] = {}
  for r in unified.runs("mini"):
    o = r.overrides
    n = common.n_params(o["model.size"])
    cells.setdefault(o["compression"], set()).add(
      (o["model.size"], round(o["total_steps"] * 512 / n, 1), o["seed"])
    )
  assert len(cells) == 17
  key = {c for c in cells if unified.is_key(c)}
  assert {c.split("-")[0] for c in key} == set(unified.KEY)
  for c in key:  # tokens scale with N: D = 2 N at three sizes, seeds 0 and 1 (+ rounding)
    assert cells[c] == {(s, 2.0, seed) for s in unified.MINI_SIZES for seed in (0, 1)}, c
  for c in set(cells) - key - {"dense"}:
    assert cells[c] == {("0.1m", 2.0, 0)}, c
  sizes = {s for s, _, _ in cells["dense"]}  # >= 4 sizes over >= 8x in N, >= 3 budgets
  n = sorted(common.n_params(s) for s in sizes)
  assert len(sizes) == 5 and n[-1] / n[0] > 8
  assert {r for _, r, _ in cells["dense"]} == {0.5, 1.0, 2.0, 4.0}
  # Dense partners of every compressed run (same cell, same seed) for the paired protocol.
  assert all(cell in cells["dense"] for c in set(cells) - {"dense"} for cell in cells[c])
  paper = {r.name: r for r in unified.runs("paper")}
  assert paper["30m_tpp50_dense"].overrides["total_steps"] == 5815
  assert paper["200m_tpp200_dense"].overrides["optimizer.lr"] == 3e-4


def test_qat_law_fc2_rules():
  run = {r.name: r for r in qat_law.runs("paper")}["145m_D20B_w4a4-g128_fc2a8"]
  assert run.overrides["compression"] == "w4a4-g128"
  assert run.overrides["compression_rules"] == "*/mlp/out=w4a8-g128"
  plan = compression.Plan.from_config(
    run.overrides["compression"], run.overrides["compression_rules"]
  )
  assert str(plan.for_layer("block_3/mlp/out")) == "w4a8-g128"
  assert str(plan.for_layer("block_3/mlp/up")) == "w4a4-g128"


@pytest.mark.parametrize("sweep", SWEEPS)
def test_specs_are_canonical(sweep):
  """The spec string is the C label in the law: it must be the canonical one."""
  for variant in ("paper", "mini"):
    for run in SWEEPS[sweep].runs(variant):
      spec = run.overrides["compression"]
      assert str(compression.parse(spec)) == spec, run.name
      for _, rule in compression.parse_rules(run.overrides.get("compression_rules", "")):
        assert str(rule) in run.overrides["compression_rules"]


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_mini_run_validates(sweep):
  module = SWEEPS[sweep]
  for run in module.runs("mini"):
    config = module.get_config(f"mini/{run.name}")
    config_lib.validate(config, 1)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_paper_runs_validate(sweep):
  """A sample of paper runs. They read C4 (data.source=tfds, data.data_dir given at launch);
  the data fields are checked by the data tests, so here the offline corpus stands in."""
  module = SWEEPS[sweep]
  runs = module.runs("paper")
  for run in runs[::7] + runs[-1:]:
    config = module.get_config(f"paper/{run.name}")
    assert config.data.source == "tfds" and config.mesh.data == -1  # -1: fills the slice
    config.data.source = "stdlib"
    config_lib.validate(config, 1)
    config_lib.validate(config, 8)


def test_get_config_variants_and_errors():
  c = unified.get_config("paper")
  assert (c.batch_size, c.seq_len, c.model.dtype, c.data.source) == (512, 512, "bfloat16", "tfds")
  assert unified.get_config(None).batch_size == unified.get_config("mini").batch_size == 4
  with pytest.raises(AttributeError):
    unified.get_config("mini").nonexistent_field = 1  # still locked
  with pytest.raises(ValueError, match="unknown variant 'huge'; allowed: paper, mini, quick"):
    unified.runs("huge")
  with pytest.raises(ValueError, match="no run named 'nope'"):
    unified.get_config("mini/nope")
  with pytest.raises(KeyError, match="no field 'model.width'"):
    common.apply_overrides(base.get_config(), {"model.width": 3})
  with pytest.raises(ValueError, match="duplicate run name"):
    common.check_unique([common.Run("a", {}), common.Run("a", {})])
  with pytest.raises(ValueError, match="names a directory"):
    common.Run("a/b", {})


@pytest.mark.parametrize(
  "sweep,arg",
  [
    ("unified", "paper/100m_tpp100_w4a16-gmse+2of4"),
    ("qat_law", "paper/74m_D10B_w16a4-g32_fc2a8"),
    ("precision", "paper/50m_D13B_w16a5-tensor"),
    ("sparse_law", "mini/0.2m_T250_s87.5-every10"),
  ],
)
def test_command_line_flags_rebuild_the_config(sweep, arg):
  """configs/base.py + `--config.<k>=<v>` (what launch/sweep.py runs) == get_config(arg)."""
  (run,) = SWEEPS[sweep].runs(arg)
  values = flags.FlagValues()
  path = str(REPO / "configs" / "base.py")
  argv = ["prog", f"--config={path}", *run.flags()]
  config_flags.DEFINE_config_file("config", path, flag_values=values, sys_argv=argv)
  values(argv)
  assert config_lib.to_dict(values.config) == config_lib.to_dict(SWEEPS[sweep].get_config(arg))


def test_arithmetic_helpers():
  assert common.steps_for_tokens(2048, 16, 128) == 1
  assert common.steps_for_tokens(2049, 16, 128) == 2
  assert common.fmt_tokens(10e9) == "10B"
  assert common.fmt_tokens(1.5e9) == "1.5B"
  assert common.fmt_tokens(250e3) == "250K"
  assert common.spec_slug("w4a16+2:4") == "w4a16+2of4"
  assert common.split_arg("mini/x_y") == ("mini", "x_y")
  assert common.split_arg(None) == ("mini", None)
  assert common.flag_value(1e-15) == "1e-15" and common.flag_value(True) == "True"
  assert common.cadence(53, 2, 26, 25) == {
    "eval_every": 27,
    "checkpoint_every": 26,
    "log_every": 25,
  }
  est = common.estimate_cpu_seconds(unified.runs("mini"))
  assert 8 * 60 < est < 20 * 60  # the main job: measured 11 min (the model is an upper bound)
  assert common.estimate_cpu_seconds(unified.runs("paper")) is None  # no CPU model at 30m+


def test_ptq_design():
  from compress_scaling.ptq import run as ptq_run  # noqa: PLC0415

  # every PTQ format is a weight-only spec the ptq CLI accepts, in canonical form
  assert [f for f, _ in ptq_run.parse_formats(ptq.FORMATS)] == list(ptq.FORMATS)
  assert ptq_run.parse_methods(ptq.METHODS) == list(ptq.METHODS)
  tpp = {}
  for r in ptq.runs("mini"):
    o = r.overrides
    n = common.n_params(o["model.size"])
    tpp.setdefault(o["model.size"], []).append(o["total_steps"] * 16 * 128 / n)
  for size, ratios in tpp.items():  # three ratios, 4x apart, each reached within one step
    assert [round(x) for x in ratios] == [1, 4, 16], (size, ratios)
