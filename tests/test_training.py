"""Training: optimizer pieces, gradient accumulation, the loop (loss goes down, determinism,
exact resume, non-finite losses), the `jaxformer train` command and the PyTorch reference."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import functional as F
from jaxformer import load_config
from jaxformer.training import loop as train_loop
from jaxformer.runfolder import read_metrics
from jaxformer.training.checkpoint import checkpoint_steps, load_run
from jaxformer.data import CharTokenizer, encode_corpus, get_batch, pydoc_text
from jaxformer.errors import CheckpointError, DataError, RunExistsError
from jaxformer.training.loop import train
from jaxformer.training.steps import (NonFiniteLossError, accumulate_gradients, evaluate, init_params,
                                      loss_fn, lr_schedule, make_optimizer, make_train_step, micro_batches,
                                      weight_decay_mask)
from jaxformer_testing.tolerances import BF16_VS_F32_CURVE_MEAN, BF16_VS_F32_CURVE_STEP

TINY = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.d_ff=64", "model.max_len=32",
        "model.bias=true", "data.tokenizer=char", "train.batch_size=8", "train.lr=3e-3",
        "train.min_lr=3e-4", "train.warmup_steps=5", "train.log_interval=5", "train.eval_interval=10",
        "train.eval_steps=2", "train.checkpoint_interval=5", "train.keep_checkpoints=2",
        "model.init_std=0.02"]   # GPT-2's init: the untrained loss is ln(vocabulary size)
TEXT = pydoc_text()[:40_000]


def tiny(*more):
    return load_config(None, TINY + list(more))


def _exactly_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_weight_decay_mask_excludes_norms_biases_and_embeddings():
    cfg = tiny("model.tie_embeddings=false")
    mask = weight_decay_mask(init_params(cfg))
    decayed = {jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(mask) if m}
    assert decayed == {"['blocks']['attn']['wq']", "['blocks']['attn']['wk']", "['blocks']['attn']['wv']",
                       "['blocks']['attn']['wo']", "['blocks']['mlp']['w_in']", "['blocks']['mlp']['w_out']",
                       "['lm_head']"}
    with_emb = weight_decay_mask(init_params(cfg), decay_embeddings=True)
    assert with_emb["tok_emb"] and with_emb["pos_emb"] and not with_emb["blocks"]["ln1"]["bias"]


def test_weight_decay_applies_only_to_masked_leaves():
    cfg = tiny("train.weight_decay=0.5", "train.warmup_steps=0", "train.grad_clip=0")
    params = init_params(cfg)
    opt = make_optimizer(cfg.train, params)
    zeros = jax.tree.map(np.zeros_like, params)
    # the Adam part is 0 for zero gradients; one compiled program (eagerly, a compile per op and leaf shape)
    updates, _ = jax.jit(lambda g, p: opt.update(g, opt.init(p), p))(zeros, params)
    mask = weight_decay_mask(params)
    lr = float(lr_schedule(cfg.train)(0))
    for (path, u), m, p in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(mask),
                               jax.tree.leaves(params)):
        expected = -lr * 0.5 * np.asarray(p) if m else np.zeros_like(p)
        np.testing.assert_allclose(u, expected, rtol=1e-6, atol=1e-12, err_msg=jax.tree_util.keystr(path))


def test_lr_schedule_warmup_then_cosine():
    tc = load_config(None, ["train.lr=1e-3", "train.min_lr=1e-4", "train.warmup_steps=100",
                            "train.max_steps=2000"]).train
    s = lr_schedule(tc)
    assert float(s(0)) == pytest.approx(1e-5, rel=1e-4) and float(s(99)) == pytest.approx(1e-3, rel=1e-5)
    mid = 100 + (2000 - 100) / 2
    assert float(s(mid - 1)) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4), rel=1e-3)
    assert float(s(1999)) == pytest.approx(1e-4, rel=1e-4) and float(s(5000)) == pytest.approx(1e-4, rel=1e-5)


def test_gradient_accumulation_equals_one_big_batch():
    cfg = tiny()
    params = init_params(cfg)
    ids = np.asarray(CharTokenizer.from_text(TEXT).encode(TEXT), np.uint16)
    batch = get_batch(ids, 8, 32, seed=0, step=0)
    loss1, g1 = jax.jit(accumulate_gradients, static_argnums=2)(params, micro_batches(batch, 1), cfg.model)
    loss4, g4 = jax.jit(accumulate_gradients, static_argnums=2)(params, micro_batches(batch, 4), cfg.model)
    np.testing.assert_allclose(loss4, loss1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)


def test_untrained_eval_loss_is_near_ln_vocab():
    tok = CharTokenizer.from_text(TEXT)
    cfg = tiny(f"model.vocab_size={tok.vocab_size}")
    data = encode_corpus(TEXT, tok)
    loss = evaluate(init_params(cfg), cfg.model, data.val, batch_size=8, steps=4)
    assert abs(loss - math.log(tok.vocab_size)) < 0.05


def test_bf16_compute_keeps_float32_params():
    cfg = tiny("train.dtype=bfloat16")
    params = init_params(cfg)
    opt = make_optimizer(cfg.train, params)
    batch = micro_batches(get_batch(np.arange(500) % 50, 8, 32, seed=0, step=0), 1)
    p, _, m = make_train_step(cfg, opt)(params, opt.init(params), batch, np.int32(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
    assert abs(float(m["loss"]) - math.log(256)) < 0.1


def test_bf16_loss_curve_matches_float32():
    """Mixed precision (bf16 compute, float32 master weights and loss): a 60-step run on
    real text tracks the float32 run from the same weights and batches. Tolerance (docs/training.md):
    every step within 0.03 nats, the 10-step means within 0.01; measured on the toy model
    0.010 / 0.004, on the Tiny Shakespeare recipe (500 steps) 0.007 / 0.001."""
    from jaxformer.training.steps import loss_curve
    tok = CharTokenizer.from_text(TEXT)
    ids = np.asarray(tok.encode(TEXT))
    curves = {dt: loss_curve(tiny(f"train.dtype={dt}", f"model.vocab_size={tok.vocab_size}"), ids, 60)
              for dt in ("float32", "bfloat16")}
    a, b = curves["float32"], curves["bfloat16"]
    assert a[-10:].mean() < a[:10].mean() - 0.5          # it learned something
    assert np.max(np.abs(a - b)) < BF16_VS_F32_CURVE_STEP
    assert np.max(np.abs(a.reshape(6, 10).mean(1) - b.reshape(6, 10).mean(1))) < BF16_VS_F32_CURVE_MEAN
    assert not np.array_equal(a, b)                        # bf16 really was used


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 20-step run (shared by the determinism and resume tests)."""
    out = tmp_path_factory.mktemp("full")
    return train(tiny("train.max_steps=20"), out, progress=False, data_text=TEXT)


