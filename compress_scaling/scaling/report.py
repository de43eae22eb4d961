"""The full analysis of a set of runs: eff table, neighbours' fits, figures, written to a folder.
Used by `python -m compress_scaling.fit` and usable as is from a colab."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import warnings

import numpy as np
import pandas as pd

from compress_scaling.scaling import data as data_mod
from compress_scaling.scaling import eff as eff_mod
from compress_scaling.scaling import neighbours, orderings, plots
from compress_scaling.scaling.data import FitError

TABLE_COLUMNS = [
  "eff",
  "eff_lo",
  "eff_hi",
  "eff_se",
  "bits_per_param",
  "gain_vs_dense",
  "n_runs",
  "n_sizes",
  "kind",
]


def markdown(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
  """A GitHub-markdown table (index first) without the tabulate dependency."""
  cols = [df.index.name or ""] + [str(c) for c in df.columns]

  def cell(v):
    if isinstance(v, (float, np.floating)):
      return "" if np.isnan(v) else format(float(v), floatfmt)
    return str(v)

  lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
  for idx, row in df.iterrows():
    lines.append("| " + " | ".join([cell(idx)] + [cell(v) for v in row]) + " |")
  return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Report:
  table: pd.DataFrame
  files: list[str]
  notes: list[str]
  composition: pd.DataFrame | None = None
  holdout: pd.DataFrame | None = None
  fits: dict = dataclasses.field(default_factory=dict)
  orderings: pd.DataFrame | None = None  # every pair, paired draws (scaling/orderings.py)
  standard_orderings: pd.DataFrame | None = None  # the papers' orderings among these labels


def _gmse_table(comps, notes) -> pd.DataFrame | None:
  rows = {}
  for c in comps:
    if c == "dense":
      continue
    try:
      g = neighbours.gaussian_mse_for_spec(c, n_samples=1 << 16)
    except (ImportError, AttributeError) as e:
      notes.append(f"eff vs GMSE skipped: the quantizers' gaussian_mse is unavailable ({e})")
      return None
    except (ValueError, TypeError) as e:
      notes.append(f"GMSE of {c!r} unavailable ({e}); left out of the capacity fit")
      continue
    rows[c] = {f"gmse_{k}": v for k, v in g.items()}
  if not rows:
    return None
  return pd.DataFrame.from_dict(rows, orient="index")


def _holdout(runs, protocol, notes):
  """Fit without the largest size, predict it; the same for the largest size with compressed
  runs when that is another size (a largest size with dense runs only tests the base law)."""
  sizes = np.unique(runs.N)
  if len(sizes) < 4:
    notes.append(f"held-out check skipped: needs at least 4 distinct N, got {len(sizes)}")
    return None
  held_out = [sizes[-1]]
  compressed = np.unique(runs.N[runs.compression != eff_mod.DENSE])
  if len(compressed) and compressed[-1] != sizes[-1] and len(compressed) > 1:
    held_out.append(compressed[-1])
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # the folds' own notes repeat the full fit's
      held = eff_mod.leave_one_size_out(runs, sizes=held_out, protocol=protocol)
  except FitError as e:
    notes.append(f"held-out check failed: {e}")
    return None
  for n_out, err in held.attrs["summary"].items():
    sub = held[held.held_out_N == n_out]
    kinds = "dense only" if set(sub.compression) == {eff_mod.DENSE} else "dense and compressed"
    notes.append(
      f"held-out size N = {n_out:.4g} ({len(sub)} runs, {kinds}): predicted from the other "
      f"sizes with mean |relative error| {err:.2%}, max {np.max(np.abs(sub.rel_err)):.2%}"
    )
  return held


def build_report(
  runs,
  out_dir: str,
  *,
  protocol: str = "paired",
  bootstrap: int = 1000,
  seed: int = 0,
  min_runs: int | None = None,
  figures: bool = True,
  gmse: bool = True,
  max_evals: int | None = None,
  uncertainty: str = "seed_noise",
  lack_of_fit: str = "report",
) -> Report:
  """Fits everything the runs support and writes eff_table.{md,csv}, composition.{md,csv},
  holdout.csv and the figures (PNG + PDF) to out_dir. Runs with bad or missing fields and
  compressions with too few runs are reported in `notes`, not silently dropped."""
  os.makedirs(out_dir, exist_ok=True)
  notes, files, fits = [], [], {}
  src = data_mod.load_runs(runs)
  for _, reason in src.attrs.get("skipped", []):
    notes.append(f"skipped file {reason}")
  for f, fields in src.attrs.get("missing", []):
    notes.append(f"run without {', '.join(fields)}: {f}")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    df = data_mod.check_runs(src, "fit", drop_invalid=True)
    train = df[df["kind"].fillna("train") == "train"] if "kind" in df.columns else df
    table = eff_mod.fit_eff(
      train,
      protocol=protocol,
      bootstrap=bootstrap,
      seed=seed,
      min_runs=min_runs,
      on_insufficient="skip",
      max_evals=max_evals,
      uncertainty=uncertainty,
      lack_of_fit=lack_of_fit,
    )
  notes += [str(w.message) for w in caught]
  fits["base"] = table.attrs["base"]
  cols = [c for c in TABLE_COLUMNS if c in table.columns]
  footer = "".join(f"\n{line}\n" for line in table_footer(table))
  for ext, text in (("md", markdown(table[cols]) + footer), ("csv", table[cols].to_csv())):
    path = os.path.join(out_dir, f"eff_table.{ext}")
    with open(path, "w") as f:
      f.write(text)
    files.append(path)
  matched = matched_tables(train, table, bootstrap, seed) if bootstrap else {}
  ords = orderings.orderings(table, matched)
  std = orderings.standard(table, matched=matched)
  if len(ords):
    path = os.path.join(out_dir, "orderings.csv")
    ords.to_csv(path, index=False)
    files.append(path)
  by_size = eff_mod.eff_by_size(train, table)
  if by_size.shape[1] > 1:
    path = os.path.join(out_dir, "eff_by_size.csv")
    by_size.to_csv(path)
    files.append(path)
    multi = by_size.dropna(thresh=2)
    if len(multi):
      ends = multi.apply(lambda r: r.dropna().iloc[-1] / r.dropna().iloc[0], axis=1)
      notes.append(
        f"eff by size (eff_by_size.csv): eff at the largest over the smallest size of each "
        f"compression ranges {ends.min():.2f}-{ends.max():.2f} (median {ends.median():.2f}); "
        "the law assumes 1"
      )
  path = os.path.join(out_dir, "fit_summary.json")
  with open(path, "w") as f:
    json.dump(fit_summary(table, std), f, indent=2, default=_json_default)
  files.append(path)
  comp = _matched_composition(train, table, matched, notes)
  if len(comp):
    for ext, text in (("md", markdown(comp)), ("csv", comp.to_csv())):
      path = os.path.join(out_dir, f"composition.{ext}")
      with open(path, "w") as f:
        f.write(text)
      files.append(path)
  used = train[train.compression.isin(table.index)]
  held = _holdout(used, protocol, notes)
  if held is not None:
    path = os.path.join(out_dir, "holdout.csv")
    held[["compression", "N", "D", "loss", "pred", "rel_err", "held_out_N"]].to_csv(
      path, index=False
    )
    files.append(path)
  try:
    fits["kumar"] = neighbours.fit_eff_kumar(table)
  except FitError as e:
    notes.append(f"Kumar eff(bits) fit skipped: {e}")
  gm = _gmse_table(table.index, notes) if gmse else None
  if gm is not None:
    try:
      t = table.join(gm, how="inner")
      fits["capacity"] = neighbours.fit_capacity(
        t.eff, t.get("gmse_w"), t.get("gmse_a"), t.get("gmse_s")
      )
    except FitError as e:
      notes.append(f"capacity-law fit skipped: {e}")
  fits.update(_qat_fits(train, table, notes))
  _sparse_fit(used, fits, notes)
  ptq = neighbours.ptq_table(df)
  if ptq.attrs["unmatched"]:
    notes.append("PTQ entries without their base run: " + ", ".join(ptq.attrs["unmatched"]))
  if len(ptq):
    try:
      fits["ptq"] = neighbours.fit_ptq(ptq.N, ptq.D, ptq.P_post, ptq.delta)
      notes.append(
        "Kumar et al. PTQ law: "
        + ", ".join(f"{k}={v:.4g}" for k, v in fits["ptq"].params.items())
        + f" ({len(ptq)} PTQ runs)"
      )
    except FitError as e:
      notes.append(f"Kumar et al. PTQ law skipped: {e}")
  if figures:
    files += _figures(out_dir, used, table, held, gm, fits, notes, matched)
  return Report(
    table=table,
    files=files,
    notes=notes,
    composition=comp,
    holdout=held,
    fits=fits,
    orderings=ords,
    standard_orderings=std,
  )


def table_footer(table: pd.DataFrame) -> list[str]:
  """Lines printed and written below the eff table: the intervals' source, the loss noise,
  the base law and what it leaves unidentified."""
  out = []
  model = table.attrs.get("noise")
  n_draws = 0 if table.attrs.get("bootstrap") is None else len(table.attrs["bootstrap"])
  level = table.attrs.get("ci_level", 0.95)
  if table.attrs.get("uncertainty") == "seed_noise" and n_draws:
    out.append(
      f"Intervals: {level:.0%}, {n_draws} parametric-bootstrap draws with the measured loss "
      "noise (scaling/noise.py), every draw refitting the whole protocol."
    )
  elif n_draws:
    out.append(f"Intervals: {level:.0%}, {n_draws} resamples of the runs within each compression.")
  if model is not None:
    out.append(model.describe())
  base = table.attrs.get("base")
  if base is not None:
    out.append(
      "Base law: " + ", ".join(f"{k}={base[k]:.4g}" for k in ("A", "B", "E", "alpha", "beta"))
    )
  unidentified = table.attrs.get("unidentified") or {}
  if unidentified:
    out.append(
      "Not identified by the dense runs: "
      + "; ".join(f"{k} ({why})" for k, why in unidentified.items())
    )
  return out


def fit_summary(table: pd.DataFrame, standard: pd.DataFrame | None = None) -> dict:
  """The table's metadata as JSON: protocol, base law, noise, unidentified parameters and
  the standard orderings' verdicts."""
  base = table.attrs.get("base")
  model = table.attrs.get("noise")
  return {
    "protocol": table.attrs.get("protocol"),
    "law": table.attrs.get("law"),
    "n_runs": table.attrs.get("n_runs"),
    "uncertainty": table.attrs.get("uncertainty"),
    "base": None if base is None else {k: float(base[k]) for k in ("A", "B", "E", "alpha", "beta")},
    "noise": None if model is None else model.summary(),
    "unidentified": table.attrs.get("unidentified") or {},
    "standard_orderings": [] if standard is None else standard.to_dict("records"),
  }


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.bool_):
    return bool(x)
  raise TypeError(f"not JSON: {type(x).__name__}")


