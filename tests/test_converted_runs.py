"""A Llama-family checkpoint converted with `jaxformer convert --from-hf` works with every
command: `sample` gives transformers' greedy tokens, `score` its log-probabilities,
`attention` (and `jaxformer.attention_maps`) its attention weights; `--init-from` fine-tunes it."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxformer.training.checkpoint import load_run  # noqa: E402
from jaxformer.cli import main  # noqa: E402
from jaxformer.interp.activations import attention_maps  # noqa: E402

TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
        "To be, or not to be, that is the question. All that glitters is not gold. ") * 4


def _tokenizer(folder):
    """A byte-level BPE with a few hundred tokens, trained here (nothing is downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.save(str(folder / "tokenizer.json"))
    return tk


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(hf_model, tokenizer, converted run folder) for a random Llama with grouped heads,
    head_dim != d_model / n_head and perturbed norms."""
    root = tmp_path_factory.mktemp("llama")
    hf_dir, run = root / "hf", root / "run"
    hf_dir.mkdir()
    tk = _tokenizer(hf_dir)
    cfg = transformers.LlamaConfig(
        vocab_size=tk.get_vocab_size(), hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.2, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(hf_dir)
    assert main(["convert", "--from-hf", str(hf_dir), "--out", str(run)]) == 0
    return model, tk, run


def test_sample_is_transformers_greedy_decoding(llama, capsys):
    model, tk, run = llama
    prompt = "To be, or not"
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--prompt", prompt, "--max-new-tokens", "24",
                 "--temperature", "0", "--no-stop", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)["samples"][0]["token_ids"]
    ids = tk.encode(prompt).ids
    with torch.no_grad():
        theirs = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert ours == theirs


def test_score_is_transformers_log_probabilities(llama, capsys):
    model, tk, run = llama
    text = "All that glitters is not gold. The quick brown fox"
    capsys.readouterr()
    assert main(["score", "--run", str(run), "--text", text, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = tk.encode(text).ids
    assert out["token_ids"] == ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    want = [float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)]
    np.testing.assert_allclose(out["logprobs"], want, atol=1e-4)


def test_attention_maps_are_transformers_attentions(llama, tmp_path):
    model, tk, run = llama
    text = "A stitch in time saves nine."
    ids = tk.encode(text).ids
    ours = np.asarray(attention_maps(load_run(run).model, np.asarray([ids])))   # [B, L, H, T, T]
    with torch.no_grad():
        theirs = model(torch.tensor([ids]), output_attentions=True).attentions    # L x [B, H, T, T]
    np.testing.assert_allclose(ours[0], np.stack([a[0].numpy() for a in theirs]), atol=1e-5)
    for out in ("att.html", "att.png"):
        assert main(["attention", "--run", str(run), "--text", text, "--out", str(tmp_path / out)]) == 0
        assert (tmp_path / out).stat().st_size > 1000
