"""Requantizer: int32 -> int8 with a per-channel int32 multiplier and right shift.

This is the one definition of requantization in fmforge. The GEMM engine's output stage, the
standalone requantizer unit and the compiler's quantization pass all use it.

Integer semantics (bit-exact, what the hardware does)::

    p = x * mult                      # exact: int32 x int32 -> int64, |p| <= 2**62
    if shift == 0:
        r = p
    else:                             # round half up (toward +inf), no 2**63 overflow:
        r = ((p >> (shift - 1)) + 1) >> 1
    y = clamp(r, -128, 127)           # saturate to int8

``>>`` is an arithmetic (flooring) shift. ``mult`` is any int32; ``shift`` is in [0, 63].
The real scale the pair represents is ``mult / 2**shift``.

Float twin: ``clamp(round_half_up(x * scale), -128, 127)`` with ``scale = mult / 2**shift``
evaluated in float64. Error bound: when ``(mult, shift)`` comes from
:func:`quantize_multiplier` for a scale ``s``, the integer result differs from
``clamp(round(x * s))`` by at most 1 LSB (the multiplier carries 31 significant bits, so the
pre-rounding value is off by less than ``|x| * s * 2**-30`` which is below 1 for |x*s| < 2**30,
and a value that lands on the other side of a rounding boundary moves the result by one).
"""

from __future__ import annotations

import math

import torch

from golden.errors import UserValueError

__all__ = [
    "INT8_MIN",
    "INT8_MAX",
    "INT32_MIN",
    "INT32_MAX",
    "SHIFT_MAX",
    "round_shift_right",
    "saturate",
    "requantize",
    "requantize_float",
    "quantize_multiplier",
]

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
SHIFT_MAX = 63


def round_shift_right(p: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Divide int64 ``p`` by ``2**shift`` rounding half up; ``shift`` broadcasts, in [0, 63].

    Computed as ``((p >> (shift - 1)) + 1) >> 1`` for ``shift > 0`` so that no intermediate
    exceeds int64; ``shift == 0`` returns ``p`` unchanged.
    """
    p = p.to(torch.int64)
    shift = torch.as_tensor(shift, dtype=torch.int64)
    sm1 = torch.clamp(shift - 1, min=0)
    rounded = ((p >> sm1) + 1) >> 1
    return torch.where(shift == 0, p, rounded)


def saturate(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Clamp an integer tensor to [lo, hi] (saturation, never wrap-around)."""
    return torch.clamp(x.to(torch.int64), lo, hi)


def _check_params(mult: torch.Tensor, shift: torch.Tensor) -> None:
    if mult.numel() and (int(mult.min()) < INT32_MIN or int(mult.max()) > INT32_MAX):
        raise UserValueError("requant multiplier must be an int32 value in [-2**31, 2**31-1]")
    if shift.numel() and (int(shift.min()) < 0 or int(shift.max()) > SHIFT_MAX):
        raise UserValueError(f"requant shift must be in [0, {SHIFT_MAX}], not {shift.tolist()}")


def requantize(x: torch.Tensor, mult: torch.Tensor | int, shift: torch.Tensor | int) -> torch.Tensor:
    """Bit-exact requantization of int32 ``x`` to int8 (returned as int64 values in [-128, 127]).

    ``mult`` and ``shift`` broadcast against ``x`` (per-channel: shape ``[N]`` for an ``[..., N]``
    input). ``x`` must hold int32 values; they are not saturated here (see
    :func:`golden.gemm.gemm_int` for where int32 saturation happens).
    """
    x = torch.as_tensor(x).to(torch.int64)
    mult = torch.as_tensor(mult, dtype=torch.int64)
    shift = torch.as_tensor(shift, dtype=torch.int64)
    _check_params(mult, shift)
    if x.numel() and (int(x.min()) < INT32_MIN or int(x.max()) > INT32_MAX):
        raise UserValueError("requantize input must hold int32 values")
    return saturate(round_shift_right(x * mult, shift), INT8_MIN, INT8_MAX)


def requantize_float(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Float twin: ``clamp(floor(x * scale + 0.5), -128, 127)`` in float64."""
    y = torch.floor(torch.as_tensor(x, dtype=torch.float64) * torch.as_tensor(scale, dtype=torch.float64) + 0.5)
    return torch.clamp(y, INT8_MIN, INT8_MAX)


def quantize_multiplier(scale: float) -> tuple[int, int]:
    """Represent a positive real ``scale`` as ``mult / 2**shift`` with ``mult`` in [2**30, 2**31).

    Raises ``ValueError`` for a scale that is not positive and finite or that needs a shift
    outside [0, 63] (scales >= 2**31 or below 2**-33).
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise UserValueError(f"requant scale must be a positive finite number, not {scale!r}")
    mant, exp = math.frexp(scale)  # scale = mant * 2**exp, mant in [0.5, 1)
    mult = round(mant * 2**31)
    shift = 31 - exp
    if mult == 2**31:  # rounding carried into the next power of two
        mult //= 2
        shift -= 1
    if not 0 <= shift <= SHIFT_MAX:
        raise UserValueError(f"requant scale {scale!r} needs shift {shift}, outside [0, {SHIFT_MAX}]")
    return mult, shift
