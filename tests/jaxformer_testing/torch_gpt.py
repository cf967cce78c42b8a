"""An eager PyTorch GPT equivalent to a :class:`ModelConfig`, for parity checks (the tests,
lab 7) and for side-by-side throughput (``benchmarks/train_shakespeare.py``,
``benchmarks/gemm_ceiling.py``, ``benchmarks/past_context.py``). Not part of the wheel: the tests
import it as ``jaxformer_testing.torch_gpt``, the labs and benchmarks by its file path.

nanoGPT-style: fused ``c_attn`` projection, ``torch.nn.functional.scaled_dot_product_attention``
with ``is_causal=True``, pre-norm LayerNorm, learned positions, gelu (tanh) or relu, optional
biases, tied or untied embeddings. torch is imported by the functions that need it.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from jaxformer.errors import ConfigError


def _check_supported(cfg) -> None:
    problems = []
    if cfg.norm_position != "pre":
        problems.append(f"model.norm_position={cfg.norm_position!r} (only 'pre')")
    if cfg.norm != "layernorm":
        problems.append(f"model.norm={cfg.norm!r} (only 'layernorm')")
    if cfg.positions != "learned":
        problems.append(f"model.positions={cfg.positions!r} (only 'learned')")
    if cfg.activation not in ("gelu", "relu"):
        problems.append(f"model.activation={cfg.activation!r} (only 'gelu', 'relu')")
    if cfg.kv_heads != cfg.n_head:
        problems.append(f"model.n_kv_head={cfg.n_kv_head!r} (only = n_head)")
    if cfg.attn_only:
        problems.append("model.attn_only=True (only false)")
    if problems:
        raise ConfigError("the PyTorch reference does not support " + "; ".join(problems))


def _block_classes(cfg):
    """``(LN, Block)``: the LayerNorm and the pre-norm block of :func:`build_torch_gpt`."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as TF

    D, H, Fd = cfg.d_model, cfg.n_head, cfg.d_ff
    act = (lambda x: TF.gelu(x, approximate="tanh")) if cfg.activation == "gelu" else TF.relu
    p_drop = cfg.dropout

    class LN(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(D))
            self.bias = nn.Parameter(torch.zeros(D)) if cfg.bias else None

        def forward(self, x):
            return TF.layer_norm(x, (D,), self.weight, self.bias, cfg.norm_eps)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = LN(), LN()
            self.c_attn = nn.Linear(D, 3 * D, bias=cfg.bias)
            self.c_proj = nn.Linear(D, D, bias=cfg.bias)
            self.fc = nn.Linear(D, Fd, bias=cfg.bias)
            self.proj = nn.Linear(Fd, D, bias=cfg.bias)
            self.drop = nn.Dropout(p_drop)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.c_attn(self.ln1(x)).split(D, dim=2)
            q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                dropout_p=p_drop if self.training else 0.0)
            x = x + self.drop(self.c_proj(y.transpose(1, 2).reshape(B, T, D)))
            return x + self.drop(self.proj(act(self.fc(self.ln2(x)))))

    return LN, Block


def _init_weights(model, cfg) -> None:
    """GPT-2's init: biases zero, matrices normal(0, init_std), the residual projections scaled
    by 1 / sqrt(2 n_layer)."""
    import torch.nn as nn

    for name, p in model.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(p)
        elif p.ndim >= 2:
            std = cfg.init_std / (2 * cfg.n_layer) ** 0.5 if name.endswith(("c_proj.weight", "proj.weight")) \
                else cfg.init_std
            nn.init.normal_(p, 0.0, std)


def build_torch_gpt(cfg, seed: int = 0):
    """A ``torch.nn.Module`` computing the same function as ``GPT(cfg)``:
    ``module(tokens LongTensor [B, T]) -> logits [B, T, V]``."""
    import torch
    import torch.nn as nn

    _check_supported(cfg)
    D, V = cfg.d_model, cfg.vocab_size
    LN, Block = _block_classes(cfg)

    class TorchGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = cfg
            self.wte = nn.Embedding(V, D)
            self.wpe = nn.Embedding(cfg.max_len, D)
            self.drop = nn.Dropout(cfg.dropout)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.ln_f = LN()
            self.lm_head = None if cfg.tie_embeddings else nn.Linear(D, V, bias=False)

        def forward(self, idx):
            T = idx.shape[1]
            x = self.drop(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)))
            for b in self.blocks:
                x = b(x)
            x = self.ln_f(x)
            return x @ self.wte.weight.T if self.lm_head is None else self.lm_head(x)

    torch.manual_seed(seed)
    model = TorchGPT()
    _init_weights(model, cfg)
    return model


