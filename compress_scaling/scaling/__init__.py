"""Scaling-law fitting for compressed pretraining (colab-facing: no training/TPU imports).

    fit_chinchilla(N, D, L, **opts) -> ChinchillaFit   A, B, E, alpha, beta (attrs and keys)
    fit_eff(runs, protocol='paired'|'two_stage'|'joint', ...) -> DataFrame of eff(C) with
        intervals (parametric bootstrap with the seed noise, scaling/noise.py)
    orderings.orderings(table), standard_orderings(table): P(eff(a) > eff(b)), paired draws
    composition_test(table), leave_one_size_out(runs)
    fit_sparse, fit_qat, fit_ptq (+ ptq_table), fit_eff_kumar, fit_capacity,
    gaussian_mse_for_spec; ptq_predictor (random forest + Kumar law, held-out sizes)
    laws.*   the laws and published constants;  plots.*  figures;  report.build_report

Fits follow Besiroglu et al. 2024 (Huber on log-loss, log-space parameters, L-BFGS from
Epoch's 4500-start grid) and run in float64 on the CPU inside a thread-local context.
"""

from compress_scaling.scaling import laws, noise, orderings, ptq_predictor
from compress_scaling.scaling.data import FitError, check_runs, load_runs
from compress_scaling.scaling.eff import (
  composition_test,
  fit_eff,
  leave_one_size_out,
  predict_loss,
)
from compress_scaling.scaling.fit import (
  EPOCH_GRID,
  ChinchillaFit,
  LawFit,
  fit_chinchilla,
)
from compress_scaling.scaling.neighbours import (
  QatFit,
  SparseFit,
  fit_capacity,
  fit_eff_kumar,
  fit_ptq,
  fit_qat,
  fit_sparse,
  gaussian_mse_for_spec,
  ptq_table,
)
from compress_scaling.scaling.specs import bits_per_param, parse_spec

standard_orderings = orderings.standard

__all__ = [
  "EPOCH_GRID",
  "ChinchillaFit",
  "FitError",
  "LawFit",
  "QatFit",
  "SparseFit",
  "bits_per_param",
  "check_runs",
  "composition_test",
  "fit_capacity",
  "fit_chinchilla",
  "fit_eff",
  "fit_eff_kumar",
  "fit_ptq",
  "fit_qat",
  "fit_sparse",
  "gaussian_mse_for_spec",
  "laws",
  "leave_one_size_out",
  "load_runs",
  "noise",
  "orderings",
  "parse_spec",
  "predict_loss",
  "ptq_predictor",
  "ptq_table",
  "standard_orderings",
]
