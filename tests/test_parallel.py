"""Data parallel, FSDP and tensor parallel on 8 simulated CPU devices give the single-device
result; parameters are really sharded; checkpoints move between meshes.

The 8-device part runs in a subprocess: XLA_FLAGS must be set before JAX starts."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from jaxformer import ConfigError
from jaxformer.config import MeshConfig
from jaxformer.parallel import mesh_shape

CHECK = pathlib.Path(__file__).parent / "helpers" / "parallel_check.py"


@pytest.fixture(scope="module")
def eight_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("name", ["dp8", "fsdp8", "dp2_fsdp4", "dp4_tp2"])
def test_same_losses_and_params_as_one_device(eight_devices, name):
    r = eight_devices[name]
    assert r["loss_diff"] < 1e-5
    assert r["param_diff"] < 1e-4  # 3 Adam steps: float reassociation of the gradient all-reduce


def test_parameters_and_optimizer_state_are_sharded(eight_devices):
    r = eight_devices
    # wq is [L, D, H, K] = [2, 32, 4, 8]
    assert r["dp8"]["wq_spec"] == "P(None, None, None, None)" and r["dp8"]["wq_shard_shape"] == [2, 32, 4, 8]
    assert r["fsdp8"]["wq_spec"] == "P(None, 'fsdp', None, None)" and r["fsdp8"]["wq_shard_shape"] == [2, 4, 4, 8]
    assert r["fsdp8"]["mu_wq_shard_shape"] == [2, 4, 4, 8]  # Adam's moments sharded like the params
    assert r["dp2_fsdp4"]["wq_shard_shape"] == [2, 8, 4, 8]
    assert r["dp4_tp2"]["wq_spec"] == "P(None, None, 'tensor', None)" and r["dp4_tp2"]["wq_shard_shape"] == [2, 32, 2, 8]


def test_fsdp_memory_per_device(eight_devices):
    r = eight_devices["fsdp8"]
    # at most 1/8 of the parameters plus the small replicated tensors (norms, biases)
    assert r["max_param_bytes_per_device"] <= r["full_param_bytes"] / 8 + r["replicated_bytes"]
    assert eight_devices["dp8"]["max_param_bytes_per_device"] == r["full_param_bytes"]


def test_checkpoint_moves_between_meshes(eight_devices):
    assert eight_devices["restore_1dev_diff"] == 0.0
    assert eight_devices["restore_2x4_diff"] == 0.0
    assert eight_devices["restore_2x4_wq_spec"] == "P(None, 'fsdp', None, None)"


def test_training_loop_on_a_mesh_matches_one_device(eight_devices):
    """The same config, only the mesh section changed: 1 device vs a 2x4 (data x fsdp) mesh."""
    assert eight_devices["train_loop_wq_spec"] == "P(None, 'fsdp', None, None)"
    assert eight_devices["train_loop_loss_diff"] < 1e-5
    assert eight_devices["train_loop_param_diff"] < 1e-4


def test_mesh_shape_resolution_and_errors():
    assert mesh_shape(MeshConfig(), 8) == (8, 1, 1)
    assert mesh_shape(MeshConfig(data=2, fsdp=-1), 8) == (2, 4, 1)
    assert mesh_shape(MeshConfig(data=1), 1) == (1, 1, 1)
    with pytest.raises(ConfigError, match="needs 4 devices, but 8"):
        mesh_shape(MeshConfig(data=2, fsdp=2), 8)
    with pytest.raises(ConfigError, match="not divisible by 3"):
        mesh_shape(MeshConfig(data=-1, fsdp=3), 8)
    with pytest.raises(ConfigError, match="at most one mesh axis"):
        MeshConfig(data=-1, fsdp=-1)
