"""Custom (non-ATen) operators: compiled with the operator on the host, executed exactly; an op
with nowhere to run is named with its model source line. transformers' default MoE block (its
grouped matmul is a custom operator) is recognised as a ``grouped_linear`` that an accelerator
runs (test_moe.py)."""

from pathlib import Path

import pytest

from compiler.driver import compile_model
from compiler.execute import execute_plan
from compiler.partition import NoDeviceError

MODEL = f"{Path(__file__).with_name('custom_op_model.py')}:model"


def test_custom_operator_runs_on_the_host():
    c = compile_model(MODEL, "asic,cpu:mode=roofline")
    ops = {o["target"]: o for o in c.plan["ops"]}
    assert ops["fmforge_test.twice.default"]["device"].startswith("cpu")
    r = execute_plan(c.plan, limit=2)
    assert r["cosine_min"] > 0.999


def test_op_with_nowhere_to_run_names_its_source_line():
    with pytest.raises(NoDeviceError, match=r"op twice \(other, fmforge_test\.twice\.default, "
                                            r"from the model, at custom_op_model\.py:\d+\) has "
                                            r"nowhere to run: asic: .*; add cpu or gpu"):
        compile_model(MODEL, "asic")


def test_mixtral_default_moe_block_compiles_and_executes():
    c = compile_model("mixtral-tiny", "asic,cpu:mode=roofline")
    grouped = [o for o in c.plan["ops"] if o["target"] == "transformers.grouped_mm_fallback.default"]
    assert len(grouped) == 4  # gate-up and down of each layer's experts
    assert {o["op"] for o in grouped} == {"grouped_linear"}
    r = execute_plan(c.plan, limit=2)
    assert r["cosine_min"] > 0.95
