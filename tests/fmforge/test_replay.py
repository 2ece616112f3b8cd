"""The executor replayed on the RTL: every accelerator op of a compiled plan through its unit.

The plan's unit parameters build the units; the executor records each op's integer operands;
the RTL must produce the executor's result bit for bit with the cycles its model predicts, and
the plan's price of the op must be the same model (compute plus operand loads).
"""

import json
from pathlib import Path

import pytest

from compiler.driver import compile_model
from compiler.plan import dumps_plan, load_plan
from fmforge.cli import main
from fmforge.commands.cosim import replay_plan_op, replay_plan_ops
from hw.registry import spec_from_json

BLOCK = f"{Path(__file__).parents[1] / 'compiler' / 'attn_block.py'}:block"
DEVICE = "asic:rows=4:cols=4"


@pytest.fixture(scope="module")
def block_plan(tmp_path_factory) -> Path:
    # energy objective: every op a unit computes lands on the accelerator (the host costs 15 W)
    c = compile_model(BLOCK, f"{DEVICE},cpu:mode=roofline", objective="energy", min_cosine=None)
    p = tmp_path_factory.mktemp("replay") / "block.json"
    p.write_text(dumps_plan(c.plan))
    return p


def _timing_exact(r, name):
    """The testbench's own clock-edge counts against the unit's end-to-end model."""
    if r["unit_kind"] == "gemm":
        assert r["timing_ok"], name  # every stall mode: compute window exact (sim.gemm_bench)
        if r["stall"] == "none":  # no stalls: first operand word to last row, loads included
            assert r["tb_cycles"] == r["predicted_total_cycles"] == r["plan_cycles"], name
    else:
        assert r["tb_cycles"] == r["tb_predicted_cycles"], name


def _accel_ops(plan):
    return [o for o in plan["ops"] if o["device"] == DEVICE]


def test_block_places_every_unit_kind(block_plan):
    plan = load_plan(block_plan)
    kinds = {o["op"] for o in _accel_ops(plan)}
    assert kinds == {"linear", "matmul", "softmax", "layer_norm"}
    dev = next(d for d in plan["devices"] if d["name"] == DEVICE)
    ids = [u["id"] for u in dev["hardware"]["units"]]
    assert ids == ["gemm", "layer_norm.layer_norm", "softmax.softmax", "layer_norm.layer_norm_1"]
    for u in dev["hardware"]["units"]:  # every unit builds from its listed parameters
        spec = spec_from_json(u["unit"], u["params"])
        assert spec.to_json() == u["params"]
        assert "module" in spec.verilog(u["id"].replace(".", "_"))


@pytest.mark.parametrize("stall", ["none", "both"])
def test_every_accelerator_op_replays_bit_exact(block_plan, stall):
    plan = load_plan(block_plan)
    ops = _accel_ops(plan)
    res = replay_plan_ops(str(block_plan), [o["name"] for o in ops], stall=stall, seed=3,
                          simulator="amaranth")
    for o, r in zip(ops, res, strict=True):
        assert r["match"], (o["name"], r["mismatches"])
        _timing_exact(r, o["name"])
        assert r["golden_matches_executor"]
        assert r["cycles"] == r["predicted_cycles"], o["name"]
        # the plan prices the op by the same unit model: compute, plus loads for GEMMs
        assert r["predicted_cycles"] + r.get("load_cycles", 0) == o["cycles"], o["name"]


