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

mini (41 runs; README's main job, `--jobs 2 --fit`): the 17 C at the CPU sizes 0.1m and 0.2m,
both trained on the same D = 215K tokens (105 steps), plus a dense 3 x 3 grid that pins down
the base law: 0.1m, 0.2m, 0.5m x D = 109K, 215K, 428K tokens (53, 105, 209 steps of 16 x 128 =
2,048 tokens). At this scale the loss is still mostly data-limited (tokens/param 0.2-4): the
N term moves the loss by only ~0.03 nats per doubling of N at 215K tokens, so eff(C) is read
where it is best conditioned, at equal D for both sizes with dense runs at the same points
(two-stage fit: the base law's residuals there are the dense runs' own). Peak LR 3e-3
(base.py); sparse masks updated every 10 steps (`-every10`: the default 100 would leave a
105-step run one update). Mini runs are named by D (`0.2m_D215K_w4a4-gmse`), paper runs by
tokens per parameter.

9.1M training tokens in all: the 34 runs at D = 215K 7.3M, the 7 other dense cells 1.8M.
Measured on the quiet 2-core box: the sweep with `--jobs 2` took 584 s and the fit 28 s (two
runs at a time each ran at ~20k / 11k / 11k tokens/s for 0.1m / 0.2m / 0.5m, ~27 s a run);
`--dry_run` estimates ~16 minutes from the conservative busy-box model in common.py. README
lists which eff orderings this reproduces, as measured. A denser design (all 17 C at three
sizes x two budgets: 102 runs, ~75 minutes) does not fit the 15-minute budget of the main
job.

quick (17 runs, ~3 minutes, measured): the mini runs at 0.1m, one per C: a pipeline check that
trains every compression once (too small to fit: one size). Its runs are mini runs (same names
and overrides).
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
MINI_SIZES = ("0.1m", "0.2m")  # every C, at MINI_C_STEPS
MINI_DENSE_SIZES = ("0.1m", "0.2m", "0.5m")  # dense, at every MINI_STEPS
MINI_STEPS = (53, 105, 209)  # x 2,048 tokens: D = 109K, 215K, 428K
MINI_C_STEPS = 105


def shared(variant: str) -> dict:
  return common.shared_fields(variant, batch_size=512, seq_len=512)


def _paper_runs(base: dict) -> list[common.Run]:
  out = []
  for size in PAPER_SIZES:
    for tpp in PAPER_TPP:
      steps = common.steps_for_tokens(
        tpp * common.n_params(size), base["batch_size"], base["seq_len"]
      )
      per_size = {"optimizer.lr": PAPER_LR[size], **common.cadence(steps, 10, 1000, 100)}
      for comp in compressions():
        overrides = {**base, "model.size": size, "compression": comp, "total_steps": steps}
        out.append(
          common.Run(f"{size}_tpp{tpp}_{common.spec_slug(comp)}", {**overrides, **per_size})
        )
  return out


def _mini_runs(base: dict) -> list[common.Run]:
  cells = [(size, MINI_C_STEPS, compressions("-every10")) for size in MINI_SIZES]
  cells += [
    (size, steps, ("dense",))
    for size in MINI_DENSE_SIZES
    for steps in MINI_STEPS
    if not (size in MINI_SIZES and steps == MINI_C_STEPS)
  ]
  out = []
  for size, steps, comps in cells:
    tokens = steps * base["batch_size"] * base["seq_len"]
    for comp in comps:
      out.append(
        common.Run(
          f"{size}_D{tokens / 1e3:.0f}K_{common.spec_slug(comp)}",
          {
            **base,
            "model.size": size,
            "compression": comp,
            "total_steps": steps,
            **common.cadence(steps, 2, steps // 2, 25),
          },
        )
      )
  return out


def _all_runs(variant: str) -> list[common.Run]:
  base = shared(variant)
  return _paper_runs(base) if variant == "paper" else _mini_runs(base)


runs = common.make_runs(
  _all_runs,
  quick=lambda r: r.name.startswith(f"{MINI_SIZES[0]}_D215K_"),
)
get_config = common.make_get_config(_all_runs, shared)
