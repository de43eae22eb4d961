"""Several models of one config, differing only in their seed, trained in one compiled program.

Replicate seeds are how a sweep measures its loss noise (scaling/noise.py), and at CPU scale
most of a short run's wall time is interpreter start-up, corpus loading and compilation, not
training steps. `Replicas` stacks K train states along a new leading axis and `jax.vmap`s the
train and eval steps of `steps.Setup` over it: one process, one compilation, K models. Each
member keeps its own init key, quantizer key and data order (its seed), so member k computes
what a single run with that seed computes (tests/test_replicas.py: equal to float tolerance).

The step counter is shared and not vmapped (in_axes None): the members advance in lockstep, so
the learning-rate schedule and the sparsity update predicate stay scalars and the mask update
stays a real `lax.cond` instead of the both-branches `select` a batched predicate becomes.
The stacked axis is unsharded; every other axis keeps the single run's sharding.
With K = 1 nothing is stacked: the functions are exactly the single run's.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from compress_scaling import sharding, steps

# vmap axes of a train state {step, params, opt_state, masks}: the step is shared.
STATE_AXES = {"step": None, "params": 0, "opt_state": 0, "masks": 0}


def _stacked(s: NamedSharding) -> NamedSharding:
  return NamedSharding(s.mesh, P(None, *s.spec))


@dataclasses.dataclass
class Replicas:
  setup: steps.Setup
  seeds: tuple[int, ...]

  @property
  def k(self) -> int:
    return len(self.seeds)

  @property
  def stacked(self) -> bool:
    return self.k > 1

  def keys(self) -> tuple[list, list]:
    """(init keys, step keys) per member: split(key(seed)) as a single run does."""
    pairs = [jax.random.split(jax.random.key(s)) for s in self.seeds]
    return [p[0] for p in pairs], [p[1] for p in pairs]

  # ---------------------------------------------------------------- shardings and states

  @property
  def state_shardings(self):
    sh = self.setup.state_shardings
    if not self.stacked:
      return sh
    return {k: v if k == "step" else jax.tree.map(_stacked, v) for k, v in sh.items()}

  def batch_sharding(self) -> NamedSharding:
    sh = sharding.batch_sharding(self.setup.mesh)
    return _stacked(sh) if self.stacked else sh

  def init_state(self, init_keys):
    if not self.stacked:
      return self.setup.init_state(init_keys[0])
    init = jax.jit(
      jax.vmap(lambda k: nn.meta.unbox(self.setup._init_boxed(k)), out_axes=STATE_AXES),
      out_shardings=self.state_shardings,
    )
    with self.setup.mesh, nn.logical_axis_rules(sharding.LOGICAL_RULES):
      return init(jnp.stack(init_keys))

  def stack(self, states: list):
    """Member states (all at the same step) -> the stacked state."""
    if not self.stacked:
      return states[0]
    steps_ = {int(s["step"]) for s in states}
    if len(steps_) != 1:
      raise ValueError(f"replicas must be at the same step to train together, got {steps_}")
    return self._stack(states)

  @functools.cached_property
  def _stack(self):
    def stack(states):
      return {
        k: states[0][k]
        if k == "step"
        else jax.tree.map(lambda *x: jnp.stack(x), *[s[k] for s in states])
        for k in states[0]
      }

    return jax.jit(stack, out_shardings=self.state_shardings)

  def member(self, state, i: int):
    """Member i's state, shaped and sharded as a single run's (for checkpoints, entries)."""
    if not self.stacked:
      return state
    return self._take(state, jnp.int32(i))

  @functools.cached_property
  def _take(self):
    def take(state, i):
      return {k: v if k == "step" else jax.tree.map(lambda x: x[i], v) for k, v in state.items()}

    return jax.jit(take, out_shardings=self.setup.state_shardings)

  # ------------------------------------------------------------------------------- steps

  def jit_train_step(self):
    """(state, batch [K,] B x L+1, step keys [K]) -> (state, metrics with [K] leaves)."""
    if not self.stacked:
      return self.setup.jit_train_step()
    mesh = self.setup.mesh
    step = jax.vmap(self.setup.train_step, in_axes=(STATE_AXES, 0, 0), out_axes=(STATE_AXES, 0))
    return jax.jit(
      step,
      in_shardings=(self.state_shardings, self.batch_sharding(), sharding.replicated(mesh)),
      out_shardings=(self.state_shardings, sharding.replicated(mesh)),
      donate_argnums=0,
    )

  def step_keys(self, step_keys):
    return step_keys[0] if not self.stacked else jnp.stack(step_keys)

  def jit_eval_step(self):
    """(params, masks, batch B x L+1 shared by all members) -> ([K] NLL sums, token count)."""
    if not self.stacked:
      return self.setup.jit_eval_step()
    sh = self.state_shardings
    mesh = self.setup.mesh
    return jax.jit(
      jax.vmap(self.setup.eval_step, in_axes=(0, 0, None), out_axes=(0, None)),
      in_shardings=(sh["params"], sh["masks"], sharding.batch_sharding(mesh)),
      out_shardings=sharding.replicated(mesh),
    )

  def global_batch(self, member_rows: list[np.ndarray]) -> jax.Array:
    """This process's rows of each member's batch -> one global (stacked) batch."""
    if not self.stacked:
      return self.setup.global_batch(member_rows[0])
    return jax.make_array_from_process_local_data(self.batch_sharding(), np.stack(member_rows))

  def evaluate(self, eval_step, state, eval_batches) -> tuple[np.ndarray, int]:
    """Token-weighted mean held-out loss of each member ([K] nats/token) and the token count."""
    setup = self.setup
    with setup.mesh, nn.logical_axis_rules(sharding.LOGICAL_RULES):
      sums = [
        eval_step(state["params"], state["masks"], setup.global_batch(b)) for b in eval_batches
      ]
    total = np.sum([np.asarray(s, np.float64).reshape(-1) for s, _ in sums], axis=0)
    n = sum(float(c) for _, c in sums)
    return total / n, int(n)
