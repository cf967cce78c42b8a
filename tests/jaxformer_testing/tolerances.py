"""Numerical tolerances of the test suite, per pair of dtypes, in one place.

Every test runs with ``jax_default_matmul_precision="highest"`` (set by ``conftest.py``; a
test opts out with ``@pytest.mark.default_precision``), so a float32 matmul or convolution
is computed in float32 on every backend: no TF32 passes on NVIDIA GPUs (10-bit mantissa,
relative error ~1e-3), no single bf16 pass on TPUs (8-bit mantissa, ~4e-3). The tolerances
below are for that setting; they would not hold at the platforms' default precision.

Each constant is a ``dict(rtol=..., atol=...)`` for ``np.testing.assert_allclose(a, b, **TOL)``
(scalars where a test compares one number) and states which two computations it separates.
"""

#: float32 computation vs a float64 (NumPy or ``jax.enable_x64``) reference of the same math,
#: values of order 1: float32 has a 24-bit mantissa (eps 6e-8); sums over a few hundred terms
#: (a d_model or vocabulary wide dot product, a softmax normaliser) lose up to ~2 decimal digits.
F32_VS_F64 = dict(rtol=1e-5, atol=1e-5)

#: two float32 computations of the same value that differ only in the order of operations
#: (jit vs eager, vmap vs loop, scan vs unrolled layers, cached vs uncached decoding).
F32_VS_F32 = dict(rtol=1e-6, atol=1e-6)

#: float64 computation vs float64 reference (a fused kernel vs the textbook, both under x64).
F64_VS_F64 = dict(rtol=1e-10, atol=1e-12)

#: bfloat16 compute vs float32 compute of the same model and weights: bfloat16 keeps an 8-bit
#: mantissa (one rounding costs up to 2**-9 = 2e-3 relatively); a loss over a small model
#: agrees to about 1% of its value.
BF16_VS_F32_LOSS_REL = 0.02

#: bf16 mixed precision (float32 master weights) vs float32, a whole training curve (docs/training.md:
#: "every step within 0.03 nats, the 10-step means within 0.01").
BF16_VS_F32_CURVE_STEP = 0.03
BF16_VS_F32_CURVE_MEAN = 0.01
