"""Core backend: MiniLM's encoder lowered to a core program, run on the golden core, checked
against independent compositions of the unit golden models and against float."""

from __future__ import annotations

import json
import math

import pytest
import torch

from compiler.core_backend import CoreLoweringError, lower_region
from compiler.core_run import encoder_region
from compiler.driver import compile_model
from compiler.execute import plan_inputs, rebuild_graph
from compiler.interp import run_graph
from compiler.passes.quantize import linear_qparams, quantize_tensor
from golden.core import check_races
from golden.gemm import gemm_int
from golden.requant import quantize_multiplier
from golden.softmax import softmax_int, softmax_params
from hw.core_model import CoreConfig, program_timing


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    c = compile_model("minilm", "asic,cpu:mode=roofline")
    p = tmp_path_factory.mktemp("core") / "p.json"
    p.write_text(json.dumps(c.plan))
    graph, lm = rebuild_graph(c.plan)
    vals: dict[str, torch.Tensor] = {}
    run_graph(graph, plan_inputs(lm, 1), observe=lambda n, v, a: vals.__setitem__(n.name, v))
    return c.plan, graph, vals, p


def _layer0(graph):
    names = [n.name for n in graph.nodes]
    return names[names.index("linear"):names.index("layer_norm_2") + 1]


def test_linear_tiles_bit_exact(minilm):
    _, g, vals, _ = minilm
    # a small scratchpad forces several double-buffered weight tiles
    prog = lower_region(g, ["linear_4"], CoreConfig(sp_bytes=64 * 1024))
    gemms = [i for i in prog.instrs if i.op == "GEMM"]
    assert len(gemms) >= 4
    check_races(prog.instrs)
    outs, mem = prog.run({"layer_norm_1": vals["layer_norm_1"]})
    ql = linear_qparams(g, g.node("linear_4"))
    xq = quantize_tensor(vals["layer_norm_1"], ql.in_scale).reshape(-1, ql.wq.shape[0])
    want = gemm_int(xq, ql.wq, ql.bias, ql.mult, ql.shift)
    v = prog.outputs["linear_4"]
    got = torch.round(outs["linear_4"].double().reshape(want.shape) / v.scale).long()
    assert torch.equal(got, want)


def test_attention_heads_bit_exact(minilm):
    _, g, vals, _ = minilm
    names = _layer0(g)
    region = names[:names.index("scaled_dot_product_attention") + 1]
    prog = lower_region(g, region, CoreConfig(), outputs=["linear", "linear_1", "linear_2",
                                                          "scaled_dot_product_attention"])
    check_races(prog.instrs)
    outs, _ = prog.run({k: vals[k] for k in prog.inputs})
    o = prog.outputs
    q, k, v = (torch.round(outs[n].double() / o[n].scale).long().reshape(32, 12, 32)
               .permute(1, 0, 2) for n in ("linear", "linear_1", "linear_2"))
    mask = vals["expand"].reshape(-1, 32)[0]
    sm = softmax_params(o["linear"].scale * o["linear_1"].scale *
                        g.node("scaled_dot_product_attention").kwargs["scale"])
    s_out = o["scaled_dot_product_attention"].scale
    mult, shift = quantize_multiplier(o["linear_2"].scale / 128 / s_out)
    for h in range(12):
        logits = gemm_int(q[h], k[h].T)
        p = softmax_int(logits, sm, mask.expand(32, 32))
        p7 = torch.clamp((p + 1) >> 1, max=127)
        want = gemm_int(p7, v[h], None, torch.full((32,), mult), torch.full((32,), shift))
        got = torch.round(outs["scaled_dot_product_attention"][0, h].double() / s_out).long()
        assert torch.equal(got, want), f"head {h}"


def test_layer_matches_float_and_timing(minilm):
    _, g, vals, _ = minilm
    cfg = CoreConfig()
    prog = lower_region(g, _layer0(g), cfg, outputs=["layer_norm_2"])
    check_races(prog.instrs)
    outs, _ = prog.run({k: vals[k] for k in prog.inputs})
    a, b = outs["layer_norm_2"].flatten().double(), vals["layer_norm_2"].flatten().double()
    assert float(torch.nn.functional.cosine_similarity(a[None], b[None])[0]) > 0.99
    t = program_timing(prog.instrs, cfg)
    # the matrix queue cannot finish before its own work, nor the program before its longest queue
    assert t.cycles >= max(t.busy.values())
    assert t.busy["M"] == sum(t.end[i] - t.start[i] for i, ins in enumerate(prog.instrs[:-1])
                              if ins.op == "GEMM")
    assert prog.digest() == lower_region(g, _layer0(g), cfg, outputs=["layer_norm_2"]).digest()


def test_scratchpad_overflow_names_op(minilm):
    _, g, _, _ = minilm
    with pytest.raises(CoreLoweringError, match=r"op linear_4 \(linear\): scratchpad overflow"):
        lower_region(g, ["linear_4"], CoreConfig(sp_bytes=1024))


def test_encoder_region_is_the_body(minilm):
    _, g, _, _ = minilm
    r = encoder_region(g)
    assert r[0] == "linear" and g.node(r[-1]).op == "layer_norm"
    assert sum(g.node(n).op == "attention" for n in r) == 6


def test_run_cli_golden(minilm, tmp_path):
    from fmforge.cli import main
    _, _, _, plan = minilm
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["run", str(plan), "--limit", "2", "--json", "-o", str(tmp_path / "out")])
    assert rc == 0
    r = json.loads(buf.getvalue())
    assert r["n_inputs"] == 2 and r["cosine_mean"] > 0.97
    assert 0 < r["array_utilization"] < 1
    assert math.isclose(sum(r["unit_busy"]["queues"].values()),
                        sum(r["unit_busy"]["ops"].values()))
    assert (tmp_path / "out" / "core.core.0.program.bin").stat().st_size == \
        32 * r["instructions"]
