"""Fit the unified compression law to log entries and write the eff table and figures.

    python -m compress_scaling.fit --runs 'DIR/**/log_entry.json' --out DIR

--runs takes globs (`**` recursive, gs:// via etils.epath), directories, log-entry files or a
CSV table with columns compression, N, D, loss; repeat it to combine sources. Prints the eff
table, the notes (skipped files, runs without a loss, compressions with too few runs) and
the paths of everything written.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd


def _parse(argv):
  p = argparse.ArgumentParser(
    prog="python -m compress_scaling.fit",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--runs",
    action="append",
    required=True,
    help="glob / directory / log_entry.json / runs CSV (repeatable)",
  )
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--protocol", choices=("two_stage", "joint"), default="two_stage")
  p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the intervals")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--max_evals",
    type=int,
    default=None,
    help="objective evaluations per start of the base-law and joint fits (default 1500 and "
    "2000); raise it when a fit is reported as not converged",
  )
  p.add_argument(
    "--min-runs",
    type=int,
    default=2,
    help="compressions with fewer runs are left out (and reported)",
  )
  p.add_argument(
    "--include-incomplete", action="store_true", help="also use runs whose status is not 'complete'"
  )
  p.add_argument("--no-figures", action="store_true")
  p.add_argument(
    "--no-gmse", action="store_true", help="skip the Gaussian-MSE (capacity law) analysis"
  )
  return p.parse_args(argv)


def _load(sources, include_incomplete):
  from compress_scaling import logbook
  from compress_scaling.scaling.data import load_runs

  frames = []
  globs = [s for s in sources if not s.endswith(".csv")]
  if globs:
    frames.append(logbook.read_runs(globs, include_incomplete=include_incomplete))
  frames += [load_runs(s) for s in sources if s.endswith(".csv")]
  df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
  if len(frames) == 1 or not globs:
    return df
  df.attrs = dict(frames[0].attrs)
  return df


def main(argv=None) -> int:
  args = _parse(sys.argv[1:] if argv is None else argv)
  from compress_scaling.scaling import report
  from compress_scaling.scaling.data import FitError

  runs = _load(args.runs, args.include_incomplete)
  try:
    rep = report.build_report(
      runs,
      args.out,
      protocol=args.protocol,
      bootstrap=args.bootstrap,
      seed=args.seed,
      min_runs=args.min_runs,
      figures=not args.no_figures,
      gmse=not args.no_gmse,
      max_evals=args.max_evals,
    )
  except FitError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  cols = [c for c in report.TABLE_COLUMNS if c in rep.table.columns]
  level = rep.table.attrs.get("ci_level", 0.95)
  print(
    f"eff(C), {rep.table.attrs['protocol']} fit of {rep.table.attrs['law']} on "
    f"{rep.table.attrs['n_runs']} runs ({level:.0%} bootstrap intervals, "
    f"{args.bootstrap} resamples):"
  )
  print(report.markdown(rep.table[cols]))
  base = rep.table.attrs["base"]
  print("base law: " + ", ".join(f"{k}={base[k]:.5g}" for k in ("A", "B", "E", "alpha", "beta")))
  if rep.composition is not None and len(rep.composition):
    print("\ncomposition eff(q+s) vs eff(q) * eff(s):")
    print(report.markdown(rep.composition))
  for note in rep.notes:
    print(f"note: {note}")
  print("\nwritten:")
  for path in rep.files:
    print(f"  {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
