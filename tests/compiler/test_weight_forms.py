"""GEMM weights that are not plain parameters run correctly on the accelerator.

Each model of ``weight_forms.py`` is compiled for ``asic,cpu``, every quantized op is moved to the
ASIC in the plan, and the executor's output must match the float model (cosine >= 0.999 over
the example input and 3 seeded variants). Before weight folding and the transposed dynamic
matmul, the square weight-norm case ran ``x @ W`` without its bias at cosine 0.006, the wide
one failed inside the executor, and ``W @ x`` quantized W with x's scale (cosine 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compiler.driver import compile_model
from compiler.execute import execute_plan
from compiler.ir import Param
from compiler.passes.canonicalize import CONST_PREFIX

FILE = Path(__file__).with_name("weight_forms.py")


def _on_asic(factory: str) -> tuple[dict, dict]:
    c = compile_model(f"{FILE}:{factory}", "asic,cpu:mode=roofline")
    plan = c.plan
    for o in plan["ops"]:
        if o["quant"] is not None:
            o["device"] = "asic"
    return plan, execute_plan(plan), c.graph


@pytest.mark.parametrize("factory", ["weight_norm_square", "weight_norm_wide", "experts",
                                     "fused_qk"])
def test_weights_computed_from_parameters_fold_into_linears(factory):
    plan, res, graph = _on_asic(factory)
    lin = [n for n in graph.nodes if n.op == "linear"]
    assert lin and not [n for n in graph.nodes if n.op == "matmul"]
    for n in lin:  # a folded weight and bias: per-channel int8 weights, int32 bias
        assert n.attrs["weight"].startswith(CONST_PREFIX) and n.attrs["bias"]
        assert [o["device"] for o in plan["ops"] if o["name"] == n.name] == ["asic"]
    assert res["cosine_min"] >= 0.999, res


def test_folded_weight_is_the_computed_one():
    _, _, graph = _on_asic("weight_norm_wide")
    from tests.compiler.weight_forms import weight_norm_wide

    m, _ = weight_norm_wide()
    (n,) = [n for n in graph.nodes if n.op == "linear"]
    w = graph.params[n.attrs["weight"]]
    assert w.shape == (96, 64) and n.attrs["w_layout"] == "nk"
    assert torch.allclose(w, m.g * m.v / m.v.norm(dim=1, keepdim=True))


def test_parameter_on_the_left_has_its_own_scale():
    plan, res, graph = _on_asic("left_weight")
    (n,) = [n for n in graph.nodes if n.op == "matmul"]
    assert isinstance(n.args[0], Param)
    w = graph.params[n.args[0].name]
    assert n.attrs["quant"]["in_scales"][0] == pytest.approx(float(w.abs().max()) / 127)
    assert n.attrs["quant"]["in_scales"][1] > 50 * n.attrs["quant"]["in_scales"][0]
    assert res["cosine_min"] >= 0.999, res


def test_linear_with_a_computed_weight_is_transposed_with_bias():
    plan, res, graph = _on_asic("hyper")
    (n,) = [n for n in graph.nodes if n.op == "matmul"]
    assert n.target == "aten.linear.default" and n.attrs["transpose_b"]
    assert (n.attrs["m"], n.attrs["k"], n.attrs["n"]) == (16, 48, 80)
    assert res["cosine_min"] >= 0.999, res
