"""Golden integer GELU (I-BERT i-GELU) and ReLU (``hw.gelu``): int8 -> int8 with real scales.

GELU(x) = x/2 * (1 + erf(x / sqrt(2))). I-BERT (Kim, Gholami, Yao, Mahoney, Keutzer, "I-BERT:
Integer-only BERT Quantization", ICML 2021, eq. for i-erf) approximates, for ``v >= 0``::

    erf(v) ~= L(v) = 1 + a * (min(v, -b) + b)**2,    a = -0.2888,  b = -1.769,   L(-v) = -L(v)

so with ``t(v) = B - min(v, B)`` (``B = 1.769``) and ``A = 0.2888``::

    1 + L(v)  = 2 - A * t**2      for x >= 0
    1 + L(-v) =     A * t**2      for x <  0           (v = |x| / sqrt(2))

Number formats: input ``q`` int8 (real ``q * in_scale``); output int8 (real ``out * out_scale``).

Compile time: :func:`gelu_params`
---------------------------------
``Se = in_scale / sqrt(2)`` is the scale of ``v = |q| * Se``. A fraction shift ``fs`` (0..16)
adds fraction bits so that the constants keep about 22 significant bits whatever the scale::

    K  = floor(2**(2*fs) / (A * Se**2) + 0.5)     # "1" in units of A*(Se/2**fs)**2; K < 2**22
    Bq = floor(B * 2**fs / Se + 0.5)               # B in units of Se/2**fs;  Bq**2 ~= 0.904 K
    fs = the largest value in [0, 16] with 2**(2*fs) / (A * Se**2) < 2**22
    (mult, shift) = golden.requant.quantize_multiplier(in_scale / (2 * K * out_scale))

``K < 2**23`` is required (it holds for ``in_scale >= 9.1e-4``); a finer input scale raises.

Run time: :func:`gelu_int`, per element (no row state, one element per cycle)::

    v   = |q| << fs                                  # |q| <= 128; v < 2**(8 + fs)
    t   = Bq - min(v, Bq)                            # 0 <= t <= Bq < 2**12
    h   = 2*K - t*t   if q >= 0   else   t*t         # 0 <= h <= 2K < 2**24 (unsigned)
    g   = q * h                                      # |g| < 2**31: int32
    out = golden.requant.requantize(g, mult, shift)  # round half up, saturate to int8

``g * in_scale / (2K)`` is the real I-BERT GELU value: ``q * in_scale / 2 * h / K``. For
``q >= 0`` and ``|x| >= 1.769*sqrt(2)`` (``t = 0``) the result is exactly ``x`` requantized.

ReLU: :func:`relu_int` is ``max(q, 0)``, optionally requantized to a different output scale with
:func:`relu_params` (``quantize_multiplier(in_scale / out_scale)``).

Error bound. The float twin is the exact GELU, :func:`gelu_float` (``erf``; what BERT-style
models such as all-MiniLM-L6-v2 use). I-BERT's polynomial :func:`gelu_poly_float` differs from it
by at most 0.0182 in real units (largest at ``x = -2.35``; measured by the tests on a dense
grid; the polynomial also jumps from 0 to ``0.048 * x`` just above 0, ``1 + L(0+) = 1.096``), so the integer result is within ``0.5 + 0.0184 / out_scale + 0.02`` LSB of the exact GELU
(0.5 for the output rounding, 0.02 for the constants' rounding). Measured by
``tests/golden/test_gelu.py`` (random int8, scales 0.01..0.1) and
``benchmarks/nonlinear_accuracy.py`` (real MiniLM FFN pre-activations): within 1 LSB of the
exact GELU quantized with the same scale whenever ``out_scale >= 0.02`` (GELU outputs up to
about 2.5); against the integer model's own float polynomial twin the difference is at most 1 LSB
everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from golden.errors import UserValueError
from golden.gemm import check_int8
from golden.requant import quantize_multiplier, requantize, requantize_float

__all__ = [
    "IBERT_A",
    "IBERT_B",
    "K_BITS",
    "MAX_IN_SCALE",
    "GeluParams",
    "gelu_params",
    "gelu_int",
    "gelu_float",
    "gelu_poly_float",
    "relu_params",
    "relu_int",
    "relu_float",
]

IBERT_A = 0.2888
"""|a| of I-BERT's erf polynomial (a = -0.2888)."""
IBERT_B = 1.769
"""|b| of I-BERT's erf polynomial (b = -1.769): erf saturates to 1 beyond it."""
K_BITS = 22
"""``K`` is normalized below ``2**K_BITS`` (and must be below ``2**23``)."""
_FS_MAX = 16
#: the coarsest input scale compiled (K keeps about 15 bits there)
MAX_IN_SCALE = 1000.0
_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class GeluParams:
    """Integer constants of one GELU instance: ``fs``, ``k`` (K), ``b`` (Bq), ``mult``, ``shift``.

    ``in_scale`` and ``out_scale`` are kept for reference; the integer path never reads them.
    """

    fs: int
    k: int
    b: int
    mult: int
    shift: int
    in_scale: float
    out_scale: float


