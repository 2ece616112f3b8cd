"""The plan's hardware is the registry's: units, ids, params, resources, and plan validation."""

import copy
from pathlib import Path

import pytest

from compiler.driver import compile_model, prepare_graph
from compiler.frontend import load_model
from compiler.plan import check_plan
from compiler.schema import SchemaError
from compiler.targets import make_device
from hw.gemm import gemm_dsps
from hw.registry import spec_from_json

BLOCK = f"{Path(__file__).with_name('attn_block.py')}:block"


@pytest.fixture(scope="module")
def block_graph():
    return prepare_graph(load_model(BLOCK, None))[0]


def test_fpga_lists_one_instance_per_nonlinear_op_with_measured_dsps(block_graph):
    t = make_device("ulx3s-85f")
    t.configure(block_graph)
    hw = t.hardware(list(block_graph.nodes))  # as if every op were placed on the board
    ids = [u["id"] for u in hw["units"]]
    assert ids == ["gemm", "layer_norm.layer_norm", "softmax.softmax", "layer_norm.layer_norm_1"]
    g = hw["units"][0]
    assert g["predicted"]["dsps"] == gemm_dsps(g["params"]["rows"], g["params"]["cols"], True, "ecp5")
    for u in hw["units"]:
        spec = spec_from_json(u["unit"], u["params"])  # the params rebuild the unit
        assert u["predicted"]["dsps"] == spec.resources("ecp5")["dsps"]
        assert u["module"] == type(spec).component
    assert hw["resources_used"]["dsps"] == sum(u["predicted"]["dsps"] for u in hw["units"])
    # the DSPs left beside the array are what nonlinear instances may spend
    assert t.capacity["dsps"] == 156 - g["predicted"]["dsps"]
    # the two layer norms have their own gamma/beta: two instances, different constants
    ln = [u for u in hw["units"] if u["unit"] == "layernorm"]
    assert ln[0]["params"]["gamma_int"] != ln[1]["params"]["gamma_int"]


def test_layout_ops_are_host_ops(block_graph):
    for name in ("asic", "ulx3s-85f"):
        t = make_device(name)
        t.configure(block_graph)
        lay = [n for n in block_graph.nodes if n.op == "layout"]
        assert lay and all(not t.supports(n).ok for n in lay)
        assert "no loader unit" in t.supports(lay[0]).reason


def test_plan_validation_rejects_hardware_that_cannot_be_built():
    plan = compile_model(BLOCK, "asic:rows=4:cols=4,cpu:mode=roofline", objective="energy").plan
    check_plan(plan)

    def broken(edit):
        p = copy.deepcopy(plan)
        edit(p)
        with pytest.raises(SchemaError) as e:
            check_plan(p)
        return str(e.value)

    units = lambda p: p["devices"][0]["hardware"]["units"]  # noqa: E731
    assert "units[0].params" in broken(lambda p: units(p)[0]["params"].update(rows=0))
    assert "unknown gemm parameter" in broken(lambda p: units(p)[0]["params"].update(lanes=2))
    assert "unknown unit" in broken(lambda p: units(p)[1].update(unit="relu"))
    assert "hw.softmax.Softmax" in broken(lambda p: units(p)[2].update(module="hw.relu"))
    assert "does not list" in broken(lambda p: next(
        o for o in p["ops"] if o["op"] == "softmax")["lowering"].update(unit="softmax.nope"))
    assert "does not run op" in broken(lambda p: next(
        o for o in p["ops"] if o["op"] == "softmax")["lowering"].update(unit="gemm"))
    assert "duplicate unit id" in broken(lambda p: units(p)[2].update(id="gemm"))


def test_llama_rmsnorm_and_silu_get_their_units_and_run_bit_exactly():
    """llama-tiny's RMSNorms and SwiGLU SiLUs go on the ASIC's rmsnorm / silu instances (one per
    op, the op's own gamma/eps or scales), priced by their cycle models; the executor's integer
    results are what those units compute."""
    import torch

    from compiler.execute import capture_operands
    from hw.rmsnorm import rmsnorm_cycles
    from hw.silu import silu_cycles

    c = compile_model("llama-tiny", "asic,cpu:mode=roofline", objective="energy")
    ops = [o for o in c.plan["ops"] if o["op"] in ("rms_norm", "silu")]
    assert sorted(o["op"] for o in ops) == ["rms_norm"] * 5 + ["silu"] * 2
    assert all(o["device"] == "asic" for o in ops), [(o["name"], o["device"]) for o in ops]
    asic = next(d for d in c.plan["devices"] if d["name"] == "asic")
    units = {u["id"]: u for u in asic["hardware"]["units"]}
    specs = {}
    for o in ops:
        u = units[o["lowering"]["unit"]]
        kind = {"rms_norm": "rmsnorm", "silu": "silu"}[o["op"]]
        assert (u["unit"], u["ops"], u["module"]) == (kind, [o["name"]], f"hw.{kind}." +
                                                      {"rmsnorm": "RmsNorm", "silu": "Silu"}[kind])
        spec = specs[o["name"]] = spec_from_json(u["unit"], u["params"])
        *lead, length = o["out"][0]["shape"]
        rows = int(torch.tensor(lead).prod())
        model = rmsnorm_cycles if kind == "rmsnorm" else silu_cycles
        assert o["cycles"] == spec.cycles(rows=rows, length=length) == model(rows, length, 1)
        assert u["predicted"]["dsps"] == spec.resources("asic")["dsps"]
    # the five norms have their own gamma: five instances with different constants
    gammas = {specs[o["name"]].gamma_int for o in ops if o["op"] == "rms_norm"}
    assert len(gammas) == 5
    cap = capture_operands(c.plan, list(specs))
    for name, spec in specs.items():
        x, y = cap[name]["x"], cap[name]["y"]
        assert torch.equal(spec.reference(x), y), name


def test_fpga_places_rmsnorm_and_silu_with_their_dsps():
    g = prepare_graph(load_model("llama-tiny", None))[0]
    t = make_device("ulx3s-85f")
    t.configure(g)
    nodes = [n for n in g.nodes if n.op in ("rms_norm", "silu")]
    assert len(nodes) == 7 and all(t.supports(n).ok for n in nodes)
    hw = t.hardware(nodes)
    assert [u["unit"] for u in hw["units"]] == ["rmsnorm" if n.op == "rms_norm" else "silu"
                                                for n in nodes]
    for n, u in zip(nodes, hw["units"], strict=True):
        spec = spec_from_json(u["unit"], u["params"])
        assert u["predicted"]["dsps"] == spec.resources("ecp5")["dsps"]
        assert t.cost(n, g).resources == {"dsps": u["predicted"]["dsps"]}
    assert {u["unit"]: u["predicted"]["dsps"] for u in hw["units"]} == {"rmsnorm": 9, "silu": 0}
