"""Runs every config of a sweep, each in its own workdir; re-running resumes the sweep.

  python -m launch.sweep configs/sweeps/unified.py:mini --out DIR [--dry_run] [--jobs K]
      [--only REGEX] [--slice I/N] [--fit] [--config.<field>=<value> ...]

Run from the repository root. Each run r of `runs(arg)` (configs/sweeps/common.py) trains as

  python -m compress_scaling.main --config=configs/base.py --workdir=DIR/<r.name> \
      --config.<field>=<value> ...   (r.overrides, then the --config.* given here)

so the printed command reproduces the run without this tool. Replicate seeds of one config
(runs sharing a `pack`, configs/sweeps/common.replicas) train in one process, stacked in one
compiled program: `--workdir=DIR/<name>_s{seed} --seeds=0,1,...` (at most --max_pack seeds a
process). A run whose DIR/<name>/log_entry.json is finished ("complete" or "diverged") with the
config hash of the config this sweep now gives it is skipped; a killed sweep therefore resumes
where it stopped, and a run interrupted mid-way resumes from its newest checkpoint. A finished
run of another config (the sweep was edited) is not counted done: it is reported STALE with
the differing fields, recorded in failures.json, and left alone (main would refuse it too; move
its workdir away to retrain it). A run that exits non-zero (or stops without finishing) is
recorded in DIR/failures.json (exit code, command, the tail of its output) and the sweep goes
on; the sweep exits 1 if any run failed. A later success removes the run from the file. Each
process's console output goes to DIR/_logs/<name>.log (for a gs:// DIR: a local folder, printed
at start). The trainings share JAX's persistent compilation cache (--compile_cache, default
~/.cache/compress_scaling/jax_cache): a program compiled by one run (the init of a model size,
the eval step of a compression) is loaded, not compiled, by the next.

--only REGEX keeps runs whose name matches (re.search); --slice I/N keeps runs I, I+N, I+2N, ...
(0 <= I < N, after --only): N machines each take one slice. --jobs K runs K at a time (default
1: on a 2-core box parallel runs only slow each other down). --dry_run prints the commands,
shell-quoted, and the expected CPU time of a mini sweep, and runs nothing; under each command a
`#   memory/device (analytic): ...` line gives the per-device bytes of params, optimizer state,
masks and activations of its train step (compress_scaling/memory.py: arithmetic on the dims,
no JAX, so a paper sweep prints instantly) for --devices devices (default 1) and the run's
mesh, remat and microbatches, and a `# WARNING` line when that exceeds --device_memory_gib
(for XLA's compiled numbers of one run: `python -m compress_scaling.main ... --dry_run`).
SIGTERM (or Ctrl-C) stops the sweep: no new run starts and the running trainings get SIGTERM,
on which they save a checkpoint (after Ctrl-C in a terminal they also get the SIGINT itself and
resume from their last periodic checkpoint instead). --fit then runs `python -m
compress_scaling.fit` on DIR's log entries (output in DIR/fit; it prints the eff(C) table and
the paths of the figures), also when some runs failed: the fit names what it lacks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
FINISHED = ("complete", "diverged")  # compress_scaling.train.FINISHED (not imported: no JAX here)
LOG_ENTRY = "log_entry.json"
DEFAULT_BASE_CONFIG = "configs/base.py"
TAIL_LINES = 40


def _ensure_repo_on_path() -> None:
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


_ensure_repo_on_path()

from compress_scaling import config_identity, memory, paths  # noqa: E402 -- no JAX in the runner
from configs import base as base_config  # noqa: E402
from configs.sweeps import common  # noqa: E402

# ---------------------------------------------------------------------------- sweeps


@dataclasses.dataclass
class Sweep:
  spec: str  # as given: configs/sweeps/unified.py:mini
  base_config: str  # the config file every run starts from (module BASE_CONFIG, else base.py)
  runs: list[common.Run]


def load_sweep(spec: str) -> Sweep:
  """'path/to/sweep.py[:arg]' -> its runs(arg). A sweep file may set BASE_CONFIG (a config path
  relative to the repository root) to start from another config than configs/base.py."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_absolute():
    file = (pathlib.Path.cwd() / file) if (pathlib.Path.cwd() / file).exists() else REPO / file
  if not file.is_file() or file.suffix != ".py":
    raise ValueError(
      f"sweep {spec!r}: no such sweep file {path!r} (expected path/to/sweep.py[:arg])"
    )
  module_spec = importlib.util.spec_from_file_location(f"_sweep_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not callable(getattr(module, "runs", None)):
    raise ValueError(f"sweep {spec!r}: {path} defines no runs(arg)")
  runs = module.runs(arg or None)
  common.check_unique(runs)
  return Sweep(spec, getattr(module, "BASE_CONFIG", DEFAULT_BASE_CONFIG), runs)


def parse_slice(text: str) -> tuple[int, int]:
  m = re.fullmatch(r"(\d+)/(\d+)", text or "")
  if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
    raise ValueError(f"--slice {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
  return int(m.group(1)), int(m.group(2))


def select(runs: list[common.Run], only: str | None, slice_: tuple[int, int] | None):
  if only:
    runs = [r for r in runs if re.search(only, r.name)]
  if slice_:
    i, n = slice_
    runs = runs[i::n]
  return runs


def parse_config_overrides(args: list[str]) -> dict[str, str]:
  """['--config.a.b=v', ...] -> {'a.b': 'v'}; the field must exist in configs/base.py. Values
  stay strings: main parses them by the field's type."""
  out = {}
  fields = base_config.get_config()
  for arg in args:
    m = re.fullmatch(r"--config\.([A-Za-z0-9_.]+)=(.*)", arg, flags=re.DOTALL)
    if not m:
      raise ValueError(
        f"unexpected argument {arg!r}; extra overrides look like --config.FIELD=VALUE"
      )
    key, value = m.groups()
    node = fields
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node:
        raise ValueError(f"{arg!r}: configs/base.py has no field {key!r}")
      node = node[part]
    out[key] = value
  return out


# ------------------------------------------------------------------------- workdirs


def join(out: str, name: str) -> str:
  if paths.is_remote(out):
    return f"{out.rstrip('/')}/{name}"
  return os.path.join(os.path.abspath(out), name)


def _read_json(path: str) -> dict | None:
  try:
    return paths.read_json(path)
  except (ValueError, OSError):
    return None  # corrupt or unreadable: treated as not finished; main reports it


def _write_json(path: str, obj: dict) -> None:
  paths.write_text(path, json.dumps(obj, indent=2) + "\n")


def read_entry(workdir: str) -> dict | None:
  entry = _read_json(join(workdir, LOG_ENTRY))
  return entry if isinstance(entry, dict) else None


def run_status(workdir: str) -> tuple[str | None, float | None]:
  """(status, eval loss) from the workdir's log entry; (None, None) without one."""
  entry = read_entry(workdir) or {}
  return entry.get("status"), (entry.get("eval") or {}).get("loss")


def expected_config(sweep: Sweep, run: common.Run, extra: dict[str, str]) -> dict:
  """The config (as a dict) that compress_scaling.main builds from this run's command line:
  the same config file and `--config.<k>=<v>` flags, parsed by the same ml_collections
  parser, so its hash is the one main records."""
  from absl import flags  # noqa: PLC0415 -- absl and ml_collections only, no JAX
  from ml_collections import config_flags  # noqa: PLC0415

  path, _, arg = sweep.base_config.partition(":")
  path = str(REPO / path) if not os.path.isabs(path) else path
  spec = f"{path}:{arg}" if arg else path
  values = flags.FlagValues()
  argv = ["launch.sweep", f"--config={spec}", *common.override_flags({**run.overrides, **extra})]
  config_flags.DEFINE_config_file(
    "config", spec, flag_values=values, sys_argv=argv, lock_config=True
  )
  values(argv)
  return config_identity.to_dict(values.config)


def changed_fields(entry: dict | None, expected: dict) -> list[str]:
  """[] when a finished run's log entry records the config this sweep gives the run (equal
  config hash), else the differing fields: the sweep changed since (a renamed budget, a new
  learning rate), and main would refuse the workdir."""
  return config_identity.mismatch(entry or {}, expected) or []


@dataclasses.dataclass(frozen=True)
class Job:
  """What one training process runs: a single run, or replicate seeds of one config."""

  runs: tuple[common.Run, ...]

  @property
  def name(self) -> str:  # the log file's name
    if len(self.runs) == 1:
      return self.runs[0].name
    seeds = "+".join(str(r.overrides["seed"]) for r in self.runs)
    return self.runs[0].pack.replace("{seed}", seeds)


def jobs(runs: list[common.Run], max_pack: int) -> list[Job]:
  """Groups runs of one pack (same config but for the seed) into jobs of <= max_pack runs,
  in the order of their first run; every other run is a job of its own."""
  out, by_pack = [], {}
  for run in runs:
    if run.pack is None or max_pack <= 1:
      out.append([run])
      continue
    rest = {k: v for k, v in run.overrides.items() if k != "seed"}
    key = (run.pack, json.dumps(rest, sort_keys=True, default=str))
    group = by_pack.get(key)
    if group is None or len(group) >= max_pack:
      group = by_pack[key] = [run]
      out.append(group)
    else:
      group.append(run)
  return [Job(tuple(g)) for g in out]


def command(sweep: Sweep, job: Job | common.Run, out: str, extra: dict[str, str]) -> list[str]:
  if isinstance(job, common.Run):
    job = Job((job,))
  first = job.runs[0]
  if len(job.runs) == 1:
    workdir, overrides, seeds = join(out, first.name), {**first.overrides, **extra}, []
  else:
    workdir = join(out, first.pack)
    overrides = {k: v for k, v in {**first.overrides, **extra}.items() if k != "seed"}
    seeds = ["--seeds=" + ",".join(str(r.overrides["seed"]) for r in job.runs)]
  return [
    sys.executable,
    "-m",
    "compress_scaling.main",
    f"--config={sweep.base_config}",
    f"--workdir={workdir}",
    *seeds,
    *common.override_flags(overrides),
  ]


def job_memory(sweep: Sweep, job: Job, extra: dict[str, str], devices: int):
  """The analytic per-device memory of a job's train step (its replicas stacked), or None
  when the run's config cannot be sized here (main would report why)."""
  try:
    config = expected_config(sweep, job.runs[0], extra)
    footprint = memory.analytic(memory.shape_from_config(config, devices))
  except (ValueError, KeyError) as e:
    print(f"#   memory: not estimated ({e})")
    return None
  return memory.scaled(footprint, len(job.runs))


def shell(cmd: list[str]) -> str:
  return " ".join(shlex.quote(part) for part in cmd)


def _tail(text: str) -> str:
  lines = [line[-400:] for line in text.replace("\r", "\n").splitlines() if line.strip()]
  return "\n".join(lines[-TAIL_LINES:])


def _fmt_seconds(s: float) -> str:
  return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


# --------------------------------------------------------------------------- runner


class Runner:
  """Runs the trainings (K at a time), records failures, forwards SIGTERM to them."""

  def __init__(
    self,
    sweep: Sweep,
    out: str,
    extra: dict[str, str],
    log_dir: str,
    tag: str,
    compile_cache: str = "",
  ):
    self.sweep, self.out, self.extra, self.log_dir = sweep, out, extra, log_dir
    self.env = training_env(compile_cache)
    self.failures_path = join(out, f"failures{tag}.json")
    self.lock = threading.Lock()
    self.procs: set[subprocess.Popen] = set()
    self.stopping = False
    previous = _read_json(self.failures_path) or {}
    self.failures: dict[str, dict] = dict(previous.get("failures", {}))

  def _save_failures(self) -> None:
    _write_json(
      self.failures_path,
      {
        "sweep": self.sweep.spec,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "failures": self.failures,
      },
    )

  def stop(self, signum=None, frame=None) -> None:
    del frame
    with self.lock:
      if not self.stopping:
        print(f"\nsweep: signal {signum}, stopping the running trainings", file=sys.stderr)
      self.stopping = True
      for proc in self.procs:
        if proc.poll() is None:
          proc.send_signal(signal.SIGTERM)

  def run(self, job: Job) -> list[tuple[str, str]]:
    """Trains one job; returns (outcome, message) per run, outcome in complete / diverged /
    failed / not_started."""
    if self.stopping:
      return [("not_started", r.name) for r in job.runs]
    cmd = command(self.sweep, job, self.out, self.extra)
    log_path = os.path.join(self.log_dir, f"{job.name}.log")
    start = time.time()
    with open(log_path, "a") as log:
      offset = log.tell()
      log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}  {shell(cmd)}\n")
      log.flush()
      with self.lock:
        if self.stopping:
          return [("not_started", r.name) for r in job.runs]
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.add(proc)
      rc = proc.wait()
      with self.lock:
        self.procs.discard(proc)
    seconds = time.time() - start
    tail = None
    results = []
    with self.lock:
      for run in job.runs:
        status, loss = run_status(join(self.out, run.name))
        if rc == 0 and status in FINISHED:
          if self.failures.pop(run.name, None) is not None:
            self._save_failures()
          results.append((status, f"{status:<8} {run.name}  eval loss {loss}  ({seconds:.0f} s)"))
          continue
        if tail is None:
          with open(log_path) as f:
            f.seek(offset)
            tail = _tail(f.read())
        reason = f"exit code {rc}" if rc else f"exited 0 with status {status!r}"
        self.failures[run.name] = {
          "returncode": rc,
          "status": status,
          "reason": reason,
          "command": shell(cmd),
          "log": log_path,
          "error_tail": tail,
          "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._save_failures()
        last = tail.splitlines()[-1][:200] if tail else ""
        results.append(("failed", f"FAILED   {run.name}  ({reason}, {seconds:.0f} s): {last}"))
    return results


DEFAULT_COMPILE_CACHE = os.path.join("~", ".cache", "compress_scaling", "jax_cache")
# Programs that compile faster than this are not worth a disk round trip (JAX's default is 1 s;
# the mini runs' eval steps compile in ~1 s and their inits in ~3 s, measured).
CACHE_MIN_COMPILE_S = "0.5"


def training_env(compile_cache: str) -> dict[str, str]:
  """The trainings' environment: unbuffered output and, unless `compile_cache` is '' or the
  caller set JAX_COMPILATION_CACHE_DIR, JAX's persistent compilation cache in that folder."""
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  if compile_cache and "JAX_COMPILATION_CACHE_DIR" not in env:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.expanduser(compile_cache)
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", CACHE_MIN_COMPILE_S)
  return env


def _default_log_dir(out: str) -> str:
  if not paths.is_remote(out):
    return os.path.join(os.path.abspath(out), "_logs")
  slug = re.sub(r"[^A-Za-z0-9._-]+", "_", out.split("://", 1)[1]).strip("_")
  return os.path.join(tempfile.gettempdir(), "compress_scaling_sweep_logs", slug)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m launch.sweep",
    description="Runs every config of a sweep, each in its own workdir, resumably.",
    epilog="Extra --config.FIELD=VALUE arguments apply to every run (after its own overrides).",
  )
  parser.add_argument("sweep", help="configs/sweeps/X.py[:arg], arg = paper | mini | quick | ...")
  parser.add_argument("--out", required=True, help="sweep directory (local or gs://)")
  parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
  parser.add_argument("--only", help="keep runs whose name matches this regex (re.search)")
  parser.add_argument("--slice", help="I/N: keep runs I, I+N, ... (after --only)")
  parser.add_argument("--log_dir", help="per-run console logs (default DIR/_logs)")
  parser.add_argument("--tag", default="", help="suffix of the failures file: failures<TAG>.json")
  parser.add_argument(
    "--max_pack",
    type=int,
    default=4,
    help="replicate seeds of one config trained in one process, at most (1: one run each)",
  )
  parser.add_argument(
    "--compile_cache",
    default=DEFAULT_COMPILE_CACHE,
    help="JAX persistent compilation cache shared by the trainings ('' for none)",
  )
  parser.add_argument(
    "--devices",
    type=int,
    default=1,
    help="with --dry_run: devices per run for the memory lines (mesh axes at -1 fill them)",
  )
  parser.add_argument(
    "--device_memory_gib",
    type=float,
    help="with --dry_run: warn for runs needing more than this per device (e.g. 16, 80)",
  )
  parser.add_argument(
    "--fit",
    action="store_true",
    help="afterwards fit the unified law to DIR's log entries (compress_scaling.fit --out "
    "DIR/fit): prints the eff table and the figure paths",
  )
  args, rest = parser.parse_known_args(argv)
  try:
    extra = parse_config_overrides(rest)
    sweep = load_sweep(args.sweep)
    runs = select(sweep.runs, args.only, parse_slice(args.slice) if args.slice else None)
    if args.only:
      re.compile(args.only)
    if args.jobs < 1:
      raise ValueError(f"--jobs {args.jobs}: must be >= 1")
    if args.tag and not re.fullmatch(r"[A-Za-z0-9._-]+", args.tag):
      raise ValueError(f"--tag {args.tag!r}: letters, digits and . _ - only")
  except (ValueError, re.error) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  try:
    entries = {r.name: read_entry(join(args.out, r.name)) for r in runs}
  except ImportError as e:  # gs:// through etils.epath needs gcsfs
    print(f"error: cannot read {args.out}: {e} (pip install gcsfs)", file=sys.stderr)
    return 2
  finished = {name: (e or {}).get("status") for name, e in entries.items()}
  try:
    stale = {
      r.name: fields
      for r in runs
      if finished[r.name] in FINISHED
      and (fields := changed_fields(entries[r.name], expected_config(sweep, r, extra)))
    }
  except Exception as e:  # noqa: BLE001 -- the flag parser's errors name the bad value
    print(f"error: building the runs' configs: {e}", file=sys.stderr)
    return 2
  todo = [r for r in runs if finished[r.name] not in FINISHED]
  # Longest first (LPT scheduling): with --jobs K the long runs do not end the sweep alone.
  todo_jobs = sorted(
    jobs(todo, args.max_pack), key=lambda j: -(common.estimate_cpu_seconds(j.runs) or 0.0)
  )
  n_done = len(runs) - len(todo) - len(stale)
  header = (
    f"# {sweep.spec}: {len(runs)} runs selected of {len(sweep.runs)}, {n_done} already finished, "
    f"{len(todo)} to run in {len(todo_jobs)} processes -> {args.out}"
  )
  stale_lines = [
    f"# STALE {name}: finished with another config (fields {', '.join(fields)}) than the "
    "sweep now gives it; move its workdir away to retrain it"
    for name, fields in stale.items()
  ]
  estimate = common.estimate_cpu_seconds(todo)

  if args.dry_run:
    print("\n".join([header, *stale_lines]))
    tokens = [common.run_tokens(r.overrides) for r in todo]
    if todo and None not in tokens:
      line = f"# {sum(tokens) / 1e6:.1f}M training tokens"
      if estimate is not None:
        line += f", ~{_fmt_seconds(estimate)} on 2 CPU cores (configs/sweeps/common.py model)"
      print(line)
    print(f"# run from {REPO}")
    n_warn = 0
    for job in todo_jobs:
      print(shell(command(sweep, job, args.out, extra)))
      footprint = job_memory(sweep, job, extra, args.devices)
      if footprint is not None:
        print(f"#   {footprint.line()}")
        if warning := footprint.warning(args.device_memory_gib):
          print(f"# {warning}")
          n_warn += 1
    if n_warn:
      print(f"# {n_warn} of {len(todo_jobs)} processes will not fit {args.device_memory_gib:g} GiB")
    return 0

  import tqdm  # noqa: PLC0415 -- not needed for --dry_run

  log_dir = args.log_dir or _default_log_dir(args.out)
  os.makedirs(log_dir, exist_ok=True)
  print("\n".join([header, *stale_lines]), file=sys.stderr)
  if estimate is not None:
    print(f"# ~{_fmt_seconds(estimate)} on 2 CPU cores; logs in {log_dir}", file=sys.stderr)
  else:
    print(f"# logs in {log_dir}", file=sys.stderr)
  runner = Runner(sweep, args.out, extra, log_dir, args.tag, args.compile_cache)
  for run in runs:  # finished since an earlier failure: drop its record; record stale ones
    if run.name in stale:
      runner.failures[run.name] = {
        "reason": f"finished with another config (fields {', '.join(stale[run.name])})",
        "status": finished[run.name],
        "command": shell(command(sweep, run, args.out, extra)),
      }
    elif finished[run.name] in FINISHED:
      runner.failures.pop(run.name, None)
  runner._save_failures()
  old_handlers = {s: signal.signal(s, runner.stop) for s in (signal.SIGTERM, signal.SIGINT)}
  counts = dict.fromkeys(("complete", "diverged", "failed", "not_started"), 0)
  try:
    desc = pathlib.Path(sweep.spec).name
    bar = tqdm.tqdm(total=len(runs), initial=len(runs) - len(todo), unit="run", desc=desc)
    with bar, concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
      futures = [pool.submit(runner.run, job) for job in todo_jobs]
      for future in concurrent.futures.as_completed(futures):
        for outcome, message in future.result():
          counts[outcome] += 1
          if outcome != "not_started":
            bar.update(1)
            bar.write(message)
  finally:
    for s, handler in old_handlers.items():
      signal.signal(s, handler)
  failed = counts["failed"] + counts["not_started"] + len(stale)
  print(
    f"{sweep.spec}: {len(runs)} runs: {n_done} already finished, {counts['complete']} complete, "
    f"{counts['diverged']} diverged, {counts['failed']} failed"
    + (f", {len(stale)} stale" if stale else "")
    + (f", {counts['not_started']} not started (stopped)" if counts["not_started"] else "")
    + (f"; failures in {runner.failures_path}" if runner.failures else ""),
    file=sys.stderr,
  )
  if args.fit and not runner.stopping:
    fit_rc = fit(args.out)
    if fit_rc:
      return fit_rc
  return 1 if failed or runner.stopping else 0


def fit(out: str) -> int:
  """compress_scaling.fit on the sweep's log entries, output in DIR/fit; its exit code."""
  cmd = [
    sys.executable,
    "-m",
    "compress_scaling.fit",
    "--runs",
    join(out, "**/log_entry.json"),
    "--out",
    join(out, "fit"),
  ]
  print(f"# {shell(cmd)}", file=sys.stderr, flush=True)
  return subprocess.call(cmd, cwd=REPO)


if __name__ == "__main__":
  try:
    sys.exit(main())
  except BrokenPipeError:  # --dry_run piped into head: stop quietly
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)
