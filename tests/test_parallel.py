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
from jaxformer.training.parallel import mesh_shape

CHECK = pathlib.Path(__file__).parent / "jaxformer_testing" / "parallel_check.py"
MULTIPROCESS = pathlib.Path(__file__).parent / "jaxformer_testing" / "multiprocess_check.py"


@pytest.fixture(scope="module")
def eight_devices():
    """The 8-device check's results (a subprocess compiling each mesh's programs: ~45 s on 2
    cores, so every test using it is marked slow)."""
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dp8", "fsdp8", "dp2_fsdp4", "dp4_tp2"])
def test_same_losses_and_params_as_one_device(eight_devices, name):
    r = eight_devices[name]
    assert r["loss_diff"] < 1e-5
    assert r["param_diff"] < 1e-4  # 3 Adam steps: float reassociation of the gradient all-reduce


@pytest.mark.slow
def test_parameters_and_optimizer_state_are_sharded(eight_devices):
    r = eight_devices
    # wq is [L, D, H, K] = [2, 32, 4, 8]
    assert r["dp8"]["wq_spec"] == "P(None, None, None, None)" and r["dp8"]["wq_shard_shape"] == [2, 32, 4, 8]
    assert r["fsdp8"]["wq_spec"] == "P(None, 'fsdp', None, None)" and r["fsdp8"]["wq_shard_shape"] == [2, 4, 4, 8]
    assert r["fsdp8"]["mu_wq_shard_shape"] == [2, 4, 4, 8]  # Adam's moments sharded like the params
    assert r["dp2_fsdp4"]["wq_shard_shape"] == [2, 8, 4, 8]
    assert r["dp4_tp2"]["wq_spec"] == "P(None, None, 'tensor', None)" and r["dp4_tp2"]["wq_shard_shape"] == [2, 32, 2, 8]


