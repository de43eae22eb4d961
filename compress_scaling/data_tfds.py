"""data.source="tfds": a prepared TFDS text dataset (C4 `c4/en:3.1.0`), read by random access.

Reading: `tfds.builder(tfds_name, data_dir=...).as_data_source(split)` over array_record files
(random access, no TensorFlow). Nothing is downloaded or generated: a dataset that is not
prepared under data_dir is an error. Documents are tokenized on the fly and nothing of the
train split is held in memory (C4 has 365M documents).

Train batches are a pure function of (seed, step), as for the stdlib corpus:
  * Epoch e visits the N train documents in the order pi_e, a pseudo-random permutation of
    [0, N) keyed by (seed, e) and evaluated pointwise (a Feistel network with cycle walking),
    so it is never materialised.
  * Global row g = step * batch_size + row lies in epoch e = g // R, R = N // K rows per epoch,
    and owns the K documents at positions jK .. jK + K - 1 of pi_e, j = g mod R. The row is
    these documents, each followed by EOS, concatenated and cut to seq_len + 1 tokens (the rest
    of its last document is dropped). A row whose K documents are too short continues with the
    documents at the following positions (those of row j + 1, wrapping within the epoch), so a
    borrowed document is seen twice in that epoch.
  * K = data.docs_per_row, or when 0, ceil((seq_len + 1) / mean tokens per document), the mean
    taken over the first 512 train records (tfds shuffles records at preparation, so they are a
    fair sample): rows then seldom borrow, at the price of dropping document tails.
A resumed run therefore sees exactly the batches it would have seen, and each process reads and
tokenizes only the documents of its own rows. The next step's rows are prefetched on a
background thread; the result does not depend on it.

Eval batches come from the validation split in record order, packed into one stream (each
document followed by EOS) and cut into consecutive windows as for the stdlib corpus; only the
documents needed for the requested number of eval batches are read.

Fingerprint: sha256 of the dataset's full name (with config and version), file format, the two
splits' names, sizes and shard lengths, the text key and the tokenizer's name (which holds the
sha256 of the SentencePiece model) -- not of the content. data_dir is not part of it, so a copy
of the prepared dataset elsewhere (local <-> gs://) resumes the same run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import threading
from typing import Any, ClassVar

import numpy as np

from compress_scaling import data, tokenizers

SAMPLE_DOCS = 512  # train records whose mean token count sets the default docs_per_row
_READ_CHUNK = 1024  # at most this many validation records per read


def feistel_permutation(x: np.ndarray, n: int, key: tuple[int, ...], rounds: int = 6) -> np.ndarray:
  """pi(x) for a pseudo-random permutation pi of [0, n) keyed by `key`, elementwise.

  A balanced Feistel network on the smallest even number of bits covering n is a bijection of
  [0, 2^bits); cycle walking (re-applying it while the value is >= n) restricts it to [0, n).
  """
  x = np.asarray(x, np.uint64)
  if n <= 1:
    return np.zeros_like(x)
  half = ((n - 1).bit_length() + 1) // 2
  mask = np.uint64((1 << half) - 1)
  round_keys = np.random.default_rng(list(key)).integers(0, 2**63, size=rounds, dtype=np.uint64)

  def encrypt(v):
    left, right = v >> np.uint64(half), v & mask
    for k in round_keys:
      left, right = right, left ^ (_mix64(right ^ k) & mask)
    return (left << np.uint64(half)) | right

  y = encrypt(x)
  while (bad := y >= n).any():
    y[bad] = encrypt(y[bad])
  return y


def _mix64(z: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer (uint64 arithmetic wraps)."""
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


@dataclasses.dataclass
class Split:
  """One split's data source; len() is its estimated token count (for the log entry)."""

  name: str
  source: Any  # tfds ArrayRecordDataSource: len(), [i], __getitems__([i, ...])
  est_tokens: int

  def __len__(self) -> int:
    return self.est_tokens


