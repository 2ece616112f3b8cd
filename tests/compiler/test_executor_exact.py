"""The plan executor against independent exact computations, op by op.

A tiny model (``exact_model.py``: every op kind, real layer-norm gamma/beta/eps, a near-constant
input row) is compiled for ``asic,cpu``; the plan is then edited so that every quantized op runs
on the accelerator (the executor reads only ``device`` and ``quant``), and a second plan puts the
linears on ``imc`` and gives one linear an int32 output (``out_bits`` 32). Every accelerator
node's float arguments and the executor's output are recorded while the graph runs on the
example input and on 3x the example input (which drives the int8 inputs and outputs into
saturation).

Linear, matmul and ReLU are recomputed here from the documented formulas only
(``compiler.passes.quantize``, ``golden.requant``): round-half-even quantization with the plan's
scale, per-channel int8 weights from the torch module's own parameters, int32 bias, exact integer
products, int32 saturation, the requantizer ``(mult, shift)`` derived here from the real scale and
applied as ``round_half_up(acc * mult / 2**shift)``, int8 saturation, dequantization. They must
match the executor bit for bit, and stay within half an output LSB of the float op on the
dequantized operands. Softmax, layer norm and GELU are compared bit for bit with the golden
function called here with parameters computed from the plan's scales and the torch module's
gamma/beta/eps, and within the golden models' documented bounds of the float op.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from compiler.driver import compile_model
from compiler.execute import make_impl, rebuild_graph
from compiler.interp import run_graph
from compiler.ir import Param
from compiler.targets import make_device
from golden.gelu import gelu_int, gelu_params
from golden.layernorm import layernorm_int, layernorm_params
from golden.softmax import softmax_int, softmax_params

MODEL = f"{Path(__file__).with_name('exact_model.py')}:exact_net"
ACCEL = "asic"
I32 = (-(2**31), 2**31 - 1)


# ---------------------------------------------------------------- independent reference math

def rne(v: torch.Tensor) -> torch.Tensor:
    """Round half to even of float64 ``v``, written out (floor, fraction, tie to the even one)."""
    f = torch.floor(v)
    r = v - f  # exact for |v| < 2**52
    up = (r > 0.5) | ((r == 0.5) & (torch.remainder(f, 2) == 1))
    return f + up.to(torch.float64)


def quant(x: torch.Tensor, s: float | torch.Tensor, lo: int = -128, hi: int = 127) -> torch.Tensor:
    """``clamp(round_half_even(x / s), lo, hi)`` as int64."""
    return torch.clamp(rne(x.to(torch.float64) / s), lo, hi).to(torch.int64)


def mult_shift(scale: float) -> tuple[int, int]:
    """``scale ~= mult / 2**shift`` with ``mult`` in [2**30, 2**31), rounded half to even."""
    assert math.isfinite(scale) and scale > 0
    v, shift = scale, 0
    while v < 2**30:  # multiplying by powers of two is exact
        v *= 2
        shift += 1
    while v >= 2**31:
        v /= 2
        shift -= 1
    mult = round(v)
    if mult == 2**31:
        mult, shift = mult // 2, shift - 1
    assert 0 <= shift <= 63
    return mult, shift


def requant(acc: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """int8 ``clamp(round_half_up(acc * mult / 2**shift))``, one scale per last-axis channel."""
    ms = [mult_shift(s) for s in scales]
    mult = torch.tensor([m for m, _ in ms], dtype=torch.int64)
    shift = torch.tensor([s for _, s in ms], dtype=torch.int64)
    assert int(acc.abs().max()) < 2**31 and int(shift.min()) >= 1
    p = acc * mult  # |p| < 2**62
    r = torch.div(p + (1 << (shift - 1)), 2**shift, rounding_mode="floor")
    return torch.clamp(r, -128, 127)


def dq(q: torch.Tensor, s: float | torch.Tensor) -> torch.Tensor:
    return (q.to(torch.float64) * s).to(torch.float32)


def weight_kn(node: Any, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight as ``[K, N]`` (y = x @ W) and the bias, from the torch module's parameters and
    the ATen op's own semantics (not from the compiler's ``w_layout``)."""
    a = node.args
    if node.target == "aten.linear.default":  # x @ W.T + b, W [N, K]
        w = params[a[1].name].t()
        b = params[a[2].name] if len(a) > 2 and a[2] is not None else None
    elif node.target == "aten.addmm.default":  # b + x @ W
        w, b = params[a[2].name], params[a[0].name]
    else:  # matmul / mm: x @ W
        w, b = params[a[1].name], None
    return w.detach().to(torch.float64), None if b is None else b.detach().to(torch.float64)


