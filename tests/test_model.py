"""Model shapes, causality, GQA and exact parameter counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compress_scaling import compression, model, sizes

TINY = sizes.Dims(32, 2, 4, 2, 64)  # GQA: 4 query heads share 2 kv heads


def _model(dims=TINY, vocab=64, tie=False):
  cfg = model.ModelConfig(dims=dims, vocab_size=vocab, tie_embeddings=tie)
  return model.Transformer(cfg, compression.Plan())


@pytest.mark.parametrize("tie", [False, True])
def test_shapes(tie):
  m = _model(tie=tie)
  tokens = jnp.zeros((3, 16), jnp.int32)
  variables = m.init(jax.random.key(0), tokens)
  logits = m.apply(variables, tokens)
  assert logits.shape == (3, 16, 64) and logits.dtype == jnp.float32
  params = nn.meta.unbox(variables["params"])
  assert ("lm_head" in params) is (not tie)
  # GQA: k/v project to n_kv_heads * head_dim = 2 * 8.
  assert params["block_0"]["attn"]["k"]["dense"]["kernel"].shape == (32, 16)
  assert params["block_0"]["attn"]["q"]["dense"]["kernel"].shape == (32, 32)


def test_causal():
  """Changing token t changes no logit before t, and does change logits at t."""
  m = _model()
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 64, (1, 12)), jnp.int32)
  variables = m.init(jax.random.key(1), tokens)
  base = m.apply(variables, tokens)
  for t in (0, 5, 11):
    changed = tokens.at[0, t].set((tokens[0, t] + 1) % 64)
    out = m.apply(variables, changed)
    np.testing.assert_array_equal(out[0, :t], base[0, :t])
    assert not np.allclose(out[0, t], base[0, t])


def test_params_carry_logical_axes():
  m = _model()
  boxed = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  specs = nn.get_partition_spec(boxed)
  assert specs["block_0"]["mlp"]["up"]["dense"]["kernel"] == jax.sharding.PartitionSpec(
    "embed", "mlp"
  )
  assert specs["block_0"]["mlp"]["out"]["dense"]["kernel"] == jax.sharding.PartitionSpec(
    "mlp", "embed"
  )
  assert specs["embed"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")


@pytest.mark.parametrize("name", ["0.1m", "1m", "5m", "30m", "74m", "800m", "973m"])
def test_param_counts_match_ladder_formula(name):
  dims = sizes.LADDER[name]
  m = _model(dims=dims, vocab=256)
  boxed = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  n, total = model.count_params(boxed)
  assert n == sizes.non_embedding_params(dims)
  assert total == n + 2 * 256 * dims.d_model  # untied embedding + LM head


def test_ladder_names_match_counts():
  """Each ladder name is within 12% of its non-embedding count (names are approximate)."""
  for name, dims in sizes.LADDER.items():
    target = float(name[:-1]) * 1e6
    assert abs(sizes.non_embedding_params(dims) / target - 1) < 0.12, name


def test_cross_entropy_token_weighted():
  logits = jnp.log(jnp.asarray([[[0.5, 0.5], [0.9, 0.1]]]))
  targets = jnp.asarray([[0, 1]])
  loss, n = model.cross_entropy(logits, targets, jnp.asarray([[1.0, 3.0]]))
  np.testing.assert_allclose(loss, (np.log(2) + 3 * np.log(10)) / 4, rtol=1e-6)
  assert n == 4
