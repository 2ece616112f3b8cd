"""Activation smoothing (compiler/passes/smooth.py): exact in float, better in int8, recorded in
the plan so the executor rebuilds the same integers, refused option values.

The models here (factories of this file, loaded by path) have one outlier channel: a layer
norm whose gamma is 60 on channel 7 and about 1 elsewhere, so a per-tensor int8 scale of its
output leaves the other channels a few levels. ``pre``: the norm feeds only ``fc1`` (the
smoothing folds into gamma/beta); ``post``: its output is also the residual (a per-channel
quantizer on the host).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from compiler.driver import compile_model, prepare_graph
from compiler.execute import capture_operands, execute_plan, rebuild_graph
from compiler.frontend import export_graph, load_model
from compiler.interp import run_graph
from compiler.passes import Canonicalize, Quantize, run_passes
from compiler.passes import smooth as smooth_mod
from compiler.passes.quantize import linear_qparams, linear_weight, quantize_weight
from compiler.passes.smooth import Smooth, parse_smooth, smooth_groups
from compiler.plan import check_plan
from golden.errors import UserValueError

FILE = Path(__file__)
D, F, L = 64, 128, 16


class Outlier(torch.nn.Module):
    """LayerNorm (one outlier channel) -> fc1 -> ReLU -> fc2, plus the norm's output (scaled, a
    second reader) when ``post``."""

    def __init__(self, post: bool) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.post = post
        self.ln = torch.nn.LayerNorm(D)
        self.fc1 = torch.nn.Linear(D, F)
        self.fc2 = torch.nn.Linear(F, D)
        with torch.no_grad():
            self.ln.weight.copy_(1 + 0.2 * torch.randn(D, generator=g))
            self.ln.bias.copy_(0.1 * torch.randn(D, generator=g))
            self.ln.weight[7] = 60.0
            self.ln.bias[7] = 5.0
            for fc in (self.fc1, self.fc2):
                fc.weight.copy_(torch.randn(fc.weight.shape, generator=g) / fc.in_features ** 0.5)
                fc.bias.copy_(0.1 * torch.randn(fc.bias.shape, generator=g))
            self.fc1.weight[:, 7] /= 60.0  # the outlier channel's share of fc1 stays ordinary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        y = self.fc2(torch.relu(self.fc1(h)))
        return y + 0.02 * h if self.post else y


def _make(post: bool) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    x = torch.randn(1, L, D, generator=torch.Generator().manual_seed(1))
    return Outlier(post).eval(), (x,)


def pre() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    return _make(False)


def post() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    return _make(True)


def llama_outlier() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """llama-tiny with a massive channel: every RMSNorm weight times 40 on channel 5 and the
    linears reading that norm's output over 40 on input column 5 (the float function stays
    llama-tiny's; the int8 input of q/k/v and gate/up gets one channel 40 times the others)."""
    from compiler.zoo import hf_tiny

    mod, ex = hf_tiny("llama")
    with torch.no_grad():
        for layer in mod.m.layers:
            a, m = layer.self_attn, layer.mlp
            for norm, lins in ((layer.input_layernorm, (a.q_proj, a.k_proj, a.v_proj)),
                               (layer.post_attention_layernorm, (m.gate_proj, m.up_proj))):
                norm.weight[5] *= 40.0
                for lin in lins:
                    lin.weight[:, 5] /= 40.0
    return mod, ex


def _linears_on_asic(plan: dict) -> dict:
    """The plan with every linear on the ASIC and every other op on the CPU."""
    plan = json.loads(json.dumps(plan))  # what a plan file holds
    dev = {d["kind"]: d["name"] for d in plan["devices"]}
    for o in plan["ops"]:
        o["device"] = dev["asic"] if o["op"] == "linear" else dev["cpu"]
    return plan


@pytest.fixture(scope="module")
def compiled():
    """(smooth mode, model) -> compile result, each compiled once."""
    out = {}
    for name in ("pre", "post"):
        for mode in ("off", "auto"):
            out[mode, name] = compile_model(f"{FILE}:{name}", "asic,cpu:mode=roofline",
                                            smooth=mode, min_cosine=None)
    return out