def x_of(node: Any, args: tuple[Any, ...]) -> torch.Tensor:
    return args[1] if node.target == "aten.addmm.default" else args[0]


def ref_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, q: dict[str, Any],
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
    """(exact output, float linear of the dequantized operands, output LSB) of a linear."""
    k, n = w.shape
    s_in = float(q["in_scales"][0])
    ws = torch.clamp(w.abs().amax(dim=0) / 127.0, min=1e-8)
    wq = quant(w, ws[None, :], -127, 127)
    wide = q.get("in_bits") == 16
    xq = quant(x, s_in, -32640, 32639) if wide else quant(x, s_in)
    xq = xq.reshape(-1, k)
    acc = xq @ wq
    bq = torch.zeros(n, dtype=torch.int64) if b is None else \
        torch.clamp(rne(b / (s_in * ws)), *I32).to(torch.int64)
    acc = acc + bq
    real = (xq.to(torch.float64) * s_in) @ (wq.to(torch.float64) * ws) + bq * (s_in * ws)
    if not wide:
        acc = torch.clamp(acc, *I32)
    if wide or q.get("out_bits") == 32:
        return dq(acc, s_in * ws), real, s_in * ws
    so = [float(v) for v in q["out_scales"]] if q.get("out_scales") else [float(q["out_scale"])] * n
    y = requant(acc, [s_in * float(ws[c]) / so[c] for c in range(n)])
    s_out = torch.tensor(so, dtype=torch.float64)
    return dq(y, s_out), real, s_out


# ---------------------------------------------------------------- plans and recordings

def _force(plan: dict[str, Any], device: str, ops: set[str] | None = None) -> None:
    for o in plan["ops"]:
        if (ops is None and o["quant"] is not None) or (ops is not None and o["name"] in ops):
            o["device"] = device


