"""Quantization inside training: specs train and are logged, per-layer rules, attention
matmuls by rule, the integer serving path and the eval diagnostics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compress_scaling import compression, config_lib, model, quant, sizes, train
from configs import smoke


def _run(tmp_path, spec, **fields):
  c = smoke.get_config()
  c.compression = spec
  for key, value in fields.items():
    c[key] = value
  return train.train_and_evaluate(c, str(tmp_path))


@pytest.fixture(scope="module")
def dense_loss(tmp_path_factory):
  return _run(tmp_path_factory.mktemp("dense"), "dense")["eval"]["loss"]


def test_w8a8_within_2_percent_of_dense(tmp_path, dense_loss):
  entry = _run(tmp_path, "w8a8")
  assert entry["compression"]["spec"] == "w8a8"
  assert abs(entry["eval"]["loss"] / dense_loss - 1) < 0.02


@pytest.mark.parametrize(
  "spec,bits",
  [
    pytest.param("w4a16", 4.0, marks=pytest.mark.slow),
    ("w4a4", 4.0),
    pytest.param("w4a4-g32", 4.5, marks=pytest.mark.slow),
    pytest.param("w2a16", 2.0, marks=pytest.mark.slow),
    pytest.param("w1a16", 1.0, marks=pytest.mark.slow),
    pytest.param("wfp4a16", 4.0, marks=pytest.mark.slow),
    pytest.param("wmxfp4amxfp4", 4.25, marks=pytest.mark.slow),
  ],
)
def test_low_bit_specs_train_and_are_logged(tmp_path, dense_loss, spec, bits):
  entry = _run(tmp_path, spec)
  comp = entry["compression"]
  assert entry["status"] == "complete" and comp["spec"] == spec
  assert comp["bits_per_param"] == pytest.approx(bits)
  assert comp["weights"]["bits"] is not None
  assert (comp["activations"] is None) == spec.endswith("a16")
  # Training still works: loss far below the ~5.5 nats of an untrained model, and no better
  # than dense by more than noise.
  assert entry["eval"]["loss"] < 3.3
  assert entry["eval"]["loss"] > dense_loss - 0.05
  # model.bits_per_param adds the per-channel scale overhead (16 / d_in) and 16-bit norms.
  # (d_in = 64 here, so up to 0.25 bits of scales per weight).
  assert bits < entry["model"]["bits_per_param"] < bits + 0.35


def test_chen_mixed_precision_rule():
  plan = compression.Plan.from_config("w4a4", "*/mlp/out=w4a8")
  assert str(plan.for_layer("block_3/mlp/out")) == "w4a8"
  assert str(plan.for_layer("block_3/attn/q")) == "w4a4"
  assert str(plan.for_layer("block_3/mlp/gate")) == "w4a4"
  assert plan.for_layer("lm_head").is_dense  # head and attention matmuls: off by default
  assert plan.for_layer("block_3/attn/scores").is_dense
  assert str(compression.Plan.from_config("w4a4", "lm_head=w8a16").for_layer("lm_head")) == "w8a16"


def test_attention_matmuls_quantizable_by_rule():
  cfg = model.ModelConfig(dims=sizes.Dims(32, 1, 4, 4, 64), vocab_size=64)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 16)), jnp.int32)
  dense = model.Transformer(cfg, compression.Plan())
  variables = dense.init(jax.random.key(0), tokens)
  base = dense.apply(variables, tokens)
  for rule in ("*/attn/scores=w2a2", "*/attn/values=w2a2"):
    quantized = model.Transformer(cfg, compression.Plan.from_config("dense", rule))
    out = quantized.apply(variables, tokens)
    assert out.shape == base.shape and not np.allclose(out, base, atol=1e-3), rule


@pytest.mark.slow  # default-suite time: CI runs the fast set in ~15 minutes on 2 cores
def test_serving_path_and_diagnostics(tmp_path):
  entry = _run(
    tmp_path,
    "w4a8",
    eval_serving=True,
    eval_diagnostics=True,
    compression_rules="*/attn/scores=w8a8",
  )
  ev = entry["eval"]
  # int8 codes with int32 accumulation equal fake quant up to float accumulation order.
  assert ev["serving_loss"] == pytest.approx(ev["loss"], rel=1e-4)
  diag = ev["diagnostics"]
  assert set(diag["block_0/mlp/out"]) == {
    "weights_sqnr_db",
    "activations_sqnr_db",
    "input_kurtosis",
  }
  # ~6 dB per bit: 4-bit per-channel weights near 20 dB, 8-bit activations above 40 dB.
  for layer in ("block_0/attn/q", "block_1/mlp/up"):
    assert 15 < diag[layer]["weights_sqnr_db"] < 26
    assert diag[layer]["activations_sqnr_db"] > 38
  assert diag["block_0/attn/scores"]["weights_sqnr_db"] > 38  # w8 on the keys
  assert "input_kurtosis" not in diag["block_0/attn/scores"]


@pytest.mark.parametrize(
  "fields,needle",
  [
    ({"compression": "wfp4a16", "eval_serving": True}, "eval_serving=True: the integer serving"),
    (
      {"compression": "w4a4", "compression_rules": "*/attn/scores=s50"},
      "multiplies two activations; sparsity",
    ),
    ({"compression_rules": "embed=w8a8"}, "embedding lookup has no activation operand"),
    (
      {"compression_rules": "lm_head=w8a16", "model.tie_embeddings": True},
      "compress it with an 'embed=...' rule",
    ),
    ({"compression": "w4a4-g48"}, "group size 48 does not divide the contraction dim 64"),
    ({"compression": "w4a16+2:3"}, "m=3 does not divide the contraction dim 64"),
  ],
)
def test_compression_config_errors(fields, needle):
  c = smoke.get_config()
  for key, value in fields.items():
    if key.startswith("model."):
      c.model[key[6:]] = value
    else:
      c[key] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, 1)
  assert needle in str(e.value), str(e.value)


def test_embedding_table_quantized_by_rule():
  """`embed=w4a16` quantizes the lookup table per token vector: every row of the looked-up
  embeddings then holds at most 15 distinct values (int4 levels -7..7 times its scale)."""
  cfg = model.ModelConfig(dims=sizes.Dims(32, 1, 4, 4, 64), vocab_size=64)
  tokens = jnp.arange(64, dtype=jnp.int32)[None]
  dense = model.Transformer(cfg, compression.Plan())
  variables = dense.init(jax.random.key(0), tokens)
  table = np.asarray(nn.meta.unbox(variables["params"])["embed"]["embedding"])
  quantized = model.Transformer(cfg, compression.Plan.from_config("dense", "embed=w4a16"))
  _, sown = quantized.apply(
    variables, tokens, capture_intermediates=True, mutable=["intermediates"]
  )
  rows = np.asarray(sown["intermediates"]["embed"]["__call__"][0][0])
  assert rows.shape == table.shape
  for row, ref in zip(rows, table):
    assert len(np.unique(row)) <= 15
    scale = np.abs(ref).max() / 7.5  # AQT int4 convention (quant/spec.py)
    np.testing.assert_allclose(row, np.clip(np.round(ref / scale), -7, 7) * scale, rtol=1e-5)


def test_make_dot_general_in_plain_dense():
  w_spec, a_spec = quant.parse_quant_term("w4a8")
  x = jax.random.normal(jax.random.key(1), (3, 16))
  layer = nn.Dense(8, use_bias=False, dot_general=compression.make_dot_general(a_spec, w_spec))
  params = layer.init(jax.random.key(2), x)
  out = layer.apply(params, x)
  w = params["params"]["kernel"]
  expected = quant.quantize(x, a_spec, axis=1) @ quant.quantize(w, w_spec, axis=0)
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  assert not np.allclose(out, x @ w, rtol=1e-3)