@pytest.mark.parametrize("name, form", [("pre", "fold"), ("post", "host")])
def test_smoothing_preserves_the_float_function(name, form):
    lm = load_model(f"{FILE}:{name}")
    g = export_graph(lm.module, lm.example_inputs, source=lm.name)
    run_passes(g, [Canonicalize()])
    before = {k: v.clone() for k, v in g.params.items()}
    x = lm.example_inputs
    samples = [x] + [(torch.randn(x[0].shape, generator=torch.Generator().manual_seed(i)),)
                     for i in range(7)]
    run_passes(g, [Smooth(samples, 0.5)])
    fc1 = g.node([n.name for n in g.nodes if n.op == "linear"][0])
    assert fc1.attrs["smooth"]["form"] == form
    ln = [n for n in g.nodes if n.op == "layer_norm"][0]
    changed = {k for k in before if not torch.equal(before[k], g.params[k])}
    if form == "fold":  # gamma, beta and fc1's weight absorb the factors; nothing else
        assert changed == {ln.args[2].name, ln.args[3].name, fc1.attrs["weight"]}
    else:  # the float graph is untouched (the host quantizes per channel)
        assert changed == set()
    assert "keep_float" not in ln.attrs
    # the model's own parameters are not modified
    assert torch.equal(lm.module.ln.weight, load_model(f"{FILE}:{name}").module.ln.weight)
    for s in samples[:3]:
        with torch.no_grad():
            want = lm.module(*s).double()
        got = run_graph(g, s)[0].double()
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    # the int8 operands of fc1 on the norm's real outputs: smoothing lowers the GEMM's error
    run_passes(g, [Quantize(samples)])
    h = []
    run_graph(g, samples[1], observe=lambda n, v, a: h.append(v) if n.name == ln.name else None)
    xs = h[0].reshape(-1, D).double()
    with torch.no_grad():
        ref = lm.module.fc1(h[0] if form == "host" else lm.module.ln(samples[1][0])).double()
    ql = linear_qparams(g, fc1, host_smooth=True)
    got = ql.quantize_input(xs).double() @ ql.wq.double() * (ql.in_scale * ql.w_scale)
    err = float((got + ql.bias * ql.in_scale * ql.w_scale - ref.reshape(-1, F)).norm())
    assert err < 0.05 * float(ref.norm())
    if form == "host":  # W * s per output channel, x / s; a backend without it: the plain linear
        s = torch.tensor(fc1.attrs["smooth"]["factors"], dtype=torch.float64)
        assert torch.equal(ql.in_smooth, s)
        assert torch.equal(ql.wq, quantize_weight(linear_weight(g, fc1).double() * s)[0].t())
        plain = linear_qparams(g, fc1)
        assert plain.in_smooth is None
        assert torch.equal(plain.wq, quantize_weight(linear_weight(g, fc1))[0].t())
        bad = plain.quantize_input(xs).double() @ plain.wq.double() * (
            plain.in_scale * plain.w_scale)
        bad_err = float((bad + plain.bias * plain.in_scale * plain.w_scale
                         - ref.reshape(-1, F)).norm())
        assert err < 0.5 * bad_err


@pytest.mark.parametrize("name", ["pre", "post"])
def test_smoothing_improves_int8_cosine(compiled, name):
    res = {}
    for mode in ("off", "auto"):
        plan = _linears_on_asic(compiled[mode, name].plan)
        res[mode] = execute_plan(plan)["cosine_mean"]
    assert res["off"] < 0.995, res  # the outlier channel costs the plain int8 input
    assert res["auto"] > 0.999 and res["auto"] - res["off"] > 0.004, res


def test_plan_records_smoothing_and_the_executor_rebuilds_it(compiled):
    for name, form in (("pre", "fold"), ("post", "host")):
        c = compiled["auto", name]
        plan = json.loads(json.dumps(c.plan))
        check_plan(plan)  # the schema knows quant.smooth
        ops = {o["name"]: o for o in plan["ops"]}
        fc1 = [o for o in plan["ops"] if o["op"] == "linear"][0]
        sm = fc1["quant"]["smooth"]
        assert sm["form"] == form and 0.3 <= sm["alpha"] <= 0.8 and sm["error"] < sm["error_off"]
        assert len(sm["factors"]) == D and max(sm["factors"]) > 5 * min(sm["factors"])
        assert sm["into"] == "layer_norm"
        if form == "host":
            assert "in_scale" in sm and ops["layer_norm"]["device"] != "asic"
        g, _ = rebuild_graph(plan)
        for k, v in c.graph.params.items():  # the folds rebuilt bit for bit
            assert torch.equal(g.params[k], v), k
        # the integers the GEMM engine gets, recomputed from the plan alone
        asic = _linears_on_asic(plan)
        cap = capture_operands(asic, fc1["name"])
        xq, wq, bias, mult, shift, y = cap["gemms"][0]
        x = rebuild_and_input(asic)
        s = torch.tensor(sm["factors"], dtype=torch.float64)
        w = linear_weight(g, g.node(fc1["name"])).double()
        if form == "host":
            s_in = sm["in_scale"]
            want_x = torch.clamp(torch.round(x.double() / (s_in * s)), -128, 127)
            want_w = quantize_weight(w * s)[0]
        else:
            s_in = fc1["quant"]["in_scales"][0]
            want_x = torch.clamp(torch.round(x.double() / s_in), -128, 127)
            want_w = quantize_weight(w)[0]
        assert torch.equal(xq, want_x.long().reshape(xq.shape))
        assert torch.equal(wq, want_w.t())


