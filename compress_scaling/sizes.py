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


DIM_FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")


def resolve_dims(m) -> Dims:
  """The dims of a config's model block (a ConfigDict or its plain dict): model.size's ladder
  entry, each explicit model.<dim> > 0 overriding it; n_kv_heads <= 0 means n_heads (no GQA).
  ValueError names what is unknown or missing. JAX-free: config_lib validates with it and
  memory.py sizes sweep configs with it."""
  size = m["size"]
  if size == "custom":
    missing = [f"model.{f}" for f in DIM_FIELDS if f != "n_kv_heads" and m[f] <= 0]
    if missing:
      raise ValueError(f"model.size='custom' needs positive {', '.join(missing)}")
    base = Dims(0, 0, 0, 0, 0)
  elif size in LADDER:
    base = LADDER[size]
  else:
    raise ValueError(f"model.size={size!r} is unknown; allowed: {', '.join(LADDER)} or 'custom'")
  values = {f: (m[f] if m[f] > 0 else getattr(base, f)) for f in DIM_FIELDS}
  if values["n_kv_heads"] <= 0:
    values["n_kv_heads"] = values["n_heads"]
  return Dims(**values)


def train_flops_per_token(dims: Dims, vocab_size: int, seq_len: int) -> float:
  """Model FLOPs of one training token (forward + backward): 6 (N + d V) for the weights,
  LM head included (Kaplan et al. 2020), + 12 n_layers d L for attention (PaLM, Chowdhery et
  al. 2022, appendix B)."""
  n = non_embedding_params(dims)
  return 6 * (n + dims.d_model * vocab_size) + 12 * dims.n_layers * dims.d_model * seq_len


def non_embedding_params(dims: Dims) -> int:
  d, h, h_kv = dims.d_model, dims.n_heads, dims.n_kv_heads
  d_head = d // h
  per_block = 2 * d * h * d_head + 2 * d * h_kv * d_head + 3 * d * dims.d_ff + 2 * d
  return dims.n_layers * per_block + d  # + final norm


if __name__ == "__main__":
  for name, dims in LADDER.items():
    print(f"{name:>6}  {non_embedding_params(dims) / 1e6:9.3f}M  {dims}")
