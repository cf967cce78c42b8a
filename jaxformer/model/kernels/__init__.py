"""Fast paths beside the textbook: kernels that compute what :mod:`jaxformer.functional`
computes, faster on one kind of device.

The textbook (``functional.py``) is plain ``jax.numpy`` differentiated by autodiff. A
*kernel set* replaces a few of its pieces by functions with the same values and
gradients (each tested equal to the textbook function it replaces). The engine
(:mod:`jaxformer.model.stack`) hands them to the textbook as the functions it calls
(``attend=``, ``dense=``, ``ln=``, ``gelu=``, ``residual=``):

==========================  ===========================================================
slot                        replaces (signature)
==========================  ===========================================================
``attention``               softmax attention without weights
                            ``(q_BGRTK, k_BGSK, v_BGSK, mask, scale, is_causal) -> out_BGRTK``
``cached_attention``        attention of new tokens over a KV cache read *before* the
                            new entries are written ``(q, k_cache, v_cache, k_new, v_new,
                            mask, cache_index, scale) -> out_BGRTK``
``dense``                   :func:`functional.linear` ``(x, w) -> x @ w``
``layer_norm``              :func:`functional.layer_norm` ``(x, scale, bias, eps)``
``gelu``                    :func:`functional.gelu_tanh`
``residual``                identity on the residual stream (a place to fence gradients)
``unembed_cross_entropy``   :func:`functional.unembed_cross_entropy`
==========================  ===========================================================

Sets: ``textbook`` (nothing replaced), ``cpu`` (:mod:`jaxformer.model.kernels.cpu`: hand-written
backward passes that XLA:CPU runs faster) and ``cudnn`` (:mod:`jaxformer.model.kernels.cudnn`:
cuDNN flash attention where cuDNN supports the dtype and shape). ``model.kernels`` picks
one, ``auto`` by the platform of the devices the step runs on (:func:`resolve`), once,
outside traced code. Inference entry points (``GPT.__call__``, ``capture``,
``attention_maps``, ``score``) always use the textbook, so forward-mode autodiff works
on them whatever the setting.
"""
from __future__ import annotations

from typing import Any

import jax

from jaxformer.errors import ConfigError
from jaxformer.model.kernels.base import TEXTBOOK, Kernels
from jaxformer.model.kernels.cpu import CPU
from jaxformer.model.kernels.cudnn import CUDNN

__all__ = ["Kernels", "CHOICES", "TEXTBOOK", "get", "resolve", "platform_of"]

CHOICES = ("auto", "textbook", "cpu", "cudnn")


def get(name: str) -> Kernels:
    """The kernel set called ``name`` (``textbook`` | ``cpu`` | ``cudnn``)."""
    sets = {"textbook": TEXTBOOK, "cpu": CPU, "cudnn": CUDNN}
    if name in sets:
        return sets[name]
    raise ConfigError(f"model.kernels={name!r} is not one of 'textbook', 'cpu', 'cudnn' (or 'auto')")


def platform_of(where: Any = None) -> str:
    """The platform the computation will run on: ``cpu``, ``cuda``, ``rocm``, ``tpu``, ...

    ``where``: a ``jax.sharding.Mesh``, a ``jax.Device``, an array or a pytree of arrays
    (the first leaf's device), or None for the default device (which honours
    ``jax.default_device``, unlike ``jax.default_backend()``).
    """
    device = None
    if isinstance(where, jax.sharding.Mesh):
        device = where.devices.flat[0]
    elif isinstance(where, jax.Device):
        device = where
    elif where is not None:
        leaves = [x for x in jax.tree.leaves(where) if isinstance(x, jax.Array)]
        if leaves:
            device = next(iter(leaves[0].devices()))
    if device is None:
        default = jax.config.jax_default_device
        if isinstance(default, str):
            device = jax.devices(default)[0]
        else:
            device = default if default is not None else jax.devices()[0]
    if device.platform == "gpu":
        version = str(getattr(device.client, "platform_version", "")).lower()
        if "rocm" in version:
            return "rocm"
        return "cuda" if ("cuda" in version or "nvidia" in device.device_kind.lower()) else "gpu"
    return device.platform


def resolve(choice: str, platform: str) -> Kernels:
    """The kernel set for ``model.kernels=choice`` on ``platform`` (see :func:`platform_of`).

    ``auto``: ``cpu`` kernels on CPU, ``cudnn`` on NVIDIA GPUs, the textbook elsewhere.
    Asking for ``cudnn`` anywhere but on an NVIDIA GPU is an error; ``cpu`` kernels run on
    any platform (they are only tuned for XLA:CPU).
    """
    if choice == "auto":
        return get({"cpu": "cpu", "cuda": "cudnn"}.get(platform, "textbook"))
    if choice == "cudnn" and platform != "cuda":
        raise ConfigError(f"model.kernels='cudnn' needs an NVIDIA GPU, but the step runs on {platform}; "
                          "use model.kernels=auto")
    return get(choice)
