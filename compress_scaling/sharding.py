"""The device mesh (axes data, fsdp, tensor) and the logical-axis -> mesh-axis table.

Params carry logical axis names (model.py); `LOGICAL_RULES` maps them to mesh axes as
maxtext does: batch over data x fsdp, the embedding dim of every kernel over fsdp (ZeRO-3
style), heads / MLP / vocabulary over tensor.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES = (
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("mlp", "tensor"),
  ("vocab", "tensor"),
  ("norm", None),
)


def mesh_shape(mesh_config, n_devices: int) -> tuple[int, int, int]:
  """Resolves config.mesh (-1 fills the remaining devices) and validates it."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"mesh.{axis}={size}: allowed values are positive sizes or -1 (fill)")
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % fixed:
      raise ValueError(
        f"mesh: the fixed axes {dict(zip(MESH_AXES, sizes))} (product {fixed}) do not divide "
        f"the {n_devices} available devices"
      )
    sizes[sizes.index(-1)] = n_devices // fixed
  if math.prod(sizes) != n_devices:
    raise ValueError(
      f"mesh: data x fsdp x tensor = {math.prod(sizes)} but {n_devices} devices are available; "
      "the product must equal the device count (use -1 on one axis to fill)"
    )
  return tuple(sizes)


def make_mesh(mesh_config) -> Mesh:
  shape = mesh_shape(mesh_config, jax.device_count())
  devices = np.asarray(jax.devices()).reshape(shape)
  return Mesh(devices, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp"), None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_shardings(mesh: Mesh, abstract_tree):
  """NamedShardings for a tree whose leaves may carry nn.LogicallyPartitioned metadata."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)
