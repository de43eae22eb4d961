"""The offline corpus and its deterministic, per-process batches."""

import numpy as np

from compress_scaling import data


def _corpus():
  return data.load_stdlib("byte", 3, "")


def test_corpus_split_and_fingerprint():
  corpus = _corpus()
  root, files = data.stdlib_files()
  rel = [str(f.relative_to(root)) for f in files]
  held_out = [r for r in rel if data.is_validation(r, 3)]
  assert 0.01 < len(held_out) / len(rel) < 0.06  # ~3% of files by path hash
  assert corpus.n_files == len(files) and len(corpus.val) < len(corpus.train)
  # Documents are separated by EOS, and there is one per file in each split.
  assert np.sum(corpus.val == data.EOS) == len(held_out)
  assert np.sum(corpus.train == data.EOS) == len(rel) - len(held_out)
  assert (
    corpus.train.max() < 256 and corpus.fingerprint == data.load_stdlib.__wrapped__().fingerprint
  )


def test_batches_are_a_function_of_seed_and_step():
  corpus = _corpus()
  a = data.Batches(corpus, seed=3, batch_size=8, seq_len=32)
  b = data.Batches(corpus, seed=3, batch_size=8, seq_len=32)
  np.testing.assert_array_equal(a.train(17), b.train(17))  # fresh iterator, same step
  assert a.train(17).shape == (8, 33)
  assert not np.array_equal(a.train(17), a.train(18))
  assert not np.array_equal(
    a.train(17), data.Batches(corpus, seed=4, batch_size=8, seq_len=32).train(17)
  )
  # Rows are contiguous windows of the packed stream.
  row = a.train(5)[0]
  starts = np.flatnonzero(
    np.all(
      np.lib.stride_tricks.sliding_window_view(corpus.train[: len(corpus.train)], 33)[::32] == row,
      axis=1,
    )
  )
  assert len(starts) == 1


def test_each_process_reads_only_its_rows():
  corpus = _corpus()
  full = data.Batches(corpus, seed=0, batch_size=8, seq_len=16)
  parts = [
    data.Batches(corpus, seed=0, batch_size=8, seq_len=16, process_index=i, process_count=4)
    for i in range(4)
  ]
  for step in (0, 9):
    np.testing.assert_array_equal(np.concatenate([p.train(step) for p in parts]), full.train(step))
    assert parts[1].train(step).shape == (2, 17)
  np.testing.assert_array_equal(np.concatenate([p.eval(2)[1] for p in parts]), full.eval(2)[1])


def test_epoch_wraps_with_a_new_permutation():
  corpus = data.Corpus(
    np.arange(1, 82, dtype=np.uint16), np.arange(1, 20, dtype=np.uint16), "fp", 1, 256
  )
  b = data.Batches(corpus, seed=0, batch_size=2, seq_len=8)  # 10 windows: 5 steps per epoch
  epoch0 = np.concatenate([b.train(s)[:, 0] for s in range(5)])
  epoch1 = np.concatenate([b.train(s)[:, 0] for s in range(5, 10)])
  assert sorted(epoch0) == sorted(epoch1) == list(range(1, 81, 8))  # each window once per epoch
  assert not np.array_equal(epoch0, epoch1)
