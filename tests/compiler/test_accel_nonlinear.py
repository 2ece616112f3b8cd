"""Integer softmax and layer norm placed on an accelerator (hw/softmax.py, hw/layernorm.py),
and the sparse-attention hook on MiniLM."""

from pathlib import Path

import pytest
import torch

from compiler.driver import compile_model
from compiler.execute import execute_plan, make_impl, rebuild_graph
from compiler.interp import float_impl, run_graph
from compiler.passes.sparsify import parse_sparse_spec
from hw.registry import spec_from_json

BLOCK = f"{Path(__file__).with_name('attn_block.py')}:block"


def test_softmax_layernorm_on_asic_execute_within_bound():
    c = compile_model(BLOCK, "asic,cpu:mode=roofline")
    placed = {o["op"]: o["device"] for o in c.plan["ops"] if o["op"] in ("softmax", "layer_norm")}
    assert placed == {"softmax": "asic", "layer_norm": "asic"}
    asic = next(d for d in c.plan["devices"] if d["name"] == "asic")
    units = {u["id"]: u for u in asic["hardware"]["units"]}
    for o in c.plan["ops"]:
        if o["op"] in ("softmax", "layer_norm"):  # rows x length from its unit's cycle model
            u = units[o["lowering"]["unit"]]
            assert o["lowering"]["impl"] in ("golden.softmax.softmax_int",
                                             "golden.layernorm.layernorm_int")
            assert u["ops"] == [o["name"]]  # one instance per op: its constants are its own
            *lead, length = o["out"][0]["shape"]
            spec = spec_from_json(u["unit"], u["params"])
            assert o["cycles"] == spec.cycles(rows=int(torch.tensor(lead).prod()), length=length)
    # per op: the golden integer unit against PyTorch float on the same (float) inputs;
    # bounds: softmax 3/256 (output LSB 1/256: rounding + integer exp), layer norm 4 output LSB
    # plus the input quantization (one input LSB over the row std, times |gamma|)
    graph, lm = rebuild_graph(c.plan)
    impl = make_impl(graph, c.plan)
    errs: dict[str, float] = {}

    def observe(node, val, args):
        if node.op in ("softmax", "layer_norm"):
            ref = float_impl(node, args, {})
            e = float((val - ref).abs().max())
            q = node.attrs["quant"]
            lsb = 1 / 256 if node.op == "softmax" else q["out_scale"]
            errs[node.name] = e / lsb

    run_graph(graph, lm.example_inputs, impl=impl, observe=observe)
    assert set(errs) == {"softmax", "layer_norm", "layer_norm_1"}
    assert errs["softmax"] <= 3
    assert max(errs["layer_norm"], errs["layer_norm_1"]) <= 6
    r = execute_plan(c.plan, limit=4)
    # the transpose is a layout op: no loader unit in hw/, so it runs on the host
    assert r["ops_per_device"] == {"asic": 9, "cpu:mode=roofline": 1}
    assert r["cosine_min"] >= 0.99


def test_parse_sparse_spec():
    assert parse_sparse_spec("sanger:threshold=0.02") == ("sanger", {"threshold": 0.02})
    assert parse_sparse_spec("spatten") == ("spatten", {})
    with pytest.raises(ValueError, match="knob=value"):
        parse_sparse_spec("sanger:0.02")


def test_sanger_on_minilm_attention():
    c = compile_model("minilm", "asic,cpu:mode=roofline", sparse="sanger:threshold=0.02")
    att = [o for o in c.plan["ops"] if o["op"] == "attention"]
    assert len(att) == 6 and all(o["sparse_filter"]["name"] == "sanger" for o in att)
    assert [o["sparse_filter"]["layer"] for o in att] == list(range(6))
    r = execute_plan(c.plan, limit=3)
    assert 0.05 < r["sparse_keep_ratio"] < 0.9
    # bound: Sanger at threshold 0.02 drops keys whose predicted probability is < 2%; the dense
    # integer plan is at >= 0.99 (test_pipeline), the filter may cost at most 0.04 more
    assert r["cosine_min"] >= 0.95
    with pytest.raises(ValueError, match="sanger"):
        compile_model("encoder-tiny", "cpu:mode=roofline", sparse="sanger:threshold=2")


def test_elsa_calibrates_on_the_calibration_split_and_the_plan_carries_it():
    import json
    c = compile_model("encoder-tiny", "asic,cpu:mode=roofline", sparse="elsa:p=1")
    att = [o["sparse_filter"] for o in c.plan["ops"] if o["op"] == "attention"]
    cal = att[0]["calibration"]
    assert len(att) == 2 and all(a["calibration"] == cal for a in att)
    assert len(cal["thresholds"]) == 2 and all(0 < t < 1 for t in cal["thresholds"])
    plan = json.loads(json.dumps(c.plan))  # the executor reads the thresholds from the plan
    r = execute_plan(plan, limit=4)
    assert 0.05 < r["sparse_keep_ratio"] < 0.9 and r["cosine_min"] > 0.95
    # inputs in forked workers: their keep counts merged, the same report
    assert execute_plan(plan, limit=4, jobs=2) == r
    # a different calibration in the plan changes the mask: the executor uses it, not its own
    for o in plan["ops"]:
        if o["op"] == "attention":
            o["sparse_filter"]["calibration"] = {"thresholds": [0.0, 0.0]}
    assert execute_plan(plan, limit=4)["sparse_keep_ratio"] > r["sparse_keep_ratio"]
    for o in plan["ops"]:
        if o["op"] == "attention":
            o["sparse_filter"]["calibration"] = {"bogus": 1}
    with pytest.raises(ValueError, match="unknown attribute 'bogus'"):
        execute_plan(plan, limit=1)


def test_sparse_attention_is_not_placed_on_the_dense_core_and_filter_units_size_from_ops():
    from compiler.ir import Node
    from compiler.passes.sparsify import filter_units
    c = compile_model("encoder-tiny", "core,cpu:mode=roofline", sparse="energon")
    att = [o for o in c.plan["ops"] if o["op"] == "attention"]
    assert att and all(not o["device"].startswith("core") for o in att)
    core = next(d for d in c.plan["devices"] if d["kind"] == "core")
    assert not [u for u in core["hardware"]["units"] if u["unit"].startswith("sparse")]
    # a device that runs filtered attention lists the filter unit, sized for its largest op
    ops = [Node(name=f"a{i}", op="attention", target="t", args=(), kwargs={}, out=(),
                attrs={"bh": 12, "l": 20, "s": s, "d": 32,
                       "sparse_filter": {"name": "spatten", "params": {}, "layer": i}})
           for i, s in enumerate((20, 24))]
    (u,) = filter_units(ops)
    assert u["unit"] == "sparse_spatten" and u["ops"] == ["a0", "a1"]
    assert u["params"]["max_tokens"] == 24 and u["params"]["max_heads"] == 12
    assert u["params"]["token_bits"] == (255 * 12 * 20 * 2).bit_length()
    spec = spec_from_json("sparse_spatten", u["params"])
    assert spec.resources("asic") == u["predicted"]
    for o in ops:
        o.attrs["sparse_filter"] = {"name": "sanger", "params": {"threshold": 0.02, "bits": 6}}
    (u,) = filter_units(ops)
    assert u["unit"] == "sparse_sanger" and u["params"]["bits"] == 6
    assert (u["params"]["dim"], u["params"]["max_keys"]) == (32, 24)
