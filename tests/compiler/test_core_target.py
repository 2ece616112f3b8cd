"""The core as a compiler device: placement, programs in the plan, execution on the golden core."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from compiler.core_backend import CoreLoweringError
from compiler.core_run import core_regions, plan_programs
from compiler.driver import compile_model
from compiler.execute import execute_plan, rebuild_graph
from compiler.plan import check_plan
from compiler.targets import make_device
from golden.core import decode_program
from hw.core_model import program_timing

BLOCK = f"{Path(__file__).with_name('attn_block.py')}:block"


@pytest.fixture(scope="module")
def minilm_core():
    return compile_model("minilm", "core,cpu:mode=roofline", objective="energy")


def test_minilm_encoder_on_the_core(minilm_core):
    plan = minilm_core.plan
    dev = next(d for d in plan["devices"] if d["kind"] == "core")
    on_core = {o["op"] for o in plan["ops"] if o["device"] == "core"}
    assert {"linear", "attention", "gelu", "add", "layer_norm", "layout"} <= on_core
    progs = dev["hardware"]["programs"]
    body = max(progs, key=lambda p: len(p["ops"]))
    assert sum(1 for o in plan["ops"] if o["name"] in body["ops"] and o["op"] == "attention") == 6
    [unit] = dev["hardware"]["units"]
    assert unit["unit"] == "core" and set(unit["ops"]) == {
        o["name"] for o in plan["ops"] if o["device"] == "core"}
    # the recorded cycles are the timing model of the very program the plan references
    graph, _ = rebuild_graph(plan)
    for (_, prog), rec in zip(plan_programs(plan, graph), progs, strict=True):
        assert program_timing(decode_program(prog.program_bytes()), prog.cfg).cycles == \
            rec["predicted_cycles"]


def test_minilm_core_plan_executes_on_the_golden_core(minilm_core):
    r = execute_plan(minilm_core.plan, limit=2)
    assert r["ops_per_device"]["core"] >= 130
    assert r["cosine_mean"] > 0.98


def test_program_hash_mismatch_is_refused(minilm_core):
    plan = copy.deepcopy(minilm_core.plan)
    dev = next(d for d in plan["devices"] if d["kind"] == "core")
    dev["hardware"]["programs"][-1]["image_sha256"] = "0" * 64
    check_plan(plan)  # well-formed: only the content differs
    with pytest.raises(CoreLoweringError, match="content hash differs"):
        execute_plan(plan, limit=1)


def test_regions_split_around_host_ops():
    # matmul and softmax (not attention) have no core instruction: they run on the host and
    # the core runs one program per run of consecutive core ops
    c = compile_model(BLOCK, "core:rows=4:cols=4,cpu:mode=roofline", objective="energy")
    graph, _ = rebuild_graph(c.plan)
    regions = core_regions(c.plan, graph)
    assert len(regions) >= 2
    kinds = {d["name"]: d["kind"] for d in c.plan["devices"]}
    placed = {o["name"]: kinds[o["device"]] for o in c.plan["ops"]}
    assert all(placed[n] == "core" for _, names in regions for n in names)
    assert {o["op"] for o in c.plan["ops"] if placed[o["name"]] == "cpu"} >= {"matmul", "softmax"}
    r = execute_plan(c.plan, limit=2)
    assert r["cosine_mean"] > 0.97


def test_core_device_errors():
    with pytest.raises(Exception, match="unknown parameter 'wat=1'"):
        make_device("core:wat=1")
    with pytest.raises(Exception, match="rows must be at most 64"):
        make_device("core:rows=65")
    d = make_device("core")
    assert d.kind == "core" and d.integer


def test_causal_decoder_on_the_core_keeps_attention_on_the_host():
    """GPT-2 on the core: a layout the core cannot trace on addresses is refused per op (it used
    to crash the compile with an IndexError) and causal attention is refused at compile time (it
    used to compile and fail in execute: the core's SOFTMAX masks keys only)."""
    c = compile_model("gpt2-tiny", "core,cpu:mode=roofline", objective="energy", calib=4)
    plan = c.plan
    att = [f for f in plan["fallback_ops"] if f["kind"] == "attention"]
    assert att and all("causal" in f["reason"] for f in att)
    on_core = {o["op"] for o in plan["ops"] if o["device"] == "core"}
    assert "linear" in on_core and "attention" not in on_core
    assert execute_plan(plan, n_random=1)["cosine_min"] > 0.99
