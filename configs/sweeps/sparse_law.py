"""Frantar et al. 2023 (arXiv 2309.08520), the sparse law
L(S, N, D) = (a_S (1 - S)^b_S + c_S) N^-b_N + (a_D / D)^b_D + c, N = non-zero parameters.

Design (PAPERS.md §2, §10.2): sparsity S in 0, 50, 75, 87.5% x dense-shape sizes x training
durations, the T5 grid of their `t5-data.csv` (4 S x 4 sizes x 3 durations = 48 runs, steps in
the ratio 1 : 2 : 4) on a decoder-only LM. Pruning: gradual magnitude pruning with a cubic
schedule from 25% to 75% of training, uniform per layer (sparsity.py defaults, as jaxpruner's
bigsparse config); masks every 100 steps (paper) or every 10 (mini, `-every10`: a 125-step run
would otherwise get one update). Their T5 sizes are scaled so each sparse size has a dense
counterpart with the same non-zero count; here sizes are the ladder's dense shapes and the fit
takes N = model.n_nonzero, which the log entry records (n_params stays the dense shape).

paper (48 runs): 30m 50m 100m 200m (QuEST / Panferov et al. ladder, per-size peak LR 1.2e-3 /
1.2e-3 / 6e-4 / 3e-4) x 25k, 50k, 100k steps (a quarter of their T5 250k / 500k / 1M) of batch
128 x 512 (their T5 batch and input length; 65,536 tokens/step: 1.6B, 3.3B, 6.6B tokens), AdamW
(0.9, 0.95), wd 0.1, clip 1, 10% warmup, cosine, bfloat16; C4 via data.source=tfds (as their
T5 runs). The 2:4 / 4:8 comparison and pruning-from-dense runs are not in this sweep.

mini (36 runs): 0.1m 0.2m 0.5m x 125, 250, 500 steps of 16 x 128 = 2,048 tokens (0.26M, 0.51M,
1.02M tokens) x 4 S. CPU time (common.CPU_TOKENS_PER_S: ~20k / 15k / 10k tokens/s, ~10 s per
run): each size trains 4 x 1.79M = 7.2M tokens, 358 s + 478 s + 717 s, plus 36 x 10 s: ~32
minutes, up to 2x that on a busy box (`launch.sweep --dry_run` prints the estimate).

quick (4 runs, ~1.5 minutes): the mini runs at 0.1m and 125 steps.
"""

from __future__ import annotations

from configs.sweeps import common

SPARSITIES = ("dense", "s50", "s75", "s87.5")  # S = 0 is the dense run
PAPER_SIZES = ("30m", "50m", "100m", "200m")
PAPER_STEPS = (25_000, 50_000, 100_000)
PAPER_LR = {"30m": 1.2e-3, "50m": 1.2e-3, "100m": 6e-4, "200m": 3e-4}  # Panferov et al. [V]
MINI_SIZES = ("0.1m", "0.2m", "0.5m")
MINI_STEPS = (125, 250, 500)


def shared(variant: str) -> dict:
  return common.shared_fields(variant, batch_size=128, seq_len=512)


def _all_runs(variant: str) -> list[common.Run]:
  paper = variant == "paper"
  sizes, durations = (PAPER_SIZES, PAPER_STEPS) if paper else (MINI_SIZES, MINI_STEPS)
  base = shared(variant)
  out = []
  for size in sizes:
    for steps in durations:
      if paper:
        per_cell = {"optimizer.lr": PAPER_LR[size], **common.cadence(steps, 10, 1000, 100)}
      else:
        per_cell = common.cadence(steps, 2, steps // 2, 25)
      for comp in SPARSITIES:
        spec = comp if paper or comp == "dense" else f"{comp}-every10"
        out.append(
          common.Run(
            f"{size}_T{steps}_{common.spec_slug(spec)}",
            {**base, "model.size": size, "compression": spec, "total_steps": steps, **per_cell},
          )
        )
  return out


runs = common.make_runs(
  _all_runs, quick=lambda r: r.name.startswith(f"{MINI_SIZES[0]}_T{MINI_STEPS[0]}_")
)
get_config = common.make_get_config(_all_runs, shared)
