"""The scaling laws, each a small numpy function with its paper, and their published constants.

Symbols follow the papers: N parameters (non-embedding, dense shape unless a law says
otherwise), D training tokens, L loss in nats/token, eff(C) the effective-parameter multiplier
of a compression C, S sparsity, P bits, G quantization group size. Every constant is tagged as
in `shared/reference/PAPERS.md` ([V] verified in the paper or its official code).
"""

from __future__ import annotations

import math

import numpy as np

# --- Published constants -----------------------------------------------------------------------

# Besiroglu et al. 2024 (arXiv 2404.10102) refit of Chinchilla, Table/notebook [V], PAPERS.md §7.
EPOCH_CHINCHILLA = dict(A=482.01, B=2085.43, E=1.817, alpha=0.3478, beta=0.3658)
EPOCH_CHINCHILLA_CI95 = dict(
  A=(285.2, 743.6), B=(1042.4, 5810.3), E=(1.769, 1.871), alpha=(0.317, 0.373), beta=(0.331, 0.415)
)
EPOCH_CHINCHILLA_SE = dict(A=124.52, B=1293.28, E=0.026, alpha=0.0154, beta=0.0206)
# Epoch's "replicate exactly": L-BFGS-B over their 4500-point grid on the Huber objective [V].
EPOCH_LBFGS_REPLICATION = dict(A=477.84, B=2143.86, E=1.8172, alpha=0.3473, beta=0.3672)
# Hoffmann et al. 2022 (arXiv 2203.15556) rounded parametric fit [V: Epoch notebook].
HOFFMANN_CHINCHILLA = dict(A=406.4, B=410.7, E=1.69, alpha=0.34, beta=0.28)

# Frantar et al. 2023 (arXiv 2309.08520) official notebook coefficients [V], PAPERS.md §2,
# in the notebook form (a*(1-S)^b + c) * N^-d + e * D^-f + g with the notebook's units:
# N = non-zero params / 1e6, D = steps / 1e5 (T5) or examples / 1e9 (ViT).
BIGSPARSE_T5 = dict(a=0.56779, b=0.72161, c=1.52265, d=0.24513, e=0.63362, f=0.20271, g=0.65074)
BIGSPARSE_T5_OBJECTIVE = 7.60e-6  # mean Huber(delta=1e-3) on log-loss
# Note: the T5 coefficients are where the notebook's scipy BFGS stopped (default gtol 1e-5 on a
# mean objective of ~1e-5), not the optimum of that objective: from every start, including
# these coefficients, L-BFGS reaches 4.88e-6 at a different point (tests/test_scaling_reference).
# Where BFGS stops depends on rounding: re-running the notebook's procedure on scipy 1.10 or 1.17,
# or from starts moved by 1e-12, lands 3-8% away from these values at 7.6-7.8e-6.
# The notebook's extrapolation point: 75% sparse, 604M non-zero, 500k steps, measured loss.
BIGSPARSE_T5_EXTRAPOLATION = dict(S=0.75, N=48 * 12 * 1024**2 / 1e6, D=5.0, loss=1.4827780204906797)
BIGSPARSE_VIT = dict(a=1.30485, b=0.82101, c=2.07506, d=0.39223, e=0.27818, f=0.88979, g=4.51669)
BIGSPARSE_VIT_OBJECTIVE = 4.93e-4  # mean Huber(delta=1e-2) on raw loss
BIGSPARSE_T5_BASE_PARAMS = 24 * 12 * 768**2  # notebook PARAM_COUNT for T5 (169.9M)
BIGSPARSE_VIT_BASE_PARAMS = 12 * 12 * 768**2  # notebook PARAM_COUNT for ViT (84.9M)