@dataclasses.dataclass
class TfdsCorpus:
  """The same fields as `data.Corpus` read by training and the log entry, over tfds splits."""

  train: Split
  val: Split
  fingerprint: str
  n_files: int  # documents in the two splits
  vocab_size: int
  tokenizer: Any
  text_key: str
  mean_doc_tokens: float  # over the first SAMPLE_DOCS train records, EOS included
  docs_per_row: int  # data.docs_per_row; 0 = from mean_doc_tokens and seq_len
  info: dict  # dataset name, version, split sizes: what the fingerprint covers
  # One reader at a time: the prefetch threads of several Batches may share this corpus.
  lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)
  batches_class: ClassVar[type]

  def tokenize(self, split: Split, indices) -> list[np.ndarray]:
    """Token ids of documents `indices`, each followed by EOS."""
    eos = np.array([self.tokenizer.eos_id], np.int32)
    with self.lock:
      records = split.source.__getitems__([int(i) for i in indices])
      encoded = self.tokenizer.encode_batch([r[self.text_key] for r in records])
    return [np.concatenate([ids.astype(np.int32, copy=False), eos]) for ids in encoded]


def _split_name(split: str) -> str:
  return split.split("[", 1)[0]  # "train[:90%]" -> "train"


def _open(c):
  """(info, file format, split descriptions, data sources) of the dataset the data config
  names; ValueError naming the field when it cannot be read."""
  import tensorflow_datasets as tfds  # noqa: PLC0415 -- heavy; only for this source

  try:
    builder = tfds.builder(c.tfds_name, data_dir=c.data_dir)
  except Exception as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(
      f"data.tfds_name={c.tfds_name!r}: no prepared dataset found under "
      f"data.data_dir={c.data_dir!r} ({first_line})"
    ) from e
  info = builder.info
  if not builder.is_prepared():
    raise ValueError(
      f"data.tfds_name={c.tfds_name!r}: not prepared under data.data_dir={c.data_dir!r} "
      "(nothing is downloaded or generated at run time)"
    )
  file_format = str(getattr(info.file_format, "value", info.file_format))
  if file_format != "array_record":
    raise ValueError(
      f"data.tfds_name={c.tfds_name!r}: the prepared files under {c.data_dir} are "
      f"{file_format}; the tfds source reads array_record (random access without "
      "TensorFlow). Convert them with `tfds convert_format --dataset_version_dir=... "
      "--out_file_format=array_record`."
    )
  features = list(info.features.keys()) if info.features is not None else []
  if c.text_key not in features:
    raise ValueError(
      f"data.text_key={c.text_key!r}: not a feature of {info.full_name}; allowed: "
      f"{', '.join(features)}"
    )
  sources, described = {}, {}
  for field in ("train_split", "val_split"):
    split = c[field]
    if _split_name(split) not in info.splits:
      raise ValueError(
        f"data.{field}={split!r}: not a split of {info.full_name}; "
        f"allowed: {', '.join(sorted(info.splits))}"
      )
    base = info.splits[_split_name(split)]
    described[split] = {
      "num_examples": int(info.splits[split].num_examples),
      "num_bytes": int(base.num_bytes),
      "shard_lengths": [int(n) for n in base.shard_lengths],
    }
    if described[split]["num_examples"] == 0:
      raise ValueError(f"data.{field}={split!r}: the split of {info.full_name} is empty")
    try:
      sources[field] = builder.as_data_source(split=split)
    except Exception as e:
      raise ValueError(f"data.{field}={split!r}: cannot open {info.full_name}: {e}") from e
  return info, file_format, described, sources


def check(data_config) -> list[str]:
  """Problems opening the dataset (config validation calls this before anything is written)."""
  try:
    _open(data_config)
  except ValueError as e:
    return [str(e)]
  return []


def load(data_config) -> TfdsCorpus:
  c = data_config
  tokenizer = tokenizers.make_tokenizer(c.tokenizer)
  info, file_format, described, splits = _open(c)
  description = {
    "source": "tfds",
    "name": info.full_name,
    "version": str(info.version),
    "file_format": file_format,
    "splits": described,
    "text_key": c.text_key,
    "tokenizer": tokenizer.name,
  }
  fingerprint = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
  train = Split(c.train_split, splits["train_split"], 0)
  val = Split(c.val_split, splits["val_split"], 0)
  corpus = TfdsCorpus(
    train=train,
    val=val,
    fingerprint=fingerprint,
    n_files=len(train.source) + len(val.source),
    vocab_size=tokenizer.vocab_size,
    tokenizer=tokenizer,
    text_key=c.text_key,
    mean_doc_tokens=0.0,
    docs_per_row=c.docs_per_row,
    info=description,
  )
  sample = corpus.tokenize(train, range(min(SAMPLE_DOCS, len(train.source))))
  corpus.mean_doc_tokens = float(np.mean([len(ids) for ids in sample]))
  train.est_tokens = round(len(train.source) * corpus.mean_doc_tokens)
  val.est_tokens = round(len(val.source) * corpus.mean_doc_tokens)
  return corpus