def test_loss_decreases_and_run_folder_is_complete(full_run):
    records = full_run.metrics
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert [r["step"] for r in records] == [0, 5, 10, 15, 20]
    assert losses[-1] < losses[0] - 0.5
    assert records[0]["val_loss"] > records[-1]["val_loss"] + 0.5
    for key in ("step", "train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"):
        assert key in records[-1]
    d = full_run.run_dir
    assert {p.name for p in d.iterdir()} >= {"config.yaml", "tokenizer.json", "metrics.jsonl",
                                             "checkpoints", "loss.png"}
    assert checkpoint_steps(d) == [15, 20]
    assert read_metrics(d) == records
    run = load_run(d)
    assert run.step == 20 and _exactly_equal(run.model.params(), full_run.params)
    assert run.config.model.vocab_size == run.tokenizer.vocab_size == len(set(TEXT))


def test_same_config_and_seed_give_same_losses(full_run, tmp_path):
    again = train(tiny("train.max_steps=20"), tmp_path, progress=False, data_text=TEXT)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rs]  # noqa
    assert strip(again.metrics) == strip(full_run.metrics)


def test_interrupted_and_resumed_run_is_bit_identical(full_run, tmp_path):
    first = train(tiny("train.max_steps=20"), tmp_path, progress=False, data_text=TEXT, stop_after=7)
    assert first.interrupted and first.step == 7 and checkpoint_steps(tmp_path) == [5, 7]
    # the library names its arguments, never the CLI's flags
    with pytest.raises(RunExistsError, match="pass resume=True to continue it or choose another out_dir"):
        train(tiny("train.max_steps=20"), tmp_path, progress=False, data_text=TEXT)
    second = train(tiny("train.max_steps=20"), tmp_path, resume=True, progress=False, data_text=TEXT)
    assert second.step == 20 and not second.interrupted
    assert _exactly_equal(second.params, full_run.params)
    assert _exactly_equal(second.opt_state, full_run.opt_state)
    # the resumed metrics log continues the first one without duplicates
    steps = [r["step"] for r in read_metrics(tmp_path)]
    assert steps == [0, 5, 7, 10, 15, 20]


def test_nonfinite_loss_stops_naming_the_step(tmp_path, monkeypatch):
    real = train_loop.get_batch

    def poisoned(ids, B, T, *, seed, step, split="train"):
        b = real(ids, B, T, seed=seed, step=step, split=split)
        if step == 7:
            b[0, 0] = 10_000            # out-of-range id: the embedding lookup gives NaN
        return b
    monkeypatch.setattr(train_loop, "get_batch", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"at step 7; .*last good checkpoint is step 5"):
        train(tiny("train.max_steps=20"), tmp_path, progress=False, data_text=TEXT)
    assert checkpoint_steps(tmp_path) == [5]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(load_run(tmp_path).model.params()))


