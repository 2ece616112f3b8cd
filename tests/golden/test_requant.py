"""Tests for golden.requant: the one int32 -> int8 requantizer (multiplier, shift, round, saturate)."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch

from golden.requant import (
    INT32_MAX,
    INT32_MIN,
    quantize_multiplier,
    requantize,
    requantize_float,
    round_shift_right,
    saturate,
)


def _exact_half_up(p: int, s: int) -> int:
    return math.floor(Fraction(p, 2**s) + Fraction(1, 2))


def test_round_shift_right_matches_exact_rational() -> None:
    rng = random.Random(0)
    ps = [rng.randrange(-(2**62), 2**62) for _ in range(2000)] + [0, 1, -1, 2**62, -(2**62)]
    ss = [rng.randrange(0, 64) for _ in ps]
    got = round_shift_right(torch.tensor(ps), torch.tensor(ss))
    assert got.tolist() == [_exact_half_up(p, s) for p, s in zip(ps, ss, strict=True)]


def test_ties_round_half_up_toward_plus_infinity() -> None:
    x = torch.tensor([5, -5, 3, -3, 1, -1, 7, -7])
    assert requantize(x, 1, 1).tolist() == [3, -2, 2, -1, 1, 0, 4, -3]
    # 10 * 3 / 4 = 7.5 -> 8 ; -10 * 3 / 4 = -7.5 -> -7
    assert requantize(torch.tensor([10, -10]), 3, 2).tolist() == [8, -7]
    assert requantize_float(torch.tensor([2.5, -2.5, -0.5]), 1.0).tolist() == [3.0, -2.0, 0.0]


def test_saturation_at_both_ends() -> None:
    x = torch.tensor([INT32_MAX, INT32_MIN, 127, 128, -128, -129, 0])
    assert requantize(x, 1, 0).tolist() == [127, -128, 127, 127, -128, -128, 0]
    assert requantize(x, -1, 0).tolist() == [-128, 127, -127, -128, 127, 127, 0]
    assert saturate(torch.tensor([-(2**40), 2**40]), -128, 127).tolist() == [-128, 127]


def test_shift_zero_and_sixty_three() -> None:
    assert requantize(torch.tensor([100, -100, 63]), 2, 0).tolist() == [127, -128, 126]
    # shift 63: p = 2**62 is exactly 0.5 -> 1 (half up); just below -> 0; p = -2**62 + 2**31 -> 0
    big = torch.tensor([INT32_MIN, INT32_MAX, INT32_MIN])
    mult = torch.tensor([INT32_MIN, INT32_MAX, INT32_MAX])
    assert requantize(big, mult, 63).tolist() == [1, 0, 0]
    assert round_shift_right(torch.tensor([2**62, -(2**62), -(2**62) - 1]), 63).tolist() == [
        1,
        0,
        -1,
    ]


def test_per_channel_broadcast() -> None:
    x = torch.tensor([[100, 100, 100], [-100, -100, -100]])
    mult = torch.tensor([1, 3, 1 << 30])
    shift = torch.tensor([0, 2, 31])
    assert requantize(x, mult, shift).tolist() == [[100, 75, 50], [-100, -75, -50]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float_twin_agreement(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(INT32_MIN, INT32_MAX, (4000,), generator=g, dtype=torch.int64)
    x[:2000] = x[:2000] >> 16  # also small magnitudes
    for scale in (3.7e-9, 1e-6, 2.5e-4, 0.013, 0.5, 1.0):
        mult, shift = quantize_multiplier(scale)
        got = requantize(x, mult, shift)
        twin_exact = requantize_float(x, mult / 2**shift)
        twin_real = requantize_float(x, scale)
        assert float((got - twin_exact).abs().max()) <= 1
        assert float((got - twin_real).abs().max()) <= 1
        assert float((got != twin_exact).double().mean()) <= 0.001


@pytest.mark.parametrize("scale", [2**-33, 1e-9, 1 / 3, 0.5, 1.0, 1.5, 12345.678, 2**30, 2**31 - 1])
def test_quantize_multiplier_round_trip(scale: float) -> None:
    mult, shift = quantize_multiplier(scale)
    assert 2**30 <= mult < 2**31
    assert 0 <= shift <= 63
    assert abs(Fraction(mult, 2**shift) / Fraction(scale) - 1) <= Fraction(1, 2**31)


def test_quantize_multiplier_carry() -> None:
    assert quantize_multiplier(1 - 2**-40) == (2**30, 30)
    assert quantize_multiplier(1.0) == (2**30, 30)
    assert quantize_multiplier(0.75) == (3 * 2**29, 31)


@pytest.mark.parametrize(
    ("scale", "msg"),
    [
        (0.0, "requant scale must be a positive finite number, not 0.0"),
        (-1.0, "positive finite"),
        (math.inf, "positive finite"),
        (math.nan, "positive finite"),
        ("1", "positive finite"),
        (2.0**31, r"needs shift -1, outside \[0, 63\]"),
        (0.99 * 2**-33, r"needs shift 64, outside \[0, 63\]"),
    ],
)
def test_quantize_multiplier_errors(scale: object, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        quantize_multiplier(scale)  # type: ignore[arg-type]


def test_requantize_errors() -> None:
    x = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"multiplier must be an int32 value"):
        requantize(x, 2**31, 3)
    with pytest.raises(ValueError, match=r"multiplier must be an int32 value"):
        requantize(x, INT32_MIN - 1, 3)
    with pytest.raises(ValueError, match=r"shift must be in \[0, 63\], not \[64\]"):
        requantize(x, 1, torch.tensor([64]))
    with pytest.raises(ValueError, match=r"shift must be in \[0, 63\], not -1"):
        requantize(x, 1, -1)
    with pytest.raises(ValueError, match="requantize input must hold int32 values"):
        requantize(torch.tensor([INT32_MAX + 1]), 1, 0)
