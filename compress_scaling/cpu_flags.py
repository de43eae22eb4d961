"""XLA:CPU settings the command-line entry points apply before JAX starts.

`--xla_cpu_experimental_ynn_fusion_type=dot`: let XLA:CPU hand only the matmuls to YNNPACK
and keep elementwise work in its own loop fusions. With the default (matmuls fused with their
elementwise neighbours) XLA materialises broadcasts and transposes for the YNNPACK fusions
(the RMSNorm scale broadcast to [batch, length, d_model], [d_ff, tokens] copies in the MLP
backward pass); the `5m` train step runs ~10% faster without them (benchmarks/bench_train.py,
1,270-1,300 ms vs 1,370-1,470 ms on the 2-core box, interleaved runs). The first three
smoke-config steps are unchanged to 2e-5 (tests/test_train.py golden numbers).

The flag is experimental and XLA aborts on unknown flags, so it is set only for the jaxlib
versions it was checked on, never over a value the user set in XLA_FLAGS, and not at all when
COMPRESS_SCALING_XLA_DEFAULTS=0. Flags reach XLA when JAX creates its CPU client (first device
query or compile), so `apply()` must run before that, not necessarily before `import jax`.
"""

from __future__ import annotations

import importlib.metadata
import os

FLAG = "xla_cpu_experimental_ynn_fusion_type"
VALUE = "dot"
CHECKED_JAXLIB = ("0.10.",)  # versions whose XLA:CPU has the flag (checked: 0.10.2)


def apply() -> bool:
  """Adds the flag to XLA_FLAGS when safe; returns whether it is now set by us."""
  if os.environ.get("COMPRESS_SCALING_XLA_DEFAULTS", "1") == "0":
    return False
  current = os.environ.get("XLA_FLAGS", "")
  if FLAG in current:
    return False
  try:
    version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return False
  if not version.startswith(CHECKED_JAXLIB):
    return False
  os.environ["XLA_FLAGS"] = f"{current} --{FLAG}={VALUE}".strip()
  return True
