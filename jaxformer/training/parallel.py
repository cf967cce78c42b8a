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
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxformer.errors import ConfigError
from jaxformer.training.steps import compute_config, fresh_params, make_train_step, step_kernels

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
    """A ``Mesh`` with axes ``("data", "fsdp", "tensor")`` over ``devices`` (default: all).

    Devices are laid out by ``jax.make_mesh``, which knows the physical topology: on TPUs the
    last axes (``tensor``, then ``fsdp``) get the fastest interconnect rings, on GPUs devices
    are ordered by id, on CPU the order is ``devices``' own. Devices of several slices (TPU
    multislice) are joined along ``data`` over the data-center network when ``mesh.data`` is
    a multiple of the number of slices (``mesh_utils.create_hybrid_device_mesh``), else
    ordered slice by slice. All axes are ``AxisType.Auto``: shardings are given explicitly to
    jit and XLA propagates them (``jax.make_mesh`` alone would make them ``Explicit``)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    auto = (AxisType.Auto,) * len(AXES)
    slice_of = lambda d: getattr(d, "slice_index", 0) or 0  # noqa: E731
    n_slices = len({slice_of(d) for d in devices})
    if n_slices == 1:
        return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)
    if shape[0] % n_slices == 0:
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_hybrid_device_mesh((shape[0] // n_slices, *shape[1:]), (n_slices, 1, 1), devices)
    else:
        grid = np.asarray(sorted(devices, key=lambda d: (slice_of(d), d.id))).reshape(shape)
    return Mesh(grid, AXES, axis_types=auto)


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


def process_rows(sharding: NamedSharding, global_shape) -> np.ndarray:
    """The rows of the ``[B, T+1]`` global batch that this process's devices hold, for a
    micro-batched batch of ``global_shape = [K, B/K, T+1]`` placed with ``sharding`` (rows
    split along axis 1): sorted, micro-batch by micro-batch (all rows with one process).
    Read from the sharding itself, so it holds for any device layout of the mesh."""
    K, b = int(global_shape[0]), int(global_shape[1])
    held = sorted({r for index in sharding.addressable_devices_indices_map(tuple(global_shape)).values()
                   for r in range(*index[1].indices(b))})
    return (np.arange(K)[:, None] * b + np.asarray(held, dtype=np.int64)[None]).ravel()


def put_batch(batch: np.ndarray, sharding: NamedSharding, global_shape=None) -> jax.Array:
    """Place a ``[K, B/K, T+1]`` micro-batched batch on the mesh. ``batch`` is the whole
    batch, or (several hosts) only this process's rows (:func:`process_rows`) of the batch of
    ``global_shape``, from which the global array is assembled without any host holding it."""
    if global_shape is None or tuple(batch.shape) == tuple(global_shape):
        return jax.device_put(batch, sharding)
    return jax.make_array_from_process_local_data(sharding, batch, tuple(global_shape))


def init_program(config, optimizer, mesh: Mesh):
    """The program that creates a fresh run's parameters and optimizer state on ``mesh``:
    ``(init, param_shardings, state_shardings)``, where ``init()`` is
    :func:`jaxformer.training.steps.fresh_params` followed by ``optimizer.init``, jitted with
    ``out_shardings`` computed from ``jax.eval_shape``. XLA partitions the random init, so
    each device computes and holds only its own shards and the whole model never exists on
    one device; ``init.lower().compile().memory_analysis()`` shows the bytes per device."""
    def init():
        params = fresh_params(config.model, config.train.seed)
        return params, optimizer.init(params)
    abstract_params, abstract_state = jax.eval_shape(init)
    p_sh = param_shardings(abstract_params, mesh)
    s_sh = state_shardings(abstract_state, abstract_params, mesh)
    return jax.jit(init, out_shardings=(p_sh, s_sh)), p_sh, s_sh


def init_sharded(config, optimizer, mesh: Mesh):
    """``(params, opt_state)`` of a fresh run, created directly in their shardings on ``mesh``
    (:func:`init_program`); the parameters equal :func:`jaxformer.training.steps.init_params`."""
    return init_program(config, optimizer, mesh)[0]()


def make_sharded_train_step(config, optimizer, mesh: Mesh, params, opt_state):
    """The library's train step (``training.make_train_step``) compiled with explicit
    in/out shardings on ``mesh``; params and optimizer state are donated. ``params`` and
    ``opt_state`` give only structure and shapes (arrays or ``jax.ShapeDtypeStruct``).
    Returns ``(step_fn, param_shardings, state_shardings, batch_sharding)``."""
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
