"""data.source="tfds" and SentencePiece tokenizers, offline: a small array_record dataset built
in tmp from stdlib files, and a BPE model trained in the test."""

import io
import json
import logging
import math
import shutil

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
spm = pytest.importorskip("sentencepiece")

from compress_scaling import config_lib, data, data_tfds, tokenizers, train  # noqa: E402
from configs import smoke  # noqa: E402

NAME = "stdlib_docs:1.0.0"


def _documents():
  """~300 small stdlib files as (relative path, text), split 90/10 by path hash."""
  root, files = data.stdlib_files()
  files = [p for p in files[::4] if 500 < p.stat().st_size < 20_000][:300]
  docs = [(str(p.relative_to(root)), p.read_text(errors="replace")) for p in files]
  train_docs = [d for d in docs if not data.is_validation(d[0], 10)]
  val_docs = [d for d in docs if data.is_validation(d[0], 10)]
  return train_docs, val_docs


class StdlibDocs(tfds.core.GeneratorBasedBuilder):
  """The test dataset: one document (feature "text") per stdlib file."""

  # tfds derives the builder's code path from its module; under a dotted name (imported as
  # tests.test_data_tfds) that goes through importlib_resources, which tfds does not install.
  __module__ = "stdlib_docs"
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    train_docs, val_docs = _documents()
    return {
      "train": self._generate_examples(train_docs),
      "validation": self._generate_examples(val_docs),
    }

  def _generate_examples(self, docs):
    for rel, text in docs:
      yield rel, {"text": text}


