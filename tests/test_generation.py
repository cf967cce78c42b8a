"""KV-cache generation: cached == uncached, padding, stop tokens, log-probs, bucketing, errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_model as conftest_random_model

from jaxformer import ModelConfig
from jaxformer import functional as F
from jaxformer.infer import generation as G
from jaxformer.infer import scoring
from jaxformer.model import stack
from jaxformer.errors import GenerationError

BASE = dict(vocab_size=37, d_model=32, n_head=4, n_layer=2, d_ff=48, max_len=48)
PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7], [1, 8, 2, 8, 1]]


def random_model(seed=0, **kw):
    return conftest_random_model(ModelConfig(**{**BASE, **kw}), seed=seed)


def assert_logits_close(actual, ref, tol=1e-5):
    """Equal to ``tol``, relative to the logits' scale when they are large (float32 rounding:
    random models without norms reach logits of 100 and more)."""
    np.testing.assert_allclose(actual, ref, rtol=0, atol=tol * max(1.0, float(np.abs(ref).max()) / 10))


def uncached_logits(model, prompt, new_tokens):
    """Logits for every generated position by full re-computation (no cache): by causality,
    position t of one forward pass over prompt + new tokens is the prediction after t.
    Right-padded to max_len (one compiled forward per config); by causality the padding is not seen."""
    seq = list(prompt) + list(new_tokens)
    padded = jnp.asarray([seq + [0] * (model.config.max_len - len(seq))], jnp.int32)
    logits = _crop_forward(model.config)(model.params(), padded)
    return np.asarray(logits[0, len(prompt) - 1: len(prompt) - 1 + len(new_tokens)])


ARCHS = [
    dict(norm_position="pre", positions="learned", n_kv_head=2),
    dict(norm_position="post", positions="sinusoidal", n_kv_head=1, bias=False, tie_embeddings=False),
    dict(norm_position="none", positions="rope"),
    dict(norm_position="pre", positions="none", n_kv_head=2, norm="rmsnorm", activation="swiglu",
         scan_layers=False),
]


@pytest.fixture(scope="module")
def model():
    """The model most tests share (so compiled programs are shared too)."""
    return random_model(seed=1, positions="rope", n_kv_head=2)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: "-".join(f"{v}" for v in a.values()))
def test_cached_equals_uncached_greedy(arch):
    model = random_model(**arch)
    n = 12
    out = G.generate(model, PROMPTS, max_new_tokens=n, temperature=0, return_logits=True)
    assert out.tokens.shape == (3, n) and out.steps == n
    for b, prompt in enumerate(PROMPTS):
        ref = uncached_logits(model, prompt, out.tokens[b])
        assert_logits_close(out.logits[b], ref)
        # greedy: every chosen token is the arg-max of the uncached logits
        np.testing.assert_array_equal(out.tokens[b], ref.argmax(-1))


def test_padded_batch_equals_each_prompt_alone(model):
    batch = G.generate(model, PROMPTS, max_new_tokens=10, temperature=0, return_logits=True)
    for b, prompt in enumerate(PROMPTS):
        alone = G.generate(model, [prompt], max_new_tokens=10, temperature=0, return_logits=True)
        np.testing.assert_array_equal(batch.tokens[b], alone.tokens[0])
        assert_logits_close(batch.logits[b], alone.logits[0])


def test_sampling_through_generate_reproducible_and_tiny_temperature_is_greedy(model):
    kw = dict(max_new_tokens=10, top_k=10, top_p=0.9)
    a = G.generate(model, PROMPTS, temperature=1.0, key=jax.random.key(5), **kw)
    b = G.generate(model, PROMPTS, temperature=1.0, key=jax.random.key(5), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    c = G.generate(model, PROMPTS, temperature=1.0, key=jax.random.key(6), **kw)
    assert not np.array_equal(a.tokens, c.tokens)
    greedy = G.generate(model, PROMPTS, max_new_tokens=10, temperature=0)
    cold = G.generate(model, PROMPTS, max_new_tokens=10, temperature=1e-5, key=jax.random.key(0))
    np.testing.assert_array_equal(greedy.tokens, cold.tokens)


def test_logprobs_and_top_alternatives_match_the_model(model):
    out = G.generate(model, PROMPTS, max_new_tokens=6, temperature=1.0, key=jax.random.key(0),
                     return_logprobs=True, top_n=3)
    for b, prompt in enumerate(PROMPTS):
        ref = uncached_logits(model, prompt, out.tokens[b]).astype(np.float64)
        logp = ref - np.log(np.exp(ref - ref.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - ref.max(-1, keepdims=True)
        np.testing.assert_allclose(out.logprobs[b], logp[np.arange(6), out.tokens[b]], atol=1e-5)
        np.testing.assert_array_equal(out.top_ids[b], np.argsort(-logp, axis=-1)[:, :3])
        np.testing.assert_allclose(out.top_logprobs[b], -np.sort(-logp, axis=-1)[:, :3], atol=1e-5)


def plus_one_step(V):
    """A fake model whose answer is known: always predict ``token + 1`` (mod V)."""
    def step_fn(state, token_B, step):
        return 10.0 * jax.nn.one_hot((token_B + 1) % V, V), state
    return step_fn


def test_fake_model_plus_one_and_stop_tokens():
    V = 20
    first = 10.0 * jax.nn.one_hot(jnp.asarray([3, 9]), V)  # rows continue from 2 and 8
    out = G.decode(plus_one_step(V), None, first, max_new_tokens=8, temperature=0)
    np.testing.assert_array_equal(out.tokens, [[3, 4, 5, 6, 7, 8, 9, 10], [9, 10, 11, 12, 13, 14, 15, 16]])
    out = G.decode(plus_one_step(V), None, first, max_new_tokens=8, temperature=0, stop_tokens=(6, 12))
    np.testing.assert_array_equal(out.tokens, [[3, 4, 5, 6, -1, -1, -1, -1],
                                               [9, 10, 11, 12, -1, -1, -1, -1]])
    assert out.sequences == [[3, 4, 5, 6], [9, 10, 11, 12]] and out.stopped.tolist() == [True, True]
    assert out.steps == 4  # the loop ended as soon as every row had stopped
    out = G.decode(plus_one_step(V), None, first, max_new_tokens=8, temperature=0, stop_tokens=[5])
    assert out.sequences == [[3, 4, 5], [9, 10, 11, 12, 13, 14, 15, 16]] and out.steps == 8
    assert out.stopped.tolist() == [True, False]
    # sampling from a near-deterministic fake model gives the same answer
    out = G.decode(plus_one_step(V), None, first, max_new_tokens=5, temperature=1.0, top_p=0.5,
                   key=jax.random.key(0))
    np.testing.assert_array_equal(out.tokens, [[3, 4, 5, 6, 7], [9, 10, 11, 12, 13]])


def test_repetition_penalty_with_a_fake_model():
    V = 5
    logits = jnp.asarray([[5.0, 4.0, 0.0, 0.0, 0.0]])
    step = lambda state, tok, i: (logits, state)  # noqa: E731
    plain = G.decode(step, None, logits, max_new_tokens=3, temperature=0)
    assert plain.sequences == [[0, 0, 0]]
    pen = G.decode(step, None, logits, max_new_tokens=3, temperature=0, repetition_penalty=10.0)
    assert pen.sequences == [[0, 1, 0]]  # 0 -> 0.5 after it is seen, 1 -> 0.4 after it is seen
    assert V == logits.shape[-1]


def test_stop_tokens_with_the_real_model(model):
    free = G.generate(model, PROMPTS, max_new_tokens=10, temperature=0)
    stop = int(free.tokens[1, 3])
    out = G.generate(model, PROMPTS, max_new_tokens=10, temperature=0, stop_tokens=[stop])
    for b in range(3):
        row = free.tokens[b].tolist()
        cut = row.index(stop) + 1 if stop in row else len(row)
        assert out.sequences[b] == row[:cut]
        assert out.stopped[b] == (stop in row)


def test_bucketing_compiles_once_per_bucket():
    model = random_model(seed=5, max_len=40)  # a config of its own: nothing compiled yet
    assert G.bucket_length(1) == 8 and G.bucket_length(8) == 8 and G.bucket_length(9) == 16
    G.generate(model, [[1, 2, 3, 4, 5]], max_new_tokens=10, temperature=0)
    before = dict(G.TRACES)
    # another prompt length (<= 8) and another max_new_tokens (<= 16): same buckets
    G.generate(model, [[7, 6, 5, 4, 3, 2, 1]], max_new_tokens=13, temperature=0)
    G.generate(model, [[9]], max_new_tokens=16, temperature=0)
    assert dict(G.TRACES) == before
    # temperature / top_p are runtime values: one compile for the sampling mode, then none
    G.generate(model, [[1, 2]], max_new_tokens=10, temperature=0.8, top_p=0.9, key=jax.random.key(0))
    mid = dict(G.TRACES)
    G.generate(model, [[1, 2, 3]], max_new_tokens=11, temperature=1.3, top_p=0.5, key=jax.random.key(1))
    assert dict(G.TRACES) == mid
    # a prompt crossing the bucket boundary compiles a new prefill
    G.generate(model, [list(range(1, 10))], max_new_tokens=10, temperature=0)
    assert G.TRACES["prefill"] == before["prefill"] + 2


def test_stream_yields_chunks_that_add_up(model):
    full = G.generate(model, PROMPTS, max_new_tokens=11, temperature=0)
    it = G.generate_stream(model, PROMPTS, max_new_tokens=11, temperature=0, chunk_size=4)
    chunks = []
    while True:
        try:
            chunks.append(next(it))
        except StopIteration as stop:
            result = stop.value
            break
    assert [c[0] for c in chunks] == [0, 4, 8]
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks], axis=1), full.tokens)
    np.testing.assert_array_equal(result.tokens, full.tokens)


def test_params_tuple_and_single_prompt_forms(model):
    a = G.generate(model, [1, 2, 3], max_new_tokens=5, temperature=0)
    b = G.generate((model.params(), model.config), np.asarray([[1, 2, 3]]), max_new_tokens=5,
                   temperature=0)
    assert a.tokens.shape == (1, 5)
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_score_matches_the_forward_pass(model):
    ids = [1, 5, 2, 7, 3, 3, 9]
    lp = scoring.score(model, ids)
    logits = np.asarray(model(jnp.asarray([ids])), np.float64)[0]
    ref = logits - logits.max(-1, keepdims=True)
    ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    np.testing.assert_allclose(lp, ref[np.arange(6), ids[1:]], atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt_tokens=[[1, 2], []], max_new_tokens=4), r"prompt 1 is empty"),
    (dict(prompt_tokens=[[1, 37]], max_new_tokens=4), r"token id 37; ids must be integers in \[0, 37\)"),
    (dict(prompt_tokens=[[1, -1]], max_new_tokens=4), r"token id -1"),
    (dict(prompt_tokens=[[1]], max_new_tokens=0), r"^max_new_tokens=0"),
    (dict(prompt_tokens=[[1]], max_new_tokens=4, temperature=-0.5), r"^temperature=-0.5"),
    (dict(prompt_tokens=[[1]], max_new_tokens=4, top_k=0, key=jax.random.key(0)), r"^top_k=0"),
    (dict(prompt_tokens=[[1]], max_new_tokens=4, top_p=2.0, key=jax.random.key(0)), r"^top_p=2.0"),
    (dict(prompt_tokens=[[1]], max_new_tokens=4, temperature=1.0), r"^key=None"),
    (dict(prompt_tokens=[[1]], max_new_tokens=4, temperature=0, stop_tokens=[99]), r"stop token 99"),
])
def test_bad_input_raises_generation_error(model, kwargs, match):
    with pytest.raises(GenerationError, match=match):
        G.generate(model, **{"temperature": 0, **kwargs})


def test_prompt_exactly_filling_the_context_is_allowed(model):
    out = G.generate(model, [list(range(1, 37)) + [1] * 10], max_new_tokens=2, temperature=0,
                     return_logits=True)
    ref = uncached_logits(model, list(range(1, 37)) + [1] * 10, out.tokens[0])
    assert_logits_close(out.logits[0], ref)


def test_unstacked_decoder_equals_stacked(model):
    """The per-layer parameter layout the decode loop uses computes the same thing."""
    tokens = jnp.asarray([[1, 2, 3, 4, 5, 6]])
    run = jax.jit(lambda p, t: stack.decoder(p, t, model.config, capture=True))
    stacked, aux_s = run(model.params(), tokens)
    unstacked, aux_u = run(G.unstack_layers(model.params()), tokens)
    np.testing.assert_allclose(unstacked, stacked, atol=1e-5)
    np.testing.assert_allclose(aux_u["weights"], aux_s["weights"], atol=1e-6)
    cfg_ns = dataclasses.replace(model.config, scan_layers=False)
    np.testing.assert_allclose(_crop_forward(cfg_ns)(model.params(), tokens), stacked, atol=1e-5)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder holding a small random byte-level model (written the way `train` writes it)."""
    from jaxformer.training.checkpoint import save_checkpoint, save_run_folder
    from jaxformer.config import Config
    from jaxformer.data import ByteTokenizer

    cfg = Config(model=ModelConfig(vocab_size=256, d_model=32, n_head=4, n_layer=2, d_ff=64,
                                   max_len=64, n_kv_head=2, positions="rope"))
    model = conftest_random_model(cfg.model, seed=3, scale=0.1)
    path = tmp_path_factory.mktemp("run")
    save_run_folder(path, cfg, ByteTokenizer())
    save_checkpoint(path, 7, model.params())
    return path


