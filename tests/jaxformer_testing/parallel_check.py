"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag
must be set before JAX starts). Prints one JSON object with what tests/test_parallel.py asserts."""
import json
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import load_config
from jaxformer.training import parallel, steps as training
from jaxformer.config import MeshConfig

assert jax.device_count() == 8, jax.devices()
STEPS = 3
cfg = load_config(None, ["model.vocab_size=64", "model.d_model=32", "model.n_head=4",
                         "model.n_kv_head=2", "model.n_layer=2", "model.d_ff=64", "model.max_len=16",
                         "model.tie_embeddings=false", "model.init_std=0.02", "train.batch_size=16", "train.grad_accum=2",
                         "train.warmup_steps=1", "train.max_steps=10", "train.lr=0.01"])
rng = np.random.default_rng(0)
batches = [rng.integers(0, 64, (16, 17), dtype=np.int32) for _ in range(STEPS)]


def run(mesh_cfg):
    params = training.init_params(cfg)
    optimizer = training.make_optimizer(cfg.train, params)
    opt_state = optimizer.init(params)
    if mesh_cfg is None:  # plain single-device reference
        step = training.make_train_step(cfg, optimizer)
        put = lambda b: jnp.asarray(b)  # noqa: E731
    else:
        mesh = parallel.make_mesh(mesh_cfg)
        step, p_sh, s_sh, b_sh = parallel.make_sharded_train_step(cfg, optimizer, mesh, params, opt_state)
        params, opt_state = parallel.shard(params, p_sh), parallel.shard(opt_state, s_sh)
        put = lambda b: jax.device_put(b, b_sh)  # noqa: E731
    losses = []
    for i, b in enumerate(batches):
        params, opt_state, m = step(params, opt_state, put(training.micro_batches(b, 2)), jnp.int32(i))
        losses.append(float(m["loss"]))
    return params, opt_state, losses


out = {}
ref_params, _, ref_losses = run(None)
ref_flat = jax.tree.leaves(ref_params)
full_bytes = sum(x.nbytes for x in ref_flat)
for name, m in {"dp8": MeshConfig(data=8), "fsdp8": MeshConfig(data=1, fsdp=8),
                "dp2_fsdp4": MeshConfig(data=2, fsdp=4), "dp4_tp2": MeshConfig(data=4, tensor=2)}.items():
    params, opt_state, losses = run(m)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(params), ref_flat))
    per_dev = parallel.bytes_per_device(params)
    wq = params["blocks"]["attn"]["wq"]
    out[name] = {"loss_diff": max(abs(a - b) for a, b in zip(losses, ref_losses)), "param_diff": diff,
                 "max_param_bytes_per_device": max(per_dev.values()), "full_param_bytes": full_bytes,
                 "wq_spec": str(wq.sharding.spec), "wq_shard_shape": list(wq.addressable_shards[0].data.shape),
                 "mu_wq_shard_shape": None}
    mus = [x for p, x in jax.tree_util.tree_flatten_with_path(opt_state)[0]
           if "mu" in jax.tree_util.keystr(p) and jax.tree_util.keystr(p).endswith("['wq']")]
    if mus:
        out[name]["mu_wq_shard_shape"] = list(mus[0].addressable_shards[0].data.shape)
    small = sum(x.nbytes for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
                if all(a is None for a in x.sharding.spec))
    out[name]["replicated_bytes"] = small
    if name == "fsdp8":
        from jaxformer.training import checkpoint
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save_checkpoint(d, 3, params, opt_state)
            one = checkpoint.restore_checkpoint(d, params_like=ref_params)["params"]
            out["restore_1dev_diff"] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                           for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(params)))
            mesh24 = parallel.make_mesh(MeshConfig(data=2, fsdp=4))
            like = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                ref_params, parallel.param_shardings(ref_params, mesh24))
            r = checkpoint.restore_checkpoint(d, params_like=like)["params"]
            rw = r["blocks"]["attn"]["wq"]
            out["restore_2x4_diff"] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                          for a, b in zip(jax.tree.leaves(r), jax.tree.leaves(params)))
            out["restore_2x4_wq_spec"] = str(getattr(rw.sharding, "spec", None))
# sharded initialisation: parameters and Adam state created directly in their shardings
ref_init = training.init_params(cfg)
ref_opt = training.make_optimizer(cfg.train, ref_init)
ref_state = ref_opt.init(ref_init)
for name, m in {"fsdp8": MeshConfig(data=1, fsdp=8), "dp4_tp2": MeshConfig(data=4, tensor=2)}.items():
    opt = training.make_optimizer(cfg.train, training.abstract_params(cfg))
    init, p_sh, s_sh = parallel.init_program(cfg, opt, parallel.make_mesh(m))
    mem = init.lower().compile().memory_analysis()
    params, state = init()
    same = lambda a, b: all(np.array_equal(np.asarray(x), np.asarray(y))  # noqa: E731
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    leaves = jax.tree.leaves((params, state))
    out["init_" + name] = {
        "params_equal": same(params, ref_init), "state_equal": same(state, ref_state),
        "same_tree": jax.tree.structure((params, state)) == jax.tree.structure((ref_init, ref_state)),
        "wq_spec": str(params["blocks"]["attn"]["wq"].sharding.spec),
        "output_bytes": mem.output_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
        "argument_bytes": mem.argument_size_in_bytes,
        "total_bytes": sum(x.nbytes for x in leaves),
        "replicated_bytes": sum(x.nbytes for x in leaves if x.sharding.is_fully_replicated),
        "full_param_bytes": sum(x.nbytes for x in jax.tree.leaves(params)),
        "max_held_bytes": max(parallel.bytes_per_device((params, state)).values())}
# the training loop itself: the same config on one device and on a 2x4 mesh (mesh section only)
from jaxformer.training.loop import train  # noqa: E402

text = " ".join(["the cat sleeps on the warm mat while the dogs bark"] * 60)
runs = {}
for name, overrides in {"one": ["mesh.data=1", "mesh.fsdp=1"], "mesh": ["mesh.data=2", "mesh.fsdp=4"]}.items():
    c = load_config(None, ["model.vocab_size=256", "model.d_model=32", "model.n_head=4", "model.n_layer=2",
                           "model.d_ff=64", "model.max_len=16", "data.tokenizer=byte", "train.batch_size=8",
                           "train.max_steps=6", "train.log_interval=2", "train.eval_interval=3",
                           "train.eval_steps=2", "train.checkpoint_interval=3", "train.sample_tokens=0"] + overrides)
    with tempfile.TemporaryDirectory() as d:
        r = train(c, d, progress=False, data_text=text)
        runs[name] = r
out["train_loop_loss_diff"] = max(abs(a["train_loss"] - b["train_loss"]) for a, b in
                                  zip(runs["one"].metrics[1:], runs["mesh"].metrics[1:]))
out["train_loop_param_diff"] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                                   zip(jax.tree.leaves(runs["one"].params), jax.tree.leaves(runs["mesh"].params)))
out["train_loop_wq_spec"] = str(runs["mesh"].params["blocks"]["attn"]["wq"].sharding.spec)
out["ref_losses"] = ref_losses
json.dump(out, sys.stdout)
