"""Hugging Face interop for every family: Llama (llama3 RoPE scaling), Mistral (sliding window),
Qwen2 (q/k/v biases, sliding layers), Qwen3 (qk norm), Gemma, Gemma 2 (sandwich norms, soft-caps,
alternating windows), GPT-NeoX (partial rotary, parallel residual) and GPT-2.

Each family is a tiny random ``transformers`` model (odd shapes, grouped kv heads and a head
width other than d_model / n_head where the family allows, every weight perturbed so unit norms
and zero biases hide nothing), saved with ``save_pretrained``. Checked: logits within 1e-4,
greedy decoding of 30 tokens identical to ``generate(do_sample=False)`` (past the window), the
cached decode's logits equal to the full forward's, export -> import bit-identical and
``transformers`` loading the export with the same logits, streamed bf16 loading, sharded and
``.bin`` files, config.json in both transformers 4 and 5 styles, tokenizers, errors, the CLI.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from jaxformer import ModelConfig
from jaxformer_testing.hf_models import perturb  # noqa: E402
from jaxformer.infer import generation  # noqa: E402
from jaxformer.errors import CheckpointError, ConfigError  # noqa: E402
from jaxformer.interop import load_hf, model_config_from_hf_family, read_hf_state_dict, save_hf

pytestmark = pytest.mark.hf
transformers.logging.set_verbosity_error()

V, T_PROMPT, N_NEW = 97, 12, 30
COMMON = dict(vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
              max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=None)
LLAMA3 = dict(rope_type="llama3", rope_theta=500.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=16)
FAMILIES = {   # name -> (config class, kwargs)
    "llama": ("LlamaConfig", dict(num_key_value_heads=2, head_dim=16, rope_parameters=LLAMA3)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, head_dim=16, sliding_window=6,
                                      rope_parameters=dict(rope_type="default", rope_theta=1000.0))),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, use_sliding_window=True, sliding_window=6,
                                  max_window_layers=1, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=1, head_dim=16)),
    "gemma": ("GemmaConfig", dict(num_key_value_heads=1, head_dim=16)),
    "gemma2": ("Gemma2Config", dict(num_key_value_heads=2, head_dim=16, sliding_window=6, query_pre_attn_scalar=20,
                                    attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "neox": ("GPTNeoXConfig", dict(hidden_size=64, rotary_pct=0.25, use_parallel_residual=True)),
    # int(16 * 0.35) = 5 rotary dims: transformers' frequency table covers 3 pairs, so 6 dims rotate
    "neox_odd": ("GPTNeoXConfig", dict(hidden_size=64, rotary_pct=0.35, use_parallel_residual=False)),
    "gpt2": ("GPT2Config", dict(n_embd=48, n_layer=2, n_head=4, n_inner=80, n_positions=64)),
}


def hf_model(name: str, seed: int = 0):
    cls, kw = FAMILIES[name]
    common = {k: v for k, v in COMMON.items() if name != "gpt2" or k in ("vocab_size", "bos_token_id",
                                                                          "eos_token_id", "pad_token_id")}
    torch.manual_seed(seed)
    cfg = getattr(transformers, cls)(**{**common, **kw})
    return perturb(transformers.AutoModelForCausalLM.from_config(cfg).eval(), seed + 1)


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens, np.int64))).logits.numpy()


_forward = nnx.jit(lambda m, t: m(t))     # one function: compiles once per config and shape


def logits_of(model, tokens):
    return np.asarray(_forward(model, jnp.asarray(tokens)))


def hf_greedy(model, prompts, n):
    """transformers' greedy continuation of left-padded ``prompts`` (lists of ids), [B, n]."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    return out[:, width:].numpy()


def flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


