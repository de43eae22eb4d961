"""Tokenizers: UTF-8 bytes (the default) and SentencePiece models (T5's, or any `.model` file).

Both map text (str or UTF-8 bytes) to a 1-D integer array and back, and name `eos_id`, the
end-of-document id the data pipeline appends after every document. `name` identifies the exact
vocabulary ("byte", or "sentencepiece:<sha256 of the model file>"), so it goes into corpus
fingerprints: a different model file is a different corpus.

SentencePiece works on single lines (its trainer reads lines, so a newline is rarely a piece;
T5's model folds it into whitespace), so `SentencePieceTokenizer` splits text at "\\n", encodes
the lines and joins them with a newline id: the model's "\\n" piece if it has one, else its
byte-fallback piece <0x0A>, else one id past the model's vocabulary. EOS is the model's eos_id
(T5: 1), or, for a model without one, the next id past the vocabulary; `vocab_size` counts these
extra ids (T5's spiece.model: 32000 pieces + newline = 32001). decode(encode(text)) == text for
a model trained with normalization "identity", remove_extra_whitespaces=False and
byte_fallback=True; T5's model normalizes (NFKC, whitespace runs), so it does not round-trip.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

EOS = 0  # ByteTokenizer's end-of-document id; NUL bytes are dropped from the text, so 0 is free
TOKENIZERS = ("byte",)  # named tokenizers; anything else is a path to a SentencePiece model


class ByteTokenizer:
  """UTF-8 bytes as ids 1..255 (NUL removed), 0 = end of document."""

  name = "byte"
  vocab_size = 256
  eos_id = EOS

  def encode(self, text: bytes | str) -> np.ndarray:
    if isinstance(text, str):
      text = text.encode("utf-8")
    ids = np.frombuffer(text, dtype=np.uint8)
    return ids[ids != EOS].astype(np.uint16)

  def encode_batch(self, texts) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids if i != EOS).decode("utf-8", errors="replace")


def read_bytes(path: str) -> bytes:
  """A local file, or a remote one (gs://...) through etils.epath (needs gcsfs or TensorFlow)."""
  if "://" in path:
    from etils import epath  # noqa: PLC0415 -- only for remote paths

    return epath.Path(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


class SentencePieceTokenizer:
  """A SentencePiece model file; see the module docstring for newlines and EOS."""

  def __init__(self, path: str, model_bytes: bytes | None = None):
    import sentencepiece  # noqa: PLC0415 -- optional dependency (the `data` extra)

    self.path = path
    self.model_bytes = read_bytes(path) if model_bytes is None else model_bytes
    self.sp = sentencepiece.SentencePieceProcessor(model_proto=self.model_bytes)
    self.name = f"sentencepiece:{hashlib.sha256(self.model_bytes).hexdigest()}"
    n = self.sp.vocab_size()
    self.eos_id = self.sp.eos_id()
    if self.eos_id < 0:
      self.eos_id, n = n, n + 1
    newline = self.sp.piece_to_id("\n")
    if self.sp.is_unknown(newline) or self.sp.is_control(newline):
      newline = self.sp.piece_to_id("<0x0A>")  # byte-fallback piece
      if not self.sp.is_byte(newline):
        newline, n = n, n + 1
    self.newline_id, self.vocab_size = newline, n

  def encode(self, text: bytes | str) -> np.ndarray:
    return self.encode_batch([text])[0]

  def encode_batch(self, texts) -> list[np.ndarray]:
    """Encodes many documents in one SentencePiece call (it threads over the lines)."""
    lines, counts = [], []
    for t in texts:
      parts = (t.decode("utf-8", errors="replace") if isinstance(t, bytes) else t).split("\n")
      lines += parts
      counts.append(len(parts))
    encoded = self.sp.encode(lines)
    out, i = [], 0
    for count in counts:
      ids = list(encoded[i])
      for piece_ids in encoded[i + 1 : i + count]:
        ids.append(self.newline_id)
        ids.extend(piece_ids)
      out.append(np.asarray(ids, np.int32))
      i += count
    return out

  def decode(self, ids) -> str:
    lines, line = [], []
    for i in map(int, ids):
      if i == self.newline_id:
        lines.append(line)
        line = []
      elif i != self.eos_id and 0 <= i < self.sp.vocab_size():
        line.append(i)
    return "\n".join(self.sp.decode(lines + [line]))


def make_tokenizer(name: str) -> ByteTokenizer | SentencePieceTokenizer:
  """ "byte", or a path (local or gs://) to a SentencePiece model file."""
  if name == "byte":
    return ByteTokenizer()
  if not name or ("://" not in name and not os.path.isfile(name)):
    raise ValueError(
      f"data.tokenizer={name!r}: allowed 'byte' or the path of a SentencePiece .model file "
      "(no such file)"
    )
  try:
    return SentencePieceTokenizer(name)
  except Exception as e:
    raise ValueError(f"data.tokenizer={name!r}: not a readable SentencePiece model ({e})") from e