# Chen et al. 2025 (arXiv 2505.14302) Table 1 [V], PAPERS.md §3; N, D raw counts.
CHEN_BASE = dict(A=237.7042, B=596.2490, E=1.9279, alpha=0.3022, beta=0.3022)
CHEN_QAT = {
  "w4a4": dict(k=0.1582, gamma_N=0.2186, gamma_D=0.0745, gamma_G=0.7779),
  "w4a16": dict(k=0.2522, gamma_N=0.3589, gamma_D=0.1610, gamma_G=0.3533),
  "w16a4": dict(k=0.1004, gamma_N=0.1816, gamma_D=0.0331, gamma_G=0.9812),
}

# Kumar et al. 2024 (arXiv 2411.04330) App. K Table 2 [V], PAPERS.md §5. The paper fits an
# offset inside each exponent that we do not model (its sign convention is unclear).
KUMAR_GAMMA = dict(w=2.6745, a=2.2102, kv=0.9578)
KUMAR_PTQ = dict(C_T=0.0598, gamma_D=0.5068, gamma_N=0.3439, gamma_post=0.5907)

# Panferov et al. 2025 (arXiv 2506.01863) Table 3 [V], PAPERS.md §6, Llama/C4 row.
PANFEROV_CAPACITY = dict(L=1.0, F=0.41, C=1.39)
PANFEROV_BASE = dict(alpha=0.13, beta=0.33, E=1.3)

# Frantar et al. 2025 (arXiv 2502.16440) eff values, secondary sources only [S], PAPERS.md §1.
FRANTAR_2025_EFF = {"w4a16": 0.923, "w4a4": 0.747, "w1a1": 0.067, "w8a8": 0.857, "s50": 0.871}

UNQUANTIZED_BITS = 16  # 'wXaY' with 16 means that operand stays in bf16 (DESIGN.md)


# --- Laws --------------------------------------------------------------------------------------


def chinchilla(N, D, A, B, E, alpha, beta):
  """Hoffmann et al. 2022 (arXiv 2203.15556) Eq. 2: L = A / N^alpha + B / D^beta + E."""
  N, D = np.asarray(N, float), np.asarray(D, float)
  return A * N**-alpha + B * D**-beta + E


def unified(N, D, eff, A, B, E, alpha, beta):
  """Frantar et al. 2025 (arXiv 2502.16440): L(N, D, C) = A (N eff(C))^-alpha + B D^-beta + E."""
  return chinchilla(np.asarray(N, float) * np.asarray(eff, float), D, A, B, E, alpha, beta)


def sparse(S, N, D, a_S, b_S, c_S, b_N, a_D, b_D, c):
  """Frantar et al. 2023 (arXiv 2309.08520), the bigsparse law:
  L(S, N, D) = (a_S (1 - S)^b_S + c_S) N^-b_N + (a_D / D)^b_D + c, N = non-zero parameters."""
  S, N, D = (np.asarray(v, float) for v in (S, N, D))
  return (a_S * (1 - S) ** b_S + c_S) * N**-b_N + (a_D / D) ** b_D + c


def sparse_notebook(S, N, D, a, b, c, d, e, f, g):
  """The same law as coded in the official notebook: (a (1-S)^b + c) N^-d + e D^-f + g.
  (The notebook writes a * (1/(1-S))^-b; e = a_D^b_D.)"""
  S, N, D = (np.asarray(v, float) for v in (S, N, D))
  return (a * (1 - S) ** b + c) * N**-d + e * D**-f + g


def sparse_eff(S, a, b, c, d):
  """eff of sparsity S relative to the dense-shape parameter count implied by the sparse law:
  (a(1-S)^b + c) (N(1-S))^-d = (a + c) (N eff)^-d  =>  eff = (1-S) ((a(1-S)^b+c)/(a+c))^(-1/d)."""
  S = np.asarray(S, float)
  return (1 - S) * ((a * (1 - S) ** b + c) / (a + c)) ** (-1.0 / d)