def _record(plan: dict[str, Any]) -> tuple[dict[str, list[tuple[Any, ...]]], Any, dict[str, Any]]:
    graph, lm = rebuild_graph(plan)
    impl = make_impl(graph, plan)
    rec: dict[str, list[tuple[Any, ...]]] = {}

    def wrap(node: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        out = impl(node, args, kwargs)
        rec.setdefault(node.name, []).append((node, args, out))
        return out

    x = lm.example_inputs[0]
    for inp in (x, 3 * x):
        run_graph(graph, (inp,), impl=wrap)
    return rec, lm, {o["name"]: o for o in plan["ops"]}, graph


@pytest.fixture(scope="module")
def runs() -> dict[str, Any]:
    # smoothing off: the reference takes the weights and gamma/beta from the torch module itself
    c = compile_model(MODEL, f"{ACCEL},cpu:mode=roofline", smooth="off")
    a = copy.deepcopy(c.plan)
    _force(a, ACCEL)
    b = copy.deepcopy(c.plan)
    imc = make_device("imc")
    b["devices"].append({"name": imc.name, "kind": imc.kind, "params": imc.params()})
    lin = {o["name"] for o in b["ops"] if o["op"] == "linear"}
    out32 = next(o for o in b["ops"] if o["op"] == "linear" and not o["quant"].get("in_bits")
                 and not o["quant"].get("out_scales"))
    out32["quant"]["out_bits"] = 32  # an int8-input linear whose engine has no requantizer
    _force(b, ACCEL)
    _force(b, imc.name, lin - {out32["name"]})
    return {"asic": _record(a), "imc": _record(b), "imc_params": imc.params(),
            "out32": out32["name"]}


def _nodes(run: tuple[Any, ...], kind: str, dev_kind: str = ACCEL) -> list[tuple[Any, ...]]:
    rec, _, ops, _ = run
    out = [r for name, rs in rec.items() for r in rs
           if ops[name]["op"] == kind and ops[name]["device"].split(":")[0] == dev_kind]
    assert out, f"no {kind} op on {dev_kind} in the plan"
    return out


def _params(run: tuple[Any, ...]) -> dict[str, torch.Tensor]:
    p = dict(run[1].module.named_parameters())
    # the one weight forward computes from a parameter (w_kn.t()) is folded at compile time
    folded = {k: v for k, v in run[3].params.items() if k.startswith("const:")}
    assert len(folded) == 1
    for k, v in folded.items():
        assert torch.equal(v, p["w_kn"].t())
        p[k] = v
    return p


def _check_linear(node: Any, args: tuple[Any, ...], out: torch.Tensor,
                  params: dict[str, torch.Tensor]) -> None:
    w, b = weight_kn(node, params)
    q = node.attrs["quant"]
    ref, real, lsb = ref_linear(x_of(node, args), w, b, q)
    ref = ref.reshape(out.shape)
    assert torch.equal(out, ref), (
        f"{node.name}: executor differs from the exact linear in "
        f"{int((out != ref).sum())}/{out.numel()} elements, max {float((out - ref).abs().max()):.3g}")
    real = real.reshape(out.shape)
    lsb_t = torch.as_tensor(lsb, dtype=torch.float64).expand(out.shape)
    if q.get("in_bits") == 16 or q.get("out_bits") == 32:  # int32 out: exact up to float32
        assert float(((out - real).abs() / real.abs().clamp_min(1e-3)).max()) < 1e-6
    else:  # requantizer: half an LSB of the float value, where it does not saturate
        ok = real.abs() < 127.5 * lsb_t
        assert ok.float().mean() > 0.5
        err = ((out.double() - real).abs() / lsb_t)[ok]
        assert float(err.max()) <= 0.5 + 1e-6, f"{node.name}: {float(err.max())} LSB"


# ---------------------------------------------------------------- linear

def test_linear_per_tensor_out_scale(runs):
    nodes = [r for r in _nodes(runs["asic"], "linear") if not r[0].attrs["quant"].get("out_scales")
             and not r[0].attrs["quant"].get("in_bits")]
    assert len({r[0].name for r in nodes}) >= 4
    for node, args, out in nodes:
        _check_linear(node, args, out, _params(runs["asic"]))


def test_linear_per_channel_out_scales(runs):
    nodes = [r for r in _nodes(runs["asic"], "linear") if r[0].attrs["quant"].get("out_scales")]
    # nn.Linear ([N, K] weight), addmm and x @ W ([K, N] weights)
    assert {r[0].target for r in nodes} == {"aten.linear.default", "aten.addmm.default",
                                            "aten.matmul.default"}
    for node, args, out in nodes:
        so = torch.tensor(node.attrs["quant"]["out_scales"])
        assert float(so.max() / so.min()) > 1.5  # a per-tensor dequantization would differ
        _check_linear(node, args, out, _params(runs["asic"]))


def test_linear_int32_out(runs):
    nodes = [r for r in _nodes(runs["imc"], "linear") if r[0].name == runs["out32"]]
    assert len(nodes) == 2 and nodes[0][0].attrs["quant"]["out_bits"] == 32
    for node, args, out in nodes:
        _check_linear(node, args, out, _params(runs["imc"]))


def test_linear_16bit_input(runs):
    nodes = [r for r in _nodes(runs["asic"], "linear") if r[0].attrs["quant"].get("in_bits") == 16]
    assert nodes, "no 16-bit-input linear"
    for node, args, out in nodes:
        x16 = quant(args[0], float(node.attrs["quant"]["in_scales"][0]), -32640, 32639)
        assert int(x16.abs().max()) > 1000  # both bytes matter
        _check_linear(node, args, out, _params(runs["asic"]))


def test_imc_linear_exact_when_adc_resolves_the_column_sum(runs):
    p = runs["imc_params"]
    nodes = _nodes(runs["imc"], "linear", "imc")
    assert any(r[0].attrs["quant"].get("in_bits") == 16 for r in nodes)
    for node, args, out in nodes:
        rows = min(p["xbar"], node.attrs["k"])
        assert rows * (2 ** p["dac_bits"] - 1) * (2 ** p["cell_bits"] - 1) < 2 ** p["adc_bits"]
        _check_linear(node, args, out, _params(runs["imc"]))


# ---------------------------------------------------------------- matmul

def test_matmul_batched_per_tensor(runs):
    nodes = _nodes(runs["asic"], "matmul")
    shapes = {(tuple(r[1][0].shape), tuple(r[1][1].shape)) for r in nodes}
    assert ((1, 4, 16, 16), (16, 16)) in shapes  # broadcast of a 2-D right operand
    assert ((1, 4, 16, 16), (1, 4, 16, 16)) in shapes
    # the operands' scales differ: swapping them would show
    assert sum(abs(r[0].attrs["quant"]["in_scales"][0] / r[0].attrs["quant"]["in_scales"][1] - 1)
               > 0.2 for r in nodes) >= 3 * 2
    # W @ x with W a parameter: W's own scale, not x's
    left = [r for r in nodes if isinstance(r[0].args[0], Param)]
    assert {tuple(r[1][0].shape) for r in left} == {(16, 16)}
    for node, (w, _), _ in left:
        assert node.attrs["quant"]["in_scales"][0] == float(w.abs().max()) / 127
    # a linear whose weight is computed: x @ W^T + b, the bias on the accumulator grid
    dyn = [r for r in nodes if r[0].target == "aten.linear.default"]
    assert {tuple(r[1][1].shape) for r in dyn} == {(16, 64)}
    for node, args, out in nodes:
        q = node.attrs["quant"]
        sa, sb, so = (float(v) for v in (*q["in_scales"], q["out_scale"]))
        a, b = args[0], args[1]
        if node.target == "aten.linear.default":  # the ATen op's own semantics
            b = b.t()
        aq, bq = quant(a, sa), quant(b, sb)
        acc = torch.matmul(aq, bq)
        if node.target == "aten.linear.default":
            acc = acc + torch.clamp(rne(args[2].double() / (sa * sb)), *I32).to(torch.int64)
        ref = dq(requant(acc, [sa * sb / so] * acc.shape[-1]), so)
        assert out.shape == ref.shape and torch.equal(out, ref), (
            f"{node.name}: executor differs from the exact matmul in {int((out != ref).sum())} "
            "elements")
        real = torch.matmul(aq.double() * sa, bq.double() * sb)
        if node.target == "aten.linear.default":
            real = real + torch.clamp(rne(args[2].double() / (sa * sb)), *I32) * (sa * sb)
        ok = real.abs() < 127.5 * so
        assert ok.float().mean() > 0.5
        assert float((out.double() - real).abs()[ok].max()) <= (0.5 + 1e-6) * so


# ---------------------------------------------------------------- nonlinear units

def _scale_ratios(nodes: list[tuple[Any, ...]]) -> list[float]:
    return [r[0].attrs["quant"]["in_scales"][0] / r[0].attrs["quant"]["out_scale"] for r in nodes]


def test_relu(runs):
    nodes = _nodes(runs["asic"], "relu")
    assert min(_scale_ratios(nodes)) > 1.3  # a requantizer from out to in scale would show
    for node, args, out in nodes:
        q = node.attrs["quant"]
        si, so = float(q["in_scales"][0]), float(q["out_scale"])
        y = torch.clamp(quant(args[0], si), min=0)
        ref = dq(requant(y.reshape(-1, 1), [si / so]).reshape(y.shape), so)
        assert torch.equal(out, ref)
        real = torch.relu(quant(args[0], si).double() * si)
        ok = real < 127.5 * so  # where the int8 output does not saturate (3x input)
        assert ok.float().mean() > 0.9
        assert float((out.double() - real).abs()[ok].max()) <= (0.5 + 1e-6) * so


def test_softmax(runs):
    for node, args, out in _nodes(runs["asic"], "softmax"):
        si = float(node.attrs["quant"]["in_scales"][0])
        xq = quant(args[0], si)
        ref = dq(softmax_int(xq, softmax_params(si)), 1 / 256)
        assert torch.equal(out, ref)
        # golden.softmax: within 1 LSB (1/256) of the real softmax of the int8 logits
        real = torch.softmax(xq.double() * si, dim=-1)
        assert float((out.double() - real).abs().max()) <= 1.0 / 256 + 1e-9
        assert float(out.max()) > 0.9  # peaked rows: a wrong output scale moves them by > 1 LSB


def _ln_module(run: tuple[Any, ...], node: Any) -> torch.nn.LayerNorm:
    mod = run[1].module.get_submodule(node.args[2].name.rpartition(".")[0])
    assert isinstance(mod, torch.nn.LayerNorm)
    return mod


def test_layer_norm_with_gamma_beta_eps(runs):
    nodes = _nodes(runs["asic"], "layer_norm")
    assert len(nodes) == 4
    eps_seen = set()
    for node, args, out in nodes:
        mod = _ln_module(runs["asic"], node)
        gamma, beta, eps = mod.weight.detach(), mod.bias.detach(), mod.eps
        assert float(gamma.std()) > 0.5 and float(beta.abs().mean()) > 0.2
        eps_seen.add(eps)
        q = node.attrs["quant"]
        si, so = float(q["in_scales"][0]), float(q["out_scale"])
        n = int(out.shape[-1])
        xq = quant(args[0], si)
        ref = dq(layernorm_int(xq, layernorm_params(n, si, gamma, beta, so, eps)), so)
        assert torch.equal(out, ref), f"{node.name}: {int((out != ref).sum())} elements differ"
        real = torch.nn.functional.layer_norm(xq.double() * si, (n,), gamma.double(),
                                              beta.double(), eps)
        ok = real.abs() < 127.5 * so
        assert ok.float().mean() > 0.9
        # golden.layernorm: within 0.51 LSB of the unrounded float output (int8 input)
        assert float((out.double() - real).abs()[ok].max()) <= 0.51 * so
        if eps > 1e-3:  # the near-constant row: eps changes its output by many LSB
            no_eps = torch.nn.functional.layer_norm(xq[0, 0].double() * si, (n,), gamma.double(),
                                                    beta.double(), 0.0)
            assert float((no_eps - real[0, 0]).abs().max()) > 5 * so
    assert eps_seen == {1e-2, 1e-5}


def test_gelu(runs):
    nodes = _nodes(runs["asic"], "gelu")
    assert max(_scale_ratios(nodes)) > 1.5  # swapped scales would show
    for node, args, out in nodes:
        q = node.attrs["quant"]
        si, so = float(q["in_scales"][0]), float(q["out_scale"])
        xq = quant(args[0], si)
        ref = dq(gelu_int(xq, gelu_params(si, so)), so)
        assert torch.equal(out, ref)
        # golden.gelu: within 0.5 + 0.0184 / out_scale + 0.02 LSB of the exact GELU
        real = torch.nn.functional.gelu(xq.double() * si)
        ok = real < 127.5 * so
        assert float((out.double() - real).abs()[ok].max()) <= 0.52 * so + 0.0184


def test_every_kind_on_the_accelerator(runs):
    kinds = {o["op"] for o in runs["asic"][2].values() if o["device"] == ACCEL}
    assert kinds >= {"linear", "matmul", "softmax", "layer_norm", "gelu", "relu"}


# ---------------------------------------------------------------- axes other than the last

@pytest.fixture(scope="module")
def odd_axes() -> tuple[Any, ...]:
    c = compile_model(MODEL.replace(":exact_net", ":odd_axes"), f"{ACCEL},cpu:mode=roofline",
                      smooth="off")
    plan = copy.deepcopy(c.plan)
    _force(plan, ACCEL)  # the asic target accepts both (any softmax dim, any normalized shape)
    return _record(plan)


def test_softmax_over_a_dim_that_is_not_the_last(odd_axes):
    for node, args, out in _nodes(odd_axes, "softmax"):
        dim = int(node.args[1])
        assert dim % args[0].dim() != args[0].dim() - 1
        si = float(node.attrs["quant"]["in_scales"][0])
        xq = quant(args[0], si)
        ref = dq(softmax_int(xq.movedim(dim, -1), softmax_params(si)).movedim(-1, dim), 1 / 256)
        real = torch.softmax(xq.double() * si, dim=dim)
        assert float((out.double() - real).abs().max()) <= 1.0 / 256 + 1e-9, (
            f"{node.name}: softmax over dim {dim} of shape {tuple(args[0].shape)} computed over "
            "the wrong axis")
        assert torch.equal(out, ref)


def test_layer_norm_over_the_last_two_dims(odd_axes):
    for node, args, out in _nodes(odd_axes, "layer_norm"):
        shape = tuple(node.args[1])
        assert len(shape) == 2
        mod = _ln_module(odd_axes, node)
        gamma, beta = mod.weight.detach(), mod.bias.detach()
        q = node.attrs["quant"]
        si, so = float(q["in_scales"][0]), float(q["out_scale"])
        xq = quant(args[0], si)
        n = math.prod(shape)
        lead = xq.shape[:-len(shape)]
        p = layernorm_params(n, si, gamma.reshape(n), beta.reshape(n), so, mod.eps)
        ref = dq(layernorm_int(xq.reshape(*lead, n), p), so).reshape(xq.shape)
        real = torch.nn.functional.layer_norm(xq.double() * si, shape, gamma.double(),
                                              beta.double(), mod.eps)
        ok = real.abs() < 127.5 * so
        assert ok.float().mean() > 0.9
        assert float((out.double() - real).abs()[ok].max()) <= 0.51 * so
        assert torch.equal(out, ref)