def _sizes_label(sizes) -> str:
  return ", ".join(f"{n:.3g}" for n in sorted(sizes))


def _fit_at_sizes(train, table, sizes, compressions, bootstrap, seed):
  """eff of `compressions` from their runs at `sizes` only, the table's base law fixed."""
  sub = train[train.N.isin(sizes) & train.compression.isin(["dense", *compressions])]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return eff_mod.fit_eff(sub, base=table.attrs["base"], bootstrap=bootstrap, seed=seed)


def matched_tables(train, table, bootstrap, seed) -> dict:
  """For every pair of the table's compressions run at different sets of sizes: a table fitted
  on their common sizes (one fit per distinct common set), as orderings.orderings(matched=)
  takes it: {frozenset((a, b)): (table, sizes label)}. Pairs without a common size are left
  to the full table, and so is every compression against dense (each run is measured against
  its own dense partner already)."""
  sizes = {c: frozenset(train.N[train.compression == c]) for c in table.index if c != "dense"}
  groups: dict[frozenset, set] = {}
  for a, b in itertools.combinations(sizes, 2):
    common = sizes[a] & sizes[b]
    if sizes[a] != sizes[b] and common:
      groups.setdefault(common, set()).update((a, b))
  out = {}
  for common, comps in groups.items():
    t = _fit_at_sizes(train, table, common, comps, bootstrap, seed)
    label = _sizes_label(common)
    for a, b in itertools.combinations(sorted(comps), 2):
      if sizes[a] != sizes[b] and sizes[a] & sizes[b] == common and {a, b} <= set(t.index):
        out[frozenset((a, b))] = (t, label)
  return out


