"""Golden integer SiLU (``x * sigmoid(x)``, Llama/Mistral/Qwen2 SwiGLU gates): int8 -> int8.

An int8 input has 256 values, so the unit is a 256-entry table written at compile time
(:func:`silu_params`) and read once per element (:func:`silu_int`): no arithmetic at run time,
one element per cycle, any input and output scale.

Number formats: input ``q`` int8 (real ``q * in_scale``); output int8 (real ``out * out_scale``).

Compile time, for every ``q`` in -128..127 (float64)::

    T[q + 128] = sat8(floor(silu(q * in_scale) / out_scale + 0.5))      # round half up

Run time: ``out = T[q + 128]``.

Error bound: the output is the float twin :func:`silu_float` of the dequantized input rounded
to the output grid, so within 0.5 LSB of it where it does not saturate (``silu(x) >= -0.2785``
is never below ``-128 * out_scale`` for ``out_scale >= 0.0022``); measured by
``tests/golden/test_silu_rmsnorm.py`` over every int8 input at several scales and on the gate
pre-activations of the zoo's ``llama-tiny``.

Hardware: ``hw.silu.Silu`` holds the table in a ROM (``docs/nonlinear.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from golden.errors import UserValueError
from golden.requant import INT8_MAX, INT8_MIN

__all__ = ["SiluParams", "silu_float", "silu_int", "silu_params"]


@dataclass(frozen=True, eq=False)
class SiluParams:
    """The unit's table: ``table[q + 128]`` is the int8 output for input ``q`` (int64 [256])."""

    table: torch.Tensor


def _positive(name: str, v: float) -> float:
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v > 0):
        raise UserValueError(f"silu {name} must be a positive finite number, not {v!r}")
    return float(v)


def silu_params(in_scale: float, out_scale: float) -> SiluParams:
    """The table for ``in_scale`` and ``out_scale`` (see the module docstring)."""
    si = _positive("in_scale", in_scale)
    so = _positive("out_scale", out_scale)
    q = torch.arange(INT8_MIN, INT8_MAX + 1, dtype=torch.float64)
    t = torch.floor(silu_float(q * si) / so + 0.5)
    return SiluParams(torch.clamp(t, INT8_MIN, INT8_MAX).to(torch.int64))


def silu_int(q: torch.Tensor, params: SiluParams) -> torch.Tensor:
    """Bit-exact integer SiLU of int8 ``q`` (any shape); int8 values as int64."""
    q = torch.as_tensor(q)
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise UserValueError(f"silu input must be an integer tensor, not {q.dtype}")
    q = q.to(torch.int64)
    if q.numel() and (int(q.min()) < INT8_MIN or int(q.max()) > INT8_MAX):
        raise UserValueError("silu input must hold int8 values")
    return params.table[q - INT8_MIN]


def silu_float(x: torch.Tensor) -> torch.Tensor:
    """Float twin: ``x * sigmoid(x)`` in float64."""
    x = torch.as_tensor(x, dtype=torch.float64)
    return x * torch.sigmoid(x)
