"""One of two processes of a CPU "multi-host" job (started by tests/test_parallel.py with
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES=2, JAX_PROCESS_ID and 2 CPU devices each): joins
the job through jaxformer's own detection, creates parameters and Adam state in their
shardings on a data x fsdp = 2 x 2 mesh spanning both processes, feeds only its own rows of
every batch and prints one JSON object: the losses, the rows it fed, the device counts.
With a run folder argument (shared by both processes), it then runs ``jaxformer.train`` into
it, as ``jaxformer train`` would on each host, and adds that run's logged train losses."""
import json
import sys

import numpy as np

OVERRIDES = ["model.vocab_size=64", "model.d_model=32", "model.n_head=4", "model.n_layer=2", "model.d_ff=64",
             "model.max_len=16", "model.init_std=0.02", "train.batch_size=8", "train.grad_accum=2", "train.warmup_steps=1",
             "train.max_steps=10", "train.lr=0.01", "mesh.data=2", "mesh.fsdp=2"]
IDS = np.random.default_rng(0).integers(0, 64, 2000).astype(np.uint16)
STEPS, B, K, T = 3, 8, 2, 16
TEXT = "".join(chr(97 + int(i) % 26) for i in np.random.default_rng(1).integers(0, 10**6, 3000))
TRAIN = ["data.tokenizer=char", "train.max_steps=4", "train.log_interval=1", "train.eval_interval=2",
         "train.eval_steps=1", "train.checkpoint_interval=2", "train.sample_tokens=0"]


def main():
    from jaxformer.training.distributed import maybe_initialize_distributed
    assert maybe_initialize_distributed()    # before JAX starts its backends

    import jax

    from jaxformer import load_config
    from jaxformer.training import parallel, steps as training
    from jaxformer.data import get_batch

    config = load_config(None, OVERRIDES)
    mesh = parallel.make_mesh(config.mesh)
    optimizer = training.make_optimizer(config.train, training.abstract_params(config))
    init, p_sh, s_sh = parallel.init_program(config, optimizer, mesh)
    params, opt_state = init()
    step, _, _, b_sh = parallel.make_sharded_train_step(config, optimizer, mesh, params, opt_state)
    shape = (K, B // K, T + 1)
    rows = parallel.process_rows(b_sh, shape)
    losses = []
    for s in range(STEPS):
        local = training.micro_batches(get_batch(IDS, B, T, seed=0, step=s, rows=rows), K)
        params, opt_state, m = step(params, opt_state, parallel.put_batch(local, b_sh, shape), np.int32(s))
        losses.append(float(m["loss"]))
    print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                      "devices": jax.device_count(), "local_devices": jax.local_device_count(),
                      "rows": rows.tolist(), "local_shape": list(local.shape), "losses": losses,
                      "wq_spec": str(params["blocks"]["attn"]["wq"].sharding.spec),
                      "train_losses": train_losses(sys.argv[1]) if len(sys.argv) > 1 else None}))


def train_losses(run_dir):
    from jaxformer import load_config, train
    result = train(load_config(None, OVERRIDES + TRAIN), run_dir, data_text=TEXT, progress=False)
    return [r["train_loss"] for r in result.metrics if r.get("train_loss") is not None]


if __name__ == "__main__":
    main()