def _matched_composition(train, table, matched, notes) -> pd.DataFrame:
  """composition_test, each composite compared at the sizes it was run at: where its parts
  were also run at other sizes (eff drifts with N at CPU scale), the parts' effs come from the
  matched fit at the composite's sizes (column `sizes`: the N the row compares at)."""
  comp = eff_mod.composition_test(table)
  if not len(comp):
    return comp
  comp["sizes"] = "all"
  for c, row in comp.iterrows():
    key = frozenset((c, row["quant"]))
    if key in matched and frozenset((c, row["sparse"])) in matched:
      t, label = matched[key]
      m = eff_mod.composition_test(t)
      if c in m.index:
        comp.loc[c, m.columns] = m.loc[c]
        comp.loc[c, "sizes"] = label
        notes.append(f"composition of {c}: compared at its own sizes (N = {label})")
  return comp


def _sparse_fit(runs, fits, notes) -> None:
  """Frantar et al. 2023 sparse law on the dense and unstructured-sparse runs (N = non-zero
  parameters / 1e6, D = tokens / 1e9, the notebook's normalisation style)."""
  st = data_mod.spec_table(runs.compression.unique())
  ok = st.index[(st.kind == "dense") | ((st.kind == "sparse") & st.nm.isna())]
  sub = runs[runs.compression.isin(ok)]
  S = st.loc[sub.compression, "sparsity"].to_numpy(float)
  if len(np.unique(S)) < 2:
    return
  try:
    fits["sparse"] = neighbours.fit_sparse(
      S, sub.N.to_numpy() * (1 - S) / 1e6, sub.D.to_numpy() / 1e9, sub.loss.to_numpy()
    )
  except FitError as e:
    notes.append(f"sparse law (Frantar et al. 2023) skipped: {e}")


