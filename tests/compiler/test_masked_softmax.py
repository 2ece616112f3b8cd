"""A causal mask's sentinel values stay out of the softmax input scale, and the integer softmax
takes them as its mask.

Before: the -1e4 mask set the input scale to 1e4 / 127 = 78.7, every real logit quantized to 0
and each row came out uniform over the whole row, future positions included (cosine 0.956 with
every quantized op on the ASIC; 0.9994 now); the -inf mask failed with "scale inf"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compiler.driver import compile_model
from compiler.execute import execute_plan
from compiler.passes.quantize import MASK_SENTINEL, softmax_keep

FILE = Path(__file__).with_name("causal_model.py")


@pytest.mark.parametrize("factory", ["causal_1e4", "causal_inf"])
def test_causal_softmax_scale_and_mask(factory):
    c = compile_model(f"{FILE}:{factory}", "asic,cpu:mode=roofline")
    (sm,) = [n for n in c.graph.nodes if n.op == "softmax"]
    # the real logits of the example: absmax over the allowed (non-future) positions
    from compiler.interp import run_graph

    seen = {}
    run_graph(c.graph, c.model.example_inputs,
              observe=lambda n, v, a: seen.setdefault(n.name, v) if n.name == sm.inputs[0] else None)
    x = seen[sm.inputs[0]]
    real = x[softmax_keep(x)]
    assert int((~softmax_keep(x)).sum()) == 4 * 16 * 15 // 2  # the future positions
    s_in = sm.attrs["quant"]["in_scales"][0]
    assert float(real.abs().max()) / 127 <= s_in < 0.1  # was 78.7
    plan = c.plan
    for o in plan["ops"]:
        if o["quant"] is not None:
            o["device"] = "asic"
    r = execute_plan(plan)
    assert r["cosine_min"] >= 0.995, r


def test_sentinel_threshold():
    x = torch.tensor([0.0, -999.0, MASK_SENTINEL, -1e4, -1e9, float("-inf"),
                      torch.finfo(torch.float32).min, 5.0])
    assert softmax_keep(x).tolist() == [True, True, False, False, False, False, False, True]
