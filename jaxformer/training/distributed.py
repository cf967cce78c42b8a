"""Joining a multi-host job: when to call ``jax.distributed.initialize()`` and with what.

:func:`detect_cluster` reads only environment variables (and, for a Cloud TPU VM, the flag
JAX sets at import when it finds TPU chips), never the network, and mirrors the cluster
environments JAX itself auto-detects (``jax/_src/clusters/``), in JAX's order:

- explicit: ``JAX_COORDINATOR_ADDRESS`` set; ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are
  passed when set (unset ones are left to JAX's own detection).
- Open MPI <= 4 (``mpirun``): ``OMPI_MCA_orte_hnp_uri`` set and ``OMPI_COMM_WORLD_SIZE`` > 1.
- Open MPI 5 (PRRTE's ``mpirun``): ``PRTE_LAUNCHED=1`` and ``OMPI_COMM_WORLD_SIZE`` > 1, when the
  installed JAX has its ``prrte`` cluster environment (newer JAX; otherwise "other MPI").
- SLURM job step (``srun``): ``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``,
  ``SLURM_PROCID`` and ``SLURM_LOCALID`` all set and ``SLURM_NTASKS`` > 1.
- Cloud TPU on GKE: a Cloud TPU VM with ``TPU_PROCESS_ADDRESSES`` (else
  ``TPU_WORKER_HOSTNAMES``) listing more than one host, or ``MEGASCALE_NUM_SLICES`` > 1.
- Cloud TPU VM (GCE): a Cloud TPU VM without those variables and without
  ``TPU_SKIP_MDS_QUERY``; JAX asks the metadata server for the slice's hosts (a single-host
  slice then initialises as 1 process, which is harmless).
- Kubernetes Indexed Job: ``KUBERNETES_SERVICE_HOST`` and ``JOB_COMPLETION_INDEX`` set and the
  ``kubernetes`` package importable; JAX reads the process count (the Job's ``parallelism``)
  from the API.
- other MPI: ``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE`` (MPICH, Intel MPI) or ``PMIX_SIZE`` > 1
  without the above: ``initialize(cluster_detection_method="mpi4py")`` when ``mpi4py`` is
  importable, else a warning and a single process.

Except for "explicit" and "other MPI", ``jax.distributed.initialize()`` is called without
arguments, so JAX derives the coordinator, process count and id the same way.
``JAXFORMER_DISTRIBUTED=0`` turns detection off (e.g. independent runs started by one ``srun``).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

import jax

from jaxformer.errors import ConfigError

log = logging.getLogger(__name__)

#: Set to ``0`` to never join a multi-host job automatically.
DISABLE_ENV = "JAXFORMER_DISTRIBUTED"

_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


@dataclass(frozen=True)
class Cluster:
    """A detected multi-host environment: its ``name``, the keyword arguments for
    ``jax.distributed.initialize`` (empty: JAX detects everything itself) and the process
    count when the environment states it (None: JAX finds it out)."""

    name: str
    kwargs: dict = field(default_factory=dict)
    num_processes: Optional[int] = None


def _int(env: Mapping[str, str], name: str) -> Optional[int]:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def _on_cloud_tpu_vm() -> bool:
    """JAX's own verdict, made at import (TPU chips and libtpu found)."""
    try:
        from jax._src import cloud_tpu_init
    except ImportError:  # pragma: no cover - layout of a future JAX
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def _jax_detects(name: str) -> bool:
    """Whether this JAX version has the cluster environment ``name`` (e.g. ``"prrte"``)."""
    try:
        from jax._src import clusters
        return any(c.name == name for c in clusters.ClusterEnv._cluster_types)
    except (ImportError, AttributeError):  # pragma: no cover - layout of a future JAX
        return False


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def detect_cluster(env: Optional[Mapping[str, str]] = None) -> Optional[Cluster]:
    """The multi-host environment this process runs in (see the module docstring), or None
    when it runs alone: no cluster, a cluster of one process, or ``JAXFORMER_DISTRIBUTED=0``."""
    env = os.environ if env is None else env
    if env.get(DISABLE_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"]}
        n, i = _int(env, "JAX_NUM_PROCESSES"), _int(env, "JAX_PROCESS_ID")
        if n is not None:
            kwargs["num_processes"] = n
        if i is not None:
            kwargs["process_id"] = i
        return Cluster("explicit", kwargs, n)
    if "OMPI_MCA_orte_hnp_uri" in env:
        n = _int(env, "OMPI_COMM_WORLD_SIZE")
        return Cluster("ompi", {}, n) if n is not None and n > 1 else None
    if env.get("PRTE_LAUNCHED") == "1" and _jax_detects("prrte"):   # Open MPI 5; newer JAX only
        n = _int(env, "OMPI_COMM_WORLD_SIZE")
        return Cluster("prrte", {}, n) if n is not None and n > 1 else None
    if all(v in env for v in _SLURM):
        n = _int(env, "SLURM_NTASKS")
        return Cluster("slurm", {}, n) if n is not None and n > 1 else None
    if _on_cloud_tpu_vm():
        hosts = env.get("TPU_PROCESS_ADDRESSES", env.get("TPU_WORKER_HOSTNAMES"))
        slices = _int(env, "MEGASCALE_NUM_SLICES") or 1
        if hosts is not None:
            n = len(hosts.split(",")) * slices
            return Cluster("gketpu", {}, n) if n > 1 else None
        if env.get("TPU_SKIP_MDS_QUERY") is None:
            return Cluster("gcetpu")
    if "KUBERNETES_SERVICE_HOST" in env and "JOB_COMPLETION_INDEX" in env and _importable("kubernetes"):
        return Cluster("k8s")
    for size_var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        n = _int(env, size_var)
        if n is not None and n > 1:
            if not _importable("mpi4py"):
                log.warning("%s=%d says this is one of %d MPI processes, but JAX cannot join them "
                            "without mpi4py (pip install mpi4py) or JAX_COORDINATOR_ADDRESS, "
                            "JAX_NUM_PROCESSES and JAX_PROCESS_ID; running as a single process",
                            size_var, n, n)
                return None
            return Cluster("mpi4py", {"cluster_detection_method": "mpi4py"}, n)
    return None


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # pragma: no cover - layout of a future JAX
        return False


def maybe_initialize_distributed(env: Optional[Mapping[str, str]] = None) -> bool:
    """Call ``jax.distributed.initialize`` when this process is one of several of a
    multi-host job (:func:`detect_cluster`). Returns True if it initialised.

    Nothing happens when JAX's distributed system is already up, or (with a warning) when
    JAX has already started its backends in this process: ``initialize`` must come first."""
    cluster = detect_cluster(env)
    if cluster is None or jax.distributed.is_initialized():
        return False
    if _backends_initialized():
        log.warning("a %s cluster is configured, but JAX already started its devices in this "
                    "process, so it cannot join the job; running as a single process", cluster.name)
        return False
    log.info("joining a %s job (%s processes) with jax.distributed.initialize(%s)", cluster.name,
             cluster.num_processes or "JAX-detected",
             ", ".join(f"{k}={v!r}" for k, v in cluster.kwargs.items()))
    jax.distributed.initialize(**cluster.kwargs)
    return True
