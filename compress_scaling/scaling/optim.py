"""Batched L-BFGS for scaling-law fits: every start of a multi-start grid in one compiled call.

The laws are fitted as Epoch AI fit Chinchilla (Besiroglu et al. 2024, arXiv 2404.10102;
PAPERS.md §7): parameters in log space, predictions through log-sum-exp, a Huber loss with
delta = 1e-3 on log-loss residuals, and L-BFGS from a grid of starts, keeping the best.

Here the starts are lanes of one batched L-BFGS: each lane runs its own two-loop recursion and
its own backtracking line search, and a line-search trial costs one objective evaluation for
all lanes at once, so lanes never wait on each other. The loop stops when every lane has
converged or the evaluation budget is spent. Optionally ("halving"), after a first budget only
the `keep` best lanes continue, which is how a 4500-start grid fits in about a second.

Fits run in float64 on the host CPU inside `x64_cpu()`, a thread-local context that restores the
caller's settings, so the training code never sees x64 switched on.

A per-lane weight matrix `w (S, n)` carries everything that varies by lane besides the start:
resample counts of a bootstrap, fold masks of a cross-validation, group masks of per-C fits.
The exceptions are the PER_LANE_KEYS entries of `data` (target, anchor, lN, ...), which may
be (S, n): the parametric bootstrap's simulated losses per lane (scaling/noise.py), and the
per-compression refits, each lane holding only its compression's runs. The hand-written
Chinchilla value-and-grad takes a per-lane target only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Status codes of a lane.
RUNNING, CONVERGED_F, CONVERGED_G, STALLED, NONFINITE = 0, 1, 2, 3, 4
STATUS_NAMES = {
  RUNNING: "max_evals",
  CONVERGED_F: "ftol",
  CONVERGED_G: "gtol",
  STALLED: "line_search_stalled",
  NONFINITE: "nonfinite",
}


@contextlib.contextmanager
def x64_cpu():
  """float64 on the host CPU for the duration of a fit; the caller's settings come back after.

  `jax.enable_x64` is a thread-local configuration context (it does not flip the global flag),
  and `jax.default_device` keeps fits off TPUs/GPUs, where float64 is emulated or missing.
  """
  with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
    yield


def huber(r, delta):
  """Huber loss: r^2/2 inside |r| <= delta, delta*(|r| - delta/2) outside (scipy.special.huber)."""
  ar = jnp.abs(r)
  return jnp.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


@dataclasses.dataclass(frozen=True)
class LbfgsOptions:
  """Stopping rules. The objective handed to the optimiser is sum(w * huber(r)) / delta, which
  is O(number of points x typical |residual|): absolute tolerances below refer to that scale."""

  memory: int = 10
  max_evals: int = 600  # objective+gradient evaluations per lane (line-search trials included)
  ftol: float = 1e-12  # stop when f_k - f_{k+1} <= ftol * max(|f_k|, |f_{k+1}|, 1)
  gtol: float = 1e-9  # stop when max|grad| <= gtol
  c1: float = 1e-4  # Armijo constant
  max_backtracks: int = 40  # consecutive rejected trials before a history reset / stall
  phase1_evals: int = 0  # >0: halving, only the `keep` best lanes continue after this
  keep: int = 0


class _State(NamedTuple):
  x: jax.Array  # (S, P) accepted point
  f: jax.Array  # (S,)
  g: jax.Array  # (S, P)
  d: jax.Array  # (S, P) search direction
  gd: jax.Array  # (S,) g . d
  t: jax.Array  # (S,) trial step
  s_hist: jax.Array  # (S, M, P) ring buffers
  y_hist: jax.Array
  rho: jax.Array  # (S, M)
  head: jax.Array  # (S,) next slot
  n_hist: jax.Array  # (S,) filled slots
  n_bt: jax.Array  # (S,) consecutive rejected trials
  n_iter: jax.Array  # (S,) accepted steps
  status: jax.Array  # (S,)
  n_eval: jax.Array  # () evaluations so far


def _direction(g, s_hist, y_hist, rho, head, n_hist):
  """Two-loop recursion (Nocedal & Wright, Alg. 7.4), per lane, newest pair first."""
  S, M, _ = s_hist.shape
  lane = jnp.arange(S)
  q = g
  saved = []
  for i in range(M):
    idx = (head - 1 - i) % M
    s_i, y_i, rho_i = s_hist[lane, idx], y_hist[lane, idx], rho[lane, idx]
    valid = i < n_hist
    a_i = jnp.where(valid, rho_i * jnp.sum(s_i * q, -1), 0.0)
    q = q - a_i[:, None] * y_i
    saved.append((a_i, s_i, y_i, rho_i, valid))
  s0, y0 = saved[0][1], saved[0][2]
  yy = jnp.sum(y0 * y0, -1)
  gamma = jnp.where((n_hist > 0) & (yy > 0), jnp.sum(s0 * y0, -1) / jnp.where(yy > 0, yy, 1), 1.0)
  r = gamma[:, None] * q
  for a_i, s_i, y_i, rho_i, valid in reversed(saved):
    b = rho_i * jnp.sum(y_i * r, -1)
    r = r + jnp.where(valid, a_i - b, 0.0)[:, None] * s_i
  return -r


def _first_step(g):
  """Initial trial step along -g: unit length in parameter space (as scipy's L-BFGS-B)."""
  gn = jnp.sqrt(jnp.sum(g * g, -1))
  return jnp.minimum(1.0, 1.0 / jnp.maximum(gn, 1e-300))


def _init(vg, x0, args, memory):
  S, P = x0.shape
  f, g = vg(x0, *args)
  finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g), -1)
  f = jnp.where(finite, f, jnp.inf)
  g = jnp.where(finite[:, None], g, 0.0)
  z = jnp.zeros((S, memory, P), x0.dtype)
  zi = jnp.zeros((S,), jnp.int32)
  return _State(
    x=x0,
    f=f,
    g=g,
    d=-g,
    gd=-jnp.sum(g * g, -1),
    t=_first_step(g),
    s_hist=z,
    y_hist=z,
    rho=jnp.zeros((S, memory), x0.dtype),
    head=zi,
    n_hist=zi,
    n_bt=zi,
    n_iter=zi,
    status=jnp.where(finite, RUNNING, NONFINITE).astype(jnp.int32),
    n_eval=jnp.array(1, jnp.int32),
  )