@pytest.mark.slow
def test_fsdp_memory_per_device(eight_devices):
    r = eight_devices["fsdp8"]
    # at most 1/8 of the parameters plus the small replicated tensors (norms, biases)
    assert r["max_param_bytes_per_device"] <= r["full_param_bytes"] / 8 + r["replicated_bytes"]
    assert eight_devices["dp8"]["max_param_bytes_per_device"] == r["full_param_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["init_fsdp8", "init_dp4_tp2"])
def test_sharded_init_equals_single_device_init(eight_devices, name):
    """Parameters and Adam state created by one jitted program with out_shardings equal the
    single-device init exactly, and come out sharded."""
    r = eight_devices[name]
    assert r["same_tree"] and r["params_equal"] and r["state_equal"]
    assert r["wq_spec"] == {"init_fsdp8": "P(None, 'fsdp', None, None)",
                            "init_dp4_tp2": "P(None, None, 'tensor', None)"}[name]


@pytest.mark.slow
def test_sharded_init_never_holds_the_whole_model(eight_devices):
    """XLA's memory analysis of the compiled FSDP-8 init: each device's outputs are its 1/8 of
    the parameters and Adam moments plus the small replicated tensors (norms, biases, the step
    count), and its temporaries (the random bits of its own shards) are no larger than that;
    nothing has the size of the whole model."""
    r = eight_devices["init_fsdp8"]
    per_device = (r["total_bytes"] - r["replicated_bytes"]) / 8 + r["replicated_bytes"]
    assert r["max_held_bytes"] == per_device
    assert per_device <= r["output_bytes"] <= per_device + 1024     # + buffer alignment
    assert r["temp_bytes"] <= r["output_bytes"]
    assert r["argument_bytes"] == 0                                  # nothing is passed in
    assert r["output_bytes"] + r["temp_bytes"] < min(r["total_bytes"] / 4, r["full_param_bytes"])


@pytest.mark.slow
def test_checkpoint_moves_between_meshes(eight_devices):
    assert eight_devices["restore_1dev_diff"] == 0.0
    assert eight_devices["restore_2x4_diff"] == 0.0
    assert eight_devices["restore_2x4_wq_spec"] == "P(None, 'fsdp', None, None)"


@pytest.mark.slow
def test_training_loop_on_a_mesh_matches_one_device(eight_devices):
    """The same config, only the mesh section changed: 1 device vs a 2x4 (data x fsdp) mesh."""
    assert eight_devices["train_loop_wq_spec"] == "P(None, 'fsdp', None, None)"
    assert eight_devices["train_loop_loss_diff"] < 1e-5
    assert eight_devices["train_loop_param_diff"] < 1e-4


@pytest.mark.slow
def test_two_processes_train_like_one_device(tmp_path):
    """Two processes with 2 CPU devices each join one job through JAX_COORDINATOR_ADDRESS /
    JAX_NUM_PROCESSES / JAX_PROCESS_ID, create the state in its shardings on a 2 x 2
    (data x fsdp) mesh spanning both, each feed only their half of every batch, and get the
    single-device losses. Then both run ``jaxformer.train`` into one shared run folder: the
    same losses as one process, and the folder written once (process 0 writes the files,
    checkpoints are collective)."""
    import socket

    import numpy as np

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2")
    shared = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, str(MULTIPROCESS), str(shared)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(env, JAX_PROCESS_ID=str(i))) for i in range(2)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    r = sorted((json.loads(out.strip().splitlines()[-1]) for out, _ in outs), key=lambda x: x["process"])
    assert [(x["processes"], x["devices"], x["local_devices"]) for x in r] == [(2, 4, 2)] * 2
    assert r[0]["rows"] == [0, 1, 4, 5] and r[1]["rows"] == [2, 3, 6, 7]   # half of each micro-batch
    assert r[0]["local_shape"] == [2, 2, 17] and r[0]["wq_spec"] == "P(None, 'fsdp', None, None)"

    from jaxformer_testing import multiprocess_check as mc

    from jaxformer import load_config
    from jaxformer.training import steps as training
    from jaxformer.data import get_batch
    config = load_config(None, mc.OVERRIDES[:-2])
    params = training.init_params(config)
    optimizer = training.make_optimizer(config.train, params)
    opt_state, step, want = optimizer.init(params), training.make_train_step(config, optimizer), []
    for s in range(mc.STEPS):
        batch = training.micro_batches(get_batch(mc.IDS, mc.B, mc.T, seed=0, step=s), mc.K)
        params, opt_state, m = step(params, opt_state, batch, np.int32(s))
        want.append(float(m["loss"]))
    for x in r:
        assert max(abs(a - b) for a, b in zip(x["losses"], want)) < 1e-5, (x["losses"], want)

    # the real training entry point, both hosts into one folder
    from jaxformer import train
    from jaxformer.runfolder import read_metrics
    from jaxformer.training.checkpoint import checkpoint_steps
    one = train(load_config(None, mc.OVERRIDES[:-2] + mc.TRAIN), tmp_path / "one", data_text=mc.TEXT,
                progress=False)
    want = [m["train_loss"] for m in one.metrics if m.get("train_loss") is not None]
    assert len(want) == 4
    for x in r:
        assert np.allclose(x["train_losses"], want, atol=1e-5), (x["train_losses"], want)
    steps = [m["step"] for m in read_metrics(shared)]
    assert steps == sorted(set(steps)) and steps[-1] == 4            # each record once
    assert checkpoint_steps(shared) == [2, 4]
    assert not list(shared.rglob("*.tmp"))


def test_process_rows_follow_the_sharding():
    """The rows a process feeds are read from the batch sharding: all of them with one
    process; with several, those its devices hold, micro-batch by micro-batch, in order."""
    import numpy as np

    from jaxformer.training import parallel
    mesh = parallel.make_mesh(MeshConfig(data=1))
    assert parallel.process_rows(parallel.batch_sharding(mesh), (2, 4, 17)).tolist() == list(range(8))

    class Held:   # a process whose two devices hold rows 6:8 and 2:4 of each [K=3, 8, T+1] micro-batch
        def addressable_devices_indices_map(self, shape):
            return {"d0": (slice(None), slice(6, 8), slice(None)), "d1": (slice(None), slice(2, 4), slice(None))}
    assert parallel.process_rows(Held(), (3, 8, 17)).tolist() == [2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23]
    whole = np.arange(2 * 4 * 3).reshape(2, 4, 3)
    assert np.array_equal(np.asarray(parallel.put_batch(whole, parallel.batch_sharding(mesh), whole.shape)), whole)


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
