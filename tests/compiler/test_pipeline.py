"""Frontend, passes, targets, plan and executor on real models (MiniLM, GPT-2-style, encoder)."""

import copy
import json

import pytest

from compiler.driver import compile_model
from compiler.execute import execute_plan, imc_linear
from compiler.frontend import export_graph, load_model
from compiler.passes import Canonicalize, PassError, Quantize, run_passes
from compiler.plan import check_plan, dumps_plan, load_plan
from compiler.schema import SchemaError
from compiler.targets import make_device, parse_devices
from fmforge import cli
from hw.gemm import gemm_cycles


@pytest.fixture(scope="module")
def minilm_asic():
    return compile_model("minilm", "asic,cpu:mode=roofline")


def test_minilm_compile_and_execute(minilm_asic):
    c = minilm_asic
    counts = c.graph.counts()
    assert counts["linear"] == 36 and counts["attention"] == 6 and counts["layer_norm"] == 13
    placed = {o["name"]: o["device"] for o in c.plan["ops"]}
    kinds = {o["name"]: o["op"] for o in c.plan["ops"]}
    asic = make_device("asic")
    # ops a target cannot run are never placed on it
    for o in c.plan["ops"]:
        if o["device"] == "asic":
            assert o["op"] in ("linear", "matmul", "layout", "gelu", "relu", "softmax",
                               "layer_norm")
            assert not c.graph.node(o["name"]).attrs.get("keep_float")
    # every linear on the accelerator; the FFN down-projections on the 16-bit input path
    assert sum(placed[n] == "asic" and kinds[n] == "linear" for n in placed) == 36
    wide = [o for o in c.plan["ops"] if (o["quant"] or {}).get("in_bits") == 16]
    assert len(wide) == 6 and all(o["device"] == "asic" and o["quant"]["out_bits"] == 32
                                  for o in wide)
    chan = [o for o in c.plan["ops"] if (o["quant"] or {}).get("out_scales")]
    assert len(chan) == 6  # attention output projections: per-channel requantizer
    assert any(f["kind"] == "attention" for f in c.plan["fallback_ops"])
    r = execute_plan(c.plan, limit=6)  # the first 6: disjoint from the calibration sentences
    assert r["n_inputs"] == 6
    assert r["cosine_mean"] >= 0.99
    del asic


def test_plan_deterministic_and_validated(minilm_asic, tmp_path):
    c2 = compile_model("minilm", "asic,cpu:mode=roofline")
    assert dumps_plan(c2.plan) == dumps_plan(minilm_asic.plan)
    bad = copy.deepcopy(minilm_asic.plan)
    bad["ops"][3]["device"] = "nowhere"
    with pytest.raises(SchemaError, match=r"ops\[3\]\.device"):
        check_plan(bad)
    bad = copy.deepcopy(minilm_asic.plan)
    bad["totals"]["latency_s"] = "fast"
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(SchemaError, match="totals.latency_s"):
        load_plan(p)


def test_fpga_cycles_come_from_gemm_model(minilm_asic):
    c = compile_model("encoder-tiny", "ulx3s-85f,cpu:mode=roofline")
    fpga = c.devices[0]
    cfg = fpga.config
    assert cfg is not None and cfg.rows <= 64 and cfg.cols <= 64
    unit = c.plan["devices"][0]["hardware"]
    for o in c.plan["ops"]:
        if o["device"] == "ulx3s-85f" and o["op"] == "linear":
            n = c.graph.node(o["name"])
            a = n.attrs
            if a["m"] <= cfg.max_m and a["n"] <= cfg.max_n:
                assert o["cycles"] >= gemm_cycles(cfg.rows, cfg.cols, cfg.dataflow, a["m"], a["k"], a["n"])
    assert unit["resources_used"]["dsps"] <= 156


def test_gpt2_and_encoder_execute():
    c = compile_model("gpt2-tiny", "asic,imc,cpu:mode=roofline")
    assert c.graph.counts()["linear"] == 8
    assert c.plan["partition"]["objective_value"] <= c.plan["partition"]["greedy_objective"]
    r = execute_plan(c.plan, limit=2)
    assert r["cosine_min"] > 0.98
    c = compile_model("encoder-tiny", "imc,cpu:mode=roofline", "energy")
    assert any(o["device"] == "imc" and o["op"] == "linear" for o in c.plan["ops"])
    assert execute_plan(c.plan, limit=2)["cosine_min"] > 0.99


