"""Mixture of experts: the experts' GEMMs run on the accelerator.

transformers' default Mixtral block sorts the routed rows by expert and multiplies them with the
stacked expert weights through the custom operator ``transformers.grouped_mm_fallback``;
canonicalize makes it a ``grouped_linear`` (weights ``[E, K, N]`` folded from the stacked
parameter), quantized per expert, priced on the GEMM engine as one GEMM per expert with the
rows the router chose on the calibration samples, and executed bit-accurately with each
expert's int8 weights and requantizer (the router: softmax/top-k/sort/gather on the host).
Eager MoE code that indexes expert parameters in a loop (``moe_model.py``) compiles to plain
linears when its shapes are static, and names the op and source line when they are not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compiler.driver import compile_model
from compiler.execute import execute_plan, make_impl
from compiler.frontend import export_graph, load_model
from compiler.interp import run_graph
from compiler.ir import Node, TensorType
from compiler.passes import Canonicalize, run_passes
from compiler.passes.canonicalize import CONST_PREFIX, GATHERED_MM_TARGET
from compiler.passes.quantize import QUANT_KINDS, grouped_qparams, linear_qparams, quantize_tensor
from compiler.targets.gemm_common import GemmShape, node_cycles, op_cycles, routed_rows
from golden.errors import UserValueError
from golden.gemm import gemm_int

MOE = Path(__file__).with_name("moe_model.py")


@pytest.fixture(scope="module")
def mixtral():
    return compile_model("mixtral-tiny", "asic,cpu:mode=roofline", min_cosine=None)


def _grouped(graph):
    return [n for n in graph.nodes if n.op == "grouped_linear"]


def test_mixtral_experts_are_grouped_linears_with_folded_stacked_weights(mixtral):
    g = mixtral.graph
    grouped = _grouped(g)
    assert [n.target for n in grouped] == ["transformers.grouped_mm_fallback.default"] * 4
    m = mixtral.model.module.m
    for n, w in zip(grouped, [m.layers[0].mlp.experts.gate_up_proj, m.layers[0].mlp.experts.down_proj,
                              m.layers[1].mlp.experts.gate_up_proj, m.layers[1].mlp.experts.down_proj],
                    strict=True):
        a = n.attrs
        assert a["weight"].startswith(CONST_PREFIX) and a["w_layout"] == "ekn"
        assert torch.equal(g.params[a["weight"]], w.detach().permute(0, 2, 1))
        assert (a["experts"], a["m"]) == (4, 32)  # 16 tokens x top-2
        assert a["macs"] == a["m"] * a["k"] * a["n"]
    ops = {o["name"]: o for o in mixtral.plan["ops"]}
    assert sum(ops[n.name]["macs"] for n in grouped) == 2 * 32 * (64 * 256 + 128 * 64)


def test_routing_is_recorded_and_priced_per_expert(mixtral):
    cfg = mixtral.devices[0].config
    for n in _grouped(mixtral.graph):
        rows = n.attrs["expert_rows"]
        assert len(rows) == 16 and all(len(r) == 4 and sum(r) == 32 for r in rows)
        assert len({tuple(r) for r in rows}) > 1  # the routing depends on the input
        k, nn = n.attrs["k"], n.attrs["n"]
        per = [sum(sum(op_cycles(cfg, GemmShape(1, r, k, nn))[:2]) for r in rs if r)
               for rs in rows]
        assert sum(node_cycles(cfg, n)[:2]) == pytest.approx(sum(per) / len(per), abs=2)
        one = sum(op_cycles(cfg, GemmShape(1, 32, k, nn))[:2])
        assert sum(node_cycles(cfg, n)[:2]) > one  # four smaller GEMMs, not one of 32 rows
        op = next(o for o in mixtral.plan["ops"] if o["name"] == n.name)
        assert "16 calibration samples" in op["lowering"]["impl"]
        assert op["lowering"]["unit"] == "gemm"
    n = _grouped(mixtral.graph)[0]
    bare = Node(n.name, n.op, n.target, n.args, n.kwargs, n.out, attrs={
        k: v for k, v in n.attrs.items() if k != "expert_rows"})
    assert routed_rows(bare) == ([[8, 8, 8, 8]], "uniform routing")


def test_mixtral_experts_on_the_asic_execute_close_to_float(mixtral):
    plan = mixtral.plan
    for o in plan["ops"]:
        o["device"] = "asic" if o["op"] == "grouped_linear" else o["device"]
    r = execute_plan(plan, limit=3)
    assert r["ops_per_device"]["asic"] >= 4
    assert r["cosine_min"] > 0.9995, r


def test_grouped_op_is_one_int8_linear_per_expert(mixtral):
    """Each expert's rows give exactly what the ``linear`` op's quantization and golden GEMM
    give for that expert's weight alone (same input and output scales)."""
    g = mixtral.graph
    n = _grouped(g)[0]
    qs = grouped_qparams(g, n)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 64, generator=gen)
    offs = torch.tensor([5, 5, 21, 30], dtype=torch.int32)  # expert 1 gets no rows, 2 left over
    plan = {"devices": [{"name": "asic", "kind": "asic", "params": {}}],
            "ops": [{"name": n.name, "device": "asic"}]}
    cap = {}
    y = make_impl(g, plan, capture=cap)(n, (x, g.params[n.attrs["weight"]], offs), {})
    assert [len(c[0]) for c in cap[n.name]["gemms"]] == [5, 16, 9]
    w = g.params[n.attrs["weight"]]
    for e, (a, b) in {0: (0, 5), 2: (5, 21), 3: (21, 30)}.items():
        one = Node(f"e{e}", "linear", "aten.linear.default", (), {},
                   (TensorType((b - a, n.attrs["n"]), "float32"),),
                   attrs={"weight": "w", "bias": None, "w_layout": "kn", "k": 64,
                          "quant": dict(n.attrs["quant"])})
        g.params["w"] = w[e]
        ql = linear_qparams(g, one)
        assert torch.equal(ql.wq, qs[e].wq) and torch.equal(ql.mult, qs[e].mult)
        plan1 = {"devices": plan["devices"], "ops": [{"name": one.name, "device": "asic"}]}
        ref = make_impl(g, plan1)(one, (x[a:b],), {})
        assert torch.equal(y[a:b], ref.reshape(b - a, -1))
    del g.params["w"]
    assert not y[30:].any()  # rows past the last offset: no expert