def test_host_smoothing_only_while_the_producer_runs_on_the_host(compiled):
    """Its layer norm moved to the ASIC, fc1 reads the norm's int8 output as it is: the executor
    drops the per-channel quantizer and runs the plain linear (as the compile does when the
    partition places the producer on an integer device)."""
    plan = _linears_on_asic(compiled["auto", "post"].plan)
    fc1 = [o for o in plan["ops"] if o["op"] == "linear"][0]
    assert fc1["quant"]["smooth"]["form"] == "host"
    ln = [o for o in plan["ops"] if o["name"] == "layer_norm"][0]
    ln["device"] = [d["name"] for d in plan["devices"] if d["kind"] == "asic"][0]
    g, _ = rebuild_graph(plan)
    assert "smooth" not in g.node(fc1["name"]).attrs["quant"]
    ql = linear_qparams(g, g.node(fc1["name"]), host_smooth=True)
    assert ql.in_smooth is None and ql.in_scale == fc1["quant"]["in_scales"][0]
    cap = capture_operands(plan, [fc1["name"], "layer_norm"])
    y_ln = cap["layer_norm"]["y"]  # the norm's int8 output is fc1's int8 input, unchanged
    assert torch.equal(cap[fc1["name"]]["gemms"][0][0], y_ln.reshape(-1, D))


def test_compile_drops_host_smoothing_whose_producer_went_to_the_asic():
    """Energy objective, no budget: the layer norm goes to the ASIC, so fc1 reads its int8
    output and the plan has no host smoothing: it executes exactly as the unsmoothed plan.
    With the budget, every host smoothing left in the plan has its producer on the host."""
    res, plans = {}, {}
    for mode in ("off", "auto"):
        c = compile_model(f"{FILE}:post", "asic,cpu:mode=roofline", "energy", min_cosine=None,
                          smooth=mode)
        plans[mode] = c.plan
        res[mode] = execute_plan(json.loads(json.dumps(c.plan)))
    dev = {o["name"]: o["device"] for o in plans["auto"]["ops"]}
    assert dev["layer_norm"] == "asic" and dev["linear"] == "asic"
    assert not any(o["quant"].get("smooth", {}).get("form") == "host"
                   for o in plans["auto"]["ops"] if o["quant"])
    assert res["auto"]["cosine_mean"] == res["off"]["cosine_mean"]
    c = compile_model(f"{FILE}:post", "asic,cpu:mode=roofline", "energy")
    kind = {d["name"]: d["kind"] for d in c.plan["devices"]}
    dev = {o["name"]: kind[o["device"]] for o in c.plan["ops"]}
    host = [o for o in c.plan["ops"] if (o["quant"] or {}).get("smooth", {}).get("form") == "host"]
    assert host and all(dev[o["quant"]["smooth"]["into"]] == "cpu" for o in host)
    r = execute_plan(json.loads(json.dumps(c.plan)))
    assert r["cosine_mean"] >= c.plan["accuracy"]["min_cosine"]


def rebuild_and_input(plan: dict) -> torch.Tensor:
    """The float input of the plan's first linear on input 0 (the layer norm's output)."""
    g, lm = rebuild_graph(plan)
    seen = {}
    run_graph(g, lm.example_inputs, observe=lambda n, v, a: seen.setdefault(n.name, v))
    return seen["layer_norm"]


