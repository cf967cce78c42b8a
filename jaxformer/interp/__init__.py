"""Intervene, not only look: TransformerLens's hook points on the textbook forward pass.

    >>> logits, cache = interp.run_with_cache(model, tokens_BT, names="blocks.0")
    >>> cache["blocks.0.attn.hook_pattern"].shape                  # [B, H, T, T]
    >>> kill = lambda z: z.at[:, :, 3].set(0.0)                    # head 3's output
    >>> logits = interp.run_with_hooks(model, tokens_BT, {"blocks.1.attn.hook_z": kill})

Hook points, in the order the forward pass reaches them (``interp.hook_names(config)``
lists a model's own; shapes in :mod:`jaxformer.functional`'s legend, ``G`` = ``n_kv_head``):

    hook_embed                 [B, T, D]     token embedding (times sqrt(D) when scale_embeddings)
    hook_pos_embed             [B, T, D]     absolute positions (learned / sinusoidal only)
    blocks.{l}.hook_resid_pre  [B, T, D]     the residual stream entering block l
      .ln1.hook_normalized     [B, T, D]     what attention reads (pre-norm / sandwich only)
      .attn.hook_q             [B, T, H, K]  queries (after any q/k norm, before RoPE)
      .attn.hook_k / hook_v    [B, T, G, K]  keys / values: the G shared heads under grouped-query
                                             attention (TransformerLens's n_key_value_heads layout)
      .attn.hook_rot_q / _k    [B, T, H|G, K] after RoPE (positions="rope" only)
      .attn.hook_attn_scores   [B, H, T, T]  scaled, soft-capped scores; masked entries -inf
      .attn.hook_pattern       [B, H, T, T]  attention weights (= attention_maps)
      .attn.hook_z             [B, T, H, K]  each head's weighted values, before wo
      .hook_attn_out           [B, T, D]     what attention adds to the stream (after a sandwich norm)
      .hook_resid_mid          [B, T, D]     the stream between the halves (not with parallel_residual;
                                             after ln1 for post-norm)
      .ln2.hook_normalized     [B, T, D]     what the MLP reads (pre-norm / sandwich only)
      .mlp.hook_pre            [B, T, F]     the activation's input (the gate's, when gated)
      .mlp.hook_pre_linear     [B, T, F]     x W_in (swiglu / geglu only)
      .mlp.hook_post           [B, T, F]     after the activation (times the gate)
      .hook_mlp_out            [B, T, D]     what the MLP adds to the stream
      .hook_resid_post         [B, T, D]     the stream leaving block l
    ln_final.hook_normalized   [B, T, D]     the final norm's output (pre-norm / sandwich only)

Views of the cache (module ``activations``): :func:`attention_maps` (every ``hook_pattern``,
``[B, L, H, T, T]``) and :func:`capture` (the residual stream, each branch's output, the
patterns and the logit lens, stacked over layers).

On top: :func:`patch_activations`, :func:`attribution_patching`, :func:`ablate_heads`,
:func:`residual_decomposition`, :func:`direct_logit_attribution` (module ``experiments``);
what each head does (module ``heads``): the detectors :func:`detect_heads` / :func:`head_scores`
(previous-token, first-token, duplicate-token, induction), :func:`head_statistics` (entropy,
offset) and :func:`name_heads` / :func:`describe_heads`. Figures for each:
``jaxformer.viz.plots.patching_heatmap``, ``logit_attribution``, ``head_detector_scores``.

In a notebook, models, parameter trees and caches render through ``treescope`` (a Flax
dependency; ``treescope.basic_interactive_setup()`` once): a cache as a dict keyed by hook
name, or folded by layer with :func:`nested`.
"""
from jaxformer.interp.activations import attention_maps, capture
from jaxformer.interp.heads import (KINDS, describe_heads, detect_heads, detector_targets, head_scores,
                                    head_statistics, name_heads)
from jaxformer.interp.hooks import (HookError, hook_names, hook_shapes, nested, run_with_cache, run_with_cache_fn,
                                    run_with_hooks, select_names, stack_layers)
from jaxformer.interp.patching import (ablate_heads, attribution_patching, direct_logit_attribution,
                                       logit_difference, patch_activations, residual_decomposition)

__all__ = ["hook_names", "hook_shapes", "select_names", "run_with_cache", "run_with_cache_fn",
           "run_with_hooks", "stack_layers", "HookError", "patch_activations", "attribution_patching",
           "ablate_heads", "residual_decomposition", "direct_logit_attribution", "logit_difference",
           "KINDS", "detect_heads", "detector_targets", "head_scores", "name_heads", "nested",
           "attention_maps", "capture", "head_statistics", "describe_heads"]