def test_expert_macs_count_on_the_accelerator():
    c = compile_model("mixtral-tiny", "asic,cpu:mode=roofline", min_cosine=None,
                      objective="energy")
    per = c.plan["totals"]["per_device"]
    total = sum(d["macs"] for d in per.values())
    assert total == 2039808  # 0.47 M attention/router/projection MACs + 1.57 M expert MACs
    assert per["asic"]["macs"] / total > 0.95
    assert all(o["device"] == "asic" for o in c.plan["ops"] if o["op"] == "grouped_linear")


def _differential(spec, monkeypatch=None):
    lm = load_model(spec)
    graph = export_graph(lm.module, lm.example_inputs, source=lm.name)
    run_passes(graph, [Canonicalize()])
    plan = {"devices": [{"name": "asic", "kind": "asic", "params": {}},
                        {"name": "cpu", "kind": "cpu", "params": {}}],
            "ops": [{"name": n.name, "device": "asic" if n.op in QUANT_KINDS else "cpu"}
                    for n in graph.nodes]}
    out = run_graph(graph, lm.example_inputs, impl=make_impl(graph, plan, quantize=False))[0]
    with torch.no_grad():
        ref = lm.module(*lm.example_inputs)
    return float((out - ref).abs().max() / ref.abs().max())


def test_wrong_routing_is_caught_by_the_differential(monkeypatch):
    assert _differential("mixtral-tiny") < 1e-5
    import compiler.execute as ex

    real = ex.expert_rows
    monkeypatch.setattr(ex, "expert_rows", lambda offs, e: real(offs, e)[::-1])  # experts swapped
    assert _differential("mixtral-tiny") > 1e-2


@pytest.mark.parametrize("factory", ["dense_loop", "expert_choice"])
def test_eager_moe_loops_compile_to_linears_on_the_asic(factory):
    c = compile_model(f"{MOE}:{factory}", "asic,cpu:mode=roofline", min_cosine=None)
    experts = [n for n in c.graph.nodes if n.op == "linear" and n.attrs["weight"] != "router.weight"]
    assert len(experts) == 12 and all(n.attrs["weight"].startswith(CONST_PREFIX) for n in experts)
    # expert choice: every expert runs on its capacity of 16 * 2 / 4 = 8 tokens, not all 16
    assert {n.attrs["m"] for n in experts} == ({8} if factory == "expert_choice" else {16})
    plan = c.plan
    for o in plan["ops"]:
        if o["quant"] is not None and o["op"] in ("linear", "softmax"):
            o["device"] = "asic"
    r = execute_plan(plan)
    assert r["cosine_min"] >= 0.999, r
    assert _differential(f"{MOE}:{factory}") < 1e-5


def test_data_dependent_expert_gather_names_the_op_and_line():
    with pytest.raises(UserValueError, match=r"op nonzero \(aten\.nonzero\.default, from the "
                                             r"model, at moe_model\.py:\d+\): dynamic dimension"):
        compile_model(f"{MOE}:token_loop", "asic,cpu:mode=roofline", min_cosine=None)


