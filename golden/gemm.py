"""Golden GEMM: the bit-exact reference for the systolic GEMM engine (``hw.gemm``) and its float twin.

Integer semantics::

    acc[m, n] = sum_k a[m, k] * b[k, n]      # int8 x int8 products, exact sum (int64)
    y[m, n]   = sat32(acc[m, n] + bias[n])   # bias optional (0 when absent); sat32 clamps to int32
    out       = y                            # int32 output, or
    out       = requantize(y, mult, shift)   # int8 output (golden.requant), per output channel n

For K <= 2**16 the accumulator never leaves int32 (|a*b| <= 2**14), so the hardware's 32-bit
accumulators never wrap; the engine's ``max_k`` is limited to 2**16 for that reason.

The float twin computes ``a @ b + bias`` in float64 (and ``requantize_float`` with the real
scale ``mult / 2**shift``). On integer-valued inputs the int32 path equals the float twin exactly
(float64 represents every sum below 2**53); the int8 path is within 1 LSB of
``requantize_float`` (see ``golden.requant``).
"""

from __future__ import annotations

import torch

from golden.errors import UserValueError
from golden.requant import INT32_MAX, INT32_MIN, requantize, requantize_float, saturate

__all__ = ["gemm_int", "gemm_float", "check_int8"]


def check_int8(name: str, t: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as int64, raising ``ValueError`` if any value lies outside int8."""
    t = torch.as_tensor(t)
    if t.is_floating_point():
        raise UserValueError(f"{name} must be an integer tensor, not {t.dtype}")
    t = t.to(torch.int64)
    if t.numel() and (int(t.min()) < -128 or int(t.max()) > 127):
        raise UserValueError(f"{name} holds values outside int8 [-128, 127]")
    return t


def gemm_int(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    mult: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bit-exact ``a[M,K] @ b[K,N]`` with optional int32 bias and optional requantization.

    Returns int64 tensor ``[M, N]`` holding int32 values, or int8 values when ``mult`` and
    ``shift`` (per output channel, shape ``[N]``) are given.
    """
    a = check_int8("a", a)
    b = check_int8("b", b)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise UserValueError(f"gemm needs a[M,K] and b[K,N], got {tuple(a.shape)} and {tuple(b.shape)}")
    acc = a @ b
    if bias is not None:
        bias = torch.as_tensor(bias).to(torch.int64)
        if bias.shape != (b.shape[1],):
            raise UserValueError(f"bias must have shape ({b.shape[1]},), not {tuple(bias.shape)}")
        acc = acc + bias
    y = saturate(acc, INT32_MIN, INT32_MAX)
    if (mult is None) != (shift is None):
        raise UserValueError("requantization needs both mult and shift")
    if mult is not None:
        y = requantize(y, mult, shift)
    return y


def gemm_float(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float twin of :func:`gemm_int` in float64; ``scale`` (per channel) applies the requantizer."""
    y = a.to(torch.float64) @ b.to(torch.float64)
    if bias is not None:
        y = y + torch.as_tensor(bias, dtype=torch.float64)
    if scale is not None:
        y = requantize_float(y, scale)
    return y
