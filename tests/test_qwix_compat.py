"""Cross-check our masks against google/qwix (optional `compat` extra; skipped without it).

qwix exposes its mask functions only under `qwix._src.core.sparsity` (a private path: if a
qwix release moves it, this test skips rather than fails). Recipe from
shared/reference/CODEBASES.md §3.2: continuous random scores (no ties; on ties qwix's
`lax.top_k` keeps the *first* n of a group while jaxpruner and we keep the last n), and
order='C' (groups along the second-to-last axis, the reduction dim of a weight) == axis=0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compress_scaling import sparsity as sp

qsp = pytest.importorskip("qwix._src.core.sparsity")


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (2, 8)])
def test_nm_mask_matches_qwix(n, m):
  w = jax.random.normal(jax.random.PRNGKey(n * 10 + m), (64, 128), jnp.float32)
  ours_c = np.asarray(sp.nm_mask(w, n, m, axis=0))  # contraction axis of [D_in, F]
  ours_r = np.asarray(sp.nm_mask(w, n, m, axis=1))
  theirs_c = np.asarray(qsp.get_sparsity_mask(w, n, m, order="C")).astype(bool)
  theirs_r = np.asarray(qsp.get_sparsity_mask(w, n, m, order="R")).astype(bool)
  np.testing.assert_array_equal(ours_c, theirs_c)
  np.testing.assert_array_equal(ours_r, theirs_r)
  assert ours_c.sum() == w.size * n // m


@pytest.mark.parametrize("s", [0.5, 0.75])
def test_magnitude_mask_matches_qwix_unstructured(s):
  # qwix thresholds at the (interpolated) percentile with `>`; on 8192 tie-free scores that
  # keeps exactly round(size * (1 - s)) weights for these s, so the masks must coincide.
  w = jax.random.normal(jax.random.PRNGKey(3), (64, 128), jnp.float32)
  ours = np.asarray(sp.magnitude_mask(w, s))
  theirs = np.asarray(qsp.get_sparsity_mask_unstructured(w, None, s * 100)).astype(bool)
  np.testing.assert_array_equal(ours, theirs)
  assert ours.sum() == round(w.size * (1 - s))