def test_core_devices_get_folds_only():
    lm = load_model(f"{FILE}:post")
    g, _ = prepare_graph(lm, 4, host_smooth=False)
    assert not any(n.attrs.get("smooth") for n in g.nodes)
    assert not any(n.attrs.get("keep_float") for n in g.nodes if n.op == "layer_norm")
    groups = smooth_groups(g, host=False)
    assert groups and all(gr.form is None for gr in groups)
    lm = load_model(f"{FILE}:pre")
    g, _ = prepare_graph(lm, 4, host_smooth=False, smooth=0.5)
    assert [n.attrs["smooth"]["form"] for n in g.nodes if n.attrs.get("smooth")] == ["fold"]


def test_llama_groups_fold_into_the_norms_and_up():
    lm = load_model(f"{FILE}:llama_outlier")
    g = export_graph(lm.module, lm.example_inputs, source=lm.name)
    run_passes(g, [Canonicalize()])
    mod = {n.name: n.module.rsplit(".", 1)[-1] for n in g.nodes}
    got = {tuple(mod[x] for x in gr.linears): (gr.form, g.node(gr.into).op if gr.into else None)
           for gr in smooth_groups(g)}
    assert got == {("q_proj", "k_proj", "v_proj"): ("fold", "rms_norm"),
                   ("gate_proj", "up_proj"): ("fold", "rms_norm"),
                   ("down_proj",): ("fold", "linear"),  # up_proj's rows, through the SwiGLU mul
                   ("o_proj",): ("host", "attention")}  # reads the attention's merged heads
    assert [gr.into for gr in smooth_groups(g) if mod[gr.linears[0]] == "down_proj"][0] in \
        [n.name for n in g.nodes if mod[n.name] == "up_proj"]


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "nan", "inf", "bogus", "", True, None, [0.5]])
def test_bad_smooth_values_are_refused(bad):
    with pytest.raises(UserValueError, match="auto, off or an alpha in 0..1"):
        parse_smooth(bad)


def test_smooth_values_accepted():
    assert parse_smooth("AUTO") == "auto" and parse_smooth(" off") == "off"
    assert parse_smooth("0.5") == 0.5 and parse_smooth(1) == 1.0 and parse_smooth(0) == 0.0