def test_cli_sample_json_equals_generate(run_dir, capsys):
    import json

    from jaxformer.training.checkpoint import load_run
    from jaxformer.cli import main
    from jaxformer.cli.commands.sample import unfinished_utf8

    assert main(["sample", "--run", str(run_dir), "--prompt", "Hello", "--max-new-tokens", "12",
                 "--temperature", "0", "--json", "--logprobs", "--top-n", "2"]) == 0
    obj = json.loads(capsys.readouterr().out)
    r = load_run(run_dir)
    ref = G.generate(r.model, list(b"Hello"), max_new_tokens=12, temperature=0, return_logprobs=True)
    s = obj["samples"][0]
    assert obj["step"] == 7 and obj["prompt_ids"] == list(b"Hello")
    assert s["token_ids"] == ref.sequences[0]
    ids = ref.sequences[0]   # the text leaves out a character the sample stopped inside of
    assert s["text"] == bytes(ids[:len(ids) - unfinished_utf8(ids)]).decode("utf-8", errors="replace")
    np.testing.assert_allclose(s["logprobs"], ref.logprobs[0], atol=1e-6)
    assert len(s["top"]) == 12 and s["top"][0][0]["id"] == s["token_ids"][0]  # greedy = top-1


@pytest.mark.slow
def test_cli_sample_streams_the_same_text(run_dir, capsys):
    from jaxformer.cli import main

    args = ["sample", "--run", str(run_dir), "--prompt", "Hi", "--max-new-tokens", "10",
            "--top-k", "5", "--seed", "3", "--chunk", "3"]
    assert main(args + ["--json"]) == 0
    import json
    text = json.loads(capsys.readouterr().out)["samples"][0]["text"]
    assert main(args) == 0
    assert capsys.readouterr().out == "Hi" + text + "\n"
    assert main(args + ["--num-samples", "2"]) == 0
    assert capsys.readouterr().out.count("--- sample") == 2


