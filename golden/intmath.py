"""Shared integer helpers for the nonlinear golden models: leading-one detect, square root, division.

Every function here is integer-only (int64 tensors, elementwise, broadcasting) and is written as
the fixed-step algorithm the hardware runs, so the RTL can copy it loop for loop:

* :func:`bit_length` — leading-one detector: the number of bits of a non-negative value
  (``0 -> 0``, ``1 -> 1``, ``255 -> 8``), as a 6-stage binary search (32, 16, 8, 4, 2, 1).
* :func:`isqrt_floor` — ``floor(sqrt(n))`` by the bit-by-bit (digit-by-digit, "restoring")
  method: one result bit per step, ``bits // 2`` steps for ``0 <= n < 2**bits``; only compare,
  subtract and shift.
* :func:`div_floor` — ``floor(num / den)`` by restoring long division: one quotient bit per step,
  ``num_bits`` steps for ``0 <= num < 2**num_bits``; only shift, compare and subtract. Division by
  zero is *defined* as the value the restoring loop produces, ``2**num_bits - 1`` (every trial
  subtraction succeeds), so the hardware needs no special case.
* :func:`reciprocal_floor` — ``floor(2**k / den)`` = ``div_floor(2**k, den, k + 1)``.

All results are exact: ``isqrt_floor`` equals ``math.isqrt`` and ``div_floor`` equals Python's
``//`` for every allowed input (tests check this on edges and random values). Because the results
are exactly floor(sqrt) and floor(quotient), any hardware algorithm that computes the same exact
value (a restoring, non-restoring or SRT divider; a different square-root recurrence) matches the
golden models; the step counts given here are what the simple restoring forms need.
"""

from __future__ import annotations

import torch

from golden.errors import UserValueError

__all__ = ["bit_length", "isqrt_floor", "div_floor", "reciprocal_floor"]


def _as_int64(name: str, x: torch.Tensor | int) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise UserValueError(f"{name} must be an integer tensor, not {t.dtype}")
    return t.to(torch.int64)


def _check_range(name: str, t: torch.Tensor, bits: int) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= 2**bits):
        raise UserValueError(f"{name} must lie in [0, 2**{bits}), got [{int(t.min())}, {int(t.max())}]")


def bit_length(x: torch.Tensor | int) -> torch.Tensor:
    """Number of significant bits of each non-negative int64 value (``0`` for ``0``).

    Hardware: a leading-one detector; here a 6-step binary search over shifts 32, 16, 8, 4, 2, 1.
    """
    x = _as_int64("x", x)
    _check_range("bit_length input", x, 63)
    n = torch.zeros_like(x)
    for s in (32, 16, 8, 4, 2, 1):
        hi = (x >> s) > 0
        x = torch.where(hi, x >> s, x)
        n = n + torch.where(hi, s, 0)
    return n + (x > 0).to(torch.int64)


def isqrt_floor(n: torch.Tensor | int, bits: int = 62) -> torch.Tensor:
    """``floor(sqrt(n))`` for ``0 <= n < 2**bits`` (``bits`` even, 2..62) in ``bits // 2`` steps.

    The bit-by-bit method (one result bit per step, most significant first)::

        rem = n; root = 0; one = 2**(bits - 2)     # one = the square of the current result bit
        repeat bits // 2 times:
            if rem >= root + one:
                rem  = rem - (root + one)
                root = (root >> 1) + one
            else:
                root = root >> 1
            one = one >> 2
        return root                                 # and rem = n - root**2

    ``root`` never exceeds ``2**(bits - 1)``, so a ``bits``-wide datapath suffices.
    """
    if not (isinstance(bits, int) and 2 <= bits <= 62 and bits % 2 == 0):
        raise UserValueError(f"isqrt bits must be an even integer in [2, 62], not {bits!r}")
    rem = _as_int64("n", n)
    _check_range("isqrt input", rem, bits)
    root = torch.zeros_like(rem)
    one = 1 << (bits - 2)
    for _ in range(bits // 2):
        trial = root + one
        take = rem >= trial
        rem = torch.where(take, rem - trial, rem)
        root = torch.where(take, (root >> 1) + one, root >> 1)
        one >>= 2
    return root


def div_floor(num: torch.Tensor | int, den: torch.Tensor | int, num_bits: int) -> torch.Tensor:
    """``floor(num / den)`` for ``0 <= num < 2**num_bits`` and ``0 <= den < 2**62`` (restoring division).

    ``num_bits`` steps (``1 <= num_bits <= 62``), one quotient bit per step, most significant first::

        rem = 0; quo = 0
        for i in num_bits-1 .. 0:
            rem = (rem << 1) | bit i of num
            if rem >= den: rem = rem - den; quo = quo | (1 << i)
        return quo                                  # and rem = num - quo * den

    ``den == 0`` yields ``2**num_bits - 1`` (every comparison succeeds); callers that can see a zero
    denominator say what that means for them.
    """
    if not (isinstance(num_bits, int) and 1 <= num_bits <= 62):
        raise UserValueError(f"div_floor num_bits must be an integer in [1, 62], not {num_bits!r}")
    num = _as_int64("num", num)
    den = _as_int64("den", den)
    _check_range("div_floor numerator", num, num_bits)
    _check_range("div_floor denominator", den, 62)
    num, den = torch.broadcast_tensors(num, den)
    rem = torch.zeros_like(num)
    quo = torch.zeros_like(num)
    for i in range(num_bits - 1, -1, -1):
        rem = (rem << 1) | ((num >> i) & 1)
        take = rem >= den
        rem = torch.where(take, rem - den, rem)
        quo = quo | (take.to(torch.int64) << i)
    return quo


def reciprocal_floor(den: torch.Tensor | int, k: int) -> torch.Tensor:
    """``floor(2**k / den)`` for ``1 <= den < 2**62`` and ``0 <= k <= 61``; ``den == 0`` gives ``2**(k+1) - 1``.

    This is :func:`div_floor` of the constant ``2**k`` (``k + 1`` steps; a divider that knows
    ``den >= 2**j`` may skip the first ``j`` steps, whose quotient bits are zero).
    """
    if not (isinstance(k, int) and 0 <= k <= 61):
        raise UserValueError(f"reciprocal_floor k must be an integer in [0, 61], not {k!r}")
    return div_floor(torch.tensor(1 << k, dtype=torch.int64), den, k + 1)
