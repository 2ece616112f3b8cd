"""Golden integer RMSNorm (Llama, Mistral, Qwen2, T5): int8 row -> int8 row, per-channel gamma.

``RMSNorm(x) = x / sqrt(mean(x**2) + eps) * gamma`` over the last dimension (no mean
subtraction, no beta). The float twin is :func:`rmsnorm_float` (float64, ``torch.rms_norm``).

Number formats: input ``x`` int8 (int64 in [-128, 127]), real value ``x * in_scale``, row length
``1 <= N <= 4096``; output int8, real value ``out * out_scale``; gamma a 16-bit signed
multiplier ``G[i]`` with a common shift, exactly as :mod:`golden.layernorm` (whose compile-time
parameters this reuses with ``beta = 0``: :func:`rmsnorm_params`).

Run time (:func:`rmsnorm_int`), per row: the layer norm's datapath with the mean taken out::

    S2 = sum q*q                                      # S2 <= 2**26 for int8 input
    D  = ((N*S2) << 8) + eps_int                      # 256*N*N*(mean(x^2) + eps)/in_scale**2
    k  = (40 - bit_length(D)) >> 1;  D' = D << 2k (or >> -2k)   # D' in [2**38, 2**40)
    s  = isqrt_floor(D');  r = floor(2**40 / s)       # 1/sqrt(D) ~= r * 2**(k - 40)
    c  = N*q                                          # |c| <= 2**19
    y  = round_half_up(c * r / 2**(22 - k))           # x / rms * 2**14
    out = sat8(round_half_up(y * G[i] / 2**out_shift))

Overflow: ``N*S2 <= 2**38``, ``|c * r| < 2**40``, ``|y * G| < 2**35``: int64 throughout.
A row of zeros has ``c = 0``, so its output is 0 whatever ``r`` is.

Error bound (the same arithmetic as the layer norm, whose bound is measured): within 1 LSB of the
float twin's output quantized with the same scale, and within 0.51 LSB of the unrounded float
output; measured by ``tests/golden/test_silu_rmsnorm.py`` on random rows (scales 0.005..0.2,
gamma of both signs, eps 1e-6..1e-2) and on the RMSNorm inputs of the zoo's ``llama-tiny``.

Hardware: ``hw.rmsnorm.RmsNorm`` computes this bit for bit (``docs/nonlinear.md``).
"""

from __future__ import annotations

import torch

from golden.errors import UserValueError
from golden.intmath import bit_length, isqrt_floor, reciprocal_floor
from golden.layernorm import (
    EPS_FRAC_BITS,
    MAX_N,
    RECIP_K,
    SQRT_BITS,
    Y_FRAC,
    LayerNormParams,
    layernorm_params,
)
from golden.requant import INT8_MAX, INT8_MIN, round_shift_right, saturate

__all__ = ["MAX_N", "rmsnorm_float", "rmsnorm_int", "rmsnorm_params"]


def rmsnorm_params(n: int, in_scale: float, gamma: torch.Tensor | float, out_scale: float,
                   eps: float = 1e-6) -> LayerNormParams:
    """Compile real RMSNorm parameters (``gamma`` a length-``n`` vector or a scalar) into the
    layer norm's :class:`golden.layernorm.LayerNormParams` with ``beta = 0``. Raises
    ``ValueError`` naming a bad argument."""
    return layernorm_params(n, in_scale, gamma, 0.0, out_scale, eps)


def rmsnorm_int(x: torch.Tensor, params: LayerNormParams) -> torch.Tensor:
    """Bit-exact integer RMSNorm over the last dimension of int8 ``x``; int8 values as int64."""
    x = torch.as_tensor(x)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise UserValueError(f"rmsnorm input must be an integer tensor, not {x.dtype}")
    x = x.to(torch.int64)
    if x.dim() == 0 or x.shape[-1] != params.n:
        raise UserValueError(
            f"rmsnorm input rows must have length {params.n}, got shape {tuple(x.shape)}")
    if x.numel() and (int(x.min()) < INT8_MIN or int(x.max()) > INT8_MAX):
        raise UserValueError("rmsnorm input must hold int8 values")
    n = params.n
    s2 = (x * x).sum(dim=-1, keepdim=True)
    d = ((n * s2) << EPS_FRAC_BITS) + params.eps_int
    k = (RECIP_K - bit_length(d)) >> 1
    d_norm = torch.where(k >= 0, d << k.clamp(min=0) * 2, d >> (-k).clamp(min=0) * 2)
    r = reciprocal_floor(isqrt_floor(d_norm, 2 * SQRT_BITS), RECIP_K)
    y = round_shift_right(n * x * r, RECIP_K - Y_FRAC - EPS_FRAC_BITS // 2 - k)
    return saturate(round_shift_right(y * params.gamma_int, params.out_shift), INT8_MIN,
                    INT8_MAX)


def rmsnorm_float(x: torch.Tensor, gamma: torch.Tensor | float, eps: float = 1e-6
                  ) -> torch.Tensor:
    """Float twin: float64 RMSNorm of the real input ``x`` (e.g. ``x_int * in_scale``)."""
    xf = torch.as_tensor(x, dtype=torch.float64)
    g = torch.as_tensor(gamma, dtype=torch.float64)
    return xf * torch.rsqrt((xf * xf).mean(-1, keepdim=True) + eps) * g