def _train_command(argv):
    # the command module directly (the `jaxformer` parser imports every registered command)
    import argparse

    from jaxformer.cli.commands import train as command
    p = argparse.ArgumentParser()
    command.add_arguments(p)
    return command.run(p.parse_args(argv))


def test_train_command_and_resume(tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--no-progress"] + \
        [x for o in TINY + ["train.max_steps=10", "train.decay_steps=20", "train.sample_tokens=20"]
         for x in ("--set", o)]
    assert _train_command(args) == 0
    text = capsys.readouterr().out
    assert "--- sample ---" in text and "val loss" in text
    # --resume reads the run's own config.yaml; only the overrides change
    assert _train_command(["--out", str(out), "--resume", "--no-progress", "--set", "train.max_steps=15",
                           "--set", "train.sample_tokens=0"]) == 0
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()][-1] == 15
    with pytest.raises(DataError, match="data.path='.*nope.txt' is not a file"):
        _train_command(["--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x")])
    # a new run into a folder that holds one: the command names its own flags
    with pytest.raises(CheckpointError, match="pass --resume to continue it or choose another --out$"):
        _train_command(["--out", str(out), "--no-progress"])


def test_train_command_interrupted_run_names_the_flag(tmp_path, capsys, monkeypatch):
    from jaxformer.training import loop
    real = loop.train
    monkeypatch.setattr(loop, "train", lambda *a, **k: real(*a, **k, stop_after=3))
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    assert _train_command(["--data", str(data), "--out", str(out), "--no-progress"] +
                          [x for o in TINY + ["train.max_steps=10"] for x in ("--set", o)]) == 130
    text = capsys.readouterr().out
    assert "continue with --resume" in text and "resume=True" not in text
    assert f"jaxformer train --out {out} --resume" in text


def test_torch_reference_matches_functional_decoder():
    torch = pytest.importorskip("torch")
    from jaxformer_testing.torch_gpt import build_torch_gpt, load_jax_params
    from conftest import randomize
    for extra in ([], ["model.activation=relu", "model.tie_embeddings=false", "model.bias=false"]):
        cfg = tiny("model.vocab_size=40", *extra)
        params = randomize(init_params(cfg), scale=0.1)
        model = build_torch_gpt(cfg.model)
        load_jax_params(model, params)
        model.eval()
        tokens = np.random.default_rng(0).integers(0, 40, (2, 32))
        ref = np.asarray(jax.jit(F.decoder, static_argnums=2)(params, jnp.asarray(tokens), cfg.model)[0])
        got = model(torch.from_numpy(tokens)).detach().numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
        # and the losses agree
        np.testing.assert_allclose(
            float(torch.nn.functional.cross_entropy(torch.from_numpy(got[:, :-1]).reshape(-1, 40),
                                                    torch.from_numpy(tokens[:, 1:]).reshape(-1))),
            float(jax.jit(loss_fn, static_argnums=2)(params, jnp.asarray(tokens), cfg.model)), rtol=1e-5)


def test_train_steps_match_pytorch_adamw():
    """Same init, batches and schedule: the jitted JAX step and an eager PyTorch AdamW step
    (clipping, decay on matrices only) give the same losses step after step."""
    torch = pytest.importorskip("torch")
    from jaxformer_testing.torch_gpt import build_torch_gpt, load_jax_params, make_torch_optimizer
    tok = CharTokenizer.from_text(TEXT)
    cfg = tiny(f"model.vocab_size={tok.vocab_size}", "model.bias=false", "train.max_steps=20")
    ids = np.asarray(tok.encode(TEXT), np.uint16)
    params = init_params(cfg)
    opt = make_optimizer(cfg.train, params)
    opt_state, step_fn, schedule = opt.init(params), make_train_step(cfg, opt), lr_schedule(cfg.train)
    tm = build_torch_gpt(cfg.model)
    load_jax_params(tm, params)
    topt = make_torch_optimizer(tm, cfg.train)
    for s in range(8):
        b = get_batch(ids, 8, 32, seed=0, step=s)
        params, opt_state, m = step_fn(params, opt_state, micro_batches(b, 1), np.int32(s))
        bt = torch.from_numpy(b.astype(np.int64))
        loss = torch.nn.functional.cross_entropy(tm(bt[:, :-1]).reshape(-1, tok.vocab_size), bt[:, 1:].reshape(-1))
        topt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), cfg.train.grad_clip)
        for g in topt.param_groups:
            g["lr"] = float(schedule(s))
        topt.step()
        assert float(m["loss"]) == pytest.approx(loss.item(), rel=1e-5)
