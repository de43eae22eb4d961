"""Defaults for one training run: the single source of truth for every config field.

Usage: python -m compress_scaling.main --config=configs/base.py --workdir=DIR
       [--config.model.size=5m --config.compression=w4a16 ...]
The config is locked, so a mistyped override fails instead of being ignored.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0  # root PRNG key; per-step keys are fold_in(root, step); data order from (seed, step)

  c.model = ml_collections.ConfigDict()
  c.model.size = "1m"  # a name from compress_scaling/sizes.py LADDER, or "custom"
  # Explicit dims (> 0) override the ladder entry of `size`; all are required for "custom".
  c.model.d_model = 0
  c.model.n_layers = 0
  c.model.n_heads = 0
  c.model.n_kv_heads = 0  # grouped-query attention; 0 = the ladder's value (or n_heads)
  c.model.d_ff = 0
  c.model.vocab_size = 0  # 0 = the tokenizer's vocabulary size
  c.model.tie_embeddings = False
  c.model.rope_theta = 10_000.0  # RoFormer / Llama default
  c.model.norm_eps = 1e-5
  c.model.dtype = "float32"  # activation dtype; "bfloat16" on TPU/GPU. Params stay float32.
  # Rematerialisation of each transformer block in the backward pass (model.REMAT_POLICIES):
  # "none" keeps every activation, "full" recomputes the block, "save_dots" keeps only the
  # projection matmul outputs (MaxText remat_policy "minimal").
  c.model.remat = "none"

  c.total_steps = 500  # 500 x 32 x 128 = 2M tokens: the README quick start, minutes on 2 CPU cores
  c.batch_size = 32  # global batch (sequences), split over the data and fsdp mesh axes
  c.seq_len = 128
  # Gradient accumulation: the global batch is split into this many sequential microbatches
  # inside one train step (float32 gradient sum, one optimizer update). Must divide the batch
  # per data-parallel shard, batch_size / (mesh.data x mesh.fsdp).
  c.microbatches = 1

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 3e-3  # peak learning rate
  c.optimizer.warmup_frac = 0.1  # linear warmup over this fraction of total_steps (QuEST: 10%)
  c.optimizer.min_lr_ratio = 0.1  # cosine decays to lr * min_lr_ratio
  c.optimizer.b1 = 0.9  # AdamW betas, weight decay and clip as Llama / OLMo2 / QuEST
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip = 1.0

  # Compression spec string (DESIGN.md): dense, w4a16, w4a4-g32, s50, 2:4, w4a16+2:4, ...
  c.compression = "dense"
  # Per-layer overrides, "layer_glob=spec; ...", first match wins; layer paths look like
  # block_3/mlp/out or lm_head (head and embeddings are uncompressed unless a rule names them).
  # Chen et al. 2025 mixed precision: compression=w4a4, compression_rules="*/mlp/out=w4a8".
  c.compression_rules = ""

  c.data = ml_collections.ConfigDict()
  # "stdlib": this interpreter's standard-library sources, offline. "tfds": a TFDS text
  # dataset prepared as array_record under data_dir (C4), read by random access, no TensorFlow.
  c.data.source = "stdlib"
  # "byte" (256 ids + end-of-document), or the path (local or gs://) of a SentencePiece
  # .model file, e.g. T5's; its EOS ends each document (compress_scaling/tokenizers.py).
  c.data.tokenizer = "byte"
  c.data.val_percent = 3  # stdlib: files whose path hash falls below this percentage are held out
  c.data.cache_dir = ""  # stdlib: tokenized-corpus cache; "" = ~/.cache/compress_scaling
  # source="tfds" only (compress_scaling/data_tfds.py); nothing is downloaded or generated.
  c.data.tfds_name = "c4/en:3.1.0"  # name[/config]:version as tfds.builder takes it
  c.data.data_dir = ""  # required for tfds: local or gs:// dir holding <name>/<config>/<version>
  c.data.train_split = "train"  # tfds split names; slices such as "train[:90%]" also work
  c.data.val_split = "validation"  # eval reads only the first eval_batches windows of it
  c.data.text_key = "text"  # the feature holding each document's text
  # Documents owned by each train row (then cut to seq_len + 1 tokens); 0 = ceil((seq_len + 1)
  # / mean tokens per document over the first 512 train records).
  c.data.docs_per_row = 0

  c.eval_every = 250  # steps between held-out evaluations (and the final one)
  c.eval_batches = 8  # held-out batches of batch_size x seq_len per evaluation
  # Final eval extras: the loss through the integer serving path (int8 codes, int32
  # accumulation; integer formats only), and per-layer weight / activation SQNR and input
  # kurtosis on the first eval batch.
  c.eval_serving = False
  c.eval_diagnostics = False
  c.checkpoint_every = 250  # steps between checkpoints (also saved on SIGTERM and at the end)
  c.checkpoints_to_keep = 2
  c.log_every = 50  # steps between console lines / TensorBoard scalars

  # Mesh axis sizes; -1 fills the remaining devices. Product must equal the device count.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.lock()
  return c
