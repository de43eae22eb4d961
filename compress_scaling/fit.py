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
  p.add_argument(
    "--protocol",
    choices=("paired", "two_stage", "joint"),
    default="paired",
    help="paired: two-stage with every compressed run against its dense partner (same N, D, "
    "seed) where it has one (default); two_stage; joint (scaling/eff.py)",
  )
  p.add_argument(
    "--bootstrap", type=int, default=1000, help="bootstrap draws for the intervals and orderings"
  )
  p.add_argument(
    "--uncertainty",
    choices=("seed_noise", "resample"),
    default="seed_noise",
    help="seed_noise: parametric bootstrap with the loss noise measured from replicate seeds "
    "(default); resample: resample runs within each compression",
  )
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--max_evals",
    type=int,
    default=None,
    help="objective evaluations per start of the base-law and joint fits (default 1500 and "
    "2000); raise it when a fit is reported as not converged",
  )
  p.add_argument(
    "--lack_of_fit",
    choices=("report", "widen"),
    default="report",
    help="report: test the fit's residuals against the seed noise and say so (default); "
    "widen: also draw the misfit as noise (conservative intervals)",
  )
  p.add_argument(
    "--min-runs",
    type=int,
    default=None,
    help="compressions with fewer runs are left out and reported (default 1 with "
    "seed_noise, 2 with resample)",
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
      uncertainty=args.uncertainty,
      lack_of_fit=args.lack_of_fit,
    )
  except FitError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  cols = [c for c in report.TABLE_COLUMNS if c in rep.table.columns]
  level = rep.table.attrs.get("ci_level", 0.95)
  print(
    f"eff(C), {rep.table.attrs['protocol']} fit of {rep.table.attrs['law']} on "
    f"{rep.table.attrs['n_runs']} runs ({level:.0%} intervals):"
  )
  print(report.markdown(rep.table[cols]))
  for line in report.table_footer(rep.table):
    print(line)
  if rep.standard_orderings is not None and len(rep.standard_orderings):
    print(
      "\nstandard orderings, P(eff(higher) > eff(lower)) from paired draws (resolved: >= 0.975):"
    )
    for row in rep.standard_orderings.itertuples():
      at = "" if row.sizes == "all" else f"  (at the common N = {row.sizes})"
      print(f"  {row.expected:<32} P = {row.p:.3f}  {row.verdict}{at}")
  if rep.orderings is not None and len(rep.orderings):
    n_res = int(rep.orderings.resolved.sum())
    print(f"  all pairs: {n_res} of {len(rep.orderings)} resolved (orderings.csv)")
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
