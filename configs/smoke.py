"""A tiny CPU config (a few seconds per run) used by the tests and the quick start."""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  c.model.size = "0.1m"
  c.total_steps = 60
  c.batch_size = 8
  c.seq_len = 64
  c.optimizer.lr = 1e-2
  c.eval_every = 30
  c.eval_batches = 2
  c.checkpoint_every = 20
  c.log_every = 10
  return c
