"""Decoder ops as IR ops: RMSNorm (fused from its ATen chain into ``aten.rms_norm``) and SiLU
(kept whole), run by the executor with :mod:`golden.rmsnorm` and :mod:`golden.silu` when placed
on an integer device."""

from __future__ import annotations

import copy

import torch

from compiler.driver import compile_model
from compiler.execute import execute_plan, make_impl
from compiler.frontend import export_graph, load_model
from compiler.interp import run_graph
from compiler.passes import Canonicalize, run_passes
from golden.rmsnorm import rmsnorm_int, rmsnorm_params
from golden.silu import silu_int, silu_params


def _canon(module, inputs):
    g = export_graph(module, inputs)
    run_passes(g, [Canonicalize()])
    return g


def test_llama_norms_and_gates_are_ir_ops():
    lm = load_model("llama-tiny")
    g = _canon(lm.module, lm.example_inputs)
    rms = [n for n in g.nodes if n.op == "rms_norm"]
    assert len(rms) == 5 and len([n for n in g.nodes if n.op == "silu"]) == 2
    assert not {"aten.rsqrt.default", "aten.pow.Tensor_Scalar", "aten.sigmoid.default"} & {
        n.target for n in g.nodes}
    for n in rms:
        assert n.args[1] == [64] and n.args[2].name.endswith("norm.weight")
        assert n.args[3] == 1e-6 and n.attrs["rows"] == 16 and n.attrs["length"] == 64


class _Rms(torch.nn.Module):
    def forward(self, x):  # no weight; and a near miss over dim 1 that must stay as it is
        a = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
        b = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-5)
        return a + b


def test_rms_norm_without_weight_fuses_and_a_near_miss_does_not():
    x = torch.randn(1, 8, 16)
    g = _canon(_Rms().eval(), (x,))
    rms = [n for n in g.nodes if n.op == "rms_norm"]
    assert len(rms) == 1 and rms[0].args[2] is None and rms[0].args[3] == 1e-5
    assert sum(n.target == "aten.rsqrt.default" for n in g.nodes) == 1
    with torch.no_grad():
        assert torch.allclose(run_graph(g, (x,))[0], _Rms()(x), atol=1e-6)


def test_executor_runs_the_golden_units_bit_exactly():
    c = compile_model("llama-tiny", "asic,cpu:mode=roofline")
    plan = copy.deepcopy(c.plan)
    for o in plan["ops"]:
        o["device"] = "asic" if o["op"] in ("rms_norm", "silu") else "cpu:mode=roofline"
    impl = make_impl(c.graph, plan)
    seen = []

    def wrap(node, args, kwargs):
        out = impl(node, args, kwargs)
        if node.op in ("rms_norm", "silu"):
            seen.append((node, args, out))
        return out

    run_graph(c.graph, c.model.example_inputs, impl=wrap)
    assert {n.op for n, _, _ in seen} == {"rms_norm", "silu"}
    for node, args, out in seen:
        q = node.attrs["quant"]
        si, so = float(q["in_scales"][0]), float(q["out_scale"])
        xq = torch.clamp(torch.round(args[0].double() / si), -128, 127).to(torch.int64)
        if node.op == "silu":
            ref = silu_int(xq, silu_params(si, so))
        else:
            ref = rmsnorm_int(xq.reshape(-1, 64), rmsnorm_params(64, si, args[2], so,
                                                                 args[3])).reshape(xq.shape)
        assert torch.equal(out, (ref.double() * so).float())
    r = execute_plan(plan)
    assert r["cosine_min"] >= 0.999, r


def test_causal_masks_and_grouped_query_attention_are_recognised():
    for model, causal, kv in (("llama-tiny", True, 2), ("qwen2-tiny", True, 2),
                              ("gpt2-tiny", True, 4), ("bert-tiny", False, 4)):
        lm = load_model(model)
        att = [n for n in _canon(lm.module, lm.example_inputs).nodes if n.op == "attention"]
        assert len(att) == 2
        for n in att:
            assert n.attrs["causal"] is causal, model
            assert (n.attrs["q_heads"], n.attrs["kv_heads"]) == (4, kv), model


class _Masked(torch.nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, q):
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=self.mask)


def test_only_the_causal_pattern_is_marked():
    q = torch.randn(1, 2, 6, 8)
    tri = torch.ones(6, 6, dtype=torch.bool).tril()
    additive = torch.zeros(6, 6).masked_fill(~tri, float("-inf"))
    banded = tri & ~torch.ones(6, 6, dtype=torch.bool).tril(-3)  # a sliding window of 3
    for mask, want in ((tri, True), (additive, True), (banded, False), (tri.t(), False),
                       (additive * 0.5 + torch.eye(6), False)):
        (n,) = [n for n in _canon(_Masked(mask).eval(), (q,)).nodes if n.op == "attention"]
        assert n.attrs["causal"] is want, mask
