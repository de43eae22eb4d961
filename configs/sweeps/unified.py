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

mini (README's main job, `--jobs 2 --fit`; MINI_* below): designed from CPU pilots so that
the fit identifies the base law and resolves the paper's orderings (scaling/noise.py):
  - Batch 4 x 128 tokens: at this scale 2,048-token batches are far past the critical batch.
    Pilot, 0.06m dense at 225K tokens: 2.34 nats with 16 x 128 (110 steps), 2.11 with 4 x 128
    (440 steps), 2.02 with 2 x 128, at the same tokens/s; the models get past the early
    plateau, where loss falls with steps faster than any power law in D, in a CPU budget.
  - C cells: tokens scale with N (D = 2 N) at 0.03m, 0.06m, 0.1m, one width family (2 blocks,
    head dim 16); the 8 KEY compressions and dense at all three with seeds 0 and 1; the other
    8 compressions at 0.1m, seed 0.
  - Seeds are common random numbers: every compression of a cell trains on the same init and
    data order per seed, so loss differences between compressions are paired. Pilot (0.1m,
    105 steps of 16 x 128, 4 seeds): dense seeds spread by 0.0095 nats, w4a4 - w4a16 = 0.020
    by 0.004.
  - Dense grid for the base law: 0.03m and 0.06m at D = N, 2 N, 4 N, 0.1m at N, 2 N, 0.17m and
    0.32m at N / 2, N (9.6x in N, 0.5-4 tokens per parameter; the longest budgets, 835-1235
    steps, were cut to fit the main job in 15 minutes).
  - Runs evaluate and checkpoint only at the end (they take seconds; a killed sweep reruns the
    interrupted ones), seeds of one config train in one process (common.replicas), and the
    runs share JAX's compilation cache (launch/sweep.py).
The loss is still far above the irreducible loss E, which the fit reports unidentified when
it cannot pin it. Peak LR 3e-3 (base.py; 1.5e-3 was worse and 6e-3 noisier in the pilot);
sparse masks updated every 10 steps (`-every10`). Mini runs are named by D and seed
(`0.1m_D214K_w4a4-gmse_s1`), paper runs by tokens per parameter.

quick (18 runs): seed 0 of the smallest C cell (dense and the 8 KEY compressions at 0.03m)
and of the 0.1m cell of the others (dense and the other 8): every compression trained once, a
pipeline check too small to fit. Its runs are mini runs (same names and overrides), so a
later mini sweep into the same directory skips them.
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
KEY = ("w4a16", "w2a16", "w1a16", "w4a4", "w2a2", "s50", "s75", "2:4")  # at every MINI_SIZES
MINI_SIZES = ("0.03m", "0.06m", "0.1m")  # every key C and dense, tokens = MINI_TPP x N
MINI_OTHER_SIZES = ("0.1m",)  # the other compressions
MINI_TPP = 2
MINI_SEEDS = (0, 1)  # at the key cells: replicates for the noise model, paired across C
MINI_DENSE_TPP = {
  "0.03m": (1, 2, 4),
  "0.06m": (1, 2, 4),
  "0.1m": (1, 2),
  "0.17m": (0.5, 1),
  "0.32m": (0.5, 1),
}
MINI_BATCH = {"batch_size": 4, "seq_len": 128}


def shared(variant: str) -> dict:
  if variant != "paper":
    return dict(MINI_BATCH)
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


def is_key(spec: str) -> bool:
  """Whether a mini compression is one of the KEY ones (modifiers such as -gmse ignored; the
  combinations w4a16+s50 and w4a16+2:4 are not)."""
  return "+".join(t.split("-")[0] for t in spec.split("+")) in KEY


def _mini_runs(base: dict) -> list[common.Run]:
  comps = compressions("-every10")
  cells = []  # (size, tokens per param, compressions, seeds)
  for size in MINI_SIZES:
    cells.append((size, MINI_TPP, [c for c in comps if c == "dense" or is_key(c)], MINI_SEEDS))
  for size in MINI_OTHER_SIZES:
    cells.append((size, MINI_TPP, [c for c in comps if c != "dense" and not is_key(c)], (0,)))
  for size, tpps in MINI_DENSE_TPP.items():
    cells += [(size, tpp, ["dense"], (0,)) for tpp in tpps if (size, tpp) != (size, MINI_TPP)]
  out = []
  for size, tpp, comps_, seeds in cells:
    steps = common.steps_for_tokens(
      tpp * common.n_params(size), base["batch_size"], base["seq_len"]
    )
    tokens = steps * base["batch_size"] * base["seq_len"]
    for comp in comps_:
      overrides = {
        **base,
        "model.size": size,
        "compression": comp,
        "total_steps": steps,
        **common.cadence(steps, 1, steps, 25),
      }
      name = f"{size}_D{tokens / 1e3:.0f}K_{common.spec_slug(comp)}"
      out += common.replicas(name, overrides, seeds)
  return out


def _all_runs(variant: str) -> list[common.Run]:
  base = shared(variant)
  return _paper_runs(base) if variant == "paper" else _mini_runs(base)


def _is_quick(run: common.Run) -> bool:
  """The C cell of the smallest size, seed 0: every compression once."""
  o = run.overrides
  size = o["model.size"]
  steps = common.steps_for_tokens(MINI_TPP * common.n_params(size), *MINI_BATCH.values())
  if o["total_steps"] != steps or o.get("seed") != 0:
    return False
  return size == MINI_SIZES[0] or (size in MINI_OTHER_SIZES and not is_key(o["compression"]))


runs = common.make_runs(_all_runs, quick=_is_quick)
get_config = common.make_get_config(_all_runs, shared)