def test_transformers_eager_experts_name_the_loop_that_cannot_be_traced():
    from compiler.zoo import hf_tiny

    m, x = hf_tiny("mixtral")
    for layer in m.m.layers:  # transformers' eager experts: a Python loop over the experts hit
        layer.mlp.experts.config._experts_implementation = "eager"
    with pytest.raises(UserValueError, match=r"raised by modeling_mixtral\.py:\d+ `for expert_idx "
                                             r"in expert_hit:`"):
        export_graph(m, x, source="mixtral-eager")


# -- transformers' batched_mm experts: a gathered copy of the expert weights per row, bmm --------

@pytest.fixture(scope="module")
def batched():
    return compile_model(f"{MOE}:mixtral_batched_mm", "asic,cpu:mode=roofline", min_cosine=None,
                         objective="energy")


def test_batched_mm_experts_are_grouped_linears_routed_by_expert_index(batched, mixtral):
    """The ``bmm`` of ``W[expert_ids]`` with each row becomes a grouped_linear of the stacked
    parameter itself (no gathered copy, no per-tensor scale over all experts), routed by the
    expert index of each row: the same rows per expert as the grouped-matmul form of the same
    model on every calibration sample, the same MACs, on the accelerator."""
    g = batched.graph
    grouped = _grouped(g)
    assert [n.target for n in grouped] == [GATHERED_MM_TARGET] * 4
    assert not [n for n in g.nodes if n.op == "matmul" and "experts" in n.module]
    assert not [n for n in g.nodes if n.target == "aten.index.Tensor"
                and any(p.startswith("m.layers") and "proj" in p for p in
                        [getattr(a, "name", "") for a in n.args])]  # no gathered weight copies
    m = batched.model.module.m
    for n, w in zip(grouped, [m.layers[0].mlp.experts.gate_up_proj, m.layers[0].mlp.experts.down_proj,
                              m.layers[1].mlp.experts.gate_up_proj, m.layers[1].mlp.experts.down_proj],
                    strict=True):
        a = n.attrs
        assert a["w_layout"] == "enk" and a["ids_arg"] == 2 and (a["experts"], a["m"]) == (4, 32)
        assert g.params[a["weight"]] is w or torch.equal(g.params[a["weight"]], w.detach())
        assert len(grouped_qparams(g, n)) == 4  # int8 weights and requantizer per expert
    assert [n.attrs["expert_rows"] for n in grouped] == \
        [n.attrs["expert_rows"] for n in _grouped(mixtral.graph)]
    per = batched.plan["totals"]["per_device"]
    total = sum(d["macs"] for d in per.values())
    assert total == 2039808 and per["asic"]["macs"] / total > 0.95
    assert all(o["device"] == "asic" for o in batched.plan["ops"] if o["op"] == "grouped_linear")
    r = execute_plan(batched.plan, limit=2)  # every quantized op on the asic (energy)
    assert r["cosine_min"] > 0.998, r


def test_gathered_op_is_one_int8_linear_per_expert_on_its_scattered_rows(batched):
    """Each expert's rows (wherever they are) give exactly that expert's int8 ``linear``; an
    expert index outside the stacked experts is refused."""
    g = batched.graph
    n = _grouped(g)[1]  # layer 0's down projection, W [E, D, F]
    qs = grouped_qparams(g, n)
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([3, 0, 3, 2] * 8)  # expert 1 gets no rows
    plan = {"devices": [{"name": "asic", "kind": "asic", "params": {}}],
            "ops": [{"name": n.name, "device": "asic"}]}
    cap = {}
    impl = make_impl(g, plan, capture=cap)
    y = impl(n, (x, g.params[n.attrs["weight"]], ids, False), {}).reshape(32, -1)
    assert cap[n.name]["expert_rows"] == [8, 0, 8, 16]
    assert [len(c[0]) for c in cap[n.name]["gemms"]] == [8, 8, 16]
    for e in (0, 2, 3):
        rows = (ids == e).nonzero().reshape(-1)
        ql = qs[e]
        yq = gemm_int(quantize_tensor(x[rows], ql.in_scale), ql.wq, ql.bias, ql.mult, ql.shift)
        assert torch.equal(y[rows], (yq.to(torch.float64) * ql.out_scale).to(torch.float32))
    with pytest.raises(UserValueError, match=r"expert index 0\.\.4 outside 0\.\.3"):
        impl(n, (x, g.params[n.attrs["weight"]], torch.tensor([4, 0] * 16), False), {})


def test_wrong_gathered_routing_is_caught_by_the_differential(monkeypatch):
    spec = f"{MOE}:gathered_bmm"  # both layouts: W [E, N, K] up, W [E, K, N] down
    assert _differential(spec) < 1e-5
    import compiler.execute as ex

    real = ex.grouped_row_index
    monkeypatch.setattr(ex, "grouped_row_index", lambda *a: real(*a)[::-1])  # experts swapped
    assert _differential(spec) > 1e-2
