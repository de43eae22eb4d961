"""Post-training quantization (Xu et al. 2024, arXiv 2410.12119; Kumar et al. 2024 §4).

Design: a dense ladder at three tokens-per-parameter ratios; every run's final checkpoint is
then quantized post hoc to the PTQ formats below with RTN and GPTQ, each (run, format,
method) leaving a `ptq` log entry. The qualitative findings to reproduce: ΔNLL falls with the
bits; GPTQ beats RTN at 3 bits; at a fixed size, models trained on more tokens per parameter
lose more (Kumar et al. Fig. 2: δ_PTQ grows with D/N).

    python -m launch.sweep configs/sweeps/ptq.py:mini --out runs/ptq
    python -m compress_scaling.ptq --workdir 'runs/ptq/*' --formats w8a16,w4a16,w3a16,w2a16,\
w4a16-g16,w3a16-g16 --methods rtn,gptq

(`ptq.FORMATS`; the ptq CLI skips the `-ptq` output folders it finds in the glob.) Then
colabs/ptq.ipynb fits Kumar's δ_PTQ law and the random-forest predictor over held-out sizes.

paper (12 runs): 30m 50m 100m 200m (Kumar et al.'s 30/60/110/220M non-embedding are the
nearest) x 20, 80, 320 tokens/param (their D runs from 1.5B to 26B tokens, i.e. ~7 to ~870
tokens/param), context 1024 x batch 256 (262,144 tokens/step), peak LR 6e-4 [V], AdamW (0.9,
0.95), wd 0.1, 10% warmup, cosine, bfloat16, C4 via data.source=tfds.

mini (9 runs): 0.1m 0.2m 0.5m x 1, 4, 16 tokens/param, batch 16 x 128 = 2,048 tokens/step
(base.py otherwise). CPU time (common.CPU_TOKENS_PER_S, quiet 2-core box: ~35k / 25k / 15k
tokens/s): 0.1m 2.2M tokens 64 s, 0.2m 4.5M 180 s, 0.5m 10.0M 663 s, plus ~5 s a run: ~15
minutes (up to 2x on a busy box); PTQ of the 9 runs to the 6 formats x 2 methods adds ~5.

quick (2 runs): the mini runs at 0.1m and 1 and 4 tokens/param (~1 minute).
"""

from __future__ import annotations

from configs.sweeps import common

# Groups of 16 divide every input dim of both ladders (0.5m has d_model 112).
FORMATS = ("w8a16", "w4a16", "w3a16", "w2a16", "w4a16-g16", "w3a16-g16")
METHODS = ("rtn", "gptq")
PAPER_SIZES = ("30m", "50m", "100m", "200m")
PAPER_TPP = (20, 80, 320)
MINI_SIZES = ("0.1m", "0.2m", "0.5m")
MINI_TPP = (1, 4, 16)


def shared(variant: str) -> dict:
  # Kumar et al. [V]: peak LR 6e-4 at every size.
  return common.shared_fields(variant, batch_size=256, seq_len=1024, **{"optimizer.lr": 6e-4})


def _all_runs(variant: str) -> list[common.Run]:
  paper = variant == "paper"
  sizes, tpps = (PAPER_SIZES, PAPER_TPP) if paper else (MINI_SIZES, MINI_TPP)
  base = shared(variant)
  out = []
  for size in sizes:
    for tpp in tpps:
      steps = common.steps_for_tokens(
        tpp * common.n_params(size), base["batch_size"], base["seq_len"]
      )
      cadence = (
        common.cadence(steps, 10, 1000, 100) if paper else common.cadence(steps, 2, steps, 25)
      )
      out.append(
        common.Run(
          f"{size}_tpp{tpp}_dense",
          {**base, "model.size": size, "compression": "dense", "total_steps": steps, **cadence},
        )
      )
  return out


runs = common.make_runs(
  _all_runs,
  quick=lambda r: r.name.startswith(f"{MINI_SIZES[0]}_") and f"tpp{MINI_TPP[-1]}" not in r.name,
)
get_config = common.make_get_config(_all_runs, shared)
