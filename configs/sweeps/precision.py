"""Kumar et al. 2024 (arXiv 2411.04330): N_eff = N (1 - e^(-Pw/gw)) (1 - e^(-Pa/ga)) (1 - ...).

Design (PAPERS.md §5, §10.5): the marginal sweeps over bits, at every (N, D): weight-only
`w{P}a16` (integer weights per output channel) and activation-only `w16a{P}-tensor` (integer
activations with one absmax scale per tensor, as Kumar et al.; their per-tensor activations are
why 4 bits looks bad there), P in 3 4 5 6 7 8 10 12 ("8 precisions over 3-12 bits"), plus the
unquantized baseline. Quantizer: absmax round-to-nearest, STE (the spec defaults). Runs with
Pa <= 3 diverged for them and were excluded from their fits; they are kept here (a diverged run
still leaves a log entry, status "diverged"). The KV-cache marginal (P_kv) is not in this
sweep; it maps to rules on the attention matmuls, e.g. compression_rules=
"*/attn/scores=w4a16-tensor; */attn/values=w4a16-tensor" (keys and values are their rhs).

paper (340 runs): 30m 50m 100m 200m (the ladder's nearest to their 30/60/110/220M
non-embedding) x D = 1.5, 3, 6, 13, 26B tokens x (1 + 8 + 8). Context 1024, batch 256
(262,144 tokens/step), Adam (0.9, 0.95) eps 1e-15, wd 0.1, 10% warmup, cosine, peak LR 6e-4
[V] at every size (their depth-muP scaling for the larger models is not reproduced), bfloat16;
C4 via data.source=tfds (they train on Dolma v1.7). total_steps = ceil(D / 262,144): 1.5B =
5,723 steps, 26B = 99,183 steps.

mini (102 runs): 0.1m 0.2m 0.5m x D = 250K, 500K tokens (123 and 245 steps of 16 x 128 =
2,048 tokens) x 17. CPU time (common.CPU_TOKENS_PER_S: ~20k / 15k / 10k tokens/s, ~10 s per
run): each size trains 17 x 0.754M = 12.8M tokens, 641 s + 854 s + 1,281 s, plus 102 x 10 s:
~63 minutes, up to 2x that on a busy box (`launch.sweep --dry_run` prints the estimate).

quick (17 runs, ~6 minutes): the mini runs at 0.1m and D = 250K.
"""

from __future__ import annotations

from configs.sweeps import common

BITS = (3, 4, 5, 6, 7, 8, 10, 12)
PAPER_SIZES = ("30m", "50m", "100m", "200m")
PAPER_D = (1.5e9, 3e9, 6e9, 13e9, 26e9)
MINI_SIZES = ("0.1m", "0.2m", "0.5m")
MINI_D = (250e3, 500e3)


def compressions() -> tuple[str, ...]:
  weights = tuple(f"w{p}a16" for p in BITS)
  activations = tuple(f"w16a{p}-tensor" for p in BITS)
  return ("dense", *weights, *activations)


def shared(variant: str) -> dict:
  return common.shared_fields(
    variant, batch_size=256, seq_len=1024, **{"optimizer.lr": 6e-4, "optimizer.eps": 1e-15}
  )


def _all_runs(variant: str) -> list[common.Run]:
  paper = variant == "paper"
  sizes, budgets = (PAPER_SIZES, PAPER_D) if paper else (MINI_SIZES, MINI_D)
  base = shared(variant)
  out = []
  for size in sizes:
    for tokens in budgets:
      steps = common.steps_for_tokens(tokens, base["batch_size"], base["seq_len"])
      cadence = (
        common.cadence(steps, 10, 1000, 100) if paper else common.cadence(steps, 2, steps // 2, 25)
      )
      for comp in compressions():
        out.append(
          common.Run(
            f"{size}_D{common.fmt_tokens(tokens)}_{common.spec_slug(comp)}",
            {**base, "model.size": size, "compression": comp, "total_steps": steps, **cadence},
          )
        )
  return out


runs = common.make_runs(
  _all_runs, quick=lambda r: r.name.startswith(f"{MINI_SIZES[0]}_D{common.fmt_tokens(MINI_D[0])}_")
)
get_config = common.make_get_config(_all_runs, shared)