def _step(vg, args, opt: LbfgsOptions, st: _State) -> _State:
  """One trial point for every lane; accepted lanes take an L-BFGS step, the others backtrack."""
  running = st.status == RUNNING
  xt = st.x + st.t[:, None] * st.d
  ft, gt = vg(xt, *args)
  ok = jnp.isfinite(ft) & jnp.all(jnp.isfinite(gt), -1)
  armijo = ok & (ft <= st.f + opt.c1 * st.t * st.gd)
  accept = running & armijo

  # --- accepted lanes: history update, convergence test, new direction.
  s = xt - st.x
  y = gt - st.g
  sy = jnp.sum(s * y, -1)
  curv = accept & (sy > 1e-12 * jnp.sqrt(jnp.sum(s * s, -1) * jnp.sum(y * y, -1)))
  M = st.s_hist.shape[1]
  slot = jax.nn.one_hot(st.head, M, dtype=bool) & curv[:, None]
  s_hist = jnp.where(slot[..., None], s[:, None, :], st.s_hist)
  y_hist = jnp.where(slot[..., None], y[:, None, :], st.y_hist)
  rho = jnp.where(slot, (1.0 / jnp.where(curv, sy, 1.0))[:, None], st.rho)
  head = jnp.where(curv, (st.head + 1) % M, st.head)
  n_hist = jnp.where(curv, jnp.minimum(st.n_hist + 1, M), st.n_hist)

  x = jnp.where(accept[:, None], xt, st.x)
  f = jnp.where(accept, ft, st.f)
  g = jnp.where(accept[:, None], gt, st.g)
  fconv = (st.f - ft) <= opt.ftol * jnp.maximum(jnp.maximum(jnp.abs(st.f), jnp.abs(ft)), 1.0)
  gconv = jnp.max(jnp.abs(gt), -1) <= opt.gtol
  status = jnp.where(accept & gconv, CONVERGED_G, jnp.where(accept & fconv, CONVERGED_F, st.status))

  d_acc = _direction(g, s_hist, y_hist, rho, head, n_hist)
  gd_acc = jnp.sum(d_acc * g, -1)
  not_descent = ~(gd_acc < 0)
  d_acc = jnp.where(not_descent[:, None], -g, d_acc)
  gd_acc = jnp.where(not_descent, -jnp.sum(g * g, -1), gd_acc)
  n_hist = jnp.where(accept & not_descent, 0, n_hist)
  t_acc = jnp.where(n_hist > 0, 1.0, _first_step(g))

  # --- rejected lanes: safeguarded quadratic interpolation, then reset or stall.
  reject = running & ~armijo
  denom = 2.0 * (ft - st.f - st.gd * st.t)
  t_q = -st.gd * st.t * st.t / jnp.where(denom > 0, denom, 1.0)
  t_q = jnp.where(ok & (denom > 0), t_q, 0.1 * st.t)
  t_rej = jnp.clip(t_q, 0.1 * st.t, 0.5 * st.t)
  n_bt = jnp.where(reject, st.n_bt + 1, 0)
  exhausted = reject & (n_bt >= opt.max_backtracks)
  reset = exhausted & (st.n_hist > 0)  # retry from steepest descent with a fresh history
  stall = exhausted & (st.n_hist == 0)
  n_hist = jnp.where(reset, 0, n_hist)
  n_bt = jnp.where(reset, 0, n_bt)
  status = jnp.where(stall, STALLED, status)

  d = jnp.where(accept[:, None], d_acc, jnp.where(reset[:, None], -st.g, st.d))
  gd = jnp.where(accept, gd_acc, jnp.where(reset, -jnp.sum(st.g * st.g, -1), st.gd))
  t = jnp.where(accept, t_acc, jnp.where(reset, _first_step(st.g), t_rej))
  return _State(
    x=x,
    f=f,
    g=g,
    d=d,
    gd=gd,
    t=t,
    s_hist=s_hist,
    y_hist=y_hist,
    rho=rho,
    head=head,
    n_hist=n_hist,
    n_bt=n_bt,
    n_iter=st.n_iter + accept.astype(jnp.int32),
    status=status,
    n_eval=st.n_eval + 1,
  )


