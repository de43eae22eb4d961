"""The model-size ladder: names by approximate non-embedding parameter count.

Non-embedding N (what the scaling laws use) counts every parameter except the token
embedding and the LM head: per block 2·d·(H + H_kv)·d_head (q, k, v, o) + 3·d·d_ff (SwiGLU)
+ 2·d (RMSNorm scales), plus the final norm. `model.count_params` computes it exactly from
the initialised model; tests check it against `non_embedding_params` below.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Dims:
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  d_ff: int


def _llama2(d_model: int, n_layers: int, n_heads: int, multiple: int = 256) -> Dims:
  """QuEST / Panferov et al. dims: MLP width 8/3·d rounded up to `multiple`."""
  d_ff = -(-(8 * d_model // 3) // multiple) * multiple
  return Dims(d_model, n_layers, n_heads, n_heads, d_ff)


LADDER: dict[str, Dims] = {
  # CPU sizes (this project's own; head dim 16–32 so the tiny models stay attention-light).
  # 0.03m, 0.06m, 0.1m, 0.17m and 0.32m are one family (2 blocks, head dim 16, width 32-112):
  # the N axis of the unified mini sweep is width alone, the axis that moves the loss most at
  # this scale (2 -> 4 blocks at width 64 gains ~0.03 nats at 215K tokens; 48 -> 64, ~0.06).
  "0.03m": _llama2(32, 2, 2, multiple=64),
  "0.06m": _llama2(48, 2, 3, multiple=64),
  "0.1m": _llama2(64, 2, 4, multiple=64),
  "0.17m": _llama2(80, 2, 5, multiple=64),
  "0.32m": _llama2(112, 2, 7, multiple=64),
  "0.2m": _llama2(64, 4, 4, multiple=64),
  "0.5m": _llama2(112, 3, 4, multiple=64),
  "1m": _llama2(128, 5, 4, multiple=64),
  "2m": _llama2(192, 5, 6, multiple=64),
  "5m": _llama2(256, 6, 8, multiple=64),
  # QuEST (arXiv 2502.05003) / Panferov et al. (arXiv 2506.01863) ladder: blocks / hidden /
  # heads from PAPERS.md §6 and §8; MLP = 8/3·hidden rounded to 256.
  "30m": _llama2(640, 6, 5),
  "50m": _llama2(768, 7, 6),
  "100m": _llama2(1024, 8, 8),
  "200m": _llama2(1280, 10, 10),
  "430m": _llama2(1664, 13, 13),
  "800m": _llama2(2048, 16, 16),
  # Chen et al. 2025 (arXiv 2505.14302) ladder, layers/hidden/FFN/heads/KV heads (GQA),
  # PAPERS.md §3 (third-party transcription of their Table 3, marked [U] there).
  "74m": Dims(768, 12, 16, 4, 2048),
  "145m": Dims(1024, 12, 16, 4, 3072),
  "297m": Dims(1536, 12, 24, 6, 4096),
  "595m": Dims(1536, 24, 24, 6, 4096),
  "973m": Dims(2048, 16, 32, 8, 8192),
}


def non_embedding_params(dims: Dims) -> int:
  d, h, h_kv = dims.d_model, dims.n_heads, dims.n_kv_heads
  d_head = d // h
  per_block = 2 * d * h * d_head + 2 * d * h_kv * d_head + 3 * d * dims.d_ff + 2 * d
  return dims.n_layers * per_block + d  # + final norm


if __name__ == "__main__":
  for name, dims in LADDER.items():
    print(f"{name:>6}  {non_embedding_params(dims) / 1e6:9.3f}M  {dims}")