def _positive(name: str, v: float) -> float:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise UserValueError(f"{name} must be a positive finite number, not {v!r}")
    return float(v)


def gelu_params(in_scale: float, out_scale: float) -> GeluParams:
    """Compile real input/output scales into :class:`GeluParams` (see the module docstring)."""
    in_scale = _positive("gelu in_scale", in_scale)
    out_scale = _positive("gelu out_scale", out_scale)
    if in_scale > MAX_IN_SCALE:  # K would round towards 0 (and to 0 above ~2.4e5)
        raise UserValueError(f"gelu in_scale {in_scale!r} is too coarse: it must lie in "
                             f"[9.1e-4, {MAX_IN_SCALE:g}]")
    se = in_scale / _SQRT2
    base = 1.0 / (IBERT_A * se * se)
    fs = 0
    while fs < _FS_MAX and base * 4.0 ** (fs + 1) < 2.0**K_BITS:
        fs += 1
    k = math.floor(base * 4.0**fs + 0.5)
    if k >= 2**23:
        raise UserValueError(
            f"gelu in_scale {in_scale!r} is too fine: K = {k} must be below 2**23 (in_scale >= 9.1e-4)"
        )
    b = math.floor(IBERT_B * 2.0**fs / se + 0.5)
    mult, shift = quantize_multiplier(in_scale / (2.0 * k * out_scale))
    return GeluParams(fs, k, b, mult, shift, in_scale, out_scale)


def gelu_int(q: torch.Tensor, params: GeluParams) -> torch.Tensor:
    """Bit-exact I-BERT integer GELU of int8 ``q``; returns int8 values as int64."""
    q = check_int8("gelu input", q)
    v = q.abs() << params.fs
    t = params.b - torch.clamp(v, max=params.b)
    t2 = t * t
    h = torch.where(q >= 0, 2 * params.k - t2, t2)
    return requantize(q * h, params.mult, params.shift)


def gelu_float(x: torch.Tensor) -> torch.Tensor:
    """Float twin: exact GELU ``x/2 * (1 + erf(x/sqrt(2)))`` in float64 on the real input."""
    xf = torch.as_tensor(x, dtype=torch.float64)
    return torch.nn.functional.gelu(xf)


def gelu_poly_float(x: torch.Tensor) -> torch.Tensor:
    """I-BERT's polynomial GELU in float64 (the function :func:`gelu_int` quantizes)."""
    xf = torch.as_tensor(x, dtype=torch.float64)
    t = IBERT_B - torch.clamp(xf.abs() / _SQRT2, max=IBERT_B)
    erf = torch.sign(xf) * (1.0 - IBERT_A * t * t)
    return xf / 2.0 * (1.0 + erf)


def relu_params(in_scale: float, out_scale: float) -> tuple[int, int]:
    """``(mult, shift)`` of the requantizer for a ReLU from ``in_scale`` to ``out_scale``."""
    in_scale = _positive("relu in_scale", in_scale)
    out_scale = _positive("relu out_scale", out_scale)
    return quantize_multiplier(in_scale / out_scale)


def relu_int(q: torch.Tensor, mult: int | None = None, shift: int | None = None) -> torch.Tensor:
    """Integer ReLU ``max(q, 0)`` of int8 ``q``; with ``mult``/``shift``, requantized to int8."""
    q = check_int8("relu input", q)
    y = torch.clamp(q, min=0)
    if (mult is None) != (shift is None):
        raise UserValueError("relu requantization needs both mult and shift")
    if mult is not None:
        y = requantize(y, mult, shift)
    return y


def relu_float(x: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Float twin of :func:`relu_int`: ``max(x, 0)`` in float64, then ``requantize_float`` by ``scale``."""
    y = torch.clamp(torch.as_tensor(x, dtype=torch.float64), min=0.0)
    return y if scale is None else requantize_float(y, scale)