def _run(vg, args, opt, st, max_evals):
  def cond(st):
    return (st.n_eval < max_evals) & jnp.any(st.status == RUNNING)

  return jax.lax.while_loop(cond, functools.partial(_step, vg, args, opt), st)


def _take(tree, idx):
  return jax.tree_util.tree_map(lambda a: a[idx] if a.ndim else a, tree)


PER_LANE_KEYS = ("target", "anchor", "has_anchor", "lN", "lD")


def _per_lane(key: str, value) -> bool:
  """Whether a data entry varies by lane: one of PER_LANE_KEYS given as (S, n)."""
  return key in PER_LANE_KEYS and value.ndim == 2


@functools.partial(jax.jit, static_argnums=(0, 1))
def _minimize(vg, opt: LbfgsOptions, x0, valid, args):
  st = _init(vg, x0, args, opt.memory)
  # Padding lanes (valid == False) never run and never win.
  st = st._replace(status=jnp.where(valid, st.status, NONFINITE), f=jnp.where(valid, st.f, jnp.inf))
  if opt.phase1_evals and 0 < opt.keep < x0.shape[0]:
    st = _run(vg, args, opt, st, opt.phase1_evals)
    # Halving: continue only the `keep` lowest objectives (per-lane args follow their lanes).
    order = jnp.argsort(jnp.where(jnp.isfinite(st.f), st.f, jnp.inf))[: opt.keep]
    st = _take(st, order)
    w, aux, data = args
    data = {k: v[order] if _per_lane(k, v) else v for k, v in data.items()}
    args = (w[order], aux[order], data)
    st = _run(vg, args, opt, st, opt.max_evals)
    lanes = order
  else:
    st = _run(vg, args, opt, st, opt.max_evals)
    lanes = jnp.arange(x0.shape[0])
  return st.x, st.f, st.g, st.status, st.n_iter, st.n_eval, lanes


@dataclasses.dataclass(frozen=True)
class BatchResult:
  """Per-lane outcome of a batched minimisation (numpy arrays, lanes in `lanes` order)."""

  x: np.ndarray  # (S', P)
  f: np.ndarray  # (S',)  internal objective: sum(w * huber) / delta
  grad: np.ndarray
  status: np.ndarray
  n_iter: np.ndarray
  n_eval: int
  lanes: np.ndarray  # index of each row's start in the input grid

  @property
  def converged(self) -> np.ndarray:
    return np.isin(self.status, (CONVERGED_F, CONVERGED_G)) | (
      (self.status == STALLED) & (np.max(np.abs(self.grad), -1) <= 1e-4)
    )

  def best(self) -> int:
    f = np.where(np.isfinite(self.f), self.f, np.inf)
    return int(np.argmin(f))