class Case:
    """One family: the transformers model, its folder, what load_hf made of it, and the
    reference figures every test compares with (computed once)."""

    def __init__(self, name, tmp_path_factory):
        self.name, self.hf = name, hf_model(name)
        self.folder = tmp_path_factory.mktemp(name)
        self.hf.save_pretrained(self.folder)
        self.loaded = load_hf(self.folder)
        rng = np.random.default_rng(0)
        self.prompt = [int(t) for t in rng.integers(0, V, T_PROMPT)]
        self.hf_new = hf_greedy(self.hf, [self.prompt], N_NEW)[0]
        # a batch of 3 rows of T_PROMPT + N_NEW tokens: row 0 is the prompt and transformers' continuation
        self.tokens = np.concatenate([[self.prompt + self.hf_new.tolist()],
                                      rng.integers(0, V, (2, T_PROMPT + N_NEW))])
        self.hf_logits = hf_logits(self.hf, self.tokens)
        self.logits = logits_of(self.loaded.model, self.tokens)


@pytest.fixture(scope="module", params=list(FAMILIES))
def case(request, tmp_path_factory):
    return Case(request.param, tmp_path_factory)


PROMPTS = np.random.default_rng(1).integers(0, V, (2, 20))


# ----------------------------------------------------------------------------- parity
def test_logits_match_transformers(case):
    """[3, 42] tokens (past every window), float32: within 1e-4 of transformers."""
    assert np.abs(case.hf_logits).max() > 1.0
    assert np.abs(case.logits - case.hf_logits).max() <= 1e-4, case.name


def test_greedy_decoding_and_cached_logits_match(case):
    """30 greedy tokens after a 12-token prompt (past the window of 6) equal transformers'
    generate; each cached decode step's logits equal the uncached forward's at that position."""
    out = generation.generate(case.loaded.model, case.prompt, max_new_tokens=N_NEW, temperature=0.0,
                              return_logits=True)
    assert len(set(case.hf_new.tolist())) > 1, "a constant continuation proves little"
    np.testing.assert_array_equal(out.tokens[0], case.hf_new, err_msg=case.name)
    uncached = case.logits[0, T_PROMPT - 1:T_PROMPT - 1 + N_NEW]   # step n sees the prompt + n tokens
    np.testing.assert_allclose(out.logits[0], uncached, atol=1e-4, rtol=0, err_msg=case.name)


@pytest.mark.parametrize("case", ["gemma2"], indirect=True)     # alternating sliding / full layers
def test_left_padded_batch_matches_transformers(case):
    """Two prompts of 7 and 12 tokens, left-padded together: each row as transformers gives it."""
    prompts = [case.prompt[:7], [int(t) for t in PROMPTS[0, :T_PROMPT]]]
    ref = hf_greedy(case.hf, prompts, 20)
    ours = generation.generate(case.loaded.model, prompts, max_new_tokens=20, temperature=0.0).tokens
    np.testing.assert_array_equal(ours, ref)


