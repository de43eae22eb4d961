"""launch/: the sweep runner (selection, skip and resume, failure records, dry run), the
preflight topology check, and the TPU VM launcher against a fake `gcloud`."""

import json
import os
import shlex
import stat
import sys
import textwrap

import pytest

from compress_scaling import config_lib
from configs import base
from configs.sweeps import common
from launch import preflight, tpu_vm
from launch import sweep as sweep_lib
from tests.conftest import REPO

FAST = {"total_steps": 4, "eval_every": 2, "checkpoint_every": 2, "log_every": 2}
TINY_SWEEP = f"""
from configs.sweeps import common

BASE_CONFIG = "configs/smoke.py"
FAST = {FAST!r}


def runs(arg=None):
  return [
    common.Run("a_dense", dict(FAST)),
    common.Run("b_w4a16", {{**FAST, "compression": "w4a16"}}),
    common.Run("c_bad", {{**FAST, "compression": "w4x16"}}),  # not a spec: main exits 2
  ]
"""


@pytest.fixture
def tiny_sweep(tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  path = tmp_path / "tiny.py"
  path.write_text(TINY_SWEEP)
  return str(path)


def _write_entry(workdir, status, config=None):
  os.makedirs(workdir, exist_ok=True)
  entry = {"schema": "compress_scaling/log_entry/v1", "status": status, "eval": {"loss": 1.0}}
  if config is not None:
    entry["config"] = config
  (workdir / "log_entry.json").write_text(json.dumps(entry))


# ---------------------------------------------------------------------------- sweep


def test_load_select_and_slice():
  sweep = sweep_lib.load_sweep("configs/sweeps/unified.py:mini")
  assert sweep.base_config == "configs/base.py" and len(sweep.runs) == 71
  only = sweep_lib.select(sweep.runs, r"^0\.1m_D214K_w\d+a\d+-gmse_s0$", None)
  assert len(only) == 10
  parts = [sweep_lib.select(sweep.runs, None, (i, 4)) for i in range(4)]
  assert sorted(r.name for p in parts for r in p) == sorted(r.name for r in sweep.runs)
  assert parts[1][0].name == sweep.runs[1].name and parts[1][1].name == sweep.runs[5].name
  for bad in ("4/4", "1", "-1/2", "a/b"):
    with pytest.raises(ValueError, match="--slice"):
      sweep_lib.parse_slice(bad)
  with pytest.raises(ValueError, match="no such sweep file"):
    sweep_lib.load_sweep("configs/sweeps/nope.py:mini")


def test_extra_overrides_are_checked(capsys):
  assert sweep_lib.parse_config_overrides(["--config.data.data_dir=gs://b/x y"]) == {
    "data.data_dir": "gs://b/x y"
  }
  rc = sweep_lib.main(["configs/sweeps/unified.py:quick", "--out=/tmp/x", "--config.nope=1"])
  assert rc == 2 and "configs/base.py has no field 'nope'" in capsys.readouterr().err
  rc = sweep_lib.main(["configs/sweeps/unified.py:quick", "--out=/tmp/x", "--frobnicate"])
  assert rc == 2 and "unexpected argument '--frobnicate'" in capsys.readouterr().err


def test_dry_run_quotes_commands_and_skips_finished(tmp_path, capsys):
  """Skipped: finished with the config hash main would record for the run's command line.
  Reported STALE with the differing fields: finished with another config (the sweep or its
  extra flags changed) or with none recorded. Resumed: stopped or unreadable entries."""
  out = tmp_path / "out dir"  # a space, to exercise the quoting
  extra = "--config.data.cache_dir=/tmp/a b;c"
  extra_dict = sweep_lib.parse_config_overrides([extra])
  sweep = sweep_lib.load_sweep("configs/sweeps/unified.py:quick")
  by_name = {r.name: r for r in sweep.runs}

  def config_of(name, **changes):
    c = base.get_config()
    common.apply_overrides(c, {**by_name[name].overrides, **extra_dict, **changes})
    return config_lib.to_dict(c)

  for name, status in (
    ("0.03m_D66K_dense_s0", "complete"),
    ("0.1m_D214K_w8a16-gmse_s0", "diverged"),
  ):
    expected = sweep_lib.expected_config(sweep, by_name[name], extra_dict)
    assert expected == config_of(name)  # the runner's parse is ml_collections' own
    _write_entry(out / name, status, expected)
  _write_entry(out / "0.03m_D66K_w4a16-gmse_s0", "stopped")  # interrupted: resumes
  (out / "0.1m_D214K_w3a16-gmse_s0").mkdir()
  (out / "0.1m_D214K_w3a16-gmse_s0" / "log_entry.json").write_text("{corrupt")  # main reports it
  no_extra = base.get_config()
  common.apply_overrides(no_extra, by_name["0.03m_D66K_w2a16-gmse_s0"].overrides)
  _write_entry(out / "0.03m_D66K_w2a16-gmse_s0", "complete", config_lib.to_dict(no_extra))
  changed = config_of("0.03m_D66K_w1a16-gmse_s0", total_steps=999)
  changed["optimizer"]["lr"] = 0.5  # the sweep changed since this run finished
  _write_entry(out / "0.03m_D66K_w1a16-gmse_s0", "complete", changed)
  _write_entry(out / "0.1m_D214K_w8a8-gmse_s0", "complete")  # no config recorded
  rc = sweep_lib.main(["configs/sweeps/unified.py:quick", f"--out={out}", "--dry_run", extra])
  assert rc == 0
  printed = capsys.readouterr().out.splitlines()
  assert "18 runs selected of 18, 2 already finished, 13 to run in 13 processes" in printed[0]
  stale = sorted(line for line in printed if line.startswith("# STALE"))
  assert stale == [
    "# STALE 0.03m_D66K_w1a16-gmse_s0: finished with another config (fields optimizer.lr, "
    "total_steps) than the sweep now gives it; move its workdir away to retrain it",
    "# STALE 0.03m_D66K_w2a16-gmse_s0: finished with another config (fields data.cache_dir) than "
    "the sweep now gives it; move its workdir away to retrain it",
    "# STALE 0.1m_D214K_w8a8-gmse_s0: finished with another config (fields <no config recorded>) "
    "than the sweep now gives it; move its workdir away to retrain it",
  ]
  assert any("on 2 CPU cores" in line for line in printed)
  commands = [shlex.split(line) for line in printed if not line.startswith("#")]
  done = {"0.03m_D66K_dense_s0", "0.1m_D214K_w8a16-gmse_s0", "0.03m_D66K_w2a16-gmse_s0"}
  done |= {"0.03m_D66K_w1a16-gmse_s0", "0.1m_D214K_w8a8-gmse_s0"}
  todo = [r for r in sweep.runs if r.name not in done]
  assert sorted(commands) == sorted(sweep_lib.command(sweep, r, str(out), extra_dict) for r in todo)
  # Longest first: the 0.1m runs (214K tokens) before the 0.03m ones (66K).
  sizes = [next(a for a in cmd if a.startswith("--config.model.size=")) for cmd in commands]
  assert sizes == sorted(sizes, key=lambda a: a != "--config.model.size=0.1m")
  first = next(c for c in commands if "--config.compression=w3a16-gmse" in c)
  assert first[1:5] == [
    "-m",
    "compress_scaling.main",
    "--config=configs/base.py",
    f"--workdir={out}/0.1m_D214K_w3a16-gmse_s0",
  ]
  assert "--config.seed=0" in first and first[-1] == extra
  assert not (out / "failures.json").exists() and not (out / "_logs").exists()


def test_replicate_seeds_run_as_packs(tmp_path):
  """Runs of one pack become one process (`--seeds`), at most --max_pack seeds each; runs
  that differ in anything but the seed never share a process."""
  runs = [
    *common.replicas("a", {"compression": "dense"}, [0, 1, 2]),
    common.Run("b", {"compression": "dense"}),
    *common.replicas("c", {"compression": "w4a16"}, [0, 1]),
  ]
  jobs = sweep_lib.jobs(runs, max_pack=2)
  assert [[r.name for r in j.runs] for j in jobs] == [
    ["a_s0", "a_s1"],
    ["a_s2"],
    ["b"],
    ["c_s0", "c_s1"],
  ]
  assert [j.name for j in jobs] == ["a_s0+1", "a_s2", "b", "c_s0+1"]
  sweep = sweep_lib.Sweep("x.py", "configs/smoke.py", runs)
  cmd = sweep_lib.command(sweep, jobs[0], str(tmp_path), {})
  assert f"--workdir={tmp_path}/a_s{{seed}}" in cmd and "--seeds=0,1" in cmd
  assert not any(part.startswith("--config.seed") for part in cmd)
  single = sweep_lib.command(sweep, jobs[1], str(tmp_path), {})
  assert f"--workdir={tmp_path}/a_s2" in single and "--config.seed=2" in single
  assert [len(j.runs) for j in sweep_lib.jobs(runs, max_pack=1)] == [1] * 6
  with pytest.raises(ValueError, match="pack template"):
    common.Run("a_s0", {"seed": 1}, pack="a_s{seed}")


def test_runner_records_failures_and_resumes(tiny_sweep, tmp_path, capsys):
  out = tmp_path / "out"
  rc = sweep_lib.main([tiny_sweep, f"--out={out}", "--jobs=2"])
  assert rc == 1  # c_bad failed
  for name in ("a_dense", "b_w4a16"):
    assert json.loads((out / name / "log_entry.json").read_text())["status"] == "complete"
  failures = json.loads((out / "failures.json").read_text())["failures"]
  assert list(failures) == ["c_bad"]
  bad = failures["c_bad"]
  assert bad["returncode"] == 2 and "compression='w4x16'" in bad["error_tail"]
  assert shlex.split(bad["command"])[2:4] == ["compress_scaling.main", "--config=configs/smoke.py"]
  err = capsys.readouterr().err
  assert "2 complete, 0 diverged, 1 failed" in err

  # Again: the two complete runs are skipped (their logs hold one attempt), c_bad is retried.
  rc = sweep_lib.main([tiny_sweep, f"--out={out}"])
  assert rc == 1
  assert "2 already finished, 0 complete, 0 diverged, 1 failed" in capsys.readouterr().err
  logs = out / "_logs"
  assert (logs / "a_dense.log").read_text().count("=== ") == 1
  assert (logs / "c_bad.log").read_text().count("=== ") == 2

  # A run that finished since (here: faked) leaves the failures file on the next sweep.
  sweep = sweep_lib.load_sweep(tiny_sweep)
  _write_entry(out / "c_bad", "complete", sweep_lib.expected_config(sweep, sweep.runs[2], {}))
  assert sweep_lib.main([tiny_sweep, f"--out={out}"]) == 0
  assert json.loads((out / "failures.json").read_text())["failures"] == {}


# ------------------------------------------------------------------------ preflight


def test_preflight_checks_processes_and_mesh(capsys):
  assert preflight.check(4, {"mesh.data": "-1"}, 4, 16) == (16, 1, 1)
  assert preflight.check(4, {"mesh.fsdp": "4", "mesh.data": "-1"}, 4, 16) == (4, 4, 1)
  with pytest.raises(preflight.PreflightError, match=r"process_count\(\) = 3 but .* expects 4"):
    preflight.check(4, {}, 3, 12)
  with pytest.raises(preflight.PreflightError, match="data x fsdp x tensor = 8 but 16 devices"):
    preflight.check(4, {"mesh.data": "8"}, 4, 16)
  with pytest.raises(preflight.PreflightError, match="expected an integer mesh axis"):
    preflight.check(1, {"mesh.data": "x"}, 1, 1)
  assert preflight.main(["--processes=1", "--config.compression=w4a16; rm -rf /"]) == 0
  assert "preflight ok: process 0 of 1" in capsys.readouterr().out
  assert preflight.main(["--processes=2"]) == 2
  assert "expects 2 processes" in capsys.readouterr().err


# --------------------------------------------------------------------------- TPU VM


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
  """A `gcloud` first on PATH that appends its argv (one JSON line per call) to calls.jsonl
  and exits 0, or 1 when its subcommand is in $FAKE_GCLOUD_FAIL."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  script = bin_dir / "gcloud"
  script.write_text(
    textwrap.dedent(f"""\
      #!{sys.executable}
      import json, os, sys
      with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
      sys.exit(1 if sys.argv[4] in os.environ.get("FAKE_GCLOUD_FAIL", "").split(",") else 0)
      """)
  )
  script.chmod(script.stat().st_mode | stat.S_IXUSR)
  log = tmp_path / "calls.jsonl"
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_GCLOUD_LOG", str(log))
  monkeypatch.delenv("FAKE_GCLOUD_FAIL", raising=False)

  def calls():
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

  return calls


VM = ["--name=cs-test", "--zone=us-central2-b", "--workdir_root=gs://bkt/exp", "--project=proj"]
MALICIOUS = "--config.compression=w4a16; rm -rf /"


def _command_of(call):
  (arg,) = [a for a in call if a.startswith("--command=")]
  return arg[len("--command=") :]


def test_tpu_vm_existing_vm_single_config(fake_gcloud, capsys):
  rc = tpu_vm.main(
    [*VM, "--config=configs/smoke.py", "--processes=2", MALICIOUS, "--config.mesh.fsdp=2"]
  )
  assert rc == 0
  calls = fake_gcloud()
  assert [c[:5] for c in calls] == [
    ["compute", "tpus", "tpu-vm", "describe", "cs-test"],
    ["compute", "tpus", "tpu-vm", "scp", calls[1][4]],
    ["compute", "tpus", "tpu-vm", "ssh", "cs-test"],
    ["compute", "tpus", "tpu-vm", "ssh", "cs-test"],
  ]  # describe succeeded: no create
  for call in calls:
    assert "--zone=us-central2-b" in call and "--project=proj" in call
  assert (
    calls[1][4].endswith("compress_scaling.tar.gz")
    and calls[1][5] == "cs-test:compress_scaling.tar.gz"
  )
  assert all("--worker=all" in c for c in calls[1:])
  assert not os.path.exists(calls[1][4])  # the temporary tarball is gone

  setup = shlex.split(_command_of(calls[2]))
  assert "$HOME/compress_scaling.tar.gz" in setup and "jax[tpu]" in setup

  # The run: every argument survives the remote shell as exactly one word.
  words = shlex.split(_command_of(calls[3]))
  assert words.count("&&") == 2 and ";" not in words and "rm" not in words
  assert words[:3] == ["cd", "$HOME/compress_scaling", "&&"]
  pre = words[3 : words.index("&&", 3)]
  assert pre == [
    "$HOME/compress_scaling_venv/bin/python",
    "-m",
    "launch.preflight",
    "--processes=2",
    "--config.mesh.fsdp=2",
  ]
  train = words[words.index("&&", 3) + 1 :]
  assert train[1:4] == ["-m", "compress_scaling.main", "--config=configs/smoke.py"]
  assert train[4].startswith("--workdir=gs://bkt/exp/smoke-")
  assert train[5:] == [MALICIOUS, "--config.mesh.fsdp=2"]
  assert "+ gcloud compute tpus tpu-vm ssh" in capsys.readouterr().out


def test_tpu_vm_creates_when_describe_fails(fake_gcloud, monkeypatch):
  monkeypatch.setenv("FAKE_GCLOUD_FAIL", "describe")
  args = [*VM, "--config=configs/base.py", "--accelerator_type=v5litepod-8", "--spot"]
  args += ["--bucket=gs://bkt/exp"]  # the alias of --workdir_root
  assert tpu_vm.main([*args, "--skip_setup", "--run_name=r1"]) == 0
  calls = fake_gcloud()
  assert [c[3] for c in calls] == ["describe", "create", "ssh"]
  create = calls[1]
  assert create[4] == "cs-test" and "--accelerator-type=v5litepod-8" in create
  assert "--version=tpu-ubuntu2204-base" in create and "--spot" in create
  words = shlex.split(_command_of(calls[2]))
  assert "--workdir=gs://bkt/exp/r1" in words


def test_tpu_vm_failing_step_stops(fake_gcloud, monkeypatch, capsys):
  monkeypatch.setenv("FAKE_GCLOUD_FAIL", "scp")
  assert tpu_vm.main([*VM, "--config=configs/smoke.py"]) == 1
  assert [c[3] for c in fake_gcloud()] == ["describe", "scp"]
  assert "failed with exit code 1" in capsys.readouterr().err


def test_tpu_vm_sweep_slice_detached(fake_gcloud):
  argv = [*VM, "--sweep=configs/sweeps/qat_law.py:paper", "--slice=3/8", "--processes=4"]
  argv += ["--detach", "--skip_setup", MALICIOUS, "--config.data.data_dir=gs://d/tfds"]
  assert tpu_vm.main(argv) == 0
  (call,) = [c for c in fake_gcloud() if c[3] == "ssh"]
  outer = shlex.split(_command_of(call))
  assert outer[:3] == ["nohup", "setsid", "bash"] and outer[-4:] == ["2>&1", "<", "/dev/null", "&"]
  assert outer[5:7] == [">", "$HOME/compress_scaling_launch.log"]
  words = shlex.split(outer[4])  # what bash -c runs
  train = words[words.index("launch.sweep") + 1 :]
  assert train == [
    "configs/sweeps/qat_law.py:paper",
    "--out=gs://bkt/exp",
    "--slice=3/8",
    "--tag=-slice3of8",
    "--jobs=1",
    MALICIOUS,
    "--config.data.data_dir=gs://d/tfds",
  ]
  assert "--processes=4" in words


def test_tpu_vm_dry_run_and_bad_input(fake_gcloud, capsys):
  assert tpu_vm.main([*VM, "--config=configs/smoke.py", "--dry_run", MALICIOUS]) == 0
  assert fake_gcloud() == []
  printed = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")]
  assert [shlex.split(p)[4] for p in printed] == ["describe", "create", "scp", "ssh", "ssh"]
  words = shlex.split(_command_of(shlex.split(printed[-1])))
  assert MALICIOUS in words
  for bad, needle in [
    (["--bucket=relative/dir"], "gs://BUCKET[/PREFIX] or an absolute VM path"),
    (["--workdir_root=/home/u/runs", "--processes=2"], "a multi-host job"),
    (["--workdir_root=gs://"], "expected gs://BUCKET"),
    (["--name=Bad_Name"], "--name"),
    (["--zone=x; y"], "--zone"),
    (["--config=configs/nope.py"], "no such file"),
    (["--run_name=a/b"], "names a directory"),
    (["--rm -rf"], "unexpected argument"),
    (["--remote_dir=.."], "a plain relative path under $HOME"),
    (["--remote_dir=a/../.."], "a plain relative path under $HOME"),
  ]:
    args = [*VM, "--config=configs/smoke.py", *bad]
    assert tpu_vm.main(args) == 2, bad
    assert needle in capsys.readouterr().err
  assert fake_gcloud() == []


def test_tarball_holds_the_checkout(tmp_path):
  import tarfile

  n = tpu_vm.make_tarball(str(tmp_path / "t.tar.gz"))
  with tarfile.open(tmp_path / "t.tar.gz") as tar:
    names = set(tar.getnames())
  assert n == len(names) and {"setup.cfg", "launch/tpu_vm.py", "configs/sweeps/unified.py"} <= names
  assert not any(name.startswith((".venv/", "runs/")) for name in names)
  assert (REPO / "launch" / "tpu_vm.py").is_file()
