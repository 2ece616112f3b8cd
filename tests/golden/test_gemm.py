"""Tests for golden.gemm: int8 GEMM with int32 accumulate, bias, saturation and requantization."""

from __future__ import annotations

import pytest
import torch

from golden.gemm import check_int8, gemm_float, gemm_int
from golden.requant import INT32_MAX, INT32_MIN, quantize_multiplier


def _rand_int8(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)


@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (3, 17, 5), (16, 64, 16), (33, 100, 7)])
def test_int32_path_equals_float_twin(m: int, k: int, n: int) -> None:
    g = torch.Generator().manual_seed(m * 1000 + k)
    a, b = _rand_int8(g, m, k), _rand_int8(g, k, n)
    bias = torch.randint(-(2**20), 2**20, (n,), generator=g)
    assert torch.equal(gemm_int(a, b).double(), gemm_float(a, b))
    assert torch.equal(gemm_int(a, b, bias).double(), gemm_float(a, b, bias))


def test_requantized_path_within_one_lsb_of_float_twin() -> None:
    g = torch.Generator().manual_seed(7)
    a, b = _rand_int8(g, 40, 96), _rand_int8(g, 96, 12)
    bias = torch.randint(-5000, 5000, (12,), generator=g)
    scales = torch.logspace(-6, -3, 12, dtype=torch.float64)
    pairs = [quantize_multiplier(float(s)) for s in scales]
    mult = torch.tensor([p[0] for p in pairs])
    shift = torch.tensor([p[1] for p in pairs])
    got = gemm_int(a, b, bias, mult, shift)
    assert int(got.min()) >= -128 and int(got.max()) <= 127
    twin = gemm_float(a, b, bias, scales)
    assert float((got - twin).abs().max()) <= 1
    exact_scales = mult.double() / 2.0 ** shift.double()
    assert float((got != gemm_float(a, b, bias, exact_scales)).double().mean()) <= 0.01


def test_extremes_at_max_k_stay_in_int32() -> None:
    k = 2**16
    a = torch.full((1, k), -128, dtype=torch.int64)
    b = torch.full((k, 2), -128, dtype=torch.int64)
    b[:, 1] = 127
    assert gemm_int(a, b).tolist() == [[2**30, -128 * 127 * k]]


def test_int32_saturation_of_acc_plus_bias() -> None:
    a = torch.tensor([[127, 127], [-128, -128]])
    b = torch.tensor([[127], [127]])
    top = gemm_int(a, b, torch.tensor([INT32_MAX]))
    assert top.tolist() == [[INT32_MAX], [INT32_MAX - 2 * 128 * 127]]
    bottom = gemm_int(a, b, torch.tensor([INT32_MIN]))
    assert bottom.tolist() == [[INT32_MIN + 2 * 127 * 127], [INT32_MIN]]
    # saturated accumulators then requantize to the int8 rails
    assert gemm_int(
        a, b, torch.tensor([INT32_MAX]), torch.tensor([1]), torch.tensor([0])
    ).tolist() == [
        [127],
        [127],
    ]


def test_per_channel_requant_uses_column_parameters() -> None:
    a = torch.tensor([[1, 2], [3, 4]])
    b = torch.tensor([[10, 10], [10, 10]])
    got = gemm_int(a, b, None, torch.tensor([1, 1]), torch.tensor([0, 1]))
    assert got.tolist() == [[30, 15], [70, 35]]


def test_errors() -> None:
    a = torch.zeros(2, 3, dtype=torch.int64)
    b = torch.zeros(3, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="a must be an integer tensor, not torch.float32"):
        gemm_int(torch.zeros(2, 3), b)
    with pytest.raises(ValueError, match=r"b holds values outside int8 \[-128, 127\]"):
        gemm_int(a, b + 128)
    with pytest.raises(
        ValueError, match=r"gemm needs a\[M,K\] and b\[K,N\], got \(2, 3\) and \(4, 3\)"
    ):
        gemm_int(a, b.T)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\), not \(3,\)"):
        gemm_int(a, b, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="requantization needs both mult and shift"):
        gemm_int(a, b, mult=torch.ones(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="x holds values outside int8"):
        check_int8("x", torch.tensor([-129]))
    assert check_int8("x", torch.tensor([-128, 127], dtype=torch.int8)).dtype == torch.int64
