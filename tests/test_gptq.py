"""RTN and GPTQ (`compress_scaling.ptq.gptq`) against an independent NumPy GPTQ, plus properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compress_scaling.ptq import gptq as G
from compress_scaling.quant import QuantSpec, parse_quant_term, quantize
from compress_scaling.quant.quantize import quant_scale, round_with_scale

# -- an independent NumPy GPTQ (float64, W[out, in] as in the paper) ------------------------------


def np_absmax_scale(W, bits):
  """Symmetric absmax int scale per output row of W[out, cols] (max |w| -> edge Q + 1/2)."""
  amax = np.abs(W).max(axis=1, keepdims=True)
  amax[amax == 0] = 1.0
  return amax / (2 ** (bits - 1) - 1 + 0.5)


def np_quant(x, scale, bits):
  q = 2 ** (bits - 1) - 1
  return np.clip(np.round(x / scale), -q, q) * scale  # np.round: half to even


def np_gptq(W, H, bits, blocksize=128, percdamp=0.01, groupsize=-1, actorder=False):
  """IST-DASLab/gptq `GPTQ.fasterquant` (static_groups=False), line by line, with the
  symmetric absmax int quantizer above in place of the reference's min-max Quantizer."""
  W = np.array(W, np.float64)
  H = np.array(H, np.float64)
  columns = W.shape[1]
  scale = np_absmax_scale(W, bits)  # quantizer.find_params(W, weight=True)

  dead = np.diag(H) == 0
  H[dead, dead] = 1
  W[:, dead] = 0
  if actorder:
    perm = np.argsort(-np.diag(H), kind="stable")
    W = W[:, perm]
    H = H[perm][:, perm]
    invperm = np.argsort(perm)

  Q = np.zeros_like(W)
  damp = percdamp * np.mean(np.diag(H))
  diag = np.arange(columns)
  H[diag, diag] += damp
  H = np.linalg.cholesky(H)
  H = np.linalg.inv(H @ H.T)  # torch.cholesky_inverse
  H = np.linalg.cholesky(H).T  # torch.linalg.cholesky(H, upper=True)
  Hinv = H

  for i1 in range(0, columns, blocksize):
    i2 = min(i1 + blocksize, columns)
    count = i2 - i1
    W1 = W[:, i1:i2].copy()
    Q1 = np.zeros_like(W1)
    Err1 = np.zeros_like(W1)
    Hinv1 = Hinv[i1:i2, i1:i2]
    for i in range(count):
      w = W1[:, i]
      d = Hinv1[i, i]
      if groupsize != -1 and (i1 + i) % groupsize == 0:
        scale = np_absmax_scale(W[:, (i1 + i) : (i1 + i + groupsize)], bits)
      q = np_quant(w[:, None], scale, bits).flatten()
      Q1[:, i] = q
      err1 = (w - q) / d
      W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
      Err1[:, i] = err1
    Q[:, i1:i2] = Q1
    W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
  if actorder:
    Q = Q[:, invperm]
  return Q


# -- layers ---------------------------------------------------------------------------------------


