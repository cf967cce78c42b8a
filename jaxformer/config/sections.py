"""The config sections: ``ModelConfig``, ``DataConfig``, ``TrainConfig``, ``MeshConfig`` and
``Config`` holding one of each, frozen dataclasses validated on construction (a bad value raises
:class:`ConfigError` naming the field, the value and what is allowed)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Tuple

from jaxformer.errors import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    _check(value in allowed, f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
           f"{name}={value!r} must be an integer >= {minimum}")


def _finite_number(name: str, value: Any, minimum: float = 0.0, maximum: float = math.inf,
                   include_min: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= minimum if include_min else value > minimum) and value <= maximum
    lo = "[" if include_min else "("
    _check(ok, f"{name}={value!r} must be a finite number in {lo}{minimum}, {maximum}]")


DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and architecture of a transformer (the knobs are described in docs/architecture.md): a
    decoder (``causal=True``, the default) or a bidirectional encoder (``causal=False``, docs/encoders.md)."""

    vocab_size: int = 256
    d_model: int = 128
    n_head: int = 4
    n_layer: int = 4
    d_ff: Optional[int] = None          # default 4 * d_model
    max_len: int = 256                  # context length (size of the position table)
    n_kv_head: Optional[int] = None     # grouped-query attention when < n_head; default n_head
    head_dim: Optional[int] = None      # head width K; default d_model // n_head
    norm_position: str = "pre"          # pre | post | none | sandwich (pre + a norm on each branch output)
    norm: str = "layernorm"             # layernorm | rmsnorm
    norm_eps: float = 1e-5
    norm_offset: float = 0.0            # norms multiply by (norm_offset + scale); Gemma: 1.0
    activation: str = "gelu"            # relu | gelu (tanh approx.) | gelu_exact (erf) | swiglu | geglu | geglu_exact (erf)
    positions: str = "learned"          # learned | sinusoidal | rope | none
    rope_theta: float = 10000.0
    rope_local_theta: Optional[float] = None  # RoPE base of the sliding layers (ModernBERT's local_rope_theta); default rope_theta
    rope_fraction: float = 1.0          # fraction of each head's dims that rotate (GPT-NeoX rotary_pct)
    rope_scaling: str = "none"          # none | linear | llama3
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0   # llama3 scaling only
    rope_high_freq_factor: float = 4.0  # llama3 scaling only
    rope_original_max_len: int = 8192   # llama3 scaling only
    sliding_window: Optional[int] = None  # query t sees keys s with 0 <= t - s < sliding_window (encoders: |t - s| < it)
    layer_types: Optional[Tuple[str, ...]] = None  # per layer "full" | "sliding" (default: all sliding if a window is set)
    attn_scale: Optional[float] = None  # score multiplier; default head_dim ** -0.5
    attn_softcap: Optional[float] = None  # scores -> cap * tanh(scores / cap) (Gemma 2)
    final_softcap: Optional[float] = None  # logits -> cap * tanh(logits / cap) (Gemma 2)
    qk_norm: bool = False               # norm each head's q and k before RoPE (Qwen3)
    parallel_residual: bool = False     # x + attn(ln1(x)) + mlp(ln2(x)) (GPT-NeoX)
    attn_only: bool = False             # no MLP: blocks are x + attn(ln1(x)) (TransformerLens attn_only)
    causal: bool = True                 # attention to the past only (decoders); false: everywhere (encoders, docs/encoders.md)
    scale_embeddings: bool = False      # token embeddings times sqrt(d_model) (Gemma)
    type_vocab_size: int = 0            # token-type (segment) embeddings [n, D] added to the embeddings (BERT); 0: none
    embed_norm: bool = False            # a norm on the summed embeddings, ln_emb (BERT)
    position_offset: int = 0            # learned positions start at this row (RoBERTa: 2); the table has max_len + offset rows
    mlm_head: bool = False              # BERT's masked-LM head: norm(act(x W + b)) before the unembedding, plus a [V] bias
    mlm_bias: bool = True               # the masked-LM head's dense has its bias b (ModernBERT: classifier_bias)
    mlm_activation: Optional[str] = None  # the masked-LM head's act: relu | gelu | gelu_exact; default activation
    first_attn_norm: bool = True        # layer 0 norms its attention input (ModernBERT: false, the embeddings are normed)
    bias: bool = True
    qkv_bias: Optional[bool] = None     # biases on q/k/v only; default: bias (Qwen2: bias=False, qkv_bias=True)
    tie_embeddings: bool = True
    dropout: float = 0.0
    dtype: str = "float32"              # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat: str = "none"                 # none | full | dots
    kernels: str = "auto"               # auto | textbook | cpu | cudnn (see jaxformer.model.kernels)
    init_std: Optional[float] = None    # std of the normal init of the weights; default d_model ** -0.5 (GPT-2: 0.02)

    def __post_init__(self):
        self._check_shape()
        self._check_choices()
        self._check_numbers()
        self._check_switches()
        self._check_layers()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)   # a default filled in on a frozen dataclass

    def _check_shape(self) -> None:
        """The sizes, with ``d_ff``, ``head_dim`` and ``init_std`` defaults filled in."""
        for name in ("vocab_size", "d_model", "n_head", "n_layer", "max_len"):
            _positive_int(f"model.{name}", getattr(self, name))
        if self.d_ff is None:
            self._set("d_ff", 4 * self.d_model)
        if self.init_std is None:   # scales with the width, so that small models show structure at init
            self._set("init_std", self.d_model ** -0.5)
        _positive_int("model.d_ff", self.d_ff)
        if self.head_dim is None:
            _check(self.d_model % self.n_head == 0,
                   f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head} "
                   "(set model.head_dim to choose the head width)")
            self._set("head_dim", self.d_model // self.n_head)
        _positive_int("model.head_dim", self.head_dim)
        if self.n_kv_head is not None:
            _positive_int("model.n_kv_head", self.n_kv_head)
            _check(self.n_head % self.n_kv_head == 0,
                   f"model.n_head={self.n_head} is not divisible by model.n_kv_head={self.n_kv_head}")

    def _check_choices(self) -> None:
        _choice("model.norm_position", self.norm_position, ("pre", "post", "none", "sandwich"))
        _choice("model.norm", self.norm, ("layernorm", "rmsnorm"))
        _choice("model.activation", self.activation, ("relu", "gelu", "gelu_exact", "swiglu", "geglu", "geglu_exact"))
        if self.mlm_activation is not None:
            _choice("model.mlm_activation", self.mlm_activation, ("relu", "gelu", "gelu_exact"))
        _choice("model.positions", self.positions, ("learned", "sinusoidal", "rope", "none"))
        _choice("model.rope_scaling", self.rope_scaling, ("none", "linear", "llama3"))
        _choice("model.dtype", self.dtype, DTYPES)
        _choice("model.param_dtype", self.param_dtype, DTYPES)
        _choice("model.remat", self.remat, ("none", "full", "dots"))
        _choice("model.kernels", self.kernels, ("auto", "textbook", "cpu", "cudnn"))

    def _check_numbers(self) -> None:
        _finite_number("model.dropout", self.dropout, 0.0, 1.0)
        _check(self.dropout < 1.0, f"model.dropout={self.dropout!r} must be < 1")
        _finite_number("model.norm_eps", self.norm_eps, 0.0, 1.0, include_min=False)
        _finite_number("model.norm_offset", self.norm_offset, -10.0, 10.0)
        _finite_number("model.init_std", self.init_std, 0.0, 10.0, include_min=False)
        _finite_number("model.rope_theta", self.rope_theta, 1.0)
        if self.rope_local_theta is not None:
            _finite_number("model.rope_local_theta", self.rope_local_theta, 1.0)
        _finite_number("model.rope_fraction", self.rope_fraction, 0.0, 1.0, include_min=False)
        _finite_number("model.rope_scaling_factor", self.rope_scaling_factor, 1.0)
        _finite_number("model.rope_low_freq_factor", self.rope_low_freq_factor, 0.0, include_min=False)
        _finite_number("model.rope_high_freq_factor", self.rope_high_freq_factor, 0.0, include_min=False)
        _positive_int("model.rope_original_max_len", self.rope_original_max_len)
        _positive_int("model.type_vocab_size", self.type_vocab_size, 0)
        _positive_int("model.position_offset", self.position_offset, 0)
        if self.rope_scaling == "llama3":
            _check(self.rope_high_freq_factor > self.rope_low_freq_factor,
                   f"model.rope_high_freq_factor={self.rope_high_freq_factor!r} must be > "
                   f"model.rope_low_freq_factor={self.rope_low_freq_factor!r}")
        for name in ("attn_scale", "attn_softcap", "final_softcap"):
            if getattr(self, name) is not None:
                _finite_number(f"model.{name}", getattr(self, name), 0.0, include_min=False)

    def _check_switches(self) -> None:
        """The true/false knobs, with the ``qkv_bias`` default filled in."""
        for name in ("bias", "tie_embeddings", "scan_layers", "qk_norm", "parallel_residual", "attn_only",
                     "scale_embeddings", "causal", "embed_norm", "mlm_head",
                     "mlm_bias", "first_attn_norm"):
            _check(isinstance(getattr(self, name), bool),
                   f"model.{name}={getattr(self, name)!r} must be true or false")
        if self.qkv_bias is None:
            self._set("qkv_bias", self.bias)
        _check(isinstance(self.qkv_bias, bool), f"model.qkv_bias={self.qkv_bias!r} must be true or false")

    def _check_layers(self) -> None:
        """Sliding windows per layer and the knobs that only go together."""
        if self.sliding_window is not None:
            _positive_int("model.sliding_window", self.sliding_window)
        if self.layer_types is not None:
            types = self.layer_types
            _check(isinstance(types, (list, tuple)) and len(types) == self.n_layer
                   and all(t in ("full", "sliding") for t in types),
                   f"model.layer_types={types!r} must list 'full' or 'sliding' for each of the "
                   f"{self.n_layer} layers")
            self._set("layer_types", tuple(types))
            _check(self.sliding_window is not None or "sliding" not in types,
                   "model.layer_types has 'sliding' layers but model.sliding_window is null")
        _check(not (self.attn_only and self.parallel_residual),
               "model.attn_only=true has no MLP to run in parallel: set model.parallel_residual=false")
        if self.parallel_residual:
            _check(self.norm_position == "pre",
                   f"model.parallel_residual=true needs model.norm_position='pre', not {self.norm_position!r}")
        if self.positions == "rope":   # an odd width rotates one more dim, as transformers does
            _check(self.rotary_dim >= 1 and self.rotary_dim + self.rotary_dim % 2 <= self.head_dim,
                   f"model.head_dim * model.rope_fraction = {self.head_dim} * {self.rope_fraction} rotary dims "
                   f"must be >= 1, and < head_dim={self.head_dim} when odd (an odd width rotates one more dim)")
        _check(self.position_offset == 0 or self.positions == "learned",
               f"model.position_offset={self.position_offset!r} needs model.positions='learned', not {self.positions!r}")
        _check(not self.mlm_head or self.mlm_activation or self.activation not in ("swiglu", "geglu", "geglu_exact"),
               f"model.mlm_head=true needs an ungated model.activation (relu, gelu, gelu_exact) or model.mlm_activation, "
               f"not {self.activation!r}")
        _check(self.first_attn_norm or self.norm_position == "pre",
               f"model.first_attn_norm=false needs model.norm_position='pre', not {self.norm_position!r}")
        if self.positions == "sinusoidal":
            _check(self.d_model % 2 == 0, f"model.d_model={self.d_model} must be even for sinusoidal positions")

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (``n_kv_head`` or ``n_head``)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def rotary_dim(self) -> int:
        """RoPE's width ``int(head_dim * rope_fraction)``: its frequencies are
        ``theta^(-2i / rotary_dim)`` for ``i < ceil(rotary_dim / 2)``, so an odd width rotates
        ``rotary_dim + 1`` dims (GPT-NeoX's ``rotary_pct`` in transformers)."""
        return int(self.head_dim * self.rope_fraction)

    @property
    def sliding_layers(self) -> Tuple[bool, ...]:
        """Per layer: True where attention is limited to ``sliding_window`` keys."""
        if self.sliding_window is None:
            return (False,) * self.n_layer
        if self.layer_types is None:
            return (True,) * self.n_layer
        return tuple(t == "sliding" for t in self.layer_types)


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it is tokenized."""

    path: str = "pydoc"                 # a file, a folder of .txt files, "pydoc", "shakespeare" or a prepared folder
    tokenizer: str = "char"             # char | byte | word | bpe
    vocab_size: int = 1024              # for bpe only: trained here >= 258; a prepared folder's may be smaller
    word_min_count: int = 1             # for word only: how often a word must occur to be in the vocabulary
    val_fraction: float = 0.1

    def __post_init__(self):
        _check(isinstance(self.path, str) and self.path != "", f"data.path={self.path!r} must be a non-empty string")
        _choice("data.tokenizer", self.tokenizer, ("char", "byte", "word", "bpe"))
        _positive_int("data.vocab_size", self.vocab_size, 2)
        _positive_int("data.word_min_count", self.word_min_count)
        _finite_number("data.val_fraction", self.val_fraction, 0.0, 0.5, include_min=False)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run-loop settings."""

    batch_size: int = 16
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    decay_steps: Optional[int] = None   # default max_steps
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0              # 0 disables clipping
    grad_accum: int = 1
    eval_interval: int = 250
    eval_steps: int = 20
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    log_interval: int = 10
    seed: int = 0
    dtype: str = "float32"              # compute dtype for training (params stay float32)
    on_nonfinite: str = "stop"          # stop | skip
    sample_tokens: int = 200            # length of the sample printed at the end (0 = none)

    def __post_init__(self):
        for name in ("batch_size", "max_steps", "grad_accum", "eval_interval", "eval_steps",
                     "checkpoint_interval", "keep_checkpoints", "log_interval"):
            _positive_int(f"train.{name}", getattr(self, name))
        _positive_int("train.warmup_steps", self.warmup_steps, 0)
        _positive_int("train.seed", self.seed, 0)
        _positive_int("train.sample_tokens", self.sample_tokens, 0)
        if self.decay_steps is not None:
            _positive_int("train.decay_steps", self.decay_steps)
        _finite_number("train.lr", self.lr, 0.0, 10.0, include_min=False)
        _finite_number("train.min_lr", self.min_lr, 0.0, 10.0)
        _check(self.min_lr <= self.lr, f"train.min_lr={self.min_lr!r} must be <= train.lr={self.lr!r}")
        _finite_number("train.weight_decay", self.weight_decay, 0.0)
        _finite_number("train.beta1", self.beta1, 0.0, 1.0)
        _finite_number("train.beta2", self.beta2, 0.0, 1.0)
        _check(self.beta1 < 1 and self.beta2 < 1, "train.beta1 and train.beta2 must be < 1")
        _finite_number("train.grad_clip", self.grad_clip, 0.0)
        _check(self.batch_size % self.grad_accum == 0,
               f"train.batch_size={self.batch_size} is not divisible by train.grad_accum={self.grad_accum}")
        _choice("train.dtype", self.dtype, DTYPES)
        _choice("train.on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        _check(isinstance(self.decay_embeddings, bool),
               f"train.decay_embeddings={self.decay_embeddings!r} must be true or false")


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes (-1 = all remaining devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        for name in ("data", "fsdp", "tensor"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1),
                   f"mesh.{name}={v!r} must be a positive integer or -1")
        _check([self.data, self.fsdp, self.tensor].count(-1) <= 1, "at most one mesh axis may be -1")


@dataclass(frozen=True)
class Config:
    """A whole run: ``.model``, ``.data``, ``.train``, ``.mesh``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["model"]["layer_types"] is not None:  # YAML has lists, not tuples
            d["model"]["layer_types"] = list(d["model"]["layer_types"])
        return d


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "mesh": MeshConfig}
