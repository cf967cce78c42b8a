"""Inference: sampling filters, generation with a KV cache, scoring."""