def torch_mha_from_params(p, d_model: int, n_head: int):
    """A float64 ``torch.nn.MultiheadAttention`` (``batch_first``) holding jaxformer attention
    parameters ``p`` (``wq/wk/wv [D, H, K]``, ``wo [H, K, D]``, biases): jaxformer multiplies
    ``x W``, torch ``x W^T``, so every matrix is transposed on the way in."""
    import torch

    D = d_model
    mha = torch.nn.MultiheadAttention(D, n_head, bias=True, batch_first=True).double()
    w = [np.asarray(p[n], np.float64).reshape(D, D).T for n in ("wq", "wk", "wv")]
    b = [np.asarray(p[n], np.float64).reshape(D) for n in ("bq", "bk", "bv")]
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.from_numpy(np.concatenate(w, 0)))
        mha.in_proj_bias.copy_(torch.from_numpy(np.concatenate(b, 0)))
        mha.out_proj.weight.copy_(torch.from_numpy(np.asarray(p["wo"], np.float64).reshape(D, D).T))
        mha.out_proj.bias.copy_(torch.from_numpy(np.asarray(p["bo"], np.float64)))
    return mha


def load_jax_params(model, params) -> None:
    """Copy a jaxformer parameter pytree (``GPT.params()``) into a :func:`build_torch_gpt` module."""
    import torch

    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
    cfg = model.config
    D = cfg.d_model
    sd = {"wte.weight": t(params["tok_emb"]), "wpe.weight": t(params["pos_emb"]),
          "ln_f.weight": t(params["ln_f"]["scale"])}
    if cfg.bias:
        sd["ln_f.bias"] = t(params["ln_f"]["bias"])
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = t(params["lm_head"]).T
    blk = params["blocks"]
    for i in range(cfg.n_layer):
        g = lambda *path: np.asarray(_get(blk, path))[i]  # noqa: E731
        pre = f"blocks.{i}."
        qkv = [g("attn", w).reshape(D, D) for w in ("wq", "wk", "wv")]
        sd[pre + "c_attn.weight"] = t(np.concatenate(qkv, axis=1)).T
        sd[pre + "c_proj.weight"] = t(g("attn", "wo").reshape(D, D)).T
        sd[pre + "fc.weight"] = t(g("mlp", "w_in")).T
        sd[pre + "proj.weight"] = t(g("mlp", "w_out")).T
        sd[pre + "ln1.weight"], sd[pre + "ln2.weight"] = t(g("ln1", "scale")), t(g("ln2", "scale"))
        if cfg.bias:
            sd[pre + "c_attn.bias"] = t(np.concatenate([g("attn", b).reshape(D) for b in ("bq", "bk", "bv")]))
            sd[pre + "c_proj.bias"] = t(g("attn", "bo"))
            sd[pre + "fc.bias"], sd[pre + "proj.bias"] = t(g("mlp", "b_in")), t(g("mlp", "b_out"))
            sd[pre + "ln1.bias"], sd[pre + "ln2.bias"] = t(g("ln1", "bias")), t(g("ln2", "bias"))
    model.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=True)


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def make_torch_optimizer(model, tc):
    """AdamW as the JAX side: weight decay on matrices only (not norms or biases; embeddings
    only with ``tc.decay_embeddings``)."""
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        emb = name.startswith(("wte", "wpe"))
        (decay if p.ndim >= 2 and (tc.decay_embeddings or not emb) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=1e-8)


def time_train_step(cfg, tc, *, steps: int = 50, warmup: int = 5, threads: Optional[int] = None,
                    seed: int = 0) -> dict:
    """Time the eager PyTorch AdamW train step (forward, cross-entropy, backward, global-norm
    clip, update) of ``GPT(cfg)`` at batch ``tc.batch_size`` and context ``cfg.max_len``.

    Returns ``{"ms_per_step", "tokens_per_s", "final_loss", "threads"}``.
    """
    import torch
    import torch.nn.functional as TF

    if threads is not None:
        torch.set_num_threads(threads)
    model = build_torch_gpt(cfg, seed)
    model.train()
    opt = make_torch_optimizer(model, tc)
    g = torch.Generator().manual_seed(seed)
    B, T = tc.batch_size, cfg.max_len
    batches = [torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g) for _ in range(8)]

    def step(batch):
        logits = model(batch[:, :-1])
        loss = TF.cross_entropy(logits.reshape(-1, cfg.vocab_size), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        return loss

    for i in range(warmup):
        step(batches[i % len(batches)])
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(batches[i % len(batches)])
    dt = (time.perf_counter() - t0) / steps
    return {"ms_per_step": dt * 1e3, "tokens_per_s": B * T / dt, "final_loss": loss.item(),
            "threads": torch.get_num_threads()}