# ----------------------------------------------------------------------------- export
def test_export_round_trip_is_bit_identical_and_transformers_loads_it(case, tmp_path):
    hf, folder, loaded = case.hf, case.folder, case.loaded
    out = save_hf(loaded.model, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["architectures"] == hf.config.architectures
    a, b = read_hf_state_dict(folder), read_hf_state_dict(out)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_array_equal(hf_logits(again, PROMPTS), hf_logits(hf, PROMPTS))
    back = load_hf(out)
    assert back.config == loaded.config and back.architecture == loaded.architecture
    pa, pb = flat(loaded.model.params()), flat(back.model.params())
    for k in pa:
        np.testing.assert_array_equal(np.asarray(pa[k]), np.asarray(pb[k]), err_msg=k)


NATIVE = {   # jaxformer configs written from scratch (not read from HF), exported, read by transformers
    "Qwen2ForCausalLM": dict(qkv_bias=True, head_dim=16, n_kv_head=2, sliding_window=5,
                             layer_types=("sliding", "full")),
    "GPTNeoXForCausalLM": dict(norm="layernorm", bias=True, activation="gelu", rope_fraction=0.5,
                               tie_embeddings=True),
    "Gemma2ForCausalLM": dict(norm_offset=1.0, activation="geglu", scale_embeddings=True, norm_position="sandwich",
                              head_dim=12, attn_scale=10 ** -0.5, final_softcap=7.0, sliding_window=4,
                              tie_embeddings=False),
}


@pytest.mark.parametrize("arch", list(NATIVE))
def test_native_configs_export_to_the_family_they_match(arch, tmp_path):
    from conftest import random_model
    cfg = ModelConfig(**{**dict(vocab_size=V, d_model=48, n_head=4, n_layer=2, d_ff=80, max_len=64, positions="rope",
                                norm="rmsnorm", activation="swiglu", bias=False, init_std=0.02), **NATIVE[arch]})
    model = random_model(cfg, seed=1, scale=0.2)
    save_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == arch
    assert np.abs(hf_logits(hf, PROMPTS) - logits_of(model, PROMPTS)).max() <= 1e-4
    assert load_hf(tmp_path).config == cfg


def test_export_refuses_what_the_architecture_cannot_express(tmp_path):
    from jaxformer.interop import hf_config_for
    cfg = ModelConfig(vocab_size=V, d_model=32, n_head=4, n_layer=1, norm="rmsnorm", activation="swiglu",
                      positions="rope", bias=False, sliding_window=4, layer_types=("full",))
    assert hf_config_for(cfg)["architectures"] == ["LlamaForCausalLM"]   # no sliding layer: a Llama
    with pytest.raises(ConfigError, match=r"^model.activation='relu' cannot be exported to LlamaForCausalLM "
                                          r"\(allowed: 'swiglu'\)$"):
        hf_config_for(ModelConfig(**{**_fields(cfg), "activation": "relu"}), "LlamaForCausalLM")
    with pytest.raises(ConfigError, match="model.sliding_window=4 cannot be exported to LlamaForCausalLM"):
        hf_config_for(ModelConfig(**{**_fields(cfg), "layer_types": ("sliding",)}), "LlamaForCausalLM")
    with pytest.raises(ConfigError, match="model.positions='sinusoidal'"):
        hf_config_for(ModelConfig(vocab_size=V, d_model=32, n_head=4, n_layer=1, positions="sinusoidal"))
    gpt2 = dict(vocab_size=V, d_model=32, n_head=4, n_layer=1)
    for knob in (dict(parallel_residual=True), dict(head_dim=4), dict(norm_position="sandwich")):
        with pytest.raises(ConfigError, match=f"model.{next(iter(knob))}=.* cannot be exported to GPT"):
            hf_config_for(ModelConfig(**gpt2, **knob))
    with pytest.raises(ConfigError, match="architecture='BertModel' is not one of"):
        hf_config_for(cfg, "BertModel")


def _fields(cfg):
    import dataclasses
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


# ----------------------------------------------------------------------------- files and dtypes
@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    hf = hf_model("llama", seed=3)
    folder = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(folder)
    return hf, folder, load_hf(folder)


def test_sharded_bin_and_bf16_loads_give_the_same_parameters(llama, tmp_path):
    hf, folder, loaded = llama
    ref = flat(loaded.model.params())
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((folder / "config.json").read_text())
    for sub in ("sharded", "bin"):
        got = flat(load_hf(tmp_path / sub).model.params())
        for k in ref:
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(ref[k]), err_msg=f"{sub}: {k}")
    bf16 = load_hf(folder, dtype="bfloat16")
    assert bf16.config.param_dtype == "bfloat16"
    for k, v in flat(bf16.model.params()).items():
        assert v.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(v), np.asarray(ref[k].astype(jnp.bfloat16)), err_msg=k)
    # a bf16 checkpoint (as most Hub models are) read into float32 and into bfloat16
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    hf.to(torch.float32)
    for dtype in ("float32", "bfloat16"):
        got = flat(load_hf(tmp_path / "bf16", dtype=dtype).model.params())
        for k in ref:
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(ref[k].astype(jnp.bfloat16)).astype(dtype))


