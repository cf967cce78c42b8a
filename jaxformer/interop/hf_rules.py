"""The pieces of a tensor table (``hf_layouts.py``, ``hf_bert.py``): a :class:`Rule` ties HF
tensors of a layer to jaxformer leaves by a pair of pure NumPy functions; a :class:`Layout` is
one architecture's list of rules, its prefix, skipped buffers and tied names."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

__all__ = ["Rule", "Layout", "copy", "linear", "heads_in", "heads_out", "bias_heads", "norm_rules"]


@dataclass(frozen=True)
class Rule:
    """HF tensors ``hf`` (full names, ``{i}`` = layer) <-> jaxformer leaves ``ours``."""
    ours: Tuple[str, ...]
    hf: Tuple[str, ...]
    load: Callable[..., tuple]
    save: Callable[..., tuple]
    rows_axis: Optional[int] = None   # our axis that the HF tensor's rows become (chunked reads)
    first_layer: int = 0              # layers before it have no HF tensor: ours are filled with ``filler``
    filler: float = 0.0               # (ModernBERT's layer 0 has no attention norm)

    @property
    def stacked(self) -> bool:
        return self.ours[0].startswith("blocks/")


@dataclass
class Layout:
    prefix: str                                  # the base model's name prefix
    rules: List[Rule]
    skip: Optional[re.Pattern] = None            # buffers to ignore (matched without prefix)
    head: Optional[str] = None                   # the lm head's name (tied: optional, == embeddings)
    embeddings: str = ""                         # the token embeddings' name
    aliases: Dict[str, str] = field(default_factory=dict)   # other names of the same tensor
    duplicates: Dict[str, str] = field(default_factory=dict)  # optional tied copies -> the tensor they equal

    def display(self, name: str) -> str:
        """A name as error messages show it (without the base model's prefix)."""
        return name[len(self.prefix):] if name.startswith(self.prefix) else name


def copy(ours, hf) -> Rule:
    return Rule((ours,), (hf,), lambda a: (a,), lambda a: (a,), rows_axis=0)


def linear(ours, hf) -> Rule:           # [out, in] <-> [in, out]
    return Rule((ours,), (hf,), lambda w: (w.T,), lambda a: (a.T,), rows_axis=1)


def heads_in(ours, hf, n) -> Rule:      # [n*K, D] <-> [D, n, K]
    return Rule((ours,), (hf,), lambda w: (w.T.reshape(w.shape[1], n, -1),),
                lambda a: (a.reshape(a.shape[0], -1).T,))


def heads_out(ours, hf, n) -> Rule:     # [D, n*K] <-> [n, K, D]
    return Rule((ours,), (hf,), lambda w: (w.T.reshape(n, -1, w.shape[0]),),
                lambda a: (a.reshape(-1, a.shape[-1]).T,))


def bias_heads(ours, hf, n) -> Rule:    # [n*K] <-> [n, K]
    return Rule((ours,), (hf,), lambda b: (b.reshape(n, -1),), lambda a: (a.reshape(-1),))


def norm_rules(ours, hf, with_bias: bool) -> List[Rule]:
    rules = [copy(f"{ours}/scale", f"{hf}.weight")]
    return rules + ([copy(f"{ours}/bias", f"{hf}.bias")] if with_bias else [])
