"""Training data: the offline default corpus, tokenizers, and deterministic packed batches.

The default corpus ("stdlib") is the running interpreter's standard-library sources: tens of
MB of real human-written text present on every fresh Python install, so nothing is
downloaded. Files are sorted; a file is held out for validation when the hash of its path
(relative to the stdlib root) falls below `val_percent`. The tokenized corpus is cached once
per fingerprint (hash of file list, contents and tokenizer).

Batches are a pure function of (seed, step): sample g = step * B + row of the global batch is
window perm_epoch[g mod n_windows] of the packed token stream, perm_epoch a permutation seeded
by (seed, epoch). A resumed run therefore sees exactly the batches it would have seen, and
each process materialises only its own rows of the global batch.

data.source="tfds" (a prepared TFDS dataset such as C4, read by random access) lives in
`data_tfds` and is imported only when used; `Batches(corpus, ...)` on its corpus returns its
batches. Tokenizers ("byte", or a SentencePiece model path) live in `tokenizers`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
import sysconfig
import tempfile

import numpy as np

from compress_scaling.tokenizers import (  # noqa: F401 -- re-exported: data.EOS, data.ByteTokenizer
  EOS,
  TOKENIZERS,
  ByteTokenizer,
  SentencePieceTokenizer,
  make_tokenizer,
)

SOURCES = ("stdlib", "tfds")


def stdlib_files() -> tuple[pathlib.Path, list[pathlib.Path]]:
  """The sorted .py files under the stdlib root, outside site-packages and caches. os.walk
  prunes those folders instead of listing them (rglob walked site-packages too: 0.67 s of a
  run's start-up on the development box, now 0.02 s; same file list)."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"]).resolve()
  skip = {"site-packages", "dist-packages", "__pycache__"}
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in skip]
    files += [pathlib.Path(dirpath) / f for f in filenames if f.endswith(".py")]
  return root, sorted(files)


def is_validation(relpath: str, val_percent: int) -> bool:
  digest = hashlib.sha256(relpath.encode()).digest()
  return int.from_bytes(digest[:8], "little") % 100 < val_percent


@dataclasses.dataclass(frozen=True)
class Corpus:
  train: np.ndarray  # packed token stream, documents separated by EOS
  val: np.ndarray
  fingerprint: str
  n_files: int
  vocab_size: int


def _cache_dir(cache_dir: str) -> pathlib.Path:
  path = pathlib.Path(cache_dir or os.path.expanduser("~/.cache/compress_scaling"))
  path.mkdir(parents=True, exist_ok=True)
  return path


@functools.lru_cache(maxsize=4)
def load_stdlib(tokenizer_name: str = "byte", val_percent: int = 3, cache_dir: str = "") -> Corpus:
  tokenizer = make_tokenizer(tokenizer_name)
  root, files = stdlib_files()
  if not files:
    raise RuntimeError(f"data.source='stdlib': no .py files found under {root}")
  texts = [(str(p.relative_to(root)), p.read_bytes()) for p in files]
  h = hashlib.sha256(f"{tokenizer.name}|val{val_percent}".encode())
  for rel, text in texts:
    h.update(rel.encode() + b"\0" + len(text).to_bytes(8, "little") + text)
  fingerprint = h.hexdigest()
  cache = _cache_dir(cache_dir) / f"stdlib-{fingerprint[:20]}.npz"
  if cache.exists():
    with np.load(cache) as z:
      return Corpus(z["train"], z["val"], fingerprint, len(files), tokenizer.vocab_size)
  splits = {"train": [], "val": []}
  dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32
  eos = np.array([tokenizer.eos_id], dtype)
  for rel, text in texts:
    ids = tokenizer.encode(text).astype(dtype, copy=False)
    splits["val" if is_validation(rel, val_percent) else "train"] += [ids, eos]
  train, val = (np.concatenate(splits[k]) for k in ("train", "val"))
  # Write-then-rename so concurrent runs never read a half-written cache.
  with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npz", delete=False) as f:
    np.savez(f, train=train, val=val)
  os.replace(f.name, cache)
  return Corpus(train, val, fingerprint, len(files), tokenizer.vocab_size)


def load_corpus(data_config):
  """The stdlib `Corpus`, or for data.source="tfds" a `data_tfds.TfdsCorpus`."""
  if data_config.source == "tfds":
    from compress_scaling import data_tfds  # noqa: PLC0415 -- tfds is imported only when used

    return data_tfds.load(data_config)
  if data_config.source != "stdlib":
    raise ValueError(f"data.source: unknown source {data_config.source!r}; allowed: {SOURCES}")
  return load_stdlib(data_config.tokenizer, data_config.val_percent, data_config.cache_dir)


class Batches:
  """Deterministic packed batches of shape [rows, seq_len + 1] (inputs = [:, :-1]).

  A corpus that is not held in memory names its own batches class (`batches_class`, e.g. the
  tfds corpus); `Batches(corpus, ...)` then returns an instance of that class.
  """

  def __new__(cls, corpus=None, **kwargs):
    del kwargs
    if cls is Batches and getattr(corpus, "batches_class", None) is not None:
      cls = corpus.batches_class
    return super().__new__(cls)

  def __init__(
    self,
    corpus: Corpus,
    *,
    seed: int,
    batch_size: int,
    seq_len: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    self._init_rows(corpus, seed, batch_size, seq_len, process_index, process_count)
    self.n_windows = (len(corpus.train) - 1) // seq_len
    self._epoch_perm: tuple[int, np.ndarray | None] = (-1, None)
    n_val = (len(corpus.val) - 1) // seq_len
    if self.n_windows < batch_size or n_val < 1:
      raise ValueError(f"seq_len={seq_len}: the corpus is too small for one batch")

  def _init_rows(self, corpus, seed, batch_size, seq_len, process_index, process_count):
    """Fields every source shares; `rows` = this process's rows of each global batch."""
    if batch_size % process_count:
      raise ValueError(f"batch_size={batch_size} is not divisible by {process_count} processes")
    self.corpus, self.seed, self.B, self.L = corpus, seed, batch_size, seq_len
    self.rows = slice(
      process_index * batch_size // process_count, (process_index + 1) * batch_size // process_count
    )

  def _permutation(self, epoch: int) -> np.ndarray:
    if self._epoch_perm[0] != epoch:  # one epoch cached: batches walk epochs in order
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
      self._epoch_perm = (epoch, perm)
    return self._epoch_perm[1]

  def _windows(self, stream: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.stack([stream[s : s + self.L + 1] for s in starts]).astype(np.int32)

  def train(self, step: int) -> np.ndarray:
    """This process's rows of the global batch of `step`."""
    g = step * self.B + np.arange(self.B)[self.rows]
    epoch, offset = np.divmod(g, self.n_windows)
    window = np.array([self._permutation(int(e))[o] for e, o in zip(epoch, offset)])
    return self._windows(self.corpus.train, window * self.L)

  def eval(self, n_batches: int) -> list[np.ndarray]:
    """The first n_batches global batches of consecutive held-out windows (wrapping)."""
    n_val = (len(self.corpus.val) - 1) // self.L
    out = []
    for b in range(n_batches):
      window = (b * self.B + np.arange(self.B)[self.rows]) % n_val
      out.append(self._windows(self.corpus.val, window * self.L))
    return out
