"""The size ladder as configs: --config=configs/sizes.py:NAME trains base.py at size NAME.

The ladder itself (dims per name, with sources) lives in compress_scaling/sizes.py so the
library can resolve `model.size` overrides; `python -m compress_scaling.sizes` prints it.
"""

import ml_collections

from compress_scaling import sizes
from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "1m"
  if name not in sizes.LADDER:
    raise ValueError(f"configs/sizes.py:{name}: unknown size; allowed: {', '.join(sizes.LADDER)}")
  c = base.get_config()
  c.model.size = name
  return c
