"""Joining a multi-host job (jaxformer.training.distributed) and laying out the mesh (parallel.make_mesh),
with a faked environment and a faked ``jax.distributed.initialize``: what is detected and what
is called, without a cluster."""
import logging
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from jaxformer import ConfigError
from jaxformer.training import distributed, parallel
from jaxformer.config import MeshConfig
from jaxformer.training.distributed import Cluster, detect_cluster, maybe_initialize_distributed

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-004]", "SLURM_NTASKS": "4",
         "SLURM_PROCID": "2", "SLURM_LOCALID": "0"}
OMPI = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911", "OMPI_COMM_WORLD_SIZE": "8",
        "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}


@pytest.fixture
def fake(monkeypatch):
    """No TPU VM, no optional packages, JAX not started; records initialize's calls."""
    calls = []
    monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda: False)
    monkeypatch.setattr(distributed, "_importable", lambda name: False)
    monkeypatch.setattr(distributed, "_jax_detects", lambda name: False)
    monkeypatch.setattr(distributed, "_backends_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    return calls


def test_nothing_detected_alone(fake):
    assert detect_cluster({}) is None
    assert detect_cluster({"PATH": "/bin", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None
    assert maybe_initialize_distributed({}) is False and fake == []


def test_explicit_variables(fake):
    env = {"JAX_COORDINATOR_ADDRESS": "host0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "1"}
    assert maybe_initialize_distributed(env) is True
    assert fake == [((), {"coordinator_address": "host0:1234", "num_processes": 4, "process_id": 1})]
    # only the address: the rest is left to JAX's own detection (here SLURM's)
    assert detect_cluster({"JAX_COORDINATOR_ADDRESS": "h:1", **SLURM}) == Cluster(
        "explicit", {"coordinator_address": "h:1"}, None)
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='four' is not an integer"):
        detect_cluster({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "four"})


def test_slurm_job_step(fake):
    assert detect_cluster(SLURM) == Cluster("slurm", {}, 4)
    assert maybe_initialize_distributed(SLURM) is True
    assert fake == [((), {})]                       # JAX derives coordinator, count and id itself
    assert detect_cluster({**SLURM, "SLURM_NTASKS": "1"}) is None   # a one-task job runs alone
    no_step = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}
    assert detect_cluster(no_step) is None          # sbatch script outside srun: JAX cannot join it


def test_open_mpi(fake):
    assert detect_cluster(OMPI) == Cluster("ompi", {}, 8)
    assert detect_cluster({**OMPI, "OMPI_COMM_WORLD_SIZE": "1"}) is None
    assert detect_cluster({**OMPI, **SLURM}).name == "ompi"        # JAX's order: Open MPI first


def test_open_mpi_5_through_jax_prrte_or_mpi4py(fake, monkeypatch):
    env = {"PRTE_LAUNCHED": "1", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "0"}
    monkeypatch.setattr(distributed, "_jax_detects", lambda name: name == "prrte")
    assert detect_cluster(env) == Cluster("prrte", {}, 4)
    assert detect_cluster({**env, "OMPI_COMM_WORLD_SIZE": "1"}) is None
    monkeypatch.setattr(distributed, "_jax_detects", lambda name: False)    # an older JAX
    monkeypatch.setattr(distributed, "_importable", lambda name: name == "mpi4py")
    assert detect_cluster(env) == Cluster("mpi4py", {"cluster_detection_method": "mpi4py"}, 4)


def test_other_mpi_needs_mpi4py(fake, monkeypatch, caplog):
    env = {"PMI_SIZE": "4", "PMI_RANK": "0"}      # MPICH / Intel MPI
    with caplog.at_level(logging.WARNING, logger="jaxformer.training.distributed"):
        assert detect_cluster(env) is None
    assert "mpi4py" in caplog.text
    monkeypatch.setattr(distributed, "_importable", lambda name: name == "mpi4py")
    assert detect_cluster(env) == Cluster("mpi4py", {"cluster_detection_method": "mpi4py"}, 4)
    assert detect_cluster({"OMPI_COMM_WORLD_SIZE": "2"}).name == "mpi4py"   # Open MPI 5: no hnp_uri
    assert maybe_initialize_distributed(env) is True
    assert fake == [((), {"cluster_detection_method": "mpi4py"})]


def test_cloud_tpu(fake, monkeypatch):
    assert detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) is None      # not on a TPU VM
    monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda: True)
    assert detect_cluster({}) == Cluster("gcetpu")                      # pod slice: metadata server
    assert detect_cluster({"TPU_SKIP_MDS_QUERY": "1"}) is None
    assert detect_cluster({"TPU_WORKER_HOSTNAMES": "w-0,w-1,w-2,w-3"}) == Cluster("gketpu", {}, 4)
    assert detect_cluster({"TPU_PROCESS_ADDRESSES": "a:8476,b:8476", "TPU_WORKER_HOSTNAMES": "a"}).num_processes == 2
    assert detect_cluster({"TPU_WORKER_HOSTNAMES": "w-0"}) is None       # one host
    assert detect_cluster({"TPU_WORKER_HOSTNAMES": "w-0", "MEGASCALE_NUM_SLICES": "2"}).num_processes == 2
    assert maybe_initialize_distributed({}) is True and fake == [((), {})]


def test_kubernetes_indexed_job(fake, monkeypatch):
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "0"}
    assert detect_cluster(env) is None                                  # no `kubernetes` package
    monkeypatch.setattr(distributed, "_importable", lambda name: name == "kubernetes")
    assert detect_cluster(env) == Cluster("k8s")
    assert detect_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None   # any pod: not a job