def test_compile_refuses_bad_smooth_before_work(monkeypatch):
    import compiler.driver as drv
    monkeypatch.setattr(drv, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(UserValueError, match="not 'x'"):
        compile_model("minilm", "asic,cpu", smooth="x")


@pytest.mark.parametrize("value, msg", [("2", "2 is out of range: expected a number in 0..1"),
                                        ("half", "expected a number in 0..1, not 'half'")])
def test_cli_smooth_option_errors(value, msg, tmp_path):
    from fmforge.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        main(["compile", "--smooth", value, "-o", str(tmp_path / "p.json")])
    assert e.value.code == 2
    assert f"argument --smooth: expected auto, off or an alpha: {msg}" in err.getvalue()
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("int_mm", sorted({False, smooth_mod._int_mm_works()}))
def test_fast_metric_equals_the_plain_one_bit_for_bit(monkeypatch, int_mm):
    """The candidate metric as the pass computes it (weights quantized in row blocks into
    reused buffers, integer products through ``torch._int_mm`` or float32, the unsmoothed
    weights quantized once) gives the plain formula's floats exactly: several linears, K above
    1032, a zero output channel, a weight given transposed as ``kn`` weights arrive."""
    monkeypatch.setattr(smooth_mod, "_INT_MM", int_mm)
    g = torch.Generator().manual_seed(5)
    for k, ns in ((48, (150, 32, 7)), (1100, (70,))):
        x = torch.randn(40, k, generator=g, dtype=torch.float64) * (
            0.5 + torch.rand(k, generator=g, dtype=torch.float64))
        x[:, 3] *= 30.0
        ws = [torch.randn(n, k, generator=g, dtype=torch.float64) / k ** 0.5 for n in ns]
        ws[0][5] = 0.0
        ws[-1] = ws[-1].t().contiguous().t()
        xmax = x.abs().amax(0)
        refs = [x @ w.t() for w in ws]
        den = 0.0
        for ref in refs:
            den += float((ref ** 2).sum())
        ge = smooth_mod._GroupError(ws)
        for a in (None, 0.3, 0.5, 0.8, None):
            s = None if a is None else torch.tensor(smooth_mod.smooth_factors(xmax, ge.wmax, a),
                                                    dtype=torch.float64)
            assert ge.error(x, xmax, refs, den, s) == smooth_mod._rel_error(x, xmax, ws, refs, s)


def test_alpha_descent_picks_what_trying_every_alpha_picks():
    """``auto`` walks the alpha grid downhill from the last same-shaped group's choice: the
    first minimum from every start on unimodal errors (ties: the earlier alpha), and on the
    outlier models the same choice and errors as evaluating every alpha."""
    for seq in ([5, 4, 3, 2, 3, 4], [1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [3, 2, 2, 3, 4, 5]):
        for start in range(len(seq)):
            assert smooth_mod._descend(seq.__getitem__, len(seq), start) == \
                seq.index(min(seq))
    for name in ("pre", "post"):
        lm = load_model(f"{FILE}:{name}")
        g = export_graph(lm.module, lm.example_inputs, source=lm.name)
        run_passes(g, [Canonicalize()])
        x = lm.example_inputs
        samples = [x] + [(torch.randn(x[0].shape, generator=torch.Generator().manual_seed(i)),)
                         for i in range(7)]
        p = Smooth(samples, "auto")
        groups = [gr for gr in smooth_groups(g) if gr.form]
        ws = {gr.value: [smooth_mod._weight_nk(g, lin) for lin in gr.linears] for gr in groups}
        p.run(g)  # folds into the weights
        assert p.report
        for gr, best, errs in p.report:
            every = p._errors(*p.stats[gr.value], smooth_mod._GroupError(ws[gr.value]),
                              smooth_mod.AUTO_ALPHAS)
            assert {k: every[k] for k in errs} == errs
            pick = min(smooth_mod.AUTO_ALPHAS, key=lambda a: every[f"{a:g}"])
            assert best in (pick, None)


def test_host_requantizer_check_refuses_what_the_integers_refuse():
    """Quantize checks a host-smoothed linear's requantizer from the extremes of its scales
    (quantize._check_host_smooth) instead of building its integers: it passes where
    ``linear_qparams(host_smooth=True)`` builds them, and where that refuses it raises that
    very error (naming the channel)."""
    from compiler.passes.base import PassError
    from compiler.passes.quantize import _check_host_smooth

    lm = load_model(f"{FILE}:post")
    g = export_graph(lm.module, lm.example_inputs, source=lm.name)
    samples = [lm.example_inputs]
    run_passes(g, [Canonicalize(), Smooth(samples, "auto"), Quantize(samples)])
    host = [n for n in g.nodes if (n.attrs.get("quant") or {}).get("smooth", {}).get("form")
            == "host"]
    assert host
    for n in host:
        _check_host_smooth(g, n)
        assert linear_qparams(g, n, host_smooth=True).in_smooth is not None
        for bad in (1e-30, 1e30):
            q = n.attrs["quant"]
            keep = dict(q)
            q["out_scales"] = [bad] * len(q.get("out_scales") or [0] * n.out[0].shape[-1])
            q["out_scales"][3] = keep.get("out_scale")
            n.attrs.pop("_qs", None)
            with pytest.raises(PassError) as want:
                linear_qparams(g, n, host_smooth=True)
            n.attrs.pop("_qs", None)
            with pytest.raises(PassError) as got:
                _check_host_smooth(g, n)
            assert str(got.value) == str(want.value) and "channel 0" in str(got.value)
            q.clear()
            q.update(keep)
            n.attrs.pop("_qs", None)


@pytest.mark.parametrize("name", ["pre", "post", "llama_outlier"])
def test_one_run_calibrates_smoothing_and_quantize(monkeypatch, name):
    """Smooth given the quantize pass records its calibration in the same run of the samples:
    the quantize pass then runs no sample itself, and its scales (and the smoothed parameters)
    are bit for bit those of a quantize pass that runs the samples on the smoothed graph."""
    from compiler.passes import quantize as quant_mod

    lm = load_model(f"{FILE}:{name}")
    samples = [lm.example_inputs] + [
        tuple(torch.randint(0, 1000, t.shape, generator=torch.Generator().manual_seed(i))
              if not t.is_floating_point() else
              torch.randn(t.shape, generator=torch.Generator().manual_seed(i))
              for t in lm.example_inputs) for i in range(5)]
    graphs = []
    runs = []
    real = quant_mod.run_graph
    monkeypatch.setattr(quant_mod, "run_graph", lambda *a, **k: runs.append(1) or real(*a, **k))
    for shared in (True, False):
        g = export_graph(lm.module, lm.example_inputs, source=lm.name)
        q = Quantize(samples)
        runs.clear()
        run_passes(g, [Canonicalize(), Smooth(samples, "auto", quantize=q if shared else None),
                       q])
        assert len(runs) == (0 if shared else len(samples))
        graphs.append(g)
    a, b = graphs
    assert any(n.attrs.get("smooth") for n in a.nodes)
    for na, nb in zip(a.nodes, b.nodes, strict=True):
        assert na.attrs.get("quant") == nb.attrs.get("quant"), na.name
    assert a.params.keys() == b.params.keys()
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)


def test_each_fold_group_is_chosen_on_the_graph_with_the_earlier_folds():
    """One run of the samples smooths group after group: the statistics a ``fold`` group is
    chosen on are its value's on the graph with the folds of the groups before it applied
    (and not its own), exactly; a ``host`` group's with every fold before its value."""
    lm = load_model(f"{FILE}:llama_outlier")
    samples = [lm.example_inputs] + [
        (torch.randint(0, 1000, lm.example_inputs[0].shape,
                       generator=torch.Generator().manual_seed(i)),) for i in range(3)]
    g = export_graph(lm.module, lm.example_inputs, source=lm.name)
    run_passes(g, [Canonicalize()])
    p = Smooth(samples, "auto")
    groups = [gr for gr in smooth_groups(g) if gr.form == "fold"]
    assert len(groups) >= 3
    p.run(g)
    index = {n.name: i for i, n in enumerate(g.nodes)}
    for k, gr in enumerate(groups):
        fresh = export_graph(lm.module, lm.example_inputs, source=lm.name)
        run_passes(fresh, [Canonicalize()])
        for earlier in groups[:k]:
            rec = g.node(earlier.linears[0]).attrs.get("smooth")
            if rec:
                smooth_mod._fold(fresh, earlier.linears, earlier.into, rec["factors"])
        seen: list[torch.Tensor] = []

        def observe(n, v, a, seen=seen, value=gr.value):
            if n.name == value:
                seen.append(v.detach().reshape(-1, v.shape[-1]).to(torch.float64).abs().amax(0))

        for smp in samples:
            run_graph(fresh, smp, observe=observe)
        if k:  # the groups are folded in graph order
            assert index[groups[k - 1].value] < index[gr.into]
        assert torch.equal(torch.stack(seen), p.stats[gr.value][0]), gr.value


def test_metric_rows_per_group_are_bounded_by_their_macs():
    """The metric's rows per group: MAX_ROWS while K * N is small (every MiniLM group), else
    at most MAX_ROW_MACS / (K * N), evenly spaced within each sample (GPT-2-small's q/k/v:
    170 allowed, 10 per sample, every 4th of 32 rows: 8)."""
    p = Smooth([(torch.zeros(1),)] * 16)
    for k, n, want in ((384, 1536, 512), (768, 2304, 128), (768, 3072, 128), (3072, 768, 128),
                       (768, 768, 512)):
        cmax, rows = {}, {}
        for _ in range(16):
            p._see(cmax, rows, "v", torch.randn(1, 32, k), n)
        assert sum(r.shape[0] for r in rows["v"]) == want, (k, n)
        assert len(cmax["v"]) == 16


def test_metric_from_float32_rows_is_the_float64_one():
    """_GroupError given the float32 parameters as its row blocks (what the pass does) gives
    the float64 weights' errors bit for bit (``W * s`` is computed in float64 either way)."""
    g = torch.Generator().manual_seed(7)
    k = 96
    x = torch.randn(40, k, generator=g, dtype=torch.float64)
    x[:, 2] *= 25.0
    w32 = [torch.randn(k, 70, generator=g) / k ** 0.5, torch.randn(33, k, generator=g)]
    rows = [w32[0].t().contiguous(), w32[1]]
    ws = [w32[0].t().to(torch.float64), w32[1].to(torch.float64)]
    xmax = x.abs().amax(0)
    refs = [x @ w.t() for w in ws]
    den = sum(float((r ** 2).sum()) for r in refs)
    a, b = smooth_mod._GroupError(ws), smooth_mod._GroupError(ws, rows)
    assert torch.equal(a.wmax, b.wmax) and b.wmax.dtype == torch.float64
    for alpha in (None, 0.4, 0.7):
        s = None if alpha is None else smooth_mod._factors(xmax, a.wmax, alpha)
        assert a.error(x, xmax, refs, den, s) == b.error(x, xmax, refs, den, s)
