"""Golden integer softmax (``hw.softmax``): int8/int32 logits -> uint8 probabilities, scale 1/256.

Number formats
--------------
* input ``x``: integer logits (int8 or int32 values, any leading shape, softmax over the last
  dimension of length ``1 <= L <= 2**16``); the real logit is ``x * scale``.
* output ``p``: uint8 probabilities (returned as int64 in [0, 255]); the real probability is
  ``p / 256``. A probability that rounds to 256 (1.0) **saturates to 255**: a one-hot or
  length-1 row gives 255, not 256.
* optional ``mask`` (bool, same shape as ``x``): ``True`` = the position takes part (the
  ``torch.nn.functional.scaled_dot_product_attention`` convention, and the sparse filters'
  candidate mask). ``False`` positions are left out of the row max and of the sum and output
  0. A fully masked row outputs all zeros (it has no probability mass to share).

Compile time: :func:`softmax_params` (real scale -> integer constants)
---------------------------------------------------------------------
``e^x = 2^(x * log2(e))``. The real factor ``scale * log2(e)`` becomes a 16-bit multiplier and a
shift, ``mult / 2**shift`` with ``mult`` in [2**15, 2**16) (round half up of the float64 value),
and ``shift`` in [``frac_bits``, 62]. The 2^-f table is fixed (it does not depend on the scale)::

    TABLE[f] = floor(2**15 * 2**(-f / 2**F) + 0.5)   for f in 0 .. 2**F - 1   (F = frac_bits)

so ``TABLE[0] = 2**15`` and every entry lies in (2**14, 2**15] (16-bit unsigned ROM).

Run time: :func:`softmax_int` (what the hardware computes, per row)
-----------------------------------------------------------------
Pass 1 (max)::

    xmax = max over kept positions of x            # init to the most negative int32

Pass 2 (exp and sum), per kept position; ``d = xmax - x >= 0`` (33-bit unsigned for int32 x)::

    u = round_half_up(d * mult / 2**(shift - F))   # u in units of 2**-F: d*scale*log2(e)
    n = min(u >> F, 31)                            # integer part (5 bits, saturated)
    f = u & (2**F - 1)                             # fraction, the table index
    e = round_half_up(TABLE[f] / 2**n)             # = requant.round_shift_right(TABLE[f], n)
    sum = sum + e                                  # e in [0, 2**15]; sum < 2**32

Masked positions get ``e = 0``. The row max contributes ``e = 2**15`` exactly, so ``sum >= 2**15``
for every row with a kept position. ``n >= 17`` always gives ``e = 0``; equivalently, the
hardware may clamp ``d`` to ``params.d_zero`` (the smallest ``d`` with ``n >= 17``) before the
multiply, which keeps the multiplier at ``bits(d_zero) x 16`` bits with identical results.

Once per row (reciprocal, exact floor; restoring division, ``golden.intmath``)::

    r = floor(2**39 / sum)                         # sum >= 2**15 -> r <= 2**24

Pass 3 (normalize), per position::

    p = min(round_half_up(e * r / 2**31), 255)     # e*r < 2**40; 0 for masked positions

A fully masked row has ``sum = 0``; the divider then returns ``2**40 - 1`` (see
``golden.intmath.div_floor``) and every ``e`` is 0, so every output is 0 without a special case.
Pass 3 needs ``e`` again: the hardware either buffers the row's ``e`` values (16 bits each) or
recomputes them from ``x`` and ``xmax`` (this golden model is the same either way).

Why base 2 with a table
-----------------------
I-BERT's second-order i-exp (Kim et al., "I-BERT: Integer-only BERT Quantization", ICML 2021)
needs a ``floor(q / x0_int)`` division per element (the number of ln2's) and carries its
polynomial error (about 1e-3 relative); the base-2 form needs one constant multiply, a shift and
a 256-entry table (as in ELSA's base-2 + fraction LUT, Ham et al., ISCA 2021), and its error is
set by ``F``: rounding ``u`` to ``2**-F`` changes ``e`` by at most ``ln2 * 2**-(F+1)`` relative
(0.14 % for F = 8), the 15-bit table by at most ``2**-15`` relative.

Error bound (float twin :func:`softmax_float`: float64 softmax of ``x * scale`` with masked
positions at -inf and a fully masked row all 0; compared with the twin's probabilities rounded
to the same 1/256 grid, ``prob_to_uint8``), ``F = 8``, measured by ``tests/golden/test_softmax.py``
and ``benchmarks/nonlinear_accuracy.py``:

* ``|p_int - prob_to_uint8(p_float)| <= 1`` LSB (1/256) on every element of random rows of
  length 1..1024 (int8 and int32 inputs, scales 1/128 .. 1/4) and of real MiniLM attention rows;
  mean below 0.02 LSB on random and real data.
* ``|p_int / 256 - p_float| <= 1/256 * 1.0``, i.e. the result is within 1 LSB of the exact real
  probability (0.5 LSB output rounding, plus the 255 saturation which costs at most 1 LSB,
  plus the exp error which is below 0.4 LSB at any probability).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from golden.errors import UserValueError
from golden.intmath import reciprocal_floor
from golden.requant import INT32_MAX, INT32_MIN, round_shift_right

__all__ = [
    "EXP_ONE_BITS",
    "MULT_BITS",
    "RECIP_BITS",
    "OUT_BITS",
    "N_SAT",
    "MAX_ROW",
    "DEFAULT_FRAC_BITS",
    "SoftmaxParams",
    "exp2_table",
    "softmax_params",
    "softmax_exp_int",
    "softmax_int",
    "softmax_float",
    "prob_to_uint8",
]

EXP_ONE_BITS = 15
"""``e`` of the row max is ``2**EXP_ONE_BITS``; table entries are 16-bit unsigned."""
MULT_BITS = 16
"""Width of the unsigned ``scale * log2(e)`` multiplier: ``mult`` in [2**15, 2**16)."""
RECIP_BITS = 39
"""``r = floor(2**RECIP_BITS / sum)``."""
OUT_BITS = 8
"""Output probability bits: scale ``1 / 2**OUT_BITS``; 255 is the largest output."""
N_SAT = 31
"""The integer part ``n`` of ``u`` saturates at this value (5 bits)."""
MAX_ROW = 2**16
"""Longest supported row: keeps ``sum <= 2**31`` (32-bit accumulator)."""
DEFAULT_FRAC_BITS = 8
"""Default ``F``: fraction bits of ``u`` and log2 of the table size (256 entries)."""

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class SoftmaxParams:
    """Integer constants of one softmax instance (see the module docstring for their use).

    Attributes: ``mult`` (16-bit unsigned), ``shift`` (in [frac_bits, 62]): ``mult / 2**shift``
    ~= ``scale * log2(e)``; ``frac_bits`` (F); ``table`` (``2**F`` entries of 16 bits);
    ``d_zero`` (the smallest ``xmax - x`` whose ``e`` is 0 through ``n >= 17``); ``scale`` (the
    real input scale, for reference only: the integer path never reads it).
    """

    mult: int
    shift: int
    frac_bits: int
    table: tuple[int, ...]
    d_zero: int
    scale: float


def exp2_table(frac_bits: int = DEFAULT_FRAC_BITS) -> tuple[int, ...]:
    """The 2^-f ROM: ``floor(2**15 * 2**(-f / 2**frac_bits) + 0.5)`` for ``f < 2**frac_bits``.

    Computed once at build time in float64 (each value is far from a rounding tie, so the float
    evaluation is exact in effect); the tests pin entries and a checksum.
    """
    if not (isinstance(frac_bits, int) and 1 <= frac_bits <= 10):
        raise UserValueError(f"softmax frac_bits must be an integer in [1, 10], not {frac_bits!r}")
    size = 1 << frac_bits
    return tuple(math.floor(2.0**EXP_ONE_BITS * 2.0 ** (-f / size) + 0.5) for f in range(size))


def softmax_params(scale: float, frac_bits: int = DEFAULT_FRAC_BITS) -> SoftmaxParams:
    """Compile a real logit scale (real logit = ``x * scale``) into :class:`SoftmaxParams`.

    Raises ``ValueError`` for a scale that is not positive and finite, or outside the range the
    16-bit multiplier can hold: ``scale * log2(e)`` must lie in [2**-46, 2**(16 - frac_bits)).
    """
    table = exp2_table(frac_bits)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise UserValueError(f"softmax scale must be a positive finite number, not {scale!r}")
    real = float(scale) * _LOG2E
    mant, exp = math.frexp(real)  # real = mant * 2**exp, mant in [0.5, 1)
    mult = math.floor(mant * 2**MULT_BITS + 0.5)
    shift = MULT_BITS - exp
    if mult == 2**MULT_BITS:
        mult //= 2
        shift -= 1
    if not frac_bits <= shift <= 62:
        raise UserValueError(
            f"softmax scale {scale!r} needs multiplier shift {shift}, outside [{frac_bits}, 62]: "
            f"scale * log2(e) must lie in [2**-46, 2**{MULT_BITS - frac_bits})"
        )
    s = shift - frac_bits
    limit = 17 << frac_bits  # smallest u with n >= 17
    # round_shift_right(v*mult, s) >= limit  <=>  v*mult >= limit*2**s - 2**(s-1)  (s > 0)
    need = limit if s == 0 else (limit << s) - (1 << (s - 1))
    d_zero = -(-need // mult)
    return SoftmaxParams(mult, shift, frac_bits, table, d_zero, float(scale))


def _check_logits(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise UserValueError(f"softmax input must be an integer tensor, not {x.dtype}")
    x = x.to(torch.int64)
    if x.dim() == 0:
        raise UserValueError("softmax input needs at least one dimension (the row)")
    if not 1 <= x.shape[-1] <= MAX_ROW:
        raise UserValueError(f"softmax row length must be in [1, {MAX_ROW}], not {x.shape[-1]}")
    if x.numel() and (int(x.min()) < INT32_MIN or int(x.max()) > INT32_MAX):
        raise UserValueError("softmax input must hold int8 or int32 values")
    return x


def _check_mask(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(x, dtype=torch.bool)
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise UserValueError(f"softmax mask must be a bool tensor, not {mask.dtype}")
    if mask.shape != x.shape:
        raise UserValueError(
            f"softmax mask shape {tuple(mask.shape)} must equal input shape {tuple(x.shape)}"
        )
    return mask


def softmax_exp_int(d: torch.Tensor, params: SoftmaxParams) -> torch.Tensor:
    """Pass 2's exponential: ``e ~= 2**15 * exp(-d * scale)`` for ``d = xmax - x`` in [0, 2**32).

    Returns int64 values in [0, 2**15]; ``d = 0`` gives exactly ``2**15``.
    """
    d = torch.as_tensor(d).to(torch.int64)
    if d.numel() and (int(d.min()) < 0 or int(d.max()) >= 2**32):
        raise UserValueError("softmax exp input d = xmax - x must lie in [0, 2**32)")
    f_bits = params.frac_bits
    u = round_shift_right(d * params.mult, params.shift - f_bits)
    n = torch.clamp(u >> f_bits, max=N_SAT)
    f = u & ((1 << f_bits) - 1)
    table = torch.tensor(params.table, dtype=torch.int64)
    return round_shift_right(table[f], n)


def softmax_int(
    x: torch.Tensor,
    params: SoftmaxParams | float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bit-exact integer softmax over the last dimension (see the module docstring).

    ``params`` is a :class:`SoftmaxParams` or a real scale (compiled with the default
    ``frac_bits``). Returns int64 uint8 values (probability ``p / 256``) with ``x``'s shape.
    """
    if not isinstance(params, SoftmaxParams):
        params = softmax_params(params)
    x = _check_logits(x)
    keep = _check_mask(mask, x)
    xmax = torch.where(keep, x, INT32_MIN).amax(dim=-1, keepdim=True)
    d = torch.where(keep, xmax - x, 0)
    e = torch.where(keep, softmax_exp_int(d, params), 0)
    total = e.sum(dim=-1, keepdim=True)
    r = reciprocal_floor(total, RECIP_BITS)
    p = round_shift_right(e * r, RECIP_BITS - OUT_BITS)
    return torch.clamp(p, max=(1 << OUT_BITS) - 1)


def softmax_float(x: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Float twin: float64 softmax of ``x * scale`` over the last dimension.

    Masked (``False``) positions are -inf before the softmax and 0 after it; a fully masked row
    is all 0 (not NaN), matching :func:`softmax_int`.
    """
    xf = torch.as_tensor(x).to(torch.float64) * float(scale)
    if mask is None:
        return torch.softmax(xf, dim=-1)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    xf = torch.where(mask, xf, -math.inf)
    p = torch.softmax(xf, dim=-1)
    return torch.where(mask, p, 0.0).nan_to_num(0.0)


def prob_to_uint8(p: torch.Tensor) -> torch.Tensor:
    """Round real probabilities to the output grid: ``min(floor(256 * p + 0.5), 255)`` as int64."""
    q = torch.floor(torch.as_tensor(p, dtype=torch.float64) * (1 << OUT_BITS) + 0.5)
    return torch.clamp(q, 0, (1 << OUT_BITS) - 1).to(torch.int64)