def _qat_fits(runs, table, notes) -> dict:
  """Chen et al. QAT law for each quantization recipe run at several group sizes. The recipe is
  the label without its -gG parts, per-layer rules included, so FC2-at-8-bit runs
  (`w4a4-g32[*/mlp/out=w4a8-g32]`) form their own family `w4a4[*/mlp/out=w4a8]`."""
  out = {}
  st = data_mod.spec_table(runs.compression.unique())
  quant = st.index[st.quant_term.notna() & st.sparse_term.isna()]
  fam = pd.Series(quant, index=quant).str.replace(r"-g\d+", "", regex=True)
  for family, members in fam.groupby(fam).groups.items():
    if len(members) < 2:  # one group setting: gamma_G is not identifiable
      continue
    sub = runs[runs.compression.isin(members)]
    try:
      out[f"qat_{family}"] = neighbours.fit_qat(sub, table.attrs["base"], who=f"fit_qat({family})")
    except FitError as e:
      notes.append(f"QAT law for {family} skipped: {e}")
  return out


def _figures(out_dir, runs, table, held, gm, fits, notes, matched=None) -> list[str]:
  files = []

  def emit(name, make):
    try:
      files.extend(plots.save(make(), os.path.join(out_dir, name)))
    except (FitError, KeyError, ValueError) as e:
      notes.append(f"figure {name} skipped: {e}")

  emit("loss_vs_N", lambda: plots.loss_vs_N(runs, table))
  emit("collapse", lambda: plots.collapse(runs, table))
  kinds = set(table.kind)
  if kinds & {"weight", "weight+act"}:
    emit("eff_vs_bits", lambda: plots.eff_vs_bits(table, fits.get("kumar"), matched))
  if "sparse" in kinds:
    emit("eff_vs_sparsity", lambda: plots.eff_vs_sparsity(table, fits.get("sparse")))
  if gm is not None:
    emit("eff_vs_gmse", lambda: plots.eff_vs_gmse(table, gm, fits.get("capacity")))
  if held is not None:

    def pred_fig():
      rest = runs[~runs.index.isin(held.index)].copy()
      rest["pred"] = eff_mod.predict_loss(table, rest.N, rest.D, rest.compression.to_numpy())
      rest["held_out"] = False
      h = held.assign(held_out=True)
      return plots.pred_vs_measured(pd.concat([rest, h]))

    emit("pred_vs_measured", pred_fig)
  for name, fit in fits.items():
    if name.startswith("qat_"):
      stem = re.sub(r"[^A-Za-z0-9.+=-]+", "_", name[4:]).strip("_")  # rules hold '*' and '/'
      emit(f"qat_delta_{stem}", lambda fit=fit: plots.qat_delta(fit))
  emit("eff_per_bit", lambda: plots.eff_per_bit(table))
  return files
