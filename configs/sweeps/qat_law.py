"""Chen et al. 2025 (arXiv 2505.14302), the QAT law delta_p(N, D, G) = k D^gD (log2 G)^gG / N^gN.

Design (PAPERS.md §3, §10.3): INT4 QAT at W4A4, W4A16 and W16A4 x group size G x N x D, the
BF16 (here: unquantized) baseline per (N, D), and the FC2 ablation: the MLP output projection's
input (block_*/mlp/out activations) at 8 bits while the rest stays 4-bit, for W4A4 and W16A4
(Table 1's two "FC2 input 8-bit" rows), as `compression_rules="*/mlp/out=w4a8-g32"`
(compression.py). Labels: `w4a4-g32` = 4-bit weights and activations in groups of 32 along the
contraction axis; `w4a4` (no -g) = per output channel (weights) / per token (activations), the
paper's coarsest G. Quantizer: symmetric INT4, absmax round-to-nearest, STE (the spec
defaults). Chen et al. use learnable activation clipping (LAC) for G >= 256; this sweep uses
absmax there too (no LAC in quant/). The log entry's compression label is the global spec;
an FC2 run is told apart by `compression.rules` (its run name ends in `_fc2a8`).

paper (416 runs): the Chen ladder 74m 145m 297m 595m (GQA; sizes.py, PAPERS.md §3 [U]) x
D = 10, 20, 50, 100B tokens x {dense, 3 precisions x G in 32 64 128 256 per-channel, FC2
variants of W4A4 and W16A4 x 5 G}: 16 x (1 + 15 + 10). Context 2048 [U], batch 512 sequences
(1,048,576 tokens/step; ours, the paper follows OLMo2's recipe), per-size peak LR 1.5e-3 / 1e-3 /
8e-4 / 6e-4 [U], AdamW (0.9, 0.95), wd 0.1, clip 1, 10% warmup, cosine, bfloat16; C4 via
data.source=tfds (they train on OLMo2-Mix-1124). total_steps = ceil(D / 1,048,576): 10B = 9,537
steps, 100B = 95,368 steps.

mini (104 runs): sizes 0.1m 0.2m (d_model 64, d_ff 192: the smallest CPU sizes whose
contraction dims are all divisible by 32; 0.5m's d_model 112 is not) x D = 250K, 500K tokens
(1.2 - 4.7 tokens/param; Chen's D/N spans 17 - 1350) x {dense, 3 precisions x G in 4 8 16 32
per-channel, FC2 x 5 G}: 4 x 26.
G is scaled with the width: Chen's G/d_model spans 1/24 .. 1/3 (32..256 of 768), ours 1/16 ..
1/2 (4..32 of 64). Batch 16 x seq 128 = 2,048 tokens/step: 250K = 123 steps, 500K = 245 steps.
CPU time (common.CPU_TOKENS_PER_S: ~20k tokens/s at 0.1m, ~15k at 0.2m, ~10 s per run): each
size trains 26 x (0.25M + 0.5M) = 19.6M tokens, 980 s at 0.1m + 1,306 s at 0.2m, plus 104 x
10 s: ~55 minutes, up to 2x that on a busy box (`launch.sweep --dry_run` prints the estimate).

quick (26 runs, ~10 minutes): the mini runs at 0.1m and D = 250K.
"""

from __future__ import annotations

from configs.sweeps import common

PRECISIONS = ((4, 4), (4, 16), (16, 4))  # (weight bits, activation bits); 16 = unquantized
FC2_PRECISIONS = ((4, 4), (16, 4))  # Table 1's "FC2 input 8-bit" rows
FC2_RULE = "*/mlp/out"

PAPER_SIZES = ("74m", "145m", "297m", "595m")
PAPER_D = (10e9, 20e9, 50e9, 100e9)
PAPER_GROUPS = (32, 64, 128, 256, None)  # None = per channel / per token
PAPER_LR = {"74m": 1.5e-3, "145m": 1e-3, "297m": 8e-4, "595m": 6e-4}  # PAPERS.md §3 [U]
MINI_SIZES = ("0.1m", "0.2m")
MINI_D = (250e3, 500e3)
MINI_GROUPS = (4, 8, 16, 32, None)


def spec(w_bits: int, a_bits: int, group: int | None) -> str:
  """Canonical spec: spec(4, 4, 32) = 'w4a4-g32', spec(16, 4, None) = 'w16a4'."""
  return f"w{w_bits}a{a_bits}" + (f"-g{group}" if group else "")


def shared(variant: str) -> dict:
  return common.shared_fields(variant, batch_size=512, seq_len=2048)


def _all_runs(variant: str) -> list[common.Run]:
  paper = variant == "paper"
  sizes, budgets, groups = (
    (PAPER_SIZES, PAPER_D, PAPER_GROUPS) if paper else (MINI_SIZES, MINI_D, MINI_GROUPS)
  )
  base = shared(variant)
  out = []
  for size in sizes:
    for tokens in budgets:
      steps = common.steps_for_tokens(tokens, base["batch_size"], base["seq_len"])
      if paper:
        per_cell = {"optimizer.lr": PAPER_LR[size], **common.cadence(steps, 10, 1000, 100)}
      else:
        per_cell = common.cadence(steps, 2, steps // 2, 25)
      cell = {**base, "model.size": size, "total_steps": steps, **per_cell}
      prefix = f"{size}_D{common.fmt_tokens(tokens)}"
      out.append(common.Run(f"{prefix}_dense", {**cell, "compression": "dense"}))
      for w, a in PRECISIONS:
        for g in groups:
          out.append(
            common.Run(f"{prefix}_{spec(w, a, g)}", {**cell, "compression": spec(w, a, g)})
          )
      for w, a in FC2_PRECISIONS:
        for g in groups:
          out.append(
            common.Run(
              f"{prefix}_{spec(w, a, g)}_fc2a8",
              {
                **cell,
                "compression": spec(w, a, g),
                "compression_rules": f"{FC2_RULE}={spec(w, 8, g)}",
              },
            )
          )
  return out


runs = common.make_runs(
  _all_runs, quick=lambda r: r.name.startswith(f"{MINI_SIZES[0]}_D{common.fmt_tokens(MINI_D[0])}_")
)
get_config = common.make_get_config(_all_runs, shared)
