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
