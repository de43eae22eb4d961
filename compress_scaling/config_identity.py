"""A run's identity: its config as a dict and the hash of it, and what differs between two.

JAX-free (the sweep runner imports it to decide which runs are done without starting JAX).
A workdir belongs to one config: training and the sweep runner both compare the config hash
recorded in `run.json` / `log_entry.json` with the hash of the config they were given, and
refuse, naming the differing fields, when they are not equal.
"""

from __future__ import annotations

import hashlib
import json


def to_dict(c) -> dict:
  """A ConfigDict as plain JSON values (the `config` block of run.json and log entries)."""
  return json.loads(c.to_json_best_effort())


# Fields added after runs were recorded, at the value that reproduces the behaviour before
# they existed. At that value a field is left out of the identity (hash and comparison), so a
# workdir written before the field existed, whose config block lacks it, keeps its hash.
NEUTRAL_DEFAULTS = {"microbatches": 1, "model.remat": "none"}


def identity(config: dict) -> dict:
  """The part of a config dict that names the run: `config` without neutral-default fields."""
  out = json.loads(json.dumps(config))
  for dotted, neutral in NEUTRAL_DEFAULTS.items():
    *parents, leaf = dotted.split(".")
    node = out
    for p in parents:
      node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf in node and node[leaf] == neutral:
      del node[leaf]
  return out


def dict_hash(config: dict) -> str:
  return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:16]


def config_hash(c) -> str:
  return dict_hash(to_dict(c))


def recorded_hash(record: dict) -> str | None:
  """The config hash a run.json or log entry records (recomputed from its config block when
  the hash itself is missing); None when it records neither."""
  if isinstance(record.get("config_hash"), str):
    return record["config_hash"]
  if isinstance(record.get("config"), dict):
    return dict_hash(record["config"])
  return None


def changed_fields(old: dict | None, new: dict, prefix: str = "") -> list[str]:
  """Dotted names of the fields whose values differ (added or removed fields included)."""
  old = old if isinstance(old, dict) else {}
  out = []
  for k in sorted(set(old) | set(new)):
    va, vb = old.get(k), new.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += changed_fields(va, vb, f"{prefix}{k}.")
    elif va != vb:
      out.append(f"{prefix}{k}")
  return out


def mismatch(record: dict, config: dict) -> list[str] | None:
  """None when `record` (run.json or a log entry) belongs to `config`; else the differing
  fields (['<no config recorded>'] when the record cannot tell)."""
  recorded = recorded_hash(record)
  if recorded == dict_hash(config):
    return None
  if recorded is None:
    return ["<no config recorded>"]
  old = record.get("config")
  old = identity(old) if isinstance(old, dict) else old
  return changed_fields(old, identity(config)) or ["<config hash only>"]
