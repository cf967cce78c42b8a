"""Device meshes and shardings: data parallel, FSDP and tensor parallel from config alone.

Everything here is JAX's own machinery: a :class:`jax.sharding.Mesh` with three named axes
``("data", "fsdp", "tensor")`` sized by the config's ``mesh`` section, named shardings for
parameters, optimizer state and batches, and a train step compiled with those in/out
shardings, so XLA inserts the collectives (all-reduce of gradients for data parallelism,
all-gather of parameters / reduce-scatter of gradients for FSDP, head- and MLP-sharded
matmuls for tensor parallelism).

Parameters get shardings from *logical axis names* (see :data:`PARAM_AXES`) mapped to mesh
axes by :data:`RULES`, the single place where the partitioning policy lives:

    embed -> fsdp     (every weight matrix is split along its model-width dimension)
    heads, kv_heads, mlp, vocab -> tensor
    batch -> (data, fsdp)

A dimension whose size is not divisible by its mesh axes stays replicated. Norm scales,
biases of width D and other small vectors are replicated.
"""
from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .errors import ConfigError

AXES = ("data", "fsdp", "tensor")

#: logical axis name -> mesh axes (the partitioning policy)
RULES = {
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "batch": ("data", "fsdp"),
}

#: parameter name -> logical axes of its trailing dimensions (a leading layer axis is None)
PARAM_AXES = {
    "tok_emb": ("vocab", "embed"),
    "pos_emb": (None, "embed"),
    "lm_head": ("embed", "vocab"),
    "wq": ("embed", "heads", None),
    "wk": ("embed", "kv_heads", None),
    "wv": ("embed", "kv_heads", None),
    "wo": ("heads", None, "embed"),
    "bq": ("heads", None),
    "bk": ("kv_heads", None),
    "bv": ("kv_heads", None),
    "w_in": ("embed", "mlp"),
    "w_gate": ("embed", "mlp"),
    "w_out": ("mlp", "embed"),
    "b_in": ("mlp",),
}


def maybe_initialize_distributed() -> bool:
    """Call ``jax.distributed.initialize()`` when a multi-host environment is configured
    (``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``, or a cluster
    JAX auto-detects such as SLURM or a Cloud TPU pod). Returns True if it initialised."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = {}
        if os.environ.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
        if os.environ.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
        jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], **kwargs)
        return True
    return False


def mesh_shape(mesh_config, n_devices: int) -> tuple[int, int, int]:
    """Resolve ``{data, fsdp, tensor}`` (one may be -1 = the rest) for ``n_devices``."""
    sizes = [mesh_config.data, mesh_config.fsdp, mesh_config.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ConfigError(f"mesh {dict(zip(AXES, sizes))} cannot use {n_devices} devices: "
                              f"{n_devices} is not divisible by {known}")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ConfigError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
                          f"but {n_devices} are available")
    return tuple(sizes)


def make_mesh(mesh_config, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A ``Mesh`` with axes ``("data", "fsdp", "tensor")`` over ``devices`` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def _spec(logical: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh) -> P:
    """PartitionSpec for ``shape`` whose trailing dims have ``logical`` names; a dim whose
    size is not divisible by its mesh axes, or whose mesh axes are size 1, is replicated."""
    lead = len(shape) - len(logical)
    out, used = [None] * lead, set()
    for name, size in zip(logical, shape[lead:]):
        axes = tuple(a for a in RULES.get(name, ()) if mesh.shape[a] > 1 and a not in used)
        if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
            out.append(axes[0] if len(axes) == 1 else axes)
            used.update(axes)
        else:
            out.append(None)
    return P(*out)


def param_spec(path, shape, mesh: Mesh) -> P:
    """The PartitionSpec of one parameter, from its name (the last key of its path)."""
    name = getattr(path[-1], "key", str(path[-1])) if path else ""
    logical = PARAM_AXES.get(name)
    if logical is None or len(shape) < len(logical):
        return P()
    return _spec(logical, shape, mesh)


def param_shardings(params, mesh: Mesh):
    """A tree of ``NamedSharding`` matching ``params`` (arrays or shape structs)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, param_spec(path, np.shape(x), mesh)), params)


