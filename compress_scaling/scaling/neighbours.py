"""The unified law's neighbours: sparse law, QAT error law, PTQ law, parametric eff(bits) fits.

All fits share the Epoch machinery of `fit.py` (log-space parameters, Huber, batched L-BFGS
from a grid). Constants to compare with: `laws.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from compress_scaling.scaling import data as data_mod
from compress_scaling.scaling import fit as fit_mod
from compress_scaling.scaling import laws, optim, specs
from compress_scaling.scaling.data import FitError

# --- Sparse law (Frantar et al. 2023) -------------------------------------------------------


def _sparse_log_pred(theta, aux, data):
  la, b, lc, d, le, f, lg = (theta[i] for i in range(7))
  lN, lD = data["lN"], data["lD"]
  return jax.nn.logsumexp(
    jnp.stack(
      [la + b * data["l1mS"] - d * lN, lc - d * lN, le - f * lD, jnp.broadcast_to(lg, lN.shape)]
    ),
    axis=0,
  )


def _sparse_natural(theta):
  th = np.asarray(theta, float)
  a, b, c, d, e, f, g = (
    np.exp(th[..., 0]),
    th[..., 1],
    np.exp(th[..., 2]),
    th[..., 3],
    np.exp(th[..., 4]),
    th[..., 5],
    np.exp(th[..., 6]),
  )
  # Notebook form (a, ..., g) and paper form: a_S = a, b_S = b, c_S = c, b_N = d,
  # a_D = e^(1/f), b_D = f, c = g.
  return dict(a=a, b=b, c=c, d=d, e=e, f=f, g=g, a_D=e ** (1.0 / f))


SPARSE = fit_mod.LogLaw(
  "sparse", ("log_a", "b", "log_c", "d", "log_e", "f", "log_g"), _sparse_log_pred, _sparse_natural
)
SPARSE_RAW = fit_mod.LogLaw(
  "sparse_raw",
  SPARSE.theta_names,
  lambda th, aux, d: jnp.exp(_sparse_log_pred(th, aux, d)),
  _sparse_natural,
)
SPARSE_GRID = optim.grid(
  [-2, 0, 2], [0.5, 1.5], [-1, 1], [0.2, 0.6], [-2, 0], [0.2, 0.8], [-1, 0, 1]
)


class SparseFit(fit_mod.LawFit):
  """(a (1-S)^b + c) N^-d + e D^-f + g in the units it was fitted in (notebook form)."""

  def predict(self, S, N, D):
    p = self.params
    return laws.sparse_notebook(S, N, D, *(p[k] for k in "abcdefg"))

  def eff(self, S):
    """eff(S) relative to the dense-shape parameter count (laws.sparse_eff)."""
    return laws.sparse_eff(
      S, self.params["a"], self.params["b"], self.params["c"], self.params["d"]
    )


def fit_sparse(
  S,
  N,
  D,
  L,
  *,
  delta: float = 1e-3,
  log: bool = True,
  starts=None,
  normalize: str = "mean",
  bootstrap: int = 0,
  seed: int = 0,
  who: str = "fit_sparse",
) -> SparseFit:
  """Fits the sparse law of Frantar et al. 2023, L = (a_S(1-S)^b_S + c_S) N^-b_N
  + (a_D/D)^b_D + c, N = non-zero parameters, as the official notebook: Huber on log-loss with
  delta = 1e-3 (LMs, log=True) or on the raw loss with delta = 1e-2 (ViT, log=False), objective
  reported as a mean. Normalise N and D yourself (the notebook: N/1e6, T5 steps/1e5)."""
  S, N, D, L = (np.asarray(v, float).ravel() for v in (S, N, D, L))
  if np.any((S < 0) | (S >= 1)):
    raise FitError(f"{who}: sparsity must be in [0, 1); got {np.unique(S[(S < 0) | (S >= 1)])}")
  for name, v in (("N", N), ("D", D), ("loss", L)):
    if np.any(~np.isfinite(v) | (v <= 0)):
      raise FitError(
        f"{who}: {name} must be finite and > 0; bad at positions "
        f"{np.flatnonzero(~np.isfinite(v) | (v <= 0))[:10].tolist()}"
      )
  data_mod.require_distinct(N, "N", 3, who)
  data_mod.require_distinct(D, "D", 2, who)
  data_mod.require_distinct(S, "sparsity levels", 2, who)
  data_mod.require_points(len(L), 7, who)
  law = SPARSE if log else SPARSE_RAW
  data = dict(lN=np.log(N), lD=np.log(D), l1mS=np.log1p(-S), target=np.log(L) if log else L)
  raw = fit_mod.run_law(
    law,
    data,
    SPARSE_GRID if starts is None else starts,
    who=who,
    delta=delta,
    opt=optim.LbfgsOptions(max_evals=3000),
  )
  if bootstrap:
    wb = fit_mod.resample_weights(len(L), bootstrap, seed)
    raw.boot, raw.boot_converged = fit_mod.bootstrap_law(law, data, raw.theta, wb, delta=delta)
  return fit_mod.make_law_fit(
    SparseFit, law, raw, len(L), delta=delta, normalize=normalize, info=dict(delta=delta, log=log)
  )


# --- QAT error law (Chen et al. 2025) ---------------------------------------------------------


def _qat_log_pred(theta, aux, data):
  lk, gN, gD, gG = (theta[i] for i in range(4))
  a, b, e, alpha, beta = (aux[i] for i in range(5))
  lN, lD = data["lN"], data["lD"]
  return jax.nn.logsumexp(
    jnp.stack(
      [
        a - alpha * lN,
        b - beta * lD,
        jnp.broadcast_to(e, lN.shape),
        lk + gD * lD + gG * data["llG"] - gN * lN,
      ]
    ),
    axis=0,
  )


QAT = fit_mod.LogLaw(
  "qat_delta",
  ("log_k", "gamma_N", "gamma_D", "gamma_G"),
  _qat_log_pred,
  lambda th: dict(
    k=np.exp(np.asarray(th)[..., 0]),
    gamma_N=np.asarray(th)[..., 1],
    gamma_D=np.asarray(th)[..., 2],
    gamma_G=np.asarray(th)[..., 3],
  ),
)
QAT_GRID = optim.grid([-4, -2, 0], [0.0, 0.2, 0.5], [0.0, 0.1, 0.3], [0.3, 0.8, 1.5])


class QatFit(fit_mod.LawFit):
  """delta(N, D, G) = k D^gamma_D (log2 G)^gamma_G / N^gamma_N on top of info['base']."""

  def predict_delta(self, N, D, G):
    return laws.qat_delta(N, D, G, **self.params)

  def predict(self, N, D, G):
    b = self.info["base"]
    return laws.chinchilla(
      N, D, b["A"], b["B"], b["E"], b["alpha"], b["beta"]
    ) + self.predict_delta(N, D, G)


def group_sizes(df: pd.DataFrame, per_channel_G="model.d_model") -> np.ndarray:
  """G per run: the spec's -gG, else the per-channel group (the contraction length): a number,
  or a column name (default model.d_model, what a per-channel scale is shared over)."""
  G = np.full(len(df), np.nan)
  if "G" in df.columns:
    G = pd.to_numeric(df["G"], errors="coerce").to_numpy(float)
  for i, c in enumerate(df.compression):
    if np.isnan(G[i]):
      try:
        g = specs.parse_spec(c).group
      except ValueError:
        g = None
      if g:
        G[i] = g
  missing = np.isnan(G)
  if missing.any():
    if isinstance(per_channel_G, str):
      if per_channel_G in df.columns:
        G[missing] = pd.to_numeric(df[per_channel_G], errors="coerce").to_numpy(float)[missing]
    elif per_channel_G is not None:
      G[missing] = float(per_channel_G)
  return G


def fit_qat(
  runs,
  base,
  *,
  delta: float = 1e-3,
  per_channel_G="model.d_model",
  starts=None,
  bootstrap: int = 0,
  seed: int = 0,
  who: str = "fit_qat",
) -> QatFit:
  """Chen et al. 2025 (arXiv 2505.14302): L = A/N^alpha + B/D^beta + E + delta(N, D, G),
  delta = k D^gamma_D (log2 G)^gamma_G / N^gamma_N, fitted with the base law fixed (`base`:
  A, B, E, alpha, beta, e.g. fit_chinchilla on the dense runs) on the runs of one quantization
  recipe at several group sizes G (column G, the spec's -gG, or per_channel_G). Huber on
  log-loss as everywhere else. Runs with G <= 1 carry no quantization error and are excluded."""
  df = data_mod.training_runs(data_mod.check_runs(runs, who))
  G = group_sizes(df, per_channel_G)
  if np.isnan(G).any():
    raise FitError(
      f"{who}: no group size for {', '.join(data_mod.row_names(df, np.isnan(G)))}"
      f"; give a G column, a -gG spec, or per_channel_G (a number or a column)"
    )
  keep = G > 1
  df, G = df[keep], G[keep]
  data_mod.require_distinct(df.N, "N", 2, who)
  data_mod.require_distinct(df.D, "D", 2, who)
  data_mod.require_distinct(G, "group sizes G", 2, who)
  data_mod.require_points(len(df), 4, who)
  from compress_scaling.scaling.eff import base_theta

  data = dict(
    lN=np.log(df.N.to_numpy()),
    lD=np.log(df.D.to_numpy()),
    llG=np.log(np.log2(G)),
    target=np.log(df.loss.to_numpy()),
  )
  aux = base_theta(base)[None]
  raw = fit_mod.run_law(
    QAT,
    data,
    QAT_GRID if starts is None else starts,
    who=who,
    aux=aux,
    delta=delta,
    opt=optim.LbfgsOptions(max_evals=2000),
  )
  if bootstrap:
    wb = fit_mod.resample_weights(len(df), bootstrap, seed)
    raw.boot, raw.boot_converged = fit_mod.bootstrap_law(
      QAT, data, raw.theta, wb, aux=np.repeat(aux, bootstrap, 0), delta=delta
    )
  base_d = {k: float(base[k]) for k in ("A", "B", "E", "alpha", "beta")}
  measured = df.loss.to_numpy() - laws.chinchilla(df.N, df.D, **base_d)
  points = pd.DataFrame(
    dict(
      N=df.N.to_numpy(),
      D=df.D.to_numpy(),
      G=G,
      compression=df.compression.to_numpy(),
      delta=measured,
    )
  )
  return fit_mod.make_law_fit(
    QatFit, QAT, raw, len(df), delta=delta, normalize="sum", info=dict(base=base_d, points=points)
  )


# --- Kumar et al. 2024: PTQ degradation and the exponential eff(bits) ------------------------


def _ptq_log_pred(theta, aux, data):
  lC, gD, gN, lgp = (theta[i] for i in range(4))
  return lC + gD * data["lD"] - gN * data["lN"] - data["P"] * jnp.exp(-lgp)


PTQ = fit_mod.LogLaw(
  "kumar_ptq",
  ("log_C_T", "gamma_D", "gamma_N", "log_gamma_post"),
  _ptq_log_pred,
  lambda th: dict(
    C_T=np.exp(np.asarray(th)[..., 0]),
    gamma_D=np.asarray(th)[..., 1],
    gamma_N=np.asarray(th)[..., 2],
    gamma_post=np.exp(np.asarray(th)[..., 3]),
  ),
)
PTQ_GRID = optim.grid([-6, -3, 0], [0.1, 0.5], [0.1, 0.5], np.log([0.3, 1.0, 3.0]))


def fit_ptq(
  N, D, P_post, delta_loss, *, huber_delta: float = 1e-3, who: str = "fit_ptq"
) -> fit_mod.LawFit:
  """Kumar et al. 2024 (arXiv 2411.04330): delta_PTQ = C_T (D^gamma_D / N^gamma_N)
  exp(-P_post / gamma_post), fitted on log delta (delta = PTQ loss - loss before PTQ, > 0)."""
  N, D, P, dl = (np.asarray(v, float).ravel() for v in (N, D, P_post, delta_loss))
  bad = ~np.isfinite(dl) | (dl <= 0)
  if bad.any():
    raise FitError(
      f"{who}: the PTQ loss increase must be > 0 for the log-space fit; bad at "
      f"positions {np.flatnonzero(bad)[:10].tolist()} (values {dl[bad][:5]})"
    )
  data_mod.require_distinct(N, "N", 2, who)
  data_mod.require_distinct(D, "D", 2, who)
  data_mod.require_distinct(P, "post-training precisions P_post", 2, who)
  data_mod.require_points(len(dl), 4, who)
  data = dict(lN=np.log(N), lD=np.log(D), P=P, target=np.log(dl))
  raw = fit_mod.run_law(PTQ, data, PTQ_GRID, who=who, delta=huber_delta)
  return fit_mod.make_law_fit(fit_mod.LawFit, PTQ, raw, len(dl), delta=huber_delta, normalize="sum")


def ptq_table(runs: pd.DataFrame) -> pd.DataFrame:
  """PTQ entries (kind == 'ptq', with base_run_id) joined to their base runs: N, D, P_post
  (the PTQ weight bits), delta = PTQ loss - base loss. Entries whose base run is absent are
  listed in attrs['unmatched']."""
  if "kind" not in runs.columns or "base_run_id" not in runs.columns:
    out = pd.DataFrame(columns=["run_id", "base_run_id", "N", "D", "P_post", "delta"])
    out.attrs["unmatched"] = []
    return out
  ptq = runs[runs["kind"] == "ptq"]
  base = runs[runs["kind"].fillna("train") != "ptq"].set_index("run_id")
  rows, unmatched = [], []
  for _, r in ptq.iterrows():
    if r.base_run_id not in base.index:
      unmatched.append(r.run_id)
      continue
    b = base.loc[r.base_run_id]
    rows.append(
      dict(
        run_id=r.run_id,
        base_run_id=r.base_run_id,
        N=b.N,
        D=b.D,
        P_post=specs.parse_spec(r.compression).w_bits,
        delta=r.loss - b.loss,
      )
    )
  out = pd.DataFrame(rows, columns=["run_id", "base_run_id", "N", "D", "P_post", "delta"])
  out.attrs["unmatched"] = unmatched
  return out


def _kumar_log_pred(theta, aux, data):
  gw, ga = jnp.exp(theta[0]), jnp.exp(theta[1])
  fw = jnp.where(data["qw"] > 0, jnp.log(-jnp.expm1(-data["Pw"] / gw)), 0.0)
  fa = jnp.where(data["qa"] > 0, jnp.log(-jnp.expm1(-data["Pa"] / ga)), 0.0)
  return fw + fa


KUMAR_EFF = fit_mod.LogLaw(
  "kumar_eff",
  ("log_gamma_w", "log_gamma_a"),
  _kumar_log_pred,
  lambda th: dict(gamma_w=np.exp(np.asarray(th)[..., 0]), gamma_a=np.exp(np.asarray(th)[..., 1])),
)


def _quant_rows(table, who):
  st = data_mod.spec_table(table.index)
  rows = st.kind.isin(["weight", "weight+act", "act"]) & (table.eff > 0)
  if rows.sum() < 2:
    raise FitError(
      f"{who} needs eff values of at least 2 quantized compressions (no "
      f"sparsity); got {list(table.index[rows])}"
    )
  return table[rows], st[rows]


def fit_eff_kumar(
  table: pd.DataFrame, *, delta: float = 0.05, who: str = "fit_eff_kumar"
) -> fit_mod.LawFit:
  """Kumar et al.'s exponential eff(P) = (1 - e^(-P_w/gamma_w)) (1 - e^(-P_a/gamma_a)) fitted to
  an eff table (16 bits = unquantized = factor 1). gamma_a is NaN without activation rows."""
  t, st = _quant_rows(table, who)
  data = dict(
    Pw=st.w_bits.to_numpy(float),
    Pa=st.a_bits.to_numpy(float),
    qw=(st.w_bits < laws.UNQUANTIZED_BITS).to_numpy(float),
    qa=(st.a_bits < laws.UNQUANTIZED_BITS).to_numpy(float),
    target=np.log(t.eff.to_numpy(float)),
  )
  raw = fit_mod.run_law(
    KUMAR_EFF, data, optim.grid(np.log([0.5, 2, 5]), np.log([0.5, 2, 5])), who=who, delta=delta
  )
  res = fit_mod.make_law_fit(
    fit_mod.LawFit,
    KUMAR_EFF,
    raw,
    len(t),
    delta=delta,
    normalize="sum",
    info=dict(compressions=list(t.index)),
  )
  if not data["qa"].any():
    res.params["gamma_a"] = float("nan")
  if not data["qw"].any():
    res.params["gamma_w"] = float("nan")
  return res


# --- Capacity law (Panferov et al. 2025) -----------------------------------------------------


def _capacity_log_pred(theta, aux, data):
  lL, F, C = theta[0], jnp.exp(theta[1]), jnp.exp(theta[2])
  out = 0.0
  for key in ("yw", "ya", "ys"):
    y = data[key]
    on = y > 0
    out = out + jnp.where(on, lL + C * jnp.log(jnp.tanh(F * jnp.where(on, y, 1.0))), 0.0)
  return out


CAPACITY = fit_mod.LogLaw(
  "capacity",
  ("log_L", "log_F", "log_C"),
  _capacity_log_pred,
  lambda th: dict(
    L=np.exp(np.asarray(th)[..., 0]),
    F=np.exp(np.asarray(th)[..., 1]),
    C=np.exp(np.asarray(th)[..., 2]),
  ),
)


def fit_capacity(
  eff, gmse_w=None, gmse_a=None, gmse_s=None, *, delta: float = 0.05, who: str = "fit_capacity"
) -> fit_mod.LawFit:
  """Panferov et al. 2025 (arXiv 2506.01863): eff = prod over the compressed parts of
  L tanh(F log_{1/4} GMSE)^C, fitted on log eff. gmse_* per compression (NaN or None:
  that part is not compressed)."""
  eff = np.asarray(eff, float).ravel()
  ys = {}
  for key, g in (("yw", gmse_w), ("ya", gmse_a), ("ys", gmse_s)):
    g = np.full(len(eff), np.nan) if g is None else np.asarray(g, float).ravel()
    y = laws.log_quarter(np.where(np.isfinite(g) & (g > 0), g, 1.0))
    ys[key] = np.where(np.isfinite(g) & (g > 0) & (g < 1), y, 0.0)
  ok = np.isfinite(eff) & (eff > 0) & (sum(ys.values()) > 0)
  if ok.sum() < 3:
    raise FitError(
      f"{who} needs at least 3 compressions with eff > 0 and a Gaussian MSE in "
      f"(0, 1); got {int(ok.sum())}"
    )
  data = dict({k: v[ok] for k, v in ys.items()}, target=np.log(eff[ok]))
  raw = fit_mod.run_law(
    CAPACITY,
    data,
    optim.grid([-0.5, 0], np.log([0.2, 0.5, 1]), np.log([0.5, 1.5, 3])),
    who=who,
    delta=delta,
  )
  return fit_mod.make_law_fit(
    fit_mod.LawFit, CAPACITY, raw, int(ok.sum()), delta=delta, normalize="sum"
  )


def nm_gmse(n: int, m: int, n_samples: int = 1 << 18, seed: int = 0) -> float:
  """GMSE of n:m magnitude sparsity on N(0, 1) data (Monte Carlo): in each group of m, the
  m - n smallest magnitudes are zeroed; the MSE is their mean energy per element."""
  x = np.random.default_rng(seed).standard_normal((n_samples // m, m))
  small = np.sort(np.abs(x), axis=1)[:, : m - n]
  return float(np.sum(small**2) / x.size)


def gaussian_mse_for_spec(spec: str, *, n_samples: int = 1 << 18, seed: int = 0) -> dict:
  """GMSE per compressed part of a spec: {'w': ..., 'a': ..., 's': ...} (absent parts left out).
  Quantizers are measured by `compress_scaling.quant.gaussian_mse` (our own fake-quantizers on
  N(0, 1) samples, imported here so that scaling/ never needs the training stack otherwise);
  sparsity by `laws.sparsity_gmse` / `nm_gmse`."""
  info = specs.parse_spec(spec)
  out = {}
  if info.quant_term is not None:
    from compress_scaling import quant  # lazy: pulls jax/flax training-side code

    w_spec, a_spec = quant.parse_quant_term(info.quant_term)
    if w_spec is not None:
      out["w"] = float(quant.gaussian_mse(w_spec, n_samples=n_samples, seed=seed))
    if a_spec is not None:
      out["a"] = float(quant.gaussian_mse(a_spec, n_samples=n_samples, seed=seed))
  if info.nm is not None:
    out["s"] = nm_gmse(*info.nm, n_samples=n_samples, seed=seed)
  elif info.sparsity > 0:
    out["s"] = float(laws.sparsity_gmse(info.sparsity))
  return out