def test_imc_read_noise_seeded_per_input_and_jobs_do_not_change_results():
    """Read noise is drawn per (op, seed, input, call in the input): one or two worker
    processes give the same report; another seed another one; an input's numbers do not depend
    on the inputs before it."""
    import torch

    from compiler.imc_run import ImcRun
    from golden.imc import REALISTIC_NOISE

    c = compile_model("encoder-tiny", "imc,cpu:mode=roofline", "energy")
    r1 = execute_plan(c.plan, limit=5, imc=ImcRun(REALISTIC_NOISE, seed=3))
    assert execute_plan(c.plan, limit=5, imc=ImcRun(REALISTIC_NOISE, seed=3), jobs=2) == r1
    assert execute_plan(c.plan, limit=5, imc=ImcRun(REALISTIC_NOISE, seed=4)) != r1
    run = ImcRun(REALISTIC_NOISE, seed=3)
    xq = torch.randint(-128, 128, (4, 64), generator=torch.Generator().manual_seed(0))
    wq = torch.randint(-128, 128, (64, 32), generator=torch.Generator().manual_seed(1))
    params = next(d["params"] for d in c.plan["devices"] if d["kind"] == "imc")
    run.begin_input(7)
    a = run.linear("op", xq, wq, None, None, None, params)
    run.begin_input(2)
    run.linear("op", xq, wq, None, None, None, params)
    run.begin_input(7)
    assert torch.equal(run.linear("op", xq, wq, None, None, None, params), a)
    assert not torch.equal(run.linear("op", xq, wq, None, None, None, params), a)  # 2nd call


def test_accuracy_budget_keeps_layer_norms_off_the_integer_device():
    """The energy objective would move MiniLM's 13 layer norms to the asic (cosine ~0.7); with
    the budget they stay in float, the plan states its estimate and executes within it."""
    from compiler.accuracy import partition_within_budget
    from compiler.driver import calibration_samples
    from compiler.partition import partition_dp

    # smoothing off: the linears' measured cost (0.992) is what the strict budget below refuses
    free = compile_model("minilm", "asic,cpu:mode=roofline", "energy", min_cosine=None,
                         smooth="off")
    assert "accuracy" not in free.plan  # no budget asked: nothing measured
    assert {o["device"] for o in free.plan["ops"] if o["op"] == "layer_norm"} == {"asic"}
    c = compile_model("minilm", "asic,cpu:mode=roofline", "energy", min_cosine=0.99,
                      smooth="off")
    kinds = {o["op"] for o in c.plan["ops"] if o["device"] == "asic"}
    assert "linear" in kinds and "layer_norm" not in kinds
    acc = c.plan["accuracy"]
    groups = {g["group"]: g for g in acc["groups"]}
    assert groups["layer_norm"]["cosine"] < 0.9 and not groups["layer_norm"]["integer"]
    assert 0.99 <= groups["linear"]["cosine"] < 1 and groups["linear"]["integer"]
    assert acc["min_cosine"] == 0.99 and acc["samples"] == 16
    assert acc["expected_cosine"] == pytest.approx(groups["linear"]["cosine"])
    assert c.result.expected_cosine == acc["expected_cosine"]
    assert c.plan["totals"]["energy_j"] > free.plan["totals"]["energy_j"]
    r = execute_plan(c.plan, limit=4)
    assert r["cosine_mean"] >= 0.99 and r["cosine_mean"] == pytest.approx(
        acc["expected_cosine"], abs=0.003)
    # a stricter budget on the same graph (measurements cached in graph.analyses): all float
    samples = calibration_samples(c.model)
    strict, _ = partition_within_budget(c.problem, c.graph, c.devices, samples, 0.995,
                                        pooled=True)
    assert set(strict.placement.values()) == {"cpu:mode=roofline"}
    assert strict.expected_cosine == 1.0
    # exactness: the budgeted optimum is the unconstrained optimum once layer norms are float
    c.problem.min_cosine = None
    c.problem.cost = {op: [None if n.op == "layer_norm" and d == 0 else x
                           for d, x in enumerate(row)]
                      for (op, row), n in zip(c.problem.cost.items(), c.graph.nodes, strict=True)}
    assert partition_dp(c.problem).objective_value == pytest.approx(
        c.result.objective_value, rel=1e-12)


def test_split16_exact_and_int16_path_priced_twice():
    import torch

    from compiler.execute import split16
    x = torch.arange(-32640, 32640)
    hi, lo = split16(x)
    assert torch.equal(256 * hi + lo, x)
    assert int(hi.min()) >= -128 and int(hi.max()) <= 127
    assert int(lo.min()) >= -128 and int(lo.max()) <= 127


