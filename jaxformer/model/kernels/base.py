"""The kernel set type: which textbook pieces a set replaces (see :mod:`jaxformer.model.kernels`)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

__all__ = ["Kernels", "TEXTBOOK"]


@dataclasses.dataclass(frozen=True)
class Kernels:
    """A named set of fast replacements for textbook pieces (None = use the textbook)."""

    name: str
    attention: Optional[Callable] = None
    cached_attention: Optional[Callable] = None
    dense: Optional[Callable] = None
    layer_norm: Optional[Callable] = None
    gelu: Optional[Callable] = None
    residual: Optional[Callable] = None
    unembed_cross_entropy: Optional[Callable] = None


TEXTBOOK = Kernels("textbook")