def test_replay_detects_a_unit_that_disagrees_with_the_executor(block_plan, tmp_path):
    """A plan whose layer-norm unit was built with other constants than the executor uses
    (gamma halved) must not replay as a match."""
    plan = json.loads(block_plan.read_text())
    dev = next(d for d in plan["devices"] if d["name"] == DEVICE)
    u = next(u for u in dev["hardware"]["units"] if u["id"] == "layer_norm.layer_norm")
    u["params"]["gamma_int"] = [g // 2 for g in u["params"]["gamma_int"]]
    bad = tmp_path / "bad.json"
    bad.write_text(dumps_plan(plan))
    r = replay_plan_op(str(bad), "layer_norm", simulator="amaranth")
    assert not r["match"] and not r["golden_matches_executor"]


def test_cosim_plan_cli_verilator(block_plan, capsys):
    rc = main(["cosim", "--plan", str(block_plan), "--op", "softmax", "--stall", "both", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0 and r["match"] and r["cycles"] == r["predicted_cycles"]
    assert (r["op"], r["unit"], r["unit_kind"]) == ("softmax", "softmax.softmax", "softmax")


def test_cosim_plan_cli_errors(block_plan, capsys):
    assert main(["cosim", "--plan", str(block_plan), "--op", "permute", "--json"]) == 2
    err = capsys.readouterr().err
    assert "permute" in err and "nothing to co-simulate" in err
    assert main(["cosim", "--plan", str(block_plan), "--op", "nope"]) == 2
    assert "no op 'nope'" in capsys.readouterr().err
    assert main(["cosim", "--plan", str(block_plan)]) == 2


def test_verilog_plan_writes_every_unit(block_plan, tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["verilog", "--plan", str(block_plan), "--device", DEVICE, "-o", str(out),
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(Path(u["verilog"]).name for u in r["units"])
    assert len(names) == 4
    assert main(["verilog", "--plan", str(block_plan), "--device", "cpu", "-o",
                 str(tmp_path / "w")]) == 2
    assert not (tmp_path / "w").exists()


MINILM_DEVICE = "asic:rows=8:cols=8:sram_kb=512"
#: MiniLM layer 0 (attention projections, output, FFN up, the int16 FFN down, both layer norms)
LAYER0 = ["linear", "linear_1", "linear_2", "linear_3", "layer_norm_1", "linear_4", "linear_5",
          "layer_norm_2"]


@pytest.fixture(scope="module")
def minilm_plan(tmp_path_factory) -> Path:
    # placed on cost alone (no accuracy budget): the replay needs the layer norms on the asic
    c = compile_model("minilm", f"{MINILM_DEVICE},cpu:mode=roofline", objective="energy",
                      min_cosine=None)
    p = tmp_path_factory.mktemp("replay") / "minilm.json"
    p.write_text(dumps_plan(c.plan))
    return p


@pytest.mark.slow
def test_minilm_layer_replays_bit_exact(minilm_plan):
    """One MiniLM encoder layer, every op of it on the accelerator, on its real operands:
    GEMMs on Verilator (one engine build), the layer norms on the Amaranth simulator (each
    instance is its own build: its gamma/beta are elaboration constants)."""
    plan = load_plan(minilm_plan)
    ops = {o["name"]: o for o in plan["ops"]}
    assert all(ops[n]["device"] == MINILM_DEVICE for n in LAYER0)
    assert ops["linear_5"]["quant"]["in_bits"] == 16  # the two-pass FFN down-projection
    res = replay_plan_ops(str(minilm_plan), LAYER0, sentence=5,
                          simulator={"gemm": "verilator", "layernorm": "amaranth"})
    for name, r in zip(LAYER0, res, strict=True):
        assert r["match"] and r["golden_matches_executor"], (name, r["mismatches"])
        assert r["cycles"] == r["predicted_cycles"], name
        _timing_exact(r, name)
        assert r["predicted_cycles"] + r.get("load_cycles", 0) == ops[name]["cycles"], name


#: mixtral-tiny on 4 tokens: its experts' GEMMs (8 routed rows) on a 4 x 4 engine
MOE_DEVICE = "asic:rows=4:cols=4"


@pytest.fixture(scope="module")
def moe_plan(tmp_path_factory) -> Path:
    c = compile_model("mixtral-tiny", f"{MOE_DEVICE},cpu:mode=roofline", objective="energy",
                      seq_len=4, min_cosine=None)
    p = tmp_path_factory.mktemp("replay") / "mixtral.json"
    p.write_text(dumps_plan(c.plan))
    return p


def test_expert_gemms_replay_per_expert_on_verilator(moe_plan):
    """A grouped_linear (layer 0's expert down projections): each expert's routed rows as one
    engine GEMM with that expert's weights and requantizer, bit-exact against the executor and
    cycle-exact against the engine model; the plan's model of this input's routing is the
    measured compute plus loads, and the plan's price is that model averaged over the
    calibration samples' routings it records."""
    plan = load_plan(moe_plan)
    o = next(o for o in plan["ops"] if o["name"] == "grouped_mm_fallback_1")
    assert (o["op"], o["device"], o["lowering"]["unit"]) == ("grouped_linear", MOE_DEVICE, "gemm")
    assert len(o["lowering"]["expert_rows"]) == 16 and all(sum(r) == 8 for r in
                                                           o["lowering"]["expert_rows"])
    r = replay_plan_op(str(moe_plan), o["name"])
    assert r["match"] and r["golden_matches_executor"], r["mismatches"]
    assert r["cycles"] == r["predicted_cycles"] and r["timing_ok"]
    rows = r["expert_rows"]
    assert len(rows) == 4 and sum(rows) == 8
    ran = [e for e in r["experts"] if e["rows"]]
    assert [g["m"] for g in r["gemms"]] == [e["rows"] for e in ran]
    assert {(g["k"], g["n"]) for g in r["gemms"]} == {(128, 64)}
    assert all(e["match"] and e["cycles"] == e["predicted_cycles"] for e in ran)
    assert r["commands"] == len(ran)  # rows <= max_m, N <= max_n: one command per expert
    # no stalls: the testbench's edges from the first operand word to the last row, loads
    # included, are the plan's model of this routing
    assert r["tb_cycles"] == r["predicted_total_cycles"] == r["routed_plan_cycles"] \
        == r["cycles"] + r["load_cycles"]
    assert r["plan_cycles_from_routings"] == o["cycles"] == r["plan_cycles"]