def qat_delta(N, D, G, k, gamma_N, gamma_D, gamma_G):
  """Chen et al. 2025 (arXiv 2505.14302) QAT error:
  delta = k D^gamma_D (log2 G)^gamma_G / N^gamma_N. G = 1 gives 0. Added on top of the base
  law: L = A/N^alpha + B/D^beta + E + delta."""
  N, D, G = (np.asarray(v, float) for v in (N, D, G))
  return k * D**gamma_D * np.log2(G) ** gamma_G / N**gamma_N


def eff_from_delta(delta, N, A, alpha):
  """eff with A (N eff)^-alpha = A N^-alpha + delta (PAPERS.md §3, derived [D])."""
  N = np.asarray(N, float)
  return (1 + np.asarray(delta, float) * N**alpha / A) ** (-1.0 / alpha)


def kumar_factor(P, gamma):
  """Kumar et al. 2024 (arXiv 2411.04330): one precision's factor 1 - exp(-P / gamma).
  P >= 16 (unquantized here) counts as 1, so that eff(dense) = 1 for our eff tables."""
  P = np.asarray(P, float)
  return np.where(P >= UNQUANTIZED_BITS, 1.0, -np.expm1(-P / gamma))


def kumar_eff(
  P_w=UNQUANTIZED_BITS,
  P_a=UNQUANTIZED_BITS,
  P_kv=UNQUANTIZED_BITS,
  gamma_w=KUMAR_GAMMA["w"],
  gamma_a=KUMAR_GAMMA["a"],
  gamma_kv=KUMAR_GAMMA["kv"],
):
  """Kumar et al. 2024: N_eff / N = prod_x (1 - exp(-P_x / gamma_x)) over weights, activations,
  KV cache (their Eq. for QAT / low-precision training)."""
  return kumar_factor(P_w, gamma_w) * kumar_factor(P_a, gamma_a) * kumar_factor(P_kv, gamma_kv)


def kumar_neff(N, P_w=UNQUANTIZED_BITS, P_a=UNQUANTIZED_BITS, P_kv=UNQUANTIZED_BITS, **gammas):
  """Kumar et al. 2024: N_eff = N prod_x (1 - exp(-P_x / gamma_x))."""
  return np.asarray(N, float) * kumar_eff(P_w, P_a, P_kv, **gammas)


def kumar_ptq_delta(N, D, P_post, C_T, gamma_D, gamma_N, gamma_post):
  """Kumar et al. 2024 PTQ degradation after bf16 training:
  delta_PTQ = C_T (D^gamma_D / N^gamma_N) exp(-P_post / gamma_post)."""
  N, D, P = (np.asarray(v, float) for v in (N, D, P_post))
  return C_T * D**gamma_D / N**gamma_N * np.exp(-P / gamma_post)


def log_quarter(x):
  """log base 1/4."""
  return np.log(np.asarray(x, float)) / math.log(0.25)


def capacity(gmse, L=PANFEROV_CAPACITY["L"], F=PANFEROV_CAPACITY["F"], C=PANFEROV_CAPACITY["C"]):
  """Panferov et al. 2025 (arXiv 2506.01863) Table 4 'tanh' form:
  rho = L tanh(F log_{1/4} GMSE)^C, with GMSE the MSE of the representation on N(0, 1) data.
  GMSE -> 0 gives L; GMSE = 1 gives 0. rho multiplies across weights x activations x sparsity."""
  y = np.clip(log_quarter(gmse), 0.0, None)
  return L * np.tanh(F * y) ** C


def sparsity_gmse(S):
  """GMSE of magnitude sparsity S on N(0, 1) data (the dropped energy): with threshold
  t = Phi^-1((1 + S) / 2), E[x^2; |x| < t] = (2 Phi(t) - 1) - 2 t phi(t). Derived [D]."""
  from scipy import stats  # local: scipy.stats import is slow

  S = np.asarray(S, float)
  t = stats.norm.ppf((1 + S) / 2)
  return (2 * stats.norm.cdf(t) - 1) - 2 * t * stats.norm.pdf(t)