def test_cli_score_and_errors(run_dir, capsys):
    import json

    from jaxformer.training.checkpoint import load_run
    from jaxformer.cli import main

    assert main(["score", "--run", str(run_dir), "--text", "abcab", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    ref = scoring.score(load_run(run_dir).model, list(b"abcab"))
    np.testing.assert_allclose(obj["logprobs"], ref, atol=1e-6)
    np.testing.assert_allclose(obj["perplexity"], np.exp(-ref.mean()), rtol=1e-5)
    assert main(["score", "--run", str(run_dir), "--text", "abcab"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["sample", "--run", str(run_dir), "--slide-every", "0"]) == 2
    assert main(["sample", "--run", str(run_dir), "--top-p", "0"]) == 2
    assert main(["sample", "--run", str(run_dir.parent), "--prompt", "a"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "--slide-every=0" in err[0] and "top_p=0.0" in err[1] and "not a run folder" in err[2]


def test_cli_sample_writes_past_the_context(run_dir, capsys):
    """A max_len=64 run writes 300 tokens after a 60-token prompt (docs/generation.md's use)."""
    import json

    from jaxformer.training.checkpoint import load_run
    from jaxformer.cli import main

    args = ["sample", "--run", str(run_dir), "--prompt", "x" * 60, "--max-new-tokens", "300",
            "--temperature", "0", "--no-stop"]
    assert main(args + ["--json"]) == 0
    ids = json.loads(capsys.readouterr().out)["samples"][0]["token_ids"]
    assert len(ids) == 300
    r = load_run(run_dir)
    assert ids == naive_crop(r.model, list(b"x" * 60), 300)
    assert main(args) == 0
    assert capsys.readouterr().out.rstrip("\n") == "x" * 60 + bytes(ids).decode("utf-8", "replace")


def test_sample_text_runs_past_the_context_and_is_deterministic():
    from jaxformer.data import CharTokenizer

    tok = CharTokenizer.from_text("abcdefgh ")
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_head=2, n_layer=1, d_ff=32, max_len=16)
    model = conftest_random_model(cfg, seed=1)
    text = G.sample_text(model, tok, "abc", 40, seed=3)
    assert text.startswith("abc") and len(text) == 3 + 40 > cfg.max_len   # no eos: all 40 tokens
    assert set(text) <= set("abcdefgh ")
    assert G.sample_text(model, tok, "abc", 40, seed=3) == text
    assert G.sample_text(model, tok, "abc", 40, seed=4) != text
    greedy = G.sample_text(model, tok, "", 20, temperature=0)        # empty prompt: from token 0
    assert len(greedy) == 20 and greedy == G.sample_text(model, tok, "", 20, temperature=0, seed=9)


# ----------------------------------------------------------------------------- past the context
def naive_crop(model, prompt, n, *, return_logits=False):
    """nanoGPT's loop: crop to the last max_len tokens, recompute everything, argmax."""
    params, cfg = model.params(), model.config
    fwd = _crop_forward(cfg)
    out, logits = list(prompt), []
    for _ in range(n):
        ctx = out[-cfg.max_len:]
        # Right-padded to max_len (one compiled shape): by causality position len(ctx) - 1
        # does not see the padding.
        padded = jnp.asarray([ctx + [0] * (cfg.max_len - len(ctx))], jnp.int32)
        lg = np.asarray(fwd(params, padded)[0, len(ctx) - 1])
        logits.append(lg)
        out.append(int(lg.argmax()))
    return (out[len(prompt):], np.stack(logits)) if return_logits else out[len(prompt):]


_CROP_FWD = {}


def _crop_forward(cfg):
    if cfg not in _CROP_FWD:
        _CROP_FWD[cfg] = jax.jit(lambda p, t: F.decoder(p, t, cfg)[0])
    return _CROP_FWD[cfg]


def crop_logits(model, prompt, new_tokens, windows):
    """Teacher-forced logits of step t from the tokens in ``windows[t]`` = (start, end) of
    prompt + new tokens (a forward pass over exactly those tokens, positions from 0)."""
    seq, C = list(prompt) + list(new_tokens), model.config.max_len
    fwd = _crop_forward(model.config)
    # Right-padded to max_len (one compiled shape); by causality the padding is not seen.
    return np.stack([np.asarray(fwd(model.params(), jnp.asarray([seq[a:b] + [0] * (C - b + a)], jnp.int32))[0, b - a - 1])
                     for a, b in windows])


# (seed, architecture): seeds whose random models do not collapse to one repeated token.
PAST = [(3, dict(positions="learned")),
        (22, dict(positions="sinusoidal", n_kv_head=2, norm_position="post")),
        (4, dict(positions="rope", n_kv_head=1, norm="rmsnorm", activation="swiglu")),
        # Gemma 2: a 6-token window on alternate layers, sandwich norms, soft-caps, (1 + w) norms
        # (untied and unscaled embeddings here: random tied ones collapse to one repeated token)
        (1, dict(positions="rope", norm="rmsnorm", norm_offset=1.0, activation="geglu", bias=False,
                 tie_embeddings=False, n_kv_head=2, head_dim=12, norm_position="sandwich", attn_scale=0.3,
                 attn_softcap=20.0, final_softcap=30.0, sliding_window=6, layer_types=("sliding", "full"))),
        # GPT-NeoX: partial rotary, parallel residual, exact GELU, untied head
        (3, dict(positions="rope", activation="gelu_exact", rope_fraction=0.25, parallel_residual=True,
                 tie_embeddings=False)),
        # Qwen3: q/k norms, one kv head
        (1, dict(positions="rope", norm="rmsnorm", activation="swiglu", bias=False, qk_norm=True, n_kv_head=1))]
ARCH_IDS = ["learned", "sinusoidal", "rope", "gemma2", "neox", "qwen3"]


@pytest.mark.parametrize("seed, arch", PAST, ids=ARCH_IDS)
def test_past_the_context_equals_the_naive_crop_loop(seed, arch):
    """Greedy generation far past a 16-token context: the same tokens as nanoGPT's crop loop
    for every row of a left-padded batch (one prompt longer than the context itself), and
    at every step the logits of a forward pass over exactly the last max_len tokens."""
    model = random_model(seed=seed, max_len=16, **arch)
    prompts = [[3, 1, 4, 1, 5], list(range(1, 21)), [7]]
    n = 60
    out = G.generate(model, prompts, max_new_tokens=n, temperature=0, return_logits=True)
    for b, p in enumerate(prompts):
        ref_tokens, ref_logits = naive_crop(model, p, n, return_logits=True)
        assert len(set(ref_tokens)) > 3                  # a real sequence, not one repeated id
        assert out.sequences[b] == ref_tokens, f"row {b}"
        # Sandwich norms and soft-caps add float32 roundings (more under the XLA:CPU emitters the
        # suite compiles with, tests/conftest.py): 3e-5 there.
        assert_logits_close(out.logits[b], ref_logits, 3e-5 if arch.get("norm_position") == "sandwich" else 1e-5)
    assert out.tokens.shape == (3, n) and not out.stopped.any()


def test_slide_every_follows_its_documented_window():
    """slide_every=k: the window is re-read when the 16-slot cache is full, keeping the
    last 16 - k tokens; each step sees exactly the tokens this schedule says."""
    model = random_model(seed=4, max_len=16, positions="learned")
    prompt, n, C, k = [5, 6, 7], 40, 16, 5
    out = G.generate(model, prompt, max_new_tokens=n, temperature=0, return_logits=True, slide_every=k)
    pad = G.bucket_length(len(prompt)) - len(prompt)       # the prompt sits at buffer slots [pad, P)
    windows, ws = [], 0
    for t in range(n):               # step t predicts token t from the tokens up to buffer slot end
        end = pad + len(prompt) + t - 1
        if t and end - ws == C:
            ws = end - (C - k)
        windows.append((max(ws - pad, 0), end - pad + 1))
    lengths = [b - a for a, b in windows]      # the context grows to C, then slides
    assert lengths[:C - 2] == list(range(3, C + 1)) and set(lengths[C - 2:]) == set(range(C - k + 1, C + 1))
    assert_logits_close(out.logits[0], crop_logits(model, prompt, out.sequences[0], windows))
    exact = G.generate(model, prompt, max_new_tokens=n, temperature=0, return_logits=True)
    assert not np.allclose(exact.logits[0, 20:], out.logits[0, 20:], atol=1e-3)  # a different window


@pytest.mark.parametrize("platform", ["cpu", "cuda", "rocm", "gpu", "tpu"])
def test_xla_cpu_option_only_for_a_decode_loop_on_a_cpu(model, monkeypatch, platform):
    """The decode loop's XLA:CPU-only compiler option is chosen from the platform the
    parameters live on; every other platform gets the jit without compiler options."""
    seen = []
    monkeypatch.setattr(G, "platform_of", lambda where=None: seen.append(where) or platform)
    gen = G.Generator(model)
    assert seen and seen[0] is not None and jax.tree.leaves(seen[0])   # asked about the params
    assert gen._decode is (G._DECODE_CPU if platform == "cpu" else G._DECODE)
    assert set(G.DECODE_COMPILER_OPTIONS) == {"cpu"}
    assert all(k.startswith("xla_cpu_") for k in G.DECODE_COMPILER_OPTIONS["cpu"])


def test_sampling_past_the_context_streams_and_reproduces():
    """1,000 tokens from a 16-token context in one compiled loop; streamed chunks give the
    same tokens as one call; the same key gives the same text."""
    model = random_model(seed=5, max_len=16, positions="rope")
    gen = G.Generator(model)
    kw = dict(max_new_tokens=1000, temperature=0.9, top_k=10, key=jax.random.key(2))
    before = G.TRACES["decode"]
    out = G.generate(gen, [[1, 2, 3]], **kw)
    assert out.tokens.shape == (1, 1000) and (out.tokens >= 0).all()
    assert G.TRACES["decode"] - before == 1
    chunks = list(G.generate_stream(gen, [[1, 2, 3]], chunk_size=128, **kw))
    assert np.concatenate([c for _, c in chunks], axis=1).tolist() == out.tokens.tolist()
    assert G.generate(gen, [[1, 2, 3]], **kw).sequences == out.sequences
    with pytest.raises(GenerationError, match="slide_every=0"):
        G.generate(gen, [1], max_new_tokens=20, temperature=0, slide_every=0)


@pytest.mark.parametrize("stride", [1, 5, 16])
def test_score_past_the_context_in_strided_windows(stride):
    """A text 3.5x the context: stride=1 gives every token's log-prob given exactly the last
    max_len tokens (the crop); other strides match the window each token falls in."""
    model = random_model(seed=6, max_len=16, positions="learned")
    rng = np.random.default_rng(0)
    ids = [int(x) for x in rng.integers(0, 37, 56)]
    lp = scoring.score(model, ids, stride=stride, batch_size=3)
    assert lp.shape == (55,)
    C, fwd, ref = 16, _crop_forward(model.config), []
    for j in range(1, 56):
        # Target j is scored by the first window (tokens [k*stride, k*stride + C)) that predicts it.
        k = max(0, -(-(j - C) // stride))
        ctx = ids[k * stride:j]
        logits = np.asarray(fwd(model.params(), jnp.asarray([ctx + [0] * (C - len(ctx))], jnp.int32))[0, len(ctx) - 1], np.float64)
        ref.append(logits[ids[j]] - logits.max() - np.log(np.exp(logits - logits.max()).sum()))
        if stride == 1 and j >= C:
            assert len(ctx) == C
    np.testing.assert_allclose(lp, ref, atol=2e-5)
    assert np.array_equal(scoring.score(model, ids[:16]), scoring.score(model, ids[:16], stride=stride))  # fits: one pass
    with pytest.raises(GenerationError, match="stride=0"):
        scoring.score(model, ids, stride=0)


# ----------------------------------------------------------------------------- start token
def small_run(path, tokenizer):
    """A run folder with a small random model over ``tokenizer`` (the way `train` writes one)."""
    from jaxformer.training.checkpoint import save_checkpoint, save_run_folder
    from jaxformer.config import Config

    cfg = Config(model=ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_head=2, n_layer=1,
                                   d_ff=32, max_len=32))
    model = conftest_random_model(cfg.model, seed=2, scale=0.1)
    save_run_folder(path, cfg, tokenizer)
    save_checkpoint(path, 1, model.params())
    return path


def test_start_ids_per_tokenizer():
    from jaxformer.data import BPETokenizer, ByteTokenizer, CharTokenizer, start_ids

    assert start_ids(ByteTokenizer()) == [10]
    assert start_ids(CharTokenizer.from_text("ab\nc")) == [CharTokenizer.from_text("ab\nc").encode("\n")[0]]
    assert start_ids(CharTokenizer.from_text("abc")) == [0]                  # no newline: the first id
    bpe = BPETokenizer.train("hello world\nthe end\n" * 20, 300)
    assert bpe.eos_id is not None and start_ids(bpe) == [bpe.eos_id]


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_cli_sample_from_an_empty_prompt(kind, tmp_path, capsys):
    """No --prompt samples for every tokenizer, far past the 32-token context, and the
    start token is not in the text."""
    import json

    from jaxformer.cli import main
    from jaxformer.data import build_tokenizer, start_ids

    tok = build_tokenizer(kind, "to be or not to be\nthat is the question\n" * 10, vocab_size=280)
    run = small_run(tmp_path / kind, tok)
    assert main(["sample", "--run", str(run), "--max-new-tokens", "200", "--temperature", "0",
                 "--no-stop", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["prompt_ids"] == start_ids(tok) and len(obj["samples"][0]["token_ids"]) == 200
    assert obj["samples"][0]["text"] == tok.decode(obj["samples"][0]["token_ids"])
    assert main(["sample", "--run", str(run), "--max-new-tokens", "200", "--temperature", "0",
                 "--no-stop"]) == 0
    assert capsys.readouterr().out == obj["samples"][0]["text"] + "\n"


def test_sample_text_empty_prompt_starts_from_start_ids():
    from jaxformer.data import ByteTokenizer

    tok = ByteTokenizer()
    cfg = ModelConfig(vocab_size=256, d_model=16, n_head=2, n_layer=1, d_ff=32, max_len=16)
    model = conftest_random_model(cfg, seed=1, scale=0.1)
    greedy = G.generate(model, [10], max_new_tokens=5, temperature=0).sequences[0]
    assert G.sample_text(model, tok, "", 5, temperature=0) == tok.decode(greedy)


def test_cli_score_file(run_dir, tmp_path, capsys):
    import json

    from jaxformer.cli import main

    f = tmp_path / "t.txt"
    f.write_text("abcab", encoding="utf-8")
    assert main(["score", "--run", str(run_dir), "--file", str(f), "--json"]) == 0
    by_file = json.loads(capsys.readouterr().out)
    assert main(["score", "--run", str(run_dir), "--text", "abcab", "--json"]) == 0
    assert by_file["logprobs"] == json.loads(capsys.readouterr().out)["logprobs"]
    missing = tmp_path / "nope.txt"
    assert main(["score", "--run", str(run_dir), "--file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--file={str(missing)!r} does not exist" in err
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe abc")
    assert main(["score", "--run", str(run_dir), "--file", str(tmp_path / "bad.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not UTF-8" in err and "bad.txt" in err


def test_vocab_limit_keeps_sampling_inside_a_padded_vocabulary():
    """A model whose vocabulary is padded past its tokenizer's (Qwen's is): with vocab_limit
    no id at or past the limit is drawn, the recorded logits stay raw, and a bad limit is named."""
    model = random_model(seed=2)
    out = G.generate(model, [[1, 2, 3]] * 4, max_new_tokens=120, temperature=3.0, key=jax.random.key(0),
                     vocab_limit=20, return_logits=True, return_logprobs=True)
    assert out.tokens.max() < 20 and len(np.unique(out.tokens)) > 10
    free = G.generate(model, [[1, 2, 3]] * 4, max_new_tokens=120, temperature=3.0, key=jax.random.key(0))
    assert free.tokens.max() >= 20                                 # without the limit they are drawn
    assert np.isfinite(out.logits).all()                           # raw logits, padded ids included
    np.testing.assert_allclose(np.exp(out.logprobs) <= 1.0, True)
    with pytest.raises(GenerationError, match=r"vocab_limit=0 must be an integer in \[1, 37\]"):
        G.generate(model, [1, 2], max_new_tokens=2, temperature=0, vocab_limit=0)
