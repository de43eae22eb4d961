"""Frantar et al. 2025 (arXiv 2502.16440), the unified law L(N, D, C) = A(N eff(C))^-a + B D^-b + E.

Design (PAPERS.md §1, §10.1): 17 compressions C x sizes N x tokens per parameter D/N.

    dense; weight-only w8a16 w4a16 w3a16 w2a16 w1a16; weights+activations w8a8 w4a4 w3a3 w2a2
    w1a1; unstructured sparsity s50 s75 s87.5; 2:4; combinations w4a16+s50, w4a16+2:4

Quantizer: `-gmse` on every quantized spec. QuEST (arXiv 2502.05003 §3.1) says the 2025 report
RMS-normalises x to N(0, 1) and clips at the MSE-optimal scale for a Gaussian, with an STE
(PAPERS.md §1, §6: "Gaussian-MSE"); `-gmse` is that scale (a* x RMS over the contraction axis,
centred grid, quant/grammar.py). Weights per output channel, activations per token (the
DESIGN.md defaults; the report's granularity is unverified [U]). No trust mask, no Hadamard:
those are QuEST's additions, not the 2025 report's. Sparsity: cubic gradual magnitude pruning
25% -> 75% of training, uniform per layer (sparsity.py defaults, Frantar et al. 2023). The C
label in the law is the spec string, e.g. `w4a16-gmse+2:4`.

paper (204 runs): the QuEST / Panferov et al. ladder 30m 50m 100m 200m (PAPERS.md §6) at 50,
100 and 200 tokens/param, context 512, batch 512 sequences (262,144 tokens/step; QuEST's
64 x 8 accumulation [U]), per-size peak LR 1.2e-3 / 1.2e-3 / 6e-4 / 3e-4 (Panferov et al.
[V]), AdamW (0.9, 0.95), wd 0.1, clip 1, 10% warmup, cosine; bfloat16 activations; C4 via
data.source=tfds. Pass the prepared dataset and, for the papers' token counts, a
SentencePiece tokenizer at launch: `--config.data.data_dir=gs://... --config.data.tokenizer=
gs://.../spm.model` (with the default byte tokenizer a "token" is a byte). total_steps =
ceil(tokens_per_param x N / 262,144), e.g. 30m (30.48M) x 50 = 1.52B tokens = 5,815 steps;
200m (203.2M) x 200 = 40.6B tokens = 155,021 steps.

mini (102 runs): the same 17 C at the CPU sizes 0.1m 0.2m 0.5m and
1 and 2 tokens/param, batch 16 x seq 128 = 2,048 tokens/step, peak LR 3e-3 (base.py), sparse
masks updated every 10 steps (`-every10`: the default 100 would leave a 100-step run one
update). Steps = ceil(tpp x N / 2,048):

    size   N        1 tok/param          2 tok/param
    0.1m   106,816   53 steps (109k tok)   105 steps (215k tok)
    0.2m   213,568  105 steps (215k tok)   209 steps (428k tok)
    0.5m   473,872  232 steps (475k tok)   463 steps (948k tok)

Per C that is 2.39M tokens. CPU time (common.CPU_TOKENS_PER_S, measured on the shared 2-core
box: ~20k / 15k / 10k tokens/s for 0.1m / 0.2m / 0.5m, plus ~10 s per run for start-up,
compile, evals and checkpoints): 0.1m 0.32M/20k = 16 s, 0.2m 0.64M/15k = 43 s, 0.5m 1.42M/10k
= 142 s, plus 6 x 10 s, so ~260 s per C and ~75 minutes for all 17 C; up to 2x that when the
box is busy (`python -m launch.sweep configs/sweeps/unified.py:mini --out DIR --dry_run` prints
the estimate). A ~10-minute sweep of this whole design does not exist on 2 cores: 102 runs
cost ~17 minutes of fixed per-run cost alone, and 0.5m at 2 tokens/param is ~1.5 minutes a
run.

quick (17 runs, ~4 minutes, measured): the mini runs at 0.1m and 1 token/param, one per C: a
pipeline check that trains every compression once. Its runs are mini runs (same names and
overrides).
"""

from __future__ import annotations

from configs.sweeps import common

# Canonical spec strings (str(compression.parse(s)) == s; tests/test_sweeps.py checks).
QUANT = ("w8a16", "w4a16", "w3a16", "w2a16", "w1a16", "w8a8", "w4a4", "w3a3", "w2a2", "w1a1")


def compressions(sparse_suffix: str = "") -> tuple[str, ...]:
  """The 17 C: dense, -gmse quantization, sparsity (with e.g. '-every10'), combinations."""
  quant = tuple(f"{q}-gmse" for q in QUANT)
  sparse = tuple(f"{s}{sparse_suffix}" for s in ("s50", "s75", "s87.5", "2:4"))
  combos = tuple(f"w4a16-gmse+{s}{sparse_suffix}" for s in ("s50", "2:4"))
  return ("dense", *quant, *sparse, *combos)


PAPER_SIZES = ("30m", "50m", "100m", "200m")
PAPER_TPP = (50, 100, 200)
PAPER_LR = {"30m": 1.2e-3, "50m": 1.2e-3, "100m": 6e-4, "200m": 3e-4}  # Panferov et al. [V]
MINI_SIZES = ("0.1m", "0.2m", "0.5m")
MINI_TPP = (1, 2)


def shared(variant: str) -> dict:
  return common.shared_fields(variant, batch_size=512, seq_len=512)


def _all_runs(variant: str) -> list[common.Run]:
  paper = variant == "paper"
  sizes, tpps = (PAPER_SIZES, PAPER_TPP) if paper else (MINI_SIZES, MINI_TPP)
  comps = compressions("" if paper else "-every10")
  base = shared(variant)
  out = []
  for size in sizes:
    for tpp in tpps:
      steps = common.steps_for_tokens(
        tpp * common.n_params(size), base["batch_size"], base["seq_len"]
      )
      if paper:
        per_size = {"optimizer.lr": PAPER_LR[size], **common.cadence(steps, 10, 1000, 100)}
      else:
        per_size = common.cadence(steps, 2, steps // 2, 25)
      for comp in comps:
        out.append(
          common.Run(
            f"{size}_tpp{tpp}_{common.spec_slug(comp)}",
            {
              **base,
              "model.size": size,
              "compression": comp,
              "total_steps": steps,
              **per_size,
            },
          )
        )
  return out


runs = common.make_runs(
  _all_runs,
  quick=lambda r: r.name.startswith(f"{MINI_SIZES[0]}_tpp{MINI_TPP[0]}_"),
)
get_config = common.make_get_config(_all_runs, shared)
