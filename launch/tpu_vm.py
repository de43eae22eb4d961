"""Trains one config or one slice of a sweep on a Cloud TPU VM (single- or multi-host).

  python -m launch.tpu_vm --name NAME --zone ZONE [--project P] --accelerator_type v4-8 \
      --workdir_root gs://BUCKET/PREFIX [--processes N] \
      (--config configs/X.py[:arg] [--run_name RUN] | --sweep configs/sweeps/X.py:paper \
      [--slice I/N]) [--config.FIELD=VALUE ...] [--detach] [--skip_setup] [--dry_run]

Steps, each a `gcloud compute tpus tpu-vm` command run locally (printed to stdout, `+ ...`):
  1. describe NAME; only if that fails, create NAME (--accelerator_type, --version, --spot).
  2. (unless --skip_setup) copy the code: a tarball of this checkout (`git ls-files --cached
     --others --exclude-standard`: tracked files plus untracked, not-ignored ones, so
     uncommitted work is included and .venv, runs/ are not) scp'd to every worker
     (--worker=all), unpacked into ~/compress_scaling; then uv installs Python 3.11 and
     `pip install -e '.[data]' jax[tpu] gcsfs google-cloud-storage` into
     ~/compress_scaling_venv (gs:// for etils.epath and tensorboardX). scp rather than git
     clone: the VM needs no credentials for the repository and gets exactly this tree.
  3. ssh --worker=all: `python -m launch.preflight --processes=N` (every worker checks that
     jax.process_count() == N and that the mesh resolves over the slice's devices), then either
     `python -m compress_scaling.main --config=... --workdir=ROOT/RUN --config.*=...` or
     `python -m launch.sweep SWEEP --out ROOT --slice I/N --config.*=...` (runs in
     ROOT/<run name>; failures in ROOT/failures-sliceIofN.json). With --detach the job is
     started under nohup (log: ~/compress_scaling_launch.log on each worker) and ssh returns.

Every value that reaches the remote shell (paths, the config, each --config.FIELD=VALUE) is
quoted with shlex.quote: an override such as --config.compression='w4a16; rm -rf /' arrives as
one argument. Local gcloud commands run without a shell. --dry_run prints the commands and runs
(and creates) nothing.

--processes is the number of TPU VM workers (hosts) of the slice: 1 for v4-8 / v5litepod-8 /
v6e-8, 4 for v4-32, ... --workdir_root (alias --bucket) is gs://BUCKET/PREFIX: every host of a
multi-host job writes its checkpoint shards there. A single-host job may use an absolute path on
the VM's disk instead (outside ~/compress_scaling, which each setup replaces). Sweep slices:
start N VMs (or N launches on one VM, one after another) with --slice 0/N .. N-1/N; each trains
runs I, I+N, ... of the sweep.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile

from configs.sweeps import common
from launch import sweep as sweep_lib

REPO = sweep_lib.REPO
REMOTE_DIR = "compress_scaling"  # relative to the remote $HOME, like everything below
REMOTE_VENV = "compress_scaling_venv"
REMOTE_TARBALL = "compress_scaling.tar.gz"
REMOTE_LOG = "compress_scaling_launch.log"
DEFAULT_PIP = ("jax[tpu]", "gcsfs", "google-cloud-storage")  # epath, tensorboardX on gs://
UV_INSTALL = "https://astral.sh/uv/install.sh"
_NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # Cloud TPU node names
_ZONE_RE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")


def q(value: str) -> str:
  return shlex.quote(str(value))


def home(path: str) -> str:
  """A path under the remote $HOME: "$HOME"/'path' ($HOME expands, the path is quoted)."""
  return '"$HOME"/' + q(path)


def join_cmd(argv: list[str]) -> str:
  """One remote command line; argv[0] may be a pre-quoted home() path."""
  return " ".join([argv[0], *(q(a) for a in argv[1:])])


# ------------------------------------------------------------------------- commands


def gcloud(*args: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", *args]


def location(args) -> list[str]:
  return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def setup_command(args) -> str:
  """Unpacks the code and installs it (and jax[tpu]) into a venv; idempotent."""
  python = home(f"{args.remote_venv}/bin/python")
  steps = [
    'export PATH="$HOME/.local/bin:$PATH"',
    f"rm -rf {home(args.remote_dir)}",
    f"mkdir -p {home(args.remote_dir)}",
    f"tar -xzf {home(REMOTE_TARBALL)} -C {home(args.remote_dir)}",
    f"(command -v uv >/dev/null 2>&1 || curl -LsSf {q(UV_INSTALL)} | sh)",
    f"([ -x {python} ] || uv venv --python {q(args.python_version)} {home(args.remote_venv)})",
    " ".join(
      [
        "uv pip install --python",
        python,
        "-e",
        home(f"{args.remote_dir}[data]"),
        *(q(p) for p in (args.pip or DEFAULT_PIP)),
      ]
    ),
  ]
  return " && ".join(steps)


def run_command(args, overrides: list[str]) -> str:
  """cd to the code, preflight, then train (one config or a sweep slice)."""
  python = home(f"{args.remote_venv}/bin/python")
  mesh = [o for o in overrides if o.startswith("--config.mesh.")]
  preflight = [python, "-m", "launch.preflight", f"--processes={args.processes}", *mesh]
  if args.sweep:
    i, n = sweep_lib.parse_slice(args.slice)
    train = [python, "-m", "launch.sweep", args.sweep, f"--out={args.workdir_root}"]
    train += [f"--slice={i}/{n}", f"--tag=-slice{i}of{n}", f"--jobs={args.jobs}", *overrides]
  else:
    workdir = f"{args.workdir_root.rstrip('/')}/{run_name(args, overrides)}"
    train = [python, "-m", "compress_scaling.main", f"--config={args.config}"]
    train += [f"--workdir={workdir}", *overrides]
  line = " && ".join([f"cd {home(args.remote_dir)}", join_cmd(preflight), join_cmd(train)])
  if args.detach:
    line = f"nohup setsid bash -c {q(line)} > {home(REMOTE_LOG)} 2>&1 < /dev/null &"
  return line


def run_name(args, overrides: list[str]) -> str:
  """--run_name, else <config stem>[-<arg>][-<hash of the overrides>]."""
  if args.run_name:
    return args.run_name
  path, _, arg = args.config.partition(":")
  name = pathlib.Path(path).stem + (f"-{arg.replace('/', '-')}" if arg else "")
  if overrides:
    name += "-" + hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
  return name


def make_tarball(path: str) -> int:
  """This checkout's files (tracked + untracked not ignored) into `path`; returns the count."""
  try:
    listing = subprocess.run(
      ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
      cwd=REPO,
      capture_output=True,
      check=True,
    ).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    raise RuntimeError(f"cannot list the files of {REPO} with git: {e}") from e
  files = sorted(f for f in listing.decode().split("\0") if f and (REPO / f).is_file())
  with tarfile.open(path, "w:gz") as tar:
    for f in files:
      tar.add(REPO / f, arcname=f)
  return len(files)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None):
  p = argparse.ArgumentParser(
    prog="python -m launch.tpu_vm",
    description="Runs one config or a sweep slice on a Cloud TPU VM.",
    epilog="Extra --config.FIELD=VALUE arguments are passed to every run.",
    allow_abbrev=False,
  )
  p.add_argument("--name", required=True, help="TPU VM name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default="", help="default: gcloud's configured project")
  p.add_argument("--accelerator_type", default="v4-8", help="used only when creating")
  p.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM runtime (create)")
  p.add_argument("--spot", action="store_true", help="create a Spot VM")
  p.add_argument("--processes", type=int, default=1, help="TPU VM workers (hosts) of the slice")
  p.add_argument(
    "--workdir_root",
    "--bucket",
    required=True,
    help="gs://BUCKET/PREFIX holding the workdirs (a path on the VM: single host only)",
  )
  what = p.add_mutually_exclusive_group(required=True)
  what.add_argument("--config", help="configs/X.py[:arg]: train this one config")
  what.add_argument("--sweep", help="configs/sweeps/X.py:arg: train a slice of this sweep")
  p.add_argument("--run_name", help="workdir name under --workdir_root for --config")
  p.add_argument("--slice", default="0/1", help="I/N for --sweep: runs I, I+N, ...")
  p.add_argument("--jobs", type=int, default=1, help="runs at a time per VM for --sweep")
  p.add_argument("--remote_dir", default=REMOTE_DIR, help="code dir under the remote $HOME")
  p.add_argument("--remote_venv", default=REMOTE_VENV, help="venv under the remote $HOME")
  p.add_argument("--python_version", default="3.11")
  p.add_argument("--pip", action="append", help=f"packages beside the code (default {DEFAULT_PIP})")
  p.add_argument("--skip_setup", action="store_true", help="reuse the code and venv on the VM")
  p.add_argument("--detach", action="store_true", help="start the job under nohup; return")
  p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  args, rest = p.parse_known_args(argv)
  sweep_lib.parse_config_overrides(rest)  # ValueError on anything but --config.FIELD=VALUE
  if not _NAME_RE.fullmatch(args.name):
    raise ValueError(f"--name {args.name!r}: lowercase letters, digits and '-', letter first")
  if not _ZONE_RE.fullmatch(args.zone):
    raise ValueError(f"--zone {args.zone!r}: expected a zone such as us-central2-b")
  root = args.workdir_root
  if root.startswith("gs://") and len(root) <= len("gs://"):
    raise ValueError(f"--workdir_root {root!r}: expected gs://BUCKET[/PREFIX]")
  if not root.startswith("gs://"):
    if args.processes > 1:
      raise ValueError(
        f"--workdir_root {root!r}: a multi-host job writes checkpoint shards from every host, "
        "so its workdirs must be on gs://BUCKET[/PREFIX]"
      )
    if not root.startswith("/"):
      raise ValueError(f"--workdir_root {root!r}: gs://BUCKET[/PREFIX] or an absolute VM path")
  for flag, rel in (("--remote_dir", args.remote_dir), ("--remote_venv", args.remote_venv)):
    parts = rel.split("/")
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", rel) or any(x in ("", ".", "..") for x in parts):
      raise ValueError(f"{flag} {rel!r}: a plain relative path under $HOME (setup deletes it)")
  if args.processes < 1 or args.jobs < 1:
    raise ValueError("--processes and --jobs must be >= 1")
  local = (args.config or args.sweep).partition(":")[0]
  if not (REPO / local).is_file():
    raise ValueError(f"{local!r}: no such file in {REPO} (paths are relative to the repo root)")
  if args.sweep:
    sweep_lib.parse_slice(args.slice)
  elif args.run_name:
    common.Run(args.run_name, {})  # same rule as sweep run names
  return args, rest


def main(argv: list[str] | None = None) -> int:
  try:
    args, overrides = parse_args(argv)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  def run(cmd: list[str], check: bool = True) -> int:
    print("+ " + shlex.join(cmd), flush=True)
    if args.dry_run:
      return 0
    rc = subprocess.run(cmd).returncode
    if rc and check:
      raise SystemExit(rc)
    return rc

  loc = location(args)
  describe = gcloud("describe", args.name, *loc, "--format=value(state)")
  create = gcloud(
    "create",
    args.name,
    *loc,
    f"--accelerator-type={args.accelerator_type}",
    f"--version={args.version}",
    *(["--spot"] if args.spot else []),
  )
  try:
    if run(describe, check=False) or args.dry_run:
      if args.dry_run:
        print("# only if describe fails:")
      run(create)
    if not args.skip_setup:
      with tempfile.TemporaryDirectory() as tmp:
        tarball = os.path.join(tmp, REMOTE_TARBALL)
        if not args.dry_run:
          n = make_tarball(tarball)
          print(f"# {n} files of {REPO} -> {tarball}", flush=True)
        run(gcloud("scp", tarball, f"{args.name}:{REMOTE_TARBALL}", *loc, "--worker=all"))
      run(gcloud("ssh", args.name, *loc, "--worker=all", f"--command={setup_command(args)}"))
    cmd = run_command(args, overrides)
    return run(gcloud("ssh", args.name, *loc, "--worker=all", f"--command={cmd}"), check=False)
  except SystemExit as e:
    print(f"error: the last command failed with exit code {e.code}", file=sys.stderr)
    return int(e.code or 1)
  except RuntimeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