def _bucket(n: int) -> int:
  """Padded size: powers of two up to 1024, then multiples of 512, so that fits on tables of
  similar size share one compilation."""
  if n <= 1024:
    return max(8, 1 << (n - 1).bit_length())
  return -(-n // 512) * 512


def minimize_batch(
  vg: Callable, x0, w, aux, data, opt: LbfgsOptions = LbfgsOptions(), pad: bool = True
) -> BatchResult:
  """Minimises S independent problems from the starts x0 (S, P).

  vg(x (S, P), w (S, n), aux (S, A), data) -> (f (S,), grad (S, P)) must be a pure, jit-able
  function, kept as a static argument: pass the same function object to reuse the
  compilation. `w` are per-lane point weights, `aux` per-lane fixed parameters, `data` a
  dict of arrays shared by all lanes: per-point 1-D arrays of length n, plus scalars (and
  optionally a per-lane target (S, n)). With pad=True the point axis and the lane axis are
  padded to bucket sizes (zero weights, inactive lanes), so tables of similar size reuse one
  compilation. Call inside `x64_cpu()`.
  """
  x0 = np.asarray(x0, float)
  S, P = x0.shape
  w = np.asarray(w, float)
  n = w.shape[-1]
  w = np.broadcast_to(w, (S, n))
  aux = np.broadcast_to(np.asarray(aux, float), (S,) + np.shape(aux)[-1:])
  n_pad, S_pad = (_bucket(n), _bucket(S)) if pad else (n, S)
  data = {k: np.asarray(v) for k, v in data.items()}
  for k, v in data.items():
    if _per_lane(k, v) and v.shape != (S, n):
      raise ValueError(f"minimize_batch: per-lane {k} has shape {v.shape}, expected {(S, n)}")
  if n_pad > n:
    w = np.pad(w, ((0, 0), (0, n_pad - n)))
    # Padding points repeat the last real point (valid inputs for every law) with weight 0.
    data = {
      k: (
        np.pad(v, ((0, 0), (0, n_pad - n)), mode="edge")
        if _per_lane(k, v)
        else np.pad(v, (0, n_pad - n), mode="edge")
        if v.ndim == 1 and len(v) == n
        else v
      )
      for k, v in data.items()
    }
  if S_pad > S:  # inactive lanes: copies of the last start, never run
    x0 = np.pad(x0, ((0, S_pad - S), (0, 0)), mode="edge")
    w = np.pad(w, ((0, S_pad - S), (0, 0)))
    aux = np.pad(aux, ((0, S_pad - S), (0, 0)), mode="edge")
    data = {
      k: np.pad(v, ((0, S_pad - S), (0, 0)), mode="edge") if _per_lane(k, v) else v
      for k, v in data.items()
    }
  valid = np.arange(S_pad) < S
  opt_eff = opt
  if opt.keep and opt.keep >= S:
    opt_eff = dataclasses.replace(opt, phase1_evals=0, keep=0)
  x, f, g, status, n_iter, n_eval, lanes = _minimize(
    vg,
    opt_eff,
    jnp.asarray(x0),
    jnp.asarray(valid),
    (jnp.asarray(w), jnp.asarray(aux), {k: jnp.asarray(v) for k, v in data.items()}),
  )
  lanes = np.asarray(lanes)
  rows = lanes < S
  return BatchResult(
    np.asarray(x)[rows],
    np.asarray(f)[rows],
    np.asarray(g)[rows],
    np.asarray(status)[rows],
    np.asarray(n_iter)[rows],
    int(n_eval),
    lanes[rows],
  )


def grid(*axes) -> np.ndarray:
  """Cartesian product of 1-D axes as an (S, P) array, first axis slowest."""
  mesh = np.meshgrid(*[np.asarray(a, float) for a in axes], indexing="ij")
  return np.stack([m.ravel() for m in mesh], -1)


def vg_from_objective(objective: Callable) -> Callable:
  """objective(theta (P,), w (n,), aux (A,), data) -> scalar  ==>  batched value-and-grad.

  `data` is a dict of arrays shared by all lanes (a two-dimensional `target` is per lane);
  `w` and `aux` are per lane.
  """
  vg = jax.value_and_grad(objective)

  def batched(x, w, aux, data):
    axes = {k: 0 if _per_lane(k, v) else None for k, v in data.items()}
    return jax.vmap(vg, in_axes=(0, 0, 0, axes))(x, w, aux, data)

  return batched