def test_switch_off_already_initialized_and_too_late(fake, monkeypatch, caplog):
    assert detect_cluster({**SLURM, "JAXFORMER_DISTRIBUTED": "0"}) is None
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    assert maybe_initialize_distributed(SLURM) is False
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed, "_backends_initialized", lambda: True)
    with caplog.at_level(logging.WARNING, logger="jaxformer.training.distributed"):
        assert maybe_initialize_distributed(SLURM) is False
    assert "already started" in caplog.text and fake == []


def test_importing_the_cli_does_not_start_jax():
    """``jax.distributed.initialize`` must come before JAX starts its backends: importing
    the CLI and the library must not start them."""
    code = ("import jaxformer, jaxformer.cli, jaxformer.cli.commands.train, jaxformer.training.loop\n"
            "from jax._src import xla_bridge\nprint(xla_bridge.backends_are_initialized())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"


# ----------------------------------------------------------------------------- make_mesh
class FakeDevice:
    def __init__(self, i, slice_index):
        self.id, self.slice_index, self.process_index = i, slice_index, slice_index
        self.platform = self.device_kind = "cpu"


def test_make_mesh_auto_axes_in_device_order():
    mesh = parallel.make_mesh(MeshConfig(data=1))
    assert mesh.axis_names == ("data", "fsdp", "tensor") and mesh.devices.shape == (1, 1, 1)
    assert tuple(mesh.axis_types) == (AxisType.Auto,) * 3
    assert mesh.devices.flat[0] == jax.devices()[0]
    fake = [FakeDevice(i, 0) for i in (3, 1, 2, 0)]      # CPU: the order given, as before
    assert [d.id for d in parallel.make_mesh(MeshConfig(data=2, fsdp=2), fake).devices.flat] == [3, 1, 2, 0]


def test_make_mesh_several_slices():
    fake = [FakeDevice(i, i // 4) for i in range(8)]
    mesh = parallel.make_mesh(MeshConfig(data=2, fsdp=4), fake)   # data across the 2 slices
    assert [[d.slice_index for d in row.flat] for row in mesh.devices] == [[0] * 4, [1] * 4]
    mesh = parallel.make_mesh(MeshConfig(data=1, fsdp=8), fake[::-1])   # fsdp spans slices
    assert [d.id for d in mesh.devices.flat] == list(range(8))
    assert tuple(mesh.axis_types) == (AxisType.Auto,) * 3
    assert np.asarray(mesh.devices).shape == (1, 8, 1)