def state_shardings(state, params, mesh: Mesh):
    """Shardings for an optimizer state: a leaf whose path ends with a parameter's path and has
    its shape (Adam's ``mu``/``nu``) is sharded like that parameter; the rest is replicated."""
    by_path = {}
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        by_path[tuple(str(k) for k in path)] = (np.shape(x), param_spec(path, np.shape(x), mesh))

    def one(path, x):
        keys = tuple(str(k) for k in path)
        for i in range(len(keys)):
            hit = by_path.get(keys[i:])
            if hit is not None and hit[0] == np.shape(x):
                return NamedSharding(mesh, hit[1])
        return NamedSharding(mesh, P())
    return jax.tree_util.tree_map_with_path(one, state)


def batch_sharding(mesh: Mesh, ndim: int = 3) -> NamedSharding:
    """Sharding of a ``[K, B, T+1]`` micro-batched batch: rows over ``("data", "fsdp")``."""
    rows = tuple(a for a in RULES["batch"] if mesh.shape[a] > 1) or None
    spec = [None] * ndim
    spec[ndim - 2] = rows
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard(tree, shardings):
    """Place a tree on the mesh (``jax.device_put`` with matching shardings)."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)


def global_batch(local_rows: np.ndarray, sharding: NamedSharding, global_shape) -> jax.Array:
    """Build the global batch array from this host's rows only (multi-host data loading):
    each process passes its contiguous slice of the batch axis."""
    return jax.make_array_from_process_local_data(sharding, local_rows, global_shape)


def put_batch(batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Place a ``[K, B, T+1]`` batch on the mesh. With several hosts, each one passes only
    its own rows (see :func:`local_rows`) and the global array is assembled from them."""
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    rows = local_rows(batch.shape[1])
    return global_batch(batch[:, rows], sharding, batch.shape)


def local_rows(batch_rows: int) -> slice:
    """The slice of a global batch's rows this process loads (all rows on one host)."""
    n, i = jax.process_count(), jax.process_index()
    per = batch_rows // n
    return slice(i * per, (i + 1) * per)


def make_sharded_train_step(config, optimizer, mesh: Mesh, params, opt_state):
    """The library's train step (``training.make_train_step``) compiled with explicit
    in/out shardings on ``mesh``; params and optimizer state are donated.
    Returns ``(step_fn, param_shardings, state_shardings, batch_sharding)``."""
    from .training import compute_config, make_train_step, step_kernels

    rows = config.train.batch_size // config.train.grad_accum
    split = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % split:
        raise ConfigError(f"train.batch_size={config.train.batch_size} / train.grad_accum="
                          f"{config.train.grad_accum} = {rows} rows per micro-batch is not divisible "
                          f"by the mesh's data x fsdp = {split} devices")
    p_sh = param_shardings(params, mesh)
    s_sh = state_shardings(opt_state, params, mesh)
    b_sh = batch_sharding(mesh)
    rep = replicated(mesh)
    raw = make_train_step(config, optimizer, jit=False, kernels=step_kernels(compute_config(config), mesh))
    step = jax.jit(raw, in_shardings=(p_sh, s_sh, b_sh, rep), out_shardings=(p_sh, s_sh, rep),
                   donate_argnums=(0, 1))
    return step, p_sh, s_sh, b_sh


def bytes_per_device(tree) -> dict:
    """Bytes of ``tree``'s arrays held by each device: ``{device_id: bytes}``."""
    out: dict = {}
    for x in jax.tree.leaves(tree):
        for s in x.addressable_shards:
            out[s.device.id] = out.get(s.device.id, 0) + s.data.nbytes
    return out