def test_bfloat16_export_is_read_by_transformers(llama, tmp_path):
    hf, _, loaded = llama
    out = save_hf(loaded.model, tmp_path, dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    again = transformers.AutoModelForCausalLM.from_pretrained(out)
    for (k, a), b in zip(again.state_dict().items(), hf.state_dict().values()):
        assert torch.equal(a.to(torch.bfloat16), b.to(torch.bfloat16)), k


# ----------------------------------------------------------------------------- config.json styles
def test_older_config_styles_are_read_as_transformers_reads_them():
    base = dict(COMMON, architectures=["LlamaForCausalLM"], model_type="llama")
    old = model_config_from_hf_family({**base, "rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert (old.rope_theta, old.rope_scaling, old.rope_scaling_factor) == (1e6, "linear", 2.0)
    l3 = model_config_from_hf_family({**base, "rope_scaling": {k: v for k, v in LLAMA3.items()
                                                                if k != "original_max_position_embeddings"}})
    assert (l3.rope_scaling, l3.rope_original_max_len, l3.rope_theta) == ("llama3", 64, 500.0)
    neox = model_config_from_hf_family({**COMMON, "hidden_size": 64, "model_type": "gpt_neox",
                                        "rotary_pct": 0.5, "rotary_emb_base": 1234, "hidden_act": "gelu_new"})
    ref = transformers.GPTNeoXConfig(**{**COMMON, "hidden_size": 64}, rotary_pct=0.5, rotary_emb_base=1234)
    assert (neox.rope_fraction, neox.rope_theta, neox.activation, neox.parallel_residual) == (0.5, 1234.0, "gelu", True)
    assert ref.rope_parameters["partial_rotary_factor"] == 0.5 and ref.rope_parameters["rope_theta"] == 1234
    g2 = model_config_from_hf_family({**COMMON, "model_type": "gemma2", "num_hidden_layers": 4, "head_dim": 16,
                                      "sliding_window": 6})      # no layer_types: sliding on even layers
    assert g2.layer_types == ("sliding", "full", "sliding", "full") and g2.attn_scale == 256 ** -0.5
    assert (g2.attn_softcap, g2.final_softcap, g2.tie_embeddings) == (50.0, 30.0, True)
    gemma = model_config_from_hf_family({**COMMON, "model_type": "gemma", "hidden_act": "gelu",
                                         "hidden_activation": None, "head_dim": 16, "num_key_value_heads": 1})
    assert (gemma.activation, gemma.norm_offset, gemma.scale_embeddings) == ("geglu", 1.0, True)
    qwen = model_config_from_hf_family({**COMMON, "model_type": "qwen2", "use_sliding_window": False,
                                        "num_key_value_heads": 4,
                                        "sliding_window": 6, "max_window_layers": 1})
    assert (qwen.sliding_window, qwen.qkv_bias, qwen.bias) == (None, True, False)


@pytest.mark.parametrize("patch,match", [
    ({"architectures": ["MixtralForCausalLM"]}, r"config.json architectures=\['MixtralForCausalLM'\] is not supported"),
    ({"architectures": None, "model_type": "t5"}, "config.json model_type='t5' is not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}},
     r"config.json rope_parameters.rope_type='yarn' is not supported for LlamaForCausalLM \(allowed: 'default', "
     r"'linear', 'llama3'\)"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "config.json rope_scaling.rope_type='dynamic'"),
    ({"mlp_bias": True}, "config.json mlp_bias=true is not supported for LlamaForCausalLM"),
    ({"attention_bias": True}, "config.json attention_bias=true"),
    ({"hidden_act": "gelu"}, "config.json hidden_act='gelu' is not supported for LlamaForCausalLM"),
    ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}, "partial_rotary_factor=0.5"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "has rope_type='llama3' but no 'low_freq_factor'"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "quantization_config.quant_method='gptq'"),
    ({"num_attention_heads": 5}, "num_attention_heads=5 is not supported for LlamaForCausalLM \\(allowed: a divisor"),
    ({"num_key_value_heads": 3}, "config.json does not describe a valid LlamaForCausalLM: model.n_head=4 is not "
                                 "divisible by model.n_kv_head=3"),
])
def test_unsupported_configs_are_refused_in_one_line(patch, match):
    hf = {**COMMON, "architectures": ["LlamaForCausalLM"], "model_type": "llama", **patch}
    with pytest.raises(CheckpointError, match=match) as e:
        model_config_from_hf_family(hf)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("model_type,patch,match", [
    ("qwen3", {"attention_bias": True}, "attention_bias=true is not supported for Qwen3ForCausalLM"),
    ("gemma", {"use_bidirectional_attention": True}, "use_bidirectional_attention=true"),
    ("gemma2", {"hidden_activation": "gelu"}, "hidden_activation='gelu' is not supported for Gemma2ForCausalLM"),
    ("gpt_neox", {"attention_bias": False}, "attention_bias=false is not supported for GPTNeoXForCausalLM"),
    ("gemma2", {"layer_types": ["full_attention", "chunked_attention", "full_attention"]}, "layer_types="),
])
def test_unsupported_family_variants_are_refused(model_type, patch, match):
    with pytest.raises(CheckpointError, match=match):
        model_config_from_hf_family({**COMMON, "head_dim": 16, "model_type": model_type, **patch})


# ----------------------------------------------------------------------------- tensor errors
def _folder_with(tmp_path, folder, state):
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    return tmp_path


def test_missing_unknown_and_misshapen_tensors_are_named(llama, tmp_path):
    _, folder, _ = llama
    state = load_file(str(folder / "model.safetensors"))
    bad = dict(state)
    del bad["model.layers.1.mlp.up_proj.weight"], bad["lm_head.weight"]
    bad["model.layers.0.mlp.up_proj.bias"] = np.zeros(80, np.float32)
    bad["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(8, np.float32)   # old buffer: skipped
    (tmp_path / "a").mkdir()
    with pytest.raises(CheckpointError) as e:
        load_hf(_folder_with(tmp_path / "a", folder, bad))
    assert str(e.value) == ("LlamaForCausalLM checkpoint does not match its config.json: unknown tensors: "
                            "layers.0.mlp.up_proj.bias; missing tensors: layers.1.mlp.up_proj.weight, lm_head.weight")
    bad = dict(state, **{"model.layers.2.self_attn.k_proj.weight": np.zeros((16, 48), np.float32)})
    (tmp_path / "b").mkdir()
    with pytest.raises(CheckpointError, match=r"^tensor 'layers.2.self_attn.k_proj.weight' has shape \(16, 48\), "
                                              r"expected \(32, 48\) from config.json$"):
        load_hf(_folder_with(tmp_path / "b", folder, bad))


@pytest.mark.parametrize("case", ["gemma"], indirect=True)
def test_tied_head_present_in_the_file_must_equal_the_embeddings(case, tmp_path):
    folder = case.folder
    state = load_file(str(folder / "model.safetensors"))
    state["lm_head.weight"] = state["model.embed_tokens.weight"].copy()
    assert load_hf(_folder_with(tmp_path, folder, state)).config.tie_embeddings
    state["lm_head.weight"][5, 3] += 1
    with pytest.raises(CheckpointError, match="'lm_head.weight' differs from 'model.embed_tokens.weight'"):
        load_hf(_folder_with(tmp_path, folder, state))


@pytest.mark.parametrize("case", ["neox"], indirect=True)
def test_neox_buffers_and_hub_head_name_are_accepted(case, tmp_path):
    """Older GPT-NeoX files carry attention.bias / masked_bias / rotary_emb.inv_freq buffers; the
    head may be named lm_head (transformers 5's module name) instead of the Hub's embed_out."""
    state = load_file(str(case.folder / "model.safetensors"))
    state["lm_head.weight"] = state.pop("embed_out.weight")
    for i in range(3):
        p = f"gpt_neox.layers.{i}.attention."
        state[p + "bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
        state[p + "masked_bias"] = np.array(-1e9, np.float32)
        state[p + "rotary_emb.inv_freq"] = np.ones(2, np.float32)
    got = load_hf(_folder_with(tmp_path, case.folder, state), scan_layers=False)
    assert got.config.scan_layers is False
    ref = flat(case.loaded.model.params())
    for k, v in flat(got.model.params()).items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(ref[k]), err_msg=k)
    with pytest.raises(ConfigError, match="config override 'n_layers' is not a ModelConfig field"):
        load_hf(case.folder, n_layers=2)
    with pytest.raises(ConfigError, match="dtype='float8' is not one of"):
        load_hf(case.folder, dtype="float8")


# ----------------------------------------------------------------------------- tokenizers and CLI
def llama_style_tokenizer(vocab_size: int, byte_fallback: bool = True):
    """A SentencePiece-like BPE as Llama's tokenizer.json has it: ``▁`` for spaces, byte
    fallback tokens ``<0x00>``..``<0xFF>``, ``<unk> <s> </s>`` first."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    tk = Tokenizer(models.BPE(byte_fallback=byte_fallback, unk_token="<unk>", fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    special = ["<unk>", "<s>", "</s>"] + ([f"<0x{i:02X}>" for i in range(256)] if byte_fallback else [])
    text = "the quick brown fox jumps over the lazy dog; the dog sleeps, the fox runs. " * 50
    tk.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                                       show_progress=False))
    return tk


def test_llama_style_tokenizer_json_is_wrapped(llama, tmp_path):
    _, folder, _ = llama
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).write_bytes((folder / f).read_bytes())
    llama_style_tokenizer(300).save(str(tmp_path / "tokenizer.json"))
    tok = load_hf(tmp_path).tokenizer
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    text = "the lazy fox sleeps — naïve 🦊!"           # unseen characters go through byte fallback
    ids = tok.encode(text)
    assert ids == ref(text, add_special_tokens=False)["input_ids"]
    assert any(tok.tk.id_to_token(i).startswith("<0x") for i in ids)
    assert tok.decode(ids) == text and tok.eos_id == tok.tk.token_to_id("</s>")


@pytest.mark.parametrize("case", ["mistral"], indirect=True)
def test_convert_cli_both_ways_keeps_the_family(case, tmp_path):
    from jaxformer.training.checkpoint import load_run
    from jaxformer.cli import main
    hf, folder = case.hf, case.folder
    llama_style_tokenizer(V, byte_fallback=False).save(str(tmp_path / "tokenizer.json"))
    run = tmp_path / "run"
    assert main(["convert", "--from-hf", str(folder), "--out", str(run), "--tokenizer", str(tmp_path)]) == 0
    loaded = load_run(run)
    assert loaded.meta["hf_architecture"] == "MistralForCausalLM" and loaded.config.model.sliding_window == 6
    assert main(["convert", "--from-run", str(run), "--out", str(tmp_path / "hf")]) == 0
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["MistralForCausalLM"] and cfg["sliding_window"] == 6
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    np.testing.assert_array_equal(hf_logits(again, PROMPTS), hf_logits(hf, PROMPTS))
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("the dog", add_special_tokens=False)["input_ids"] == loaded.tokenizer.encode("the dog")
    assert main(["convert", "--from-run", str(run), "--out", str(tmp_path / "x"),
                 "--architecture", "LlamaForCausalLM"]) == 2