def _train_spm(lines, path, vocab_size=800, **options):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(lines),
    model_writer=model,
    vocab_size=vocab_size,
    model_type="bpe",
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    num_threads=2,
    minloglevel=2,
    **options,
  )
  path.write_bytes(model.getvalue())
  return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  data_dir = root / "data"
  StdlibDocs(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  train_docs, val_docs = _documents()
  lines = [line for _, text in train_docs for line in text.split("\n") if line.strip()]
  model = _train_spm(lines, root / "bpe.model", byte_fallback=True)
  # Like T5's model: no EOS and no newline piece (no byte fallback), so both become extra ids.
  plain = _train_spm(lines, root / "plain.model", vocab_size=300, eos_id=-1, bos_id=-1)
  return {
    "root": root,
    "data_dir": str(data_dir),
    "model": model,
    "plain": plain,
    "train_docs": train_docs,
    "val_docs": val_docs,
  }


def _config(env, **data_fields):
  c = smoke.get_config()
  c.data.source, c.data.tfds_name, c.data.data_dir = "tfds", NAME, env["data_dir"]
  c.data.tokenizer = env["model"]
  for key, value in data_fields.items():
    c.data[key] = value
  return c


@pytest.fixture(scope="module")
def corpus(env):
  return data.load_corpus(_config(env).data)


def test_sentencepiece_round_trip_and_special_ids(env):
  tok = data.make_tokenizer(env["model"])
  assert isinstance(tok, data.SentencePieceTokenizer) and tok.vocab_size == 800
  assert tok.eos_id == tok.sp.eos_id() and tok.sp.id_to_piece(tok.newline_id) == "<0x0A>"
  texts = [text for _, text in env["val_docs"][:10]]
  texts += ["", "\n", "a\n\n  b \t\n", "  leading and trailing  ", "naïve café — ☃ 🎉\r\n"]
  encoded = tok.encode_batch(texts)
  for text, ids in zip(texts, encoded):
    assert tok.decode(ids) == text
    np.testing.assert_array_equal(tok.encode(text.encode()), ids)  # bytes or str
    assert ids.dtype == np.int32 and tok.eos_id not in ids and ids.max(initial=0) < 800
  assert tok.decode(np.append(encoded[0], tok.eos_id)) == texts[0]  # EOS is dropped
  assert tok.name.startswith("sentencepiece:") and len(tok.name) == len("sentencepiece:") + 64

  plain = tokenizers.make_tokenizer(env["plain"])  # no eos, no byte fallback
  n = plain.sp.vocab_size()
  assert (plain.eos_id, plain.newline_id, plain.vocab_size) == (n, n + 1, n + 2)
  text = "def f(x):\n    return x + 1\n"
  ids = plain.encode(text)
  assert list(ids).count(n + 1) == 2 and plain.decode(ids) == text


def test_feistel_is_a_permutation():
  for n in (1, 2, 3, 7, 64, 1000, 4097):
    perm = data_tfds.feistel_permutation(np.arange(n), n, (0, 0))
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
  a = data_tfds.feistel_permutation(np.arange(1000), 1000, (0, 0))
  assert not np.array_equal(a, data_tfds.feistel_permutation(np.arange(1000), 1000, (0, 1)))
  assert not np.array_equal(a, np.arange(1000))
  # Pointwise: any subset of positions gives the same values, C4-sized n included.
  np.testing.assert_array_equal(data_tfds.feistel_permutation([5, 999], 1000, (0, 0)), a[[5, 999]])
  big = data_tfds.feistel_permutation(np.arange(10_000), 365_000_000, (3, 2))
  assert big.max() < 365_000_000 and len(np.unique(big)) == 10_000


def test_corpus_and_fingerprint(env, corpus, tmp_path):
  n_train, n_val = len(env["train_docs"]), len(env["val_docs"])
  assert len(corpus.train.source) == n_train and len(corpus.val.source) == n_val
  assert n_train > 200 and n_val > 10 and corpus.n_files == n_train + n_val
  assert corpus.vocab_size == 800 and corpus.info["name"] == "stdlib_docs/1.0.0"
  assert 100 < corpus.mean_doc_tokens and len(corpus.train) > len(corpus.val) > 0
  # The fingerprint covers the dataset's identity and the tokenizer, not where it lies.
  copy = tmp_path / "copy"
  shutil.copytree(env["data_dir"], copy)
  assert data.load_corpus(_config(env, data_dir=str(copy)).data).fingerprint == corpus.fingerprint
  for other in (
    _config(env, tokenizer="byte"),
    _config(env, tokenizer=env["plain"]),
    _config(env, val_split="train[:10%]"),
    _config(env, text_key="text", train_split="train[:50%]"),
  ):
    assert data.load_corpus(other.data).fingerprint != corpus.fingerprint


def test_batches_are_a_function_of_seed_and_step(env, corpus):
  a = data.Batches(corpus, seed=3, batch_size=8, seq_len=32)
  assert isinstance(a, data_tfds.TfdsBatches) and a.K == 1  # documents are > 33 tokens
  first = [a.train(s) for s in range(4)]  # steps 1..3 come from the prefetch thread
  fresh = data.Batches(corpus, seed=3, batch_size=8, seq_len=32)
  for s in (2, 0, 3):  # a resumed run, any order
    np.testing.assert_array_equal(fresh.train(s), first[s])
  assert first[0].shape == (8, 33) and first[0].dtype == np.int32
  assert not np.array_equal(first[0], first[1])
  other_seed = data.Batches(corpus, seed=4, batch_size=8, seq_len=32)
  assert not np.array_equal(other_seed.train(2), first[2])
  # Row g starts at the first token of document pi_epoch(j * K).
  n = len(corpus.train.source)
  for step in (2, (3 * n) // 8 + 1):  # epoch 0 and epoch 3
    g = step * 8 + np.arange(8)
    epoch, j = np.divmod(g, n)
    docs = [int(data_tfds.feistel_permutation([jj], n, (3, int(e)))[0]) for e, jj in zip(epoch, j)]
    expected = [ids[:33] for ids in corpus.tokenize(corpus.train, docs)]
    np.testing.assert_array_equal(a.train(step), np.stack(expected))


def test_rows_pack_several_documents(corpus):
  seq_len = int(2.5 * corpus.mean_doc_tokens)
  b = data.Batches(corpus, seed=0, batch_size=4, seq_len=seq_len)
  assert b.K == math.ceil((seq_len + 1) / corpus.mean_doc_tokens) == 3
  rows = b.train(1)
  assert rows.shape == (4, seq_len + 1)
  # Every row is whole documents separated by EOS: at least one EOS inside each row.
  assert all((row == corpus.tokenizer.eos_id).sum() >= 1 for row in rows)
  explicit = data.Batches(
    data_tfds.TfdsCorpus(**{**corpus.__dict__, "docs_per_row": 5}), seed=0, batch_size=4, seq_len=64
  )
  assert explicit.K == 5 and explicit.rows_per_epoch == len(corpus.train.source) // 5


def test_each_process_reads_only_its_rows(corpus):
  full = data.Batches(corpus, seed=0, batch_size=8, seq_len=48)
  parts = [
    data.Batches(corpus, seed=0, batch_size=8, seq_len=48, process_index=i, process_count=4)
    for i in range(4)
  ]
  for step in (0, 7):
    np.testing.assert_array_equal(np.concatenate([p.train(step) for p in parts]), full.train(step))
    assert parts[2].train(step).shape == (2, 49)
  np.testing.assert_array_equal(np.concatenate([p.eval(3)[2] for p in parts]), full.eval(3)[2])


def test_eval_windows_are_the_packed_validation_split(corpus):
  b = data.Batches(corpus, seed=0, batch_size=4, seq_len=16)
  batches = b.eval(2)
  stream = np.concatenate(corpus.tokenize(corpus.val, range(len(corpus.val.source))))
  assert len(b._val_stream) < len(stream)  # read only what two batches need
  np.testing.assert_array_equal(np.concatenate(batches)[:, :16].ravel(), stream[: 2 * 4 * 16])


def test_stdlib_source_with_a_sentencepiece_model(env, monkeypatch, tmp_path):
  root, files = data.stdlib_files()
  monkeypatch.setattr(data, "stdlib_files", lambda: (root, files[:40]))
  c = data.load_stdlib.__wrapped__(env["model"], 3, str(tmp_path))
  held_out = sum(data.is_validation(str(p.relative_to(root)), 3) for p in files[:40])
  tok = data.make_tokenizer(env["model"])
  assert np.sum(c.train == tok.eos_id) == 40 - held_out and c.vocab_size == 800
  assert c.fingerprint != data.load_stdlib.__wrapped__("byte", 3, str(tmp_path)).fingerprint


def _errors(c) -> str:
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, 1)
  return str(e.value)


def test_validation_errors(env, tmp_path):
  not_a_model = tmp_path / "junk.model"
  not_a_model.write_bytes(b"not a model")
  msg = _errors(_config(env, data_dir="", tokenizer=str(tmp_path / "missing.model"), text_key=""))
  assert "data.data_dir='': data.source='tfds' reads a dataset prepared" in msg
  assert "missing.model': allowed 'byte' or the path (local or gs://)" in msg
  assert "data.text_key='': must be a non-empty string" in msg  # all reported at once
  assert "no such directory" in _errors(_config(env, data_dir=str(tmp_path / "nope")))
  assert "not a readable SentencePiece model" in _errors(_config(env, tokenizer=str(not_a_model)))
  assert "data.source='c4': allowed stdlib, tfds" in _errors(_config(env, source="c4"))
  assert "data.docs_per_row=-1" in _errors(_config(env, docs_per_row=-1))
  small = _config(env)
  small.model.vocab_size = 512
  assert "model.vocab_size=512 is smaller than the 800 ids" in _errors(small)
  resolved = config_lib.validate(_config(env), 1)
  assert resolved.model.vocab_size == 800
  # Problems only visible when the dataset is opened: found by validation (before anything is
  # written), and by loading.
  for fields, needle in (
    ({"tfds_name": "nonexistent_ds:1.0.0"}, "data.tfds_name='nonexistent_ds:1.0.0': no prepared"),
    ({"val_split": "test"}, "data.val_split='test': not a split of stdlib_docs/1.0.0; allowed: "),
    (
      {"text_key": "body"},
      "data.text_key='body': not a feature of stdlib_docs/1.0.0; allowed: text",
    ),
  ):
    assert needle in _errors(_config(env, **fields))
    with pytest.raises(ValueError) as e:
      data.load_corpus(_config(env, **fields).data)
    assert needle in str(e.value)


def test_train_end_to_end_and_resume(env, corpus, tmp_path, caplog):
  c = _config(env)
  c.total_steps, c.eval_every, c.checkpoint_every = 12, 6, 6
  entry = train.train_and_evaluate(c, str(tmp_path))
  assert entry["status"] == "complete"
  d = entry["data"]
  assert (d["source"], d["tokenizer"], d["fingerprint"]) == (
    "tfds",
    env["model"],
    corpus.fingerprint,
  )
  assert entry["model"]["vocab_size"] == 800 and d["tokens_seen"] == 12 * 8 * 64
  loss = entry["eval"]["loss"]
  assert math.isfinite(loss) and loss < math.log(800)
  assert train.train_and_evaluate(c, str(tmp_path)) == entry  # finished: reported as is
  # An interrupted run (last checkpoint and entry gone) resumes at step 6 on the same batches.
  (tmp_path / "log_entry.json").unlink()
  shutil.rmtree(tmp_path / "checkpoints" / "12")
  with caplog.at_level(logging.INFO):
    resumed = train.train_and_evaluate(c, str(tmp_path))
  assert "from step 6" in caplog.text and resumed["run_id"] == entry["run_id"]
  assert resumed["eval"]["loss"] == pytest.approx(loss, rel=1e-6)
  assert resumed["train"]["final_train_loss"] == pytest.approx(
    entry["train"]["final_train_loss"], rel=1e-6
  )
  assert json.loads((tmp_path / "log_entry.json").read_text())["status"] == "complete"
