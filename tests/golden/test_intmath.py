"""Tests for golden.intmath: leading-one detect, bit-by-bit isqrt, restoring division."""

from __future__ import annotations

import math
import random

import pytest
import torch

from golden.intmath import bit_length, div_floor, isqrt_floor, reciprocal_floor


def _edge_values(bits: int) -> list[int]:
    vals = {0, 1, 2, 3, 4, (1 << bits) - 1}
    for b in range(1, bits):
        for v in ((1 << b) - 1, 1 << b, (1 << b) + 1):
            if v < (1 << bits):
                vals.add(v)
    for r in (2, 3, 1000, 46340, 46341, (1 << 31) - 1):
        for v in (r * r - 1, r * r, r * r + 1):
            if 0 <= v < (1 << bits):
                vals.add(v)
    return sorted(v for v in vals if v < (1 << bits))


def test_bit_length_edges_and_random() -> None:
    rng = random.Random(1)
    vals = _edge_values(63) + [rng.randrange(1 << rng.randrange(1, 64)) for _ in range(3000)]
    got = bit_length(torch.tensor(vals))
    assert got.tolist() == [v.bit_length() for v in vals]


def test_bit_length_rejects_negative() -> None:
    with pytest.raises(ValueError, match=r"bit_length input must lie in \[0, 2\*\*63\)"):
        bit_length(torch.tensor([-1]))


@pytest.mark.parametrize("bits", [2, 8, 40, 62])
def test_isqrt_exact(bits: int) -> None:
    rng = random.Random(bits)
    vals = _edge_values(bits) + [
        rng.randrange(1 << rng.randrange(1, bits + 1)) for _ in range(3000)
    ]
    got = isqrt_floor(torch.tensor(vals), bits)
    assert got.tolist() == [math.isqrt(v) for v in vals]


def test_isqrt_accepts_python_int_and_default_bits() -> None:
    assert int(isqrt_floor((1 << 62) - 1)) == (1 << 31) - 1
    assert int(isqrt_floor(99)) == 9


@pytest.mark.parametrize("bits", [0, 3, 64, 1.0])
def test_isqrt_bad_bits(bits: object) -> None:
    with pytest.raises(ValueError, match="isqrt bits must be an even integer in"):
        isqrt_floor(torch.tensor([4]), bits)  # type: ignore[arg-type]


def test_isqrt_range_errors() -> None:
    with pytest.raises(ValueError, match=r"isqrt input must lie in \[0, 2\*\*8\)"):
        isqrt_floor(torch.tensor([256]), 8)
    with pytest.raises(ValueError, match="isqrt input must lie in"):
        isqrt_floor(torch.tensor([-1]))
    with pytest.raises(ValueError, match="n must be an integer tensor"):
        isqrt_floor(torch.tensor([4.0]))


def test_div_floor_exact() -> None:
    rng = random.Random(7)
    nums = [rng.randrange(1 << rng.randrange(1, 62)) for _ in range(4000)] + [0, 1, (1 << 61) - 1]
    dens = [rng.randrange(1, 1 << rng.randrange(1, 62)) for _ in range(4000)] + [1, 1, 1]
    got = div_floor(torch.tensor(nums), torch.tensor(dens), 61)
    assert got.tolist() == [a // b for a, b in zip(nums, dens, strict=True)]


def test_div_floor_by_zero_is_all_ones() -> None:
    assert div_floor(torch.tensor([0, 5, 255]), torch.tensor(0), 8).tolist() == [255, 255, 255]


def test_div_floor_errors() -> None:
    with pytest.raises(ValueError, match=r"div_floor numerator must lie in \[0, 2\*\*4\)"):
        div_floor(torch.tensor([16]), torch.tensor([1]), 4)
    with pytest.raises(ValueError, match="div_floor denominator must lie in"):
        div_floor(torch.tensor([1]), torch.tensor([-3]), 4)
    with pytest.raises(ValueError, match=r"div_floor num_bits must be an integer in \[1, 62\]"):
        div_floor(torch.tensor([1]), torch.tensor([1]), 63)
    with pytest.raises(ValueError, match="den must be an integer tensor"):
        div_floor(torch.tensor([1]), torch.tensor([1.5]), 4)


def test_reciprocal_floor() -> None:
    dens = torch.tensor([1, 2, 3, 7, 1 << 15, (1 << 31) + 3, (1 << 39)])
    assert reciprocal_floor(dens, 39).tolist() == [(1 << 39) // int(d) for d in dens]
    assert int(reciprocal_floor(torch.tensor(0), 10)) == (1 << 11) - 1
    with pytest.raises(ValueError, match=r"reciprocal_floor k must be an integer in \[0, 61\]"):
        reciprocal_floor(torch.tensor(3), 62)
