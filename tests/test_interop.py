"""Hugging Face GPT-2 interop: load, logits parity, greedy decoding parity, export round trip,
tokenizers, errors and ``jaxformer convert`` (needs the hf extra: torch + transformers)."""
import json
import pathlib
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from conftest import random_model  # noqa: E402
from jaxformer import GPT, ModelConfig, load_config  # noqa: E402
from jaxformer.errors import CheckpointError, ConfigError  # noqa: E402
from jaxformer.interop import hf_from_params, load_hf, model_config_from_hf, params_from_hf, save_hf

pytestmark = pytest.mark.hf
transformers.logging.set_verbosity_error()
REPO = pathlib.Path(__file__).resolve().parents[1]
TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
        "First Citizen: You are all resolved rather to die than to famish? All: Resolved. "
        "First Citizen: First, you know Caius Marcius is chief enemy to the people. ") * 20
SMALL = dict(vocab_size=300, n_positions=64, n_embd=48, n_layer=3, n_head=4, n_inner=80,
             layer_norm_epsilon=1e-6, bos_token_id=None, eos_token_id=None)


def small_hf_model(seed=0, scale=0.2, **overrides):
    """A random GPT2LMHeadModel whose every weight (norms and biases too) is random."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**{**SMALL, **overrides})
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * scale + (1.0 if "ln" in name and name.endswith("weight") else 0.0))
    return model


def logits_of(model, tokens):
    """jaxformer logits as NumPy, through one jitted call (one compile per shape)."""
    return np.asarray(nnx.jit(lambda m, t: m(t))(model, jnp.asarray(tokens)))


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens, np.int64))).logits.numpy()


@pytest.fixture(scope="module")
def small_hf(tmp_path_factory):
    """(transformers model, folder written by save_pretrained)."""
    model = small_hf_model()
    folder = tmp_path_factory.mktemp("hf_small")
    model.save_pretrained(folder)
    return model, folder


# ----------------------------------------------------------------------------- configs
def test_gpt2_config_maps_to_gpt2_small_yaml():
    ours = model_config_from_hf(transformers.GPT2Config().to_dict())
    ref = load_config(REPO / "configs" / "gpt2_small.yaml").model
    assert ours == ref
    # parameter count from the tensor table, without building the model
    shapes = {k: v.shape for k, v in _fake_state(ours).items()}
    assert sum(int(np.prod(s)) for s in shapes.values()) == 124_439_808


def _fake_state(cfg):
    """A GPT-2 state dict of zeros with the shapes transformers would write (no allocation)."""
    params = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))).params()
    zeros = {k: np.broadcast_to(np.float32(0), v.shape) for k, v in _flat(params).items()}
    return hf_from_params(_unflat(zeros), cfg)


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _unflat(flat):
    tree = {}
    for k, v in flat.items():
        *head, last = k.split("/")
        node = tree
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    return tree


@pytest.mark.parametrize("key,value", [("activation_function", "gelu"),
                                       ("scale_attn_by_inverse_layer_idx", True),
                                       ("model_type", "llama")])
def test_unsupported_variants_are_refused(key, value):
    with pytest.raises(CheckpointError, match=key):
        model_config_from_hf({**transformers.GPT2Config().to_dict(), key: value})


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("tied", [True, False])
def test_small_logits_match_transformers(tmp_path, tied):
    hf = small_hf_model(seed=1, tie_word_embeddings=tied)
    hf.save_pretrained(tmp_path)
    model, cfg, tok = load_hf(tmp_path)
    assert tok is None
    assert (cfg.d_ff, cfg.norm_eps, cfg.tie_embeddings, cfg.max_len) == (80, 1e-6, tied, 64)
    tokens = np.random.default_rng(0).integers(0, 300, (3, 64))   # batch 3, the full context
    ref = hf_logits(hf, tokens)
    ours = logits_of(model, tokens)
    assert np.abs(ref).max() > 1.0                                  # not a trivially small answer
    assert np.abs(ours - ref).max() <= 1e-4


def test_greedy_50_tokens_match_transformers_generate(small_hf):
    from jaxformer.infer import generation
    hf, folder = small_hf
    model, _, _ = load_hf(folder)
    for prompt in ([5, 17, 250, 3],):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=50, do_sample=False,
                              attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        ref = ref[0, len(prompt):].numpy()
        ours = generation.generate(model, prompt, max_new_tokens=50, temperature=0.0).tokens[0]
        assert len(ref) == 50 and len(set(ref.tolist())) > 1
        np.testing.assert_array_equal(ours, ref)


def test_pytorch_bin_is_read_weights_only(small_hf, tmp_path):
    hf, _ = small_hf
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")   # includes the tied lm_head.weight
    hf.config.to_json_file(tmp_path / "config.json")
    model, _, _ = load_hf(tmp_path)
    tokens = np.arange(40)[None] % 300
    assert np.abs(logits_of(model, tokens) - hf_logits(hf, tokens)).max() <= 1e-4


class NotATensor:
    pass


def test_pytorch_bin_with_arbitrary_objects_is_refused(small_hf, tmp_path):
    hf, _ = small_hf
    torch.save({"wte.weight": NotATensor()}, tmp_path / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_hf(tmp_path)


def test_sharded_safetensors(small_hf, tmp_path):
    hf, _ = small_hf
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model, _, _ = load_hf(tmp_path)
    tokens = np.arange(64)[None] * 7 % 300
    assert np.abs(logits_of(model, tokens) - hf_logits(hf, tokens)).max() <= 1e-4


# ----------------------------------------------------------------------------- export round trip
@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_jaxformer_transformers_jaxformer(tmp_path, tied):
    cfg = ModelConfig(vocab_size=300, d_model=32, n_head=4, n_layer=2, d_ff=72, max_len=48,
                      norm_eps=1e-5, tie_embeddings=tied, init_std=0.02)   # HF files carry no init: 0.02
    model = random_model(cfg, seed=3, scale=0.2)
    save_hf(model, tmp_path / "exported", architecture="GPT2LMHeadModel")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "exported").eval()
    tokens = np.random.default_rng(1).integers(0, 300, (2, 48))
    assert np.abs(hf_logits(hf, tokens) - logits_of(model, tokens)).max() <= 1e-4
    hf.save_pretrained(tmp_path / "resaved")
    back, back_cfg, _ = load_hf(tmp_path / "resaved")
    assert back_cfg == cfg
    a, b = _flat(model.params()), _flat(back.params())
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_export_refuses_non_gpt2_architectures(tmp_path):
    cfg = ModelConfig(vocab_size=300, d_model=32, n_head=4, n_layer=1, positions="rope")
    with pytest.raises(ConfigError, match="model.positions='rope'"):
        save_hf(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))), tmp_path, architecture="GPT2LMHeadModel")


# ----------------------------------------------------------------------------- errors
def _state_and_config(small_hf):
    hf, folder = small_hf
    return load_file(str(folder / "model.safetensors")), model_config_from_hf(hf.config.to_dict())


def test_unknown_and_missing_tensors_are_listed(small_hf):
    state, cfg = _state_and_config(small_hf)
    del state["transformer.h.1.mlp.c_fc.bias"], state["transformer.ln_f.weight"]
    state["transformer.h.0.attn.q_proj.weight"] = np.zeros((48, 48), np.float32)
    with pytest.raises(CheckpointError) as e:
        params_from_hf(state, cfg)
    msg = str(e.value)
    assert "unknown tensors: h.0.attn.q_proj.weight" in msg
    assert "missing tensors: h.1.mlp.c_fc.bias, ln_f.weight" in msg
    assert "\n" not in msg


def test_shape_mismatch_names_tensor_and_both_shapes(small_hf, tmp_path):
    state, _ = _state_and_config(small_hf)
    state["transformer.h.2.mlp.c_proj.weight"] = np.zeros((80, 40), np.float32)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((small_hf[1] / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"'h.2.mlp.c_proj.weight' has shape \(80, 40\), expected \(80, 48\)"):
        load_hf(tmp_path)


def test_old_checkpoint_buffers_and_unprefixed_names_are_accepted(small_hf):
    state, cfg = _state_and_config(small_hf)
    state = {k.removeprefix("transformer."): v for k, v in state.items()}   # as on the Hub
    state["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    state["h.0.attn.masked_bias"] = np.float32(-1e4)
    params = params_from_hf(state, cfg)
    assert params["blocks"]["attn"]["wq"].shape == (3, 48, 4, 12)


def test_tied_lm_head_must_equal_embeddings(small_hf):
    state, cfg = _state_and_config(small_hf)
    state["lm_head.weight"] = state["transformer.wte.weight"] + 1
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        params_from_hf(state, cfg)


def test_missing_folder_or_weights(tmp_path, small_hf):
    with pytest.raises(CheckpointError, match="neither a folder nor a model in the local"):
        load_hf(str(tmp_path / "nope"), cache_dir=tmp_path)
    (tmp_path / "config.json").write_text((small_hf[1] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="holds no weights"):
        load_hf(tmp_path)


def test_name_is_resolved_in_the_local_hf_cache_only(small_hf, tmp_path):
    _, folder = small_hf
    repo = tmp_path / "models--someone--tiny-gpt2"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        (snap / f).write_bytes((folder / f).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model, cfg, _ = load_hf("someone/tiny-gpt2", cache_dir=tmp_path)
    assert cfg.n_layer == 3
    with pytest.raises(CheckpointError, match="local Hugging Face cache"):
        load_hf("someone/absent-gpt2", cache_dir=tmp_path)


# ----------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def bpe():
    from jaxformer.data import BPETokenizer
    return BPETokenizer.train(TEXT, 300).tk


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab+merges"])
def test_gpt2_tokenizer_files_are_wrapped(small_hf, bpe, tmp_path, files):
    from jaxformer.data import BPETokenizer
    _, folder = small_hf
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).write_bytes((folder / f).read_bytes())
    if files == "tokenizer.json":
        bpe.save(str(tmp_path / "tokenizer.json"))
    else:
        bpe.model.save(str(tmp_path))            # vocab.json + merges.txt
    _, _, tok = load_hf(tmp_path)
    assert isinstance(tok, BPETokenizer) and tok.to_dict()["type"] == "bpe"
    text = "First Citizen: speak, speak! You are all resolved?"
    ref = transformers.GPT2TokenizerFast.from_pretrained(tmp_path)   # transformers reads the same files
    assert tok.encode(text) == ref(text)["input_ids"] == bpe.encode(text).ids
    assert tok.decode(tok.encode(text)) == text
    assert tok.eos_id == bpe.token_to_id("<|endoftext|>")


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def converted_run(small_hf, bpe, tmp_path_factory):
    """`jaxformer convert --from-hf` of the small model (with a --tokenizer folder) -> run folder."""
    from jaxformer.cli import main
    _, folder = small_hf
    tmp = tmp_path_factory.mktemp("convert")
    bpe.save(str(tmp / "tokenizer.json"))
    out = tmp / "run"
    assert main(["convert", "--from-hf", str(folder), "--out", str(out), "--tokenizer", str(tmp)]) == 0
    return out


def test_convert_cli_writes_a_run_folder_with_the_same_logits(small_hf, bpe, converted_run, tmp_path):
    from jaxformer.training.checkpoint import load_run
    from jaxformer.cli import main
    hf, _ = small_hf
    run = load_run(converted_run)
    assert run.step == 0 and run.config.model.n_layer == 3
    assert run.tokenizer.encode("speak") == bpe.encode("speak").ids
    tokens = np.random.default_rng(2).integers(0, 300, (2, 64))
    assert np.abs(logits_of(run.model, tokens) - hf_logits(hf, tokens)).max() <= 1e-4
    # and back: run folder -> Hugging Face folder
    assert main(["convert", "--from-run", str(converted_run), "--out", str(tmp_path / "hf")]) == 0
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    np.testing.assert_array_equal(hf_logits(again, tokens), hf_logits(hf, tokens))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["n_inner"] == 80
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")("speak")["input_ids"] == bpe.encode("speak").ids


@pytest.mark.slow
def test_converted_run_works_with_sample_and_attention(bpe, converted_run, tmp_path):
    from jaxformer.cli import main
    assert bpe.get_vocab_size() == 300
    assert main(["sample", "--run", str(converted_run), "--prompt", "speak", "--max-new-tokens", "8",
                 "--temperature", "0", "--json"]) == 0
    assert main(["attention", "--run", str(converted_run), "--text", "speak, speak",
                 "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").stat().st_size > 0


def test_convert_cli_errors_are_one_line(tmp_path, capsys, small_hf):
    from jaxformer.cli import main
    assert main(["convert", "--from-hf", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxformer convert: error:") and "\n" not in err
    # a GPT-2 folder without tokenizer files needs --tokenizer
    assert main(["convert", "--from-hf", str(small_hf[1]), "--out", str(tmp_path / "o")]) == 2
    assert "--tokenizer" in capsys.readouterr().err


# ----------------------------------------------------------------------------- GPT-2 small (124M)
@pytest.mark.slow
def test_gpt2_124m_logits_and_greedy_match_transformers(tmp_path):
    """The full GPT-2 small shape, random weights (transformers' own init), batch 2, T=1024."""
    from jaxformer.infer import generation
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(bos_token_id=None, eos_token_id=None)).eval()
    hf.save_pretrained(tmp_path)
    t0 = time.perf_counter()
    model, cfg, _ = load_hf(tmp_path)
    load_s = time.perf_counter() - t0
    assert model.num_params() == 124_439_808
    tokens = np.random.default_rng(0).integers(0, 50257, (2, 1024))
    ref = hf_logits(hf, tokens)
    ours = logits_of(model, tokens)
    diff = float(np.abs(ours - ref).max())
    print(f"\nGPT-2 124M, B=2, T=1024: max |logits diff| = {diff:.2e} "
          f"(max |logit| {np.abs(ref).max():.2f}); load_hf took {load_s:.2f} s")
    assert diff <= 1e-4
    prompt = [464, 2068, 7586, 21831]
    with torch.no_grad():
        hf_ids = hf.generate(torch.tensor([prompt]), max_new_tokens=50, do_sample=False,
                             attention_mask=torch.ones(1, 4, dtype=torch.long))[0, 4:].numpy()
    ours_ids = generation.generate(model, prompt, max_new_tokens=50, temperature=0.0).tokens[0]
    np.testing.assert_array_equal(ours_ids, hf_ids)