def test_int16_linear_priced_as_two_passes(minilm_asic):
    """The 16-bit-input linear costs more than the same op with int8 input, at most twice."""
    c = minilm_asic
    asic = c.devices[0]
    for n in c.graph.nodes:
        q = n.attrs.get("quant") or {}
        if q.get("in_bits") == 16:
            wide = asic.cost(n, c.graph).cycles
            n.attrs["quant"] = {**q, "in_bits": 8}
            try:
                narrow = asic.cost(n, c.graph).cycles
            finally:
                n.attrs["quant"] = q
            assert narrow < wide <= 2 * narrow


def test_imc_model_exact_with_enough_adc_bits():
    import torch

    from golden.gemm import gemm_int
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-128, 128, (4, 200), generator=g)
    w = torch.randint(-127, 128, (200, 9), generator=g)
    b = torch.randint(-500, 500, (9,), generator=g)
    m, s = torch.full((9,), 1 << 30), torch.full((9,), 38)
    ref = gemm_int(x, w, b, m, s)
    assert torch.equal(imc_linear(x, w, b, m, s, adc_bits=9), ref)
    assert not torch.equal(imc_linear(x, w, b, m, s, adc_bits=5), ref)


def test_pass_contracts():
    lm = load_model("encoder-tiny")
    g = export_graph(lm.module, lm.example_inputs)
    with pytest.raises(PassError, match="requires canonical"):
        Quantize([lm.example_inputs])(g)
    run_passes(g, [Canonicalize(), Quantize([lm.example_inputs])])
    assert {"canonical", "quantized"} <= g.properties
    assert all("quant" in n.attrs for n in g.nodes if n.op == "linear")


def test_bad_inputs(tmp_path):
    with pytest.raises(LookupError, match="unknown model 'nope'"):
        load_model("nope")
    with pytest.raises(FileNotFoundError, match="missing.py"):
        load_model(str(tmp_path / "missing.py") + ":f")
    f = tmp_path / "m.py"
    f.write_text("import torch\ndef bad():\n    return 3\n"
                 "class D(torch.nn.Module):\n    def forward(self, x):\n"
                 "        return x if x.sum() > 0 else -x\n"
                 "def dyn():\n    return D(), (torch.randn(3),)\n")
    with pytest.raises(TypeError, match="must return"):
        load_model(f"{f}:bad")
    lm = load_model(f"{f}:dyn")
    with pytest.raises(ValueError, match="torch.export cannot export"):
        export_graph(lm.module, lm.example_inputs, source=lm.name)
    with pytest.raises(LookupError, match="unknown device 'foo'"):
        parse_devices("foo,cpu")
    with pytest.raises(ValueError, match="has nowhere to run"):
        compile_model("encoder-tiny", "ulx3s-85f")


def _cli(argv):
    saved = cli.COMMAND_MODULES
    cli.COMMAND_MODULES = tuple(dict.fromkeys((*saved, "compile", "execute", "devices")))
    try:
        return cli.main(argv)
    finally:
        cli.COMMAND_MODULES = saved


def test_cli(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert _cli(["compile", "--model", "encoder-tiny", "--devices", "asic,cpu:mode=roofline",
                 "-o", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"plan", "predicted_latency_s", "predicted_energy_j", "compile_seconds",
                        "devices", "fallback_ops", "expected_cosine"}
    assert res["expected_cosine"] >= 0.99 and res["accuracy"]["min_cosine"] == 0.99
    assert out.with_suffix(".png").stat().st_size > 1000
    assert _cli(["execute", str(out), "--json"]) == 0
    ex = json.loads(capsys.readouterr().out)
    assert ex["cosine_min"] > 0.99 and ex["n_inputs"] == 4
    bad = tmp_path / "bad.json"
    assert _cli(["compile", "--model", "encoder-tiny", "--devices", "icebreaker", "-o", str(bad)]) == 2
    assert not bad.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere to run" in err
    with pytest.raises(SystemExit) as e:  # a usage error
        _cli(["compile", "--model", "encoder-tiny", "--min-cosine", "1.5", "-o", str(bad)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1.5 is out of range" in err and "-1..1" in err
    assert _cli(["devices", "--json"]) == 0
    assert any(d["name"] == "ulx3s-85f" for d in json.loads(capsys.readouterr().out)["devices"])