class TfdsBatches(data.Batches):
  """`data.Batches` over a `TfdsCorpus`; see the module docstring for the layout."""

  def __init__(
    self,
    corpus: TfdsCorpus,
    *,
    seed: int,
    batch_size: int,
    seq_len: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    self._init_rows(corpus, seed, batch_size, seq_len, process_index, process_count)
    self.n_docs = len(corpus.train.source)
    self.K = corpus.docs_per_row or max(1, math.ceil((seq_len + 1) / corpus.mean_doc_tokens))
    self.rows_per_epoch = self.n_docs // self.K
    if self.rows_per_epoch < 1:
      raise ValueError(
        f"data.docs_per_row={corpus.docs_per_row}: {self.K} documents per row, but the train "
        f"split has only {self.n_docs}"
      )
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tfds-batches")
    self._next: tuple[int, concurrent.futures.Future] | None = None
    self._val_stream = np.zeros(0, np.int32)
    self._val_read = 0  # validation records read into _val_stream

  def train(self, step: int) -> np.ndarray:
    """This process's rows of the global batch of `step`."""
    pending, self._next = self._next, None
    if pending is not None and pending[0] == step:
      rows = pending[1].result()
    else:
      rows = self.rows_of_step(step)
    self._next = (step + 1, self._pool.submit(self.rows_of_step, step + 1))
    return rows

  def rows_of_step(self, step: int) -> np.ndarray:
    g = step * self.B + np.arange(self.B)[self.rows]
    return self._pack(*np.divmod(g, self.rows_per_epoch))

  def _documents(self, epochs: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Document index at `positions` of each row's epoch permutation (same shapes)."""
    out = np.empty(positions.shape, np.int64)
    for e in np.unique(epochs):
      rows = epochs == e
      out[rows] = feistel_permutation(positions[rows], self.n_docs, (self.seed, int(e)))
    return out

  def _pack(self, epochs: np.ndarray, js: np.ndarray) -> np.ndarray:
    need = self.L + 1
    pieces = [[] for _ in js]
    have = np.zeros(len(js), np.int64)
    todo, offset, width = np.arange(len(js)), 0, self.K
    while todo.size:
      if offset >= self.n_docs:
        raise ValueError(f"seq_len={self.L}: the train split holds fewer than seq_len+1 tokens")
      positions = (js[todo, None] * self.K + offset + np.arange(width)) % self.n_docs
      docs = self._documents(np.repeat(epochs[todo, None], width, axis=1), positions)
      unique, inverse = np.unique(docs.ravel(), return_inverse=True)
      inverse = inverse.reshape(docs.shape)
      tokens = self.corpus.tokenize(self.corpus.train, unique)
      for t, r in enumerate(todo):
        for w in range(width):
          if have[r] < need:
            ids = tokens[inverse[t, w]]
            pieces[r].append(ids)
            have[r] += len(ids)
      offset, width = offset + width, 1
      todo = todo[have[todo] < need]
    return np.stack([np.concatenate(p)[:need] for p in pieces]).astype(np.int32)

  def _validation_stream(self, n_tokens: int) -> np.ndarray:
    """The first >= n_tokens of the packed validation split (all of it if it is shorter)."""
    source = self.corpus.val.source
    parts = [self._val_stream]
    total = len(self._val_stream)
    while total < n_tokens and self._val_read < len(source):
      estimate = math.ceil((n_tokens - total) / self.corpus.mean_doc_tokens) + 1
      stop = min(self._val_read + min(estimate, _READ_CHUNK), len(source))
      new = self.corpus.tokenize(self.corpus.val, range(self._val_read, stop))
      parts += new
      total += sum(len(ids) for ids in new)
      self._val_read = stop
    self._val_stream = np.concatenate(parts)
    return self._val_stream

  def eval(self, n_batches: int) -> list[np.ndarray]:
    """The first n_batches global batches of consecutive held-out windows (wrapping)."""
    stream = self._validation_stream(n_batches * self.B * self.L + 1)
    n_val = (len(stream) - 1) // self.L
    if n_val < 1:
      raise ValueError(f"seq_len={self.L}: the validation split is too small for one window")
    out = []
    for b in range(n_batches):
      window = (b * self.B + np.arange(self.B)[self.rows]) % n_val
      out.append(self._windows(stream, window * self.L))
    return out


TfdsCorpus.batches_class = TfdsBatches