def layer(d_in, f, n=512, seed=0, dead=()):
  """Kernel w[d_in, f] and Hessian of correlated inputs x = z @ M (z iid normal, M random)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d_in)) @ rng.normal(size=(d_in, d_in)) / np.sqrt(d_in)
  x[:, list(dead)] = 0.0
  w = rng.normal(size=(d_in, f)) / np.sqrt(d_in)
  return w.astype(np.float32), np.asarray(G.hessian(jnp.asarray(x, jnp.float32)))


INT4 = QuantSpec(bits=4)  # int, channel, absmax, nearest = np_absmax_scale / np_quant at 4 bits
INT3_G32 = QuantSpec(bits=3, group_size=32)  # the same per group of 32 input rows at 3 bits


@pytest.mark.parametrize("bits,spec", [(4, INT4), (3, INT3_G32)])
def test_numpy_quantizer_is_ours(bits, spec):
  w = np.random.default_rng(1).normal(size=(64, 48)).astype(np.float32)
  g = spec.group_size or 64
  ref = np.concatenate(
    [
      np_quant(b.T.astype(np.float64), np_absmax_scale(b.T, bits), bits).T
      for b in np.split(w, 64 // g)
    ]
  )
  np.testing.assert_allclose(np.asarray(quantize(w, spec, axis=0)), ref, rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(G.rtn(w, spec)), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
  "bits,spec,d_in,block_size",
  [
    (4, INT4, 128, 128),  # one block
    (4, INT4, 160, 64),  # three blocks, the last one partial
    (3, INT3_G32, 128, 64),  # groups starting inside a block: scale from the block-start W
    (3, INT3_G32, 128, 16),  # groups spanning blocks
    (3, QuantSpec(bits=3, group_size=48), 192, 64),  # groups straddling a block boundary
  ],
)
@pytest.mark.parametrize("act_order", [False, True])
def test_matches_numpy_reference(bits, spec, d_in, block_size, act_order):
  w, h = layer(d_in, 48, seed=d_in + block_size)
  got = G.gptq(w, h, spec, block_size=block_size, act_order=act_order)
  ref = np_gptq(
    w.T, h, bits, blocksize=block_size, groupsize=spec.group_size or -1, actorder=act_order
  ).T
  assert got.dtype == jnp.float32 and got.shape == w.shape
  # Observed max |difference| ~1e-7 (float32 vs float64; weights ~0.1); no rounding flips.
  np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=1e-5)


def test_dead_inputs_match_reference_and_are_zeroed():
  dead = (3, 17, 40)
  w, h = layer(64, 32, seed=5, dead=dead)
  assert np.all(np.diag(h)[list(dead)] == 0)
  for act_order in (False, True):
    got = np.asarray(G.gptq(w, h, INT4, block_size=32, act_order=act_order))
    ref = np_gptq(w.T, h, 4, blocksize=32, actorder=act_order).T
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert np.all(got[list(dead)] == 0.0) and np.all(np.isfinite(got))


# -- GPTQ beats RTN -------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "term,act_order",
  # Observed GPTQ / RTN error ratios on this layer (seed 0): w4a16 0.47, w3a16 0.49,
  # w4a16-g32 0.47, w3a16-g32 0.51; with act_order w3a16-g32 0.50 (w4a16 0.44, w3a16 0.45,
  # w4a16-g32 0.45). We require < 0.7.
  [("w4a16", False), ("w3a16", False), ("w4a16-g32", False), ("w3a16-g32", False)]
  + [("w3a16-g32", True)],
)
def test_gptq_beats_rtn(term, act_order, max_ratio=0.7):
  spec = parse_quant_term(term)[0]
  w, h = layer(128, 64, seed=0)
  e_gptq = G.reconstruction_error(w, G.gptq(w, h, spec, act_order=act_order), h)
  e_rtn = G.reconstruction_error(w, G.rtn(w, spec), h)
  assert float(e_gptq) < max_ratio * float(e_rtn), (float(e_gptq), float(e_rtn))


# -- every deterministic weight spec --------------------------------------------------------------

TERMS = (
  "w2a16",
  "w4a16-tensor",
  "w4a16-gmse",
  "w2a16-gmse-g32",
  "w4a16-mse",
  "w3a16-g32-mse",
  "wfp4a16",
  "wfp8a16-tensor",
  "we3m2a16-g32",
  "wmxfp4a16",
  "wmxint8a16",
  "w1.58a16",
  "w1.58a16-g32",
  "w1a16",
)


@pytest.mark.parametrize("term", TERMS)
def test_specs_land_on_grid(term):
  spec = parse_quant_term(term)[0]
  w, h = layer(128, 32, seed=3)
  w_hat, scale = G.gptq(w, h, spec, act_order=True, return_scale=True)
  w_hat, scale = np.asarray(w_hat), np.asarray(scale)
  assert w_hat.dtype == np.float32 and w_hat.shape == scale.shape == w.shape
  assert np.all(np.isfinite(w_hat))
  # On the grid: rounding again with the same scales reproduces w_hat exactly.
  np.testing.assert_array_equal(np.asarray(round_with_scale(w_hat, scale, spec)), w_hat)
  if spec.granularity != "group":  # scales from the original w, as rtn's
    s, _ = quant_scale(w, spec, 0)
    np.testing.assert_array_equal(scale, np.broadcast_to(np.asarray(s), w.shape))
    np.testing.assert_array_equal(
      np.asarray(round_with_scale(w_hat, s, spec)), w_hat
    )  # i.e. rtn's rounding with rtn's scales keeps w_hat
  else:  # one scale per (group of G consecutive act_order rows, output column)
    perm = np.argsort(-np.diag(h), kind="stable")
    groups = scale[perm].reshape(-1, spec.group_size, w.shape[1])
    assert np.all(groups == groups[:, :1])
  e_gptq = float(G.reconstruction_error(w, w_hat, h))
  e_rtn = float(G.reconstruction_error(w, G.rtn(w, spec), h))
  assert e_gptq < e_rtn, (e_gptq, e_rtn)


# -- damp, act_order, jit -------------------------------------------------------------------------


def test_damp():
  w, h = layer(64, 32, seed=7)
  base = np.asarray(G.gptq(w, h, INT4))
  assert not np.array_equal(np.asarray(G.gptq(w, h, INT4, damp=0.1)), base)
  # A huge damp makes H ~ c I: no error is propagated and GPTQ becomes RTN.
  np.testing.assert_array_equal(
    np.asarray(G.gptq(w, h, INT4, damp=1e6)), np.asarray(G.rtn(w, INT4))
  )
  # A rank-deficient H (fewer calibration rows than inputs) needs the damping.
  x = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
  h_low = G.hessian(x)
  assert np.all(np.isfinite(np.asarray(G.gptq(w, h_low, INT4))))
  with pytest.raises(ValueError, match="not positive definite"):
    G.gptq(w, h_low, INT4, damp=0.0)


@pytest.mark.parametrize("spec", [INT4, INT3_G32])
def test_act_order_unpermutes(spec):
  """act_order sorts the inputs by H_ii, so permuting the inputs first permutes the output."""
  w, h = layer(96, 32, seed=11)
  p = np.random.default_rng(0).permutation(96)
  out = np.asarray(G.gptq(w, h, spec, block_size=32, act_order=True))
  out_p = np.asarray(G.gptq(w[p], h[p][:, p], spec, block_size=32, act_order=True))
  np.testing.assert_allclose(out_p, out[p], rtol=0, atol=1e-6)
  # Without act_order the result depends on the input order, and act_order changes it.
  assert not np.allclose(np.asarray(G.gptq(w, h, spec, block_size=32)), out, atol=1e-6)


def test_jit_and_unquantized():
  w, h = layer(64, 16, seed=2)
  f = jax.jit(lambda w, h: G.gptq(w, h, INT3_G32, block_size=32, act_order=True))
  np.testing.assert_array_equal(
    np.asarray(f(w, h)), np.asarray(G.gptq(w, h, INT3_G32, block_size=32, act_order=True))
  )
  wb = jnp.asarray(w, jnp.bfloat16)
  assert G.gptq(wb, h, INT4).dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(G.gptq(w, h, None)), w)
  np.testing.assert_array_equal(np.asarray(G.rtn(w, None)), w)


# -- Hessian and objective ------------------------------------------------------------------------


def test_hessian_streaming_and_objective():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(3, 20, 16)).astype(np.float32)  # [B, L, D]: 60 rows
  x2 = x.reshape(-1, 16).astype(np.float64)
  h = np.asarray(G.hessian(x))
  np.testing.assert_allclose(h, 2.0 / 60 * x2.T @ x2, rtol=1e-5, atol=1e-6)
  acc, count = jnp.zeros((16, 16)), 0
  for batch in (x[0], x[1:], x[:0]):  # batches of 20, 40 and 0 rows
    acc, count = G.hessian_update(acc, count, batch)
  assert count == 60 and isinstance(count, int)
  np.testing.assert_allclose(np.asarray(acc), h, rtol=1e-5, atol=1e-6)
  acc, count = jax.jit(G.hessian_update)(jnp.zeros((16, 16)), jnp.asarray(0.0), x)
  assert float(count) == 60
  np.testing.assert_allclose(np.asarray(acc), h, rtol=1e-5, atol=1e-6)
  w = rng.normal(size=(16, 8)).astype(np.float32)
  w_hat = np.asarray(G.rtn(w, INT4))
  mse = 2.0 / 60 * np.sum((x2 @ (w - w_hat)) ** 2)
  np.testing.assert_allclose(float(G.reconstruction_error(w, w_hat, h)), mse, rtol=1e-4)


# -- the quantize.py helpers ----------------------------------------------------------------------


@pytest.mark.parametrize("term", ("w4a16-g16",) + TERMS)
def test_quant_scale_and_round_with_scale_reproduce_quantize(term):
  spec = parse_quant_term(term)[0]
  x = np.random.default_rng(6).standard_t(4, size=(64, 32)).astype(np.float32)
  s, view = quant_scale(x, spec, 0)
  got = round_with_scale(jnp.asarray(x).reshape(view), s, spec).reshape(x.shape)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(quantize(x, spec, axis=0)))
  # Activation layout: [B, L, D] with one scale per token (axis -1).
  a = x.reshape(4, 16, 32)
  s, view = quant_scale(a, spec, -1)
  got = round_with_scale(jnp.asarray(a).reshape(view), s, spec).reshape(a.shape)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(quantize(a, spec, axis=-1)))


# -- errors ---------------------------------------------------------------------------------------


def test_errors():
  w, h = layer(64, 16, seed=9)
  with pytest.raises(ValueError, match=r"rounding='stochastic'.*allowed: 'nearest'"):
    G.gptq(w, h, parse_quant_term("w4a16-sr")[0])
  with pytest.raises(ValueError, match=r"rounding='stochastic'.*allowed: 'nearest'"):
    G.rtn(w, parse_quant_term("w4a16-sr")[0])
  with pytest.raises(ValueError, match=r"hadamard=32.*allowed: 0"):
    G.gptq(w, h, parse_quant_term("w4a16-had32")[0])
  with pytest.raises(ValueError, match=r"hadamard=32.*allowed: 0"):
    G.rtn(w, parse_quant_term("w4a16-had32")[0])
  with pytest.raises(ValueError, match=r"does not match w of shape \(64, 16\)"):
    G.gptq(w, h[:32, :32], INT4)
  with pytest.raises(ValueError, match="H must be a square matrix"):
    G.gptq(w, h[:, :32], INT4)
  with pytest.raises(ValueError, match="H must be a square matrix"):
    G.gptq(w, h[0], INT4)
  with pytest.raises(ValueError, match="2-D kernel"):
    G.gptq(w.reshape(64, 4, 4), h, INT4)
  with pytest.raises(ValueError, match="block_size=0"):
    G.gptq(w, h, INT4, block_size=0)
  with pytest.raises(ValueError, match="group_size=48 does not divide the input dim D_in 64"):
    G.gptq(w, h, QuantSpec(bits=4, group_size=48))
  with pytest.raises(ValueError, match="h must be square"):
    G.hessian_update(h, 0, np.zeros((5, 32), np.float32))
  with pytest.raises(ValueError, match="allowed: 'nearest'"):
    round_with_scale(w, 1.0, parse_quant_term("w4a16-sr")[0])
  with pytest.raises(ValueError, match="allowed: hadamard=0"):
    quant_scale(w, parse_quant_term("w4a16-had32")[0], 0)
