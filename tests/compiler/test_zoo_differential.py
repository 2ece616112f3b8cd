"""Differential test: every model of the zoo runs through the float interpreter and through the
plan executor with every quantizable op on the accelerator but quantization disabled
(``make_impl(..., quantize=False)``); the two must agree to float precision.

The executor reads each op its own way (which argument is the activation, the weight's layout
and bias from the canonical attrs, a computed weight's transpose, the softmax axis and mask,
the layer norm's trailing dims); with the rounding taken out, any disagreement with the float
model is a misreading of the op. A linear with a computed weight run as ``x @ W`` (without the
transpose and the bias) differs at once (last test).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compiler.execute import make_impl
from compiler.frontend import export_graph, load_model
from compiler.interp import run_graph
from compiler.passes import Canonicalize, run_passes
from compiler.passes.quantize import QUANT_KINDS
from compiler.zoo import MODELS

HERE = Path(__file__).parent
EXTRA = [f"{HERE / 'weight_forms.py'}:{f}" for f in ("weight_norm_wide", "experts", "fused_qk",
                                                       "left_weight", "hyper")] + \
        [f"{HERE / 'causal_model.py'}:causal_1e4", f"{HERE / 'exact_model.py'}:exact_net"] + \
        [f"{HERE / 'moe_model.py'}:{f}" for f in ("dense_loop", "expert_choice", "gathered_bmm",
                                                   "mixtral_batched_mm")]


def _all_on_accelerator(graph):
    plan = {"devices": [{"name": "asic", "kind": "asic", "params": {}},
                        {"name": "cpu", "kind": "cpu", "params": {}}],
            "ops": [{"name": n.name, "device": "asic" if n.op in QUANT_KINDS else "cpu"}
                    for n in graph.nodes]}
    return plan


def _inputs(lm):
    g = torch.Generator().manual_seed(5)
    other = tuple(torch.randn(t.shape, generator=g).to(t.dtype) if t.is_floating_point()
                  else t for t in lm.example_inputs)
    return [tuple(lm.example_inputs), other]


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("spec", list(MODELS) + EXTRA,
                         ids=[m for m in MODELS] + [e.rpartition(":")[2] for e in EXTRA])
def test_executor_without_quantization_is_the_float_model(spec):
    torch.manual_seed(0)
    lm = load_model(spec)
    graph = export_graph(lm.module, lm.example_inputs, source=lm.name)
    run_passes(graph, [Canonicalize()])
    plan = _all_on_accelerator(graph)
    accel = [o for o in plan["ops"] if o["device"] == "asic"]
    assert accel, "nothing to check: no quantizable op"
    impl = make_impl(graph, plan, quantize=False)
    for inp in _inputs(lm):
        ref = run_graph(graph, inp)
        out = run_graph(graph, inp, impl=impl)
        with torch.no_grad():
            model = lm.module(*inp)
        model = list(model) if isinstance(model, (tuple, list)) else [model]
        for o, r, m in zip(out, ref, model, strict=True):
            assert _rel(r, m) < 1e-5, "the float interpreter differs from the model"
            assert _rel(o, r) < 1e-5, f"{spec}: executor without quantization differs"


def test_a_linear_with_computed_weight_read_as_x_at_w_is_caught(monkeypatch):
    import compiler.execute as ex

    real = ex._matmul_args

    def untransposed(node, args, kwargs):
        a, b, _ = real(node, args, kwargs)
        return (a, b.transpose(-1, -2), None) if node.attrs.get("transpose_b") else (a, b, None)

    def no_bias(node, args, kwargs):
        return (*real(node, args, kwargs)[:2], None)

    lm = load_model(f"{HERE / 'weight_forms.py'}:hyper")  # a computed [80, 48] weight
    graph = export_graph(lm.module, lm.example_inputs, source=lm.name)
    run_passes(graph, [Canonicalize()])
    ref = run_graph(graph, lm.example_inputs)[0]
    monkeypatch.setattr(ex, "_matmul_args", no_bias)
    out = run_graph(graph, lm.example_inputs, impl=make_impl(graph, _all_on_accelerator(graph),
                                                             quantize=False))[0]
    assert _rel(out, ref) > 0.1
    monkeypatch.setattr(ex, "_matmul_args", untransposed)
    with pytest.raises(RuntimeError):  # x @ W: the shapes do not even agree
        run_graph(graph, lm.example_inputs, impl=make_impl(graph, _all_on_accelerator(graph),
                                                           quantize=False))
