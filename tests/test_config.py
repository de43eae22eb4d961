"""Config validation: each bad value fails before compilation, naming the field."""

import pytest

from compress_scaling import config_lib
from configs import base, smoke
from configs import sizes as size_configs
from tests.conftest import run_main


def _config(**overrides):
  c = smoke.get_config()
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


@pytest.mark.parametrize(
  "overrides,devices,needle",
  [
    ({"model.size": "3m"}, 1, "model.size='3m' is unknown; allowed: 0.03m"),
    ({"model.size": "custom", "model.d_model": 64}, 1, "model.size='custom' needs positive"),
    ({"model.d_model": 66}, 1, "model.n_heads=4 does not divide model.d_model=66"),
    ({"model.d_model": 60}, 1, "model.d_model/n_heads=15: the head dim must be even"),
    ({"model.n_kv_heads": 3}, 1, "model.n_kv_heads=3 does not divide model.n_heads=4"),
    (
      {"batch_size": 6, "mesh.data": 4, "mesh.tensor": 2},
      8,
      "batch_size=6 is not divisible by the data-parallel",
    ),
    ({"mesh.data": 4, "mesh.tensor": 4}, 8, "data x fsdp x tensor = 16 but 8 devices"),
    ({"mesh.fsdp": 3}, 8, "do not divide the 8 available devices"),
    ({"mesh.tensor": 0}, 8, "mesh.tensor=0: allowed values are positive sizes or -1"),
    ({"compression": "w4q16"}, 1, "compression"),
    ({"compression": "w4a16+fast"}, 1, "unknown term 'fast'"),
    ({"compression": "dense+s50"}, 1, "unknown term 'dense'; allowed: 'dense' alone"),
    ({"total_steps": -5}, 1, "total_steps=-5: must be a positive integer"),
    ({"eval_every": 0}, 1, "eval_every=0: must be a positive integer"),
    ({"optimizer.lr": -1.0}, 1, "optimizer.lr=-1.0: must be > 0"),
    ({"data.source": "c4"}, 1, "data.source='c4': allowed stdlib"),
    ({"model.dtype": "float16"}, 1, "model.dtype='float16': allowed float32, bfloat16"),
    ({"compression_rules": "*/mlp/out"}, 1, "compression_rules: expected 'layer_glob=spec'"),
    ({"mesh.tensor": 8, "mesh.data": 1}, 8, "mesh.tensor=8 does not divide model.n_heads=4"),
    ({"model.remat": "dots"}, 1, "model.remat='dots': allowed none, full, save_dots"),
    ({"microbatches": 0}, 1, "microbatches=0: must be a positive integer"),
    (
      {"microbatches": 3},
      1,
      "microbatches=3 does not divide the batch per data-parallel shard, batch_size / "
      "(mesh.data x mesh.fsdp) = 8 / 1 = 8",
    ),
    (
      {"microbatches": 4, "mesh.data": 8},
      8,
      "microbatches=4 does not divide the batch per data-parallel shard, batch_size / "
      "(mesh.data x mesh.fsdp) = 8 / 8 = 1",
    ),
  ],
)
def test_validation_errors(overrides, devices, needle):
  with pytest.raises(config_lib.ConfigError, match=None) as e:
    config_lib.validate(_config(**overrides), devices)
  assert needle in str(e.value), str(e.value)


def test_all_errors_reported_together():
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(_config(total_steps=0, batch_size=-1, **{"model.size": "nope"}), 1)
  msg = str(e.value)
  assert "total_steps=0" in msg and "batch_size=-1" in msg and "model.size='nope'" in msg


def test_valid_configs_resolve():
  r = config_lib.validate(_config(**{"mesh.data": 4, "mesh.tensor": 2}), 8)
  assert r.mesh_shape == (4, 1, 2)
  assert r.model.dims.d_model == 64 and r.model.vocab_size == 256
  r = config_lib.validate(_config(**{"model.size": "5m", "model.n_layers": 3}), 1)
  assert (r.model.dims.d_model, r.model.dims.n_layers) == (256, 3)  # explicit dims override
  assert config_lib.validate(base.get_config(), 1).model.dims.d_model == 128
  assert config_lib.validate(size_configs.get_config("74m"), 1).model.dims.n_kv_heads == 4


def test_config_is_locked():
  c = base.get_config()
  with pytest.raises(AttributeError):
    c.totl_steps = 5  # a typo fails instead of being silently ignored


def test_cli_rejects_bad_config_before_writing(tmp_path):
  workdir = tmp_path / "run"
  proc = run_main(workdir, "--config.model.size=7m", "--config.total_steps=-1", check=False)
  assert proc.returncode == 2
  assert "model.size='7m' is unknown" in proc.stderr and "total_steps=-1" in proc.stderr
  assert not workdir.exists()
