"""The compile pipeline: model -> IR -> passes -> partition -> plan (and its report).

:func:`compile_model` is what ``fmforge compile`` and the demo call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from compiler.accuracy import Group, partition_within_budget
from compiler.frontend import LoadedModel, export_graph, load_model
from compiler.ir import Graph, Param, Ref
from compiler.partition import (
    NoDeviceError,
    Problem,
    Result,
    build_problem,
    evaluate,
    groups_used,
    partition_dp,
    partition_greedy,
)
from compiler.passes import Canonicalize, Quantize, run_passes
from compiler.passes.base import Pass
from compiler.passes.canonicalize import LAYOUT_TARGETS
from compiler.passes.smooth import Smooth, drop_host_smoothing, parse_smooth
from compiler.passes.sparsify import sparsify_from_spec
from compiler.plan import PLAN_FORMAT, PLAN_VERSION, check_plan
from compiler.targets import Target, parse_devices
from compiler.zoo import MODELS
from golden.errors import UserValueError

__all__ = ["ASSUMPTIONS", "CALIB_SENTENCES", "Compiled", "DEFAULT_MIN_COSINE", "DEFAULT_SMOOTH",
           "EVAL_SENTENCES", "MAX_CALIB", "calibration_samples", "compile_model", "prepare_graph",
           "token_inputs"]

#: assumptions stated in every plan
ASSUMPTIONS = [
    "ops run one at a time in topological order (single inference, no overlap between devices)",
    "transfers between two non-host devices pass through the host; values travel as int8 to/from "
    "accelerators",
    "accelerator GEMM cycles: hw.gemm.gemm_cycles (exact cycle model of the RTL) plus operand "
    "load words (hw.gemm.load_words), not overlapped",
    "FPGA clocks: measured Fmax (LFE5U-85F 100 MHz, LFE5U-25F 125 MHz, UP5K 100 MHz); board power "
    "and external-memory bandwidth are assumptions (compiler.targets.fpga)",
    "ULX3S host link: FT231X UART 3 Mbaud = 300 kB/s, 1 ms latency",
    "energy constants: Horowitz 45 nm (ASIC), ISAAC/PUMA 32 nm (IMC); CPU 15 W, GPU board power",
    "softmax/layer_norm/gelu run on accelerators only where hw/ has the unit with a cycle model",
]


@dataclass
class Compiled:
    """Everything a compile produced."""

    plan: dict[str, Any]
    graph: Graph
    devices: list[Target]
    problem: Problem
    result: Result
    greedy: Result
    model: LoadedModel
    compile_seconds: float
    timings: dict[str, float]
    #: (core device, program) per core region (files written beside the plan by the CLI)
    core_programs: list[Any] = field(default_factory=list)


#: activation smoothing ``fmforge compile --smooth`` applies by default (compiler.passes.smooth;
#: measurements in docs/compiler.md, "Accuracy: smoothing and scales")
DEFAULT_SMOOTH = "auto"

#: the accuracy floor ``fmforge compile`` applies by default (estimated output cosine)
DEFAULT_MIN_COSINE = 0.99

#: shipped sentences used for calibration: every 11th from index 64 (64, 75, ..., 229; 16 of
#: them), disjoint from the first 64 that the accuracy figures are measured on
CALIB_SENTENCES = slice(64, None, 11)
#: number of shipped sentences the documented accuracy is measured on (the first ones)
EVAL_SENTENCES = 64


#: the most calibration samples ``fmforge compile --calib`` takes
MAX_CALIB = 256


def token_inputs(graph: Graph) -> dict[str, int]:
    """Graph inputs that are token ids, with their vocabulary size: integer inputs that index
    an ``embedding`` table (directly or through layout ops); the largest table they index."""
    nodes = graph.node_map()
    ints = {n for n, t in graph.inputs if not t.dtype.startswith(("float", "bfloat", "bool"))}
    vocab: dict[str, int] = {}
    for n in graph.nodes:
        if n.target != "aten.embedding.default" or len(n.args) < 2:
            continue
        w, idx = n.args[0], n.args[1]
        if not isinstance(w, Param) or not isinstance(idx, Ref):
            continue
        v = idx.name
        while v in nodes and nodes[v].target in LAYOUT_TARGETS and nodes[v].inputs:
            v = nodes[v].inputs[0]
        if v in ints:
            vocab[v] = max(vocab.get(v, 0), int(graph.params[w.name].shape[0]))
    return vocab


def calibration_samples(model: LoadedModel, n: int = 16,
                        graph: Graph | None = None) -> list[tuple[torch.Tensor, ...]]:
    """``n`` calibration inputs (seeded, so a compile is reproducible).

    MiniLM: shipped sentences from :data:`CALIB_SENTENCES` (held out: disjoint from the first
    :data:`EVAL_SENTENCES`; beyond those 16 the other held-out sentences from index 64 on).
    Other models: the example inputs, then ``n - 1`` random inputs of the same shapes: token ids
    (:func:`token_inputs` of ``graph``) uniform over the model's vocabulary, float inputs
    (images, audio, embeddings) normal noise with the example's mean and standard deviation;
    other integer inputs (masks, or token ids when no ``graph`` is given) as in the example.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CALIB:
        raise UserValueError(f"calibration sample count must be an integer in 1..{MAX_CALIB}, "
                             f"not {n!r}")
    if model.name == "minilm":
        from compiler.models import load_sentences
        from compiler.zoo import tokenize
        allsents = load_sentences()
        idx = list(range(len(allsents)))[CALIB_SENTENCES]
        idx += [i for i in range(EVAL_SENTENCES, len(allsents)) if i not in idx]
        sents = [allsents[i] for i in idx[:n]]
        ids, am, tt = tokenize(sents, model.seq_len or 32)
        return [(ids[i:i + 1], am[i:i + 1], tt[i:i + 1]) for i in range(len(sents))]
    own = getattr(model.module, "calibration_inputs", None)
    if callable(own):  # the model draws its own (a decode step: real KV caches of prefills)
        return [tuple(model.example_inputs), *(tuple(s) for s in own(n - 1))]
    vocab = token_inputs(graph) if graph is not None else {}
    names = [name for name, _ in graph.inputs] if graph is not None else []
    out = [tuple(model.example_inputs)]
    g = torch.Generator().manual_seed(0)
    for _ in range(n - 1):
        sample = []
        for i, t in enumerate(model.example_inputs):
            v = vocab.get(names[i]) if i < len(names) else None
            if t.is_floating_point():
                tf = t.double()
                std = float(tf.std()) if t.numel() > 1 else 1.0
                sample.append((torch.randn(t.shape, generator=g, dtype=torch.float64) * std
                               + float(tf.mean())).to(t.dtype))
            elif v:
                sample.append(torch.randint(0, v, t.shape, generator=g).to(t.dtype))
            else:
                sample.append(t)
        out.append(tuple(sample))
    return out


def prepare_graph(model: LoadedModel, calib: int = 16, float_ffn_down: bool = False,
                  sparse: str | None = None, ffn_down: str = "int16",
                  smooth: str | float = DEFAULT_SMOOTH, host_smooth: bool = True
                  ) -> tuple[Graph, dict[str, float]]:
    """Export, canonicalize, smooth, quantize (and sparsify when ``sparse`` names a filter spec,
    see :func:`compiler.passes.sparsify.parse_sparse_spec`); returns the graph and step timings.

    ``ffn_down`` (``int16``, ``int8`` or ``float``) picks how linears that read a GELU output
    are quantized (see :mod:`compiler.passes.quantize`); ``float_ffn_down=True`` is
    ``ffn_down="float"`` (the old behaviour: float on the host). ``smooth`` (``auto``, ``off``
    or an alpha in 0..1) and ``host_smooth`` (per-channel host quantizers allowed): activation
    smoothing, :mod:`compiler.passes.smooth`.
    """
    smooth = parse_smooth(smooth)
    down = "float" if float_ffn_down else ffn_down
    t0 = time.perf_counter()
    g = export_graph(model.module, model.example_inputs, source=model.name)
    t1 = time.perf_counter()
    samples = calibration_samples(model, calib, g)
    passes: list[Pass] = [Canonicalize()]
    quantize = Quantize(samples, ffn_down=down)
    if smooth != "off":  # one run of the samples calibrates both (compiler.passes.smooth)
        passes.append(Smooth(samples, smooth, host=host_smooth, ffn_down=down,
                             quantize=quantize))
    passes.append(quantize)
    if sparse:
        passes.append(sparsify_from_spec(sparse, samples))
    try:
        run_passes(g, passes)
    except RuntimeError as e:  # torch failing inside a user model on a calibration input
        if model.name in MODELS:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise UserValueError(f"model {model.name} failed on a calibration input: "
                             f"{type(e).__name__}: {first}") from None
    t2 = time.perf_counter()
    return g, {"export_s": t1 - t0, "passes_s": t2 - t1}


def _device_entry(d: Target, spec: str, nodes: list[Any]) -> dict[str, Any]:
    link = None if d.is_host else d.link.to_json()
    hw = d.hardware(nodes)
    if d.integer:  # the sparse-attention filter units beside the attention it runs
        from compiler.passes.sparsify import filter_units
        hw["units"] = [*hw["units"], *filter_units(nodes, getattr(getattr(d, "board", None),
                                                                   "family", "asic"))]
    return {"name": d.name, "kind": d.kind, "spec": spec, "params": d.params(), "link": link,
            "hardware": hw}


def compile_model(model: str | LoadedModel = "minilm", devices: str = "ulx3s-85f,cpu",
                  objective: str = "latency", seq_len: int | None = None,
                  calib: int = 16, float_ffn_down: bool = False,
                  sparse: str | None = None, ffn_down: str = "int16",
                  min_cosine: float | None = DEFAULT_MIN_COSINE,
                  smooth: str | float = DEFAULT_SMOOTH) -> Compiled:
    """Compile ``model`` for ``devices`` (see :mod:`compiler.targets` for device specs);
    ``float_ffn_down``, ``ffn_down``, ``sparse`` and ``smooth`` as in :func:`prepare_graph`
    (per-channel host quantizers only without a ``core`` device).

    ``min_cosine`` (default :data:`DEFAULT_MIN_COSINE`, as ``fmforge compile --min-cosine``):
    measure what running each op kind in integer costs on the calibration samples
    (:mod:`compiler.accuracy`) and keep the plan's estimated output cosine at or above it (the
    plan's ``accuracy`` section reports the estimate); None skips the measurement and places
    ops on cost alone, so nothing stops a cheaper but lossy placement: MiniLM's int8 layer
    norms (cosine 0.69) whenever the cost model prefers them on the accelerator (the energy
    objective, or seq_len 128 with a host whose measured layer norm is slow).
    """
    devs = parse_devices(devices)
    smooth = parse_smooth(smooth)  # refused before any work
    lm = model if isinstance(model, LoadedModel) else load_model(model, seq_len)
    t0 = time.perf_counter()
    # the core quantizes its int8 values per tensor: only folded smoothing with a core device
    graph, timings = prepare_graph(lm, calib, float_ffn_down, sparse, ffn_down, smooth,
                                   host_smooth=not any(d.kind == "core" for d in devs))
    t1 = time.perf_counter()
    problem = build_problem(graph, devs, objective)
    t2 = time.perf_counter()
    groups, n_calib = None, 0
    kind = {d.name: d.kind for d in devs}
    while True:
        if min_cosine is None:
            result = partition_dp(problem)
        else:  # measures what the partition needs (compiler.accuracy)
            samples = calibration_samples(lm, calib, graph)
            result, groups = partition_within_budget(problem, graph, devs, samples, min_cosine,
                                                     pooled=lm.name == "minilm")
            n_calib = len(samples)
        # a per-channel host quantizer needs its producer on the host: a linear whose producer
        # went to an integer device runs unsmoothed, and its cost is measured again as such
        dropped = drop_host_smoothing(graph, {op: kind[d] for op, d in result.placement.items()})
        if not dropped or min_cosine is None:
            break
    greedy = _greedy(problem, result)
    t3 = time.perf_counter()
    timings.update({"costing_s": t2 - t1, "partition_s": t3 - t2})
    plan = _make_plan(lm, graph, devs, [s.strip() for s in devices.split(",") if s.strip()],
                      problem, result, greedy, groups, n_calib)
    core_progs = []
    if any(d.kind == "core" for d in devs):
        from compiler.core_run import attach_programs
        core_progs = attach_programs(plan, graph)
    check_plan(plan)
    return Compiled(plan, graph, devs, problem, result, greedy, lm,
                    time.perf_counter() - t0, timings, core_progs)


def _greedy(problem: Problem, result: Result) -> Result:
    """The greedy baseline, within the budget over the measured accuracy groups (those the
    exact result uses among them); when it spends the budget on groups that leave some op
    nowhere to run, the greedy within the groups the exact result uses."""
    if problem.min_cosine is None:
        return partition_greedy(problem)

    def only(allowed: set[str]) -> dict[str, list[Any]]:
        return {op: [c if g is None or g in allowed else None for c, g in
                     zip(row, problem.acc_group.get(op) or [None] * len(row), strict=True)]
                for op, row in problem.cost.items()}

    try:
        return partition_greedy(replace(problem, cost=only(set(problem.acc_drop))))
    except NoDeviceError:
        used = groups_used(problem, result.placement)
        return partition_greedy(replace(problem, cost=only(used), min_cosine=None))


def _quant_entry(q: dict[str, Any]) -> dict[str, Any]:
    e = {"in_scales": list(q["in_scales"]), "out_scale": q["out_scale"]}
    if q.get("out_scales"):
        e["out_scales"] = list(q["out_scales"])
    if q.get("smooth"):
        e["smooth"] = {k: (list(v) if k == "factors" else v) for k, v in q["smooth"].items()}
    for k in ("in_bits", "out_bits"):
        if k in q:
            e[k] = int(q[k])
    return e


def _accuracy_entry(problem: Problem, result: Result, groups: list[Group],
                    n_samples: int) -> dict[str, Any]:
    used = groups_used(problem, result.placement)
    return {"min_cosine": problem.min_cosine, "expected_cosine": result.expected_cosine,
            "samples": n_samples,
            "method": "per group (op kind x integer numerics): mean output cosine on the "
                      "calibration samples with only that group in integer (measured when an "
                      "optimal placement wants the group, else null); estimate 1 - sum of the "
                      "drops of the groups placed in integer",
            "groups": [{**g.to_json(), "integer": g.key in used} for g in groups]}


def _make_plan(lm: LoadedModel, graph: Graph, devs: list[Target], specs: list[str],
               problem: Problem, result: Result, greedy: Result,
               groups: list[Group] | None = None, n_calib: int = 0) -> dict[str, Any]:
    ev = evaluate(problem, result.placement)
    assert ev is not None
    lat, energy, sched = ev
    by_dev = {d.name: d for d in devs}
    ops = []
    per_dev = {d.name: {"ops": 0, "macs": 0, "seconds": 0.0, "energy_j": 0.0} for d in devs}
    fallback = []
    accel = [d for d in devs if d.integer]
    for n in graph.nodes:
        dname = result.placement[n.name]
        d = by_dev[dname]
        c = d.cost(n, graph)
        macs = int(n.attrs.get("macs", 0))
        q = n.attrs.get("quant")
        ops.append({"name": n.name, "op": n.op, "target": n.target, "module": n.module,
                    "device": dname, "inputs": list(n.inputs),
                    "out": [t.to_json() for t in n.out], "macs": macs, "cycles": c.cycles,
                    "seconds": c.seconds, "energy_j": c.energy_j, "lowering": d.lowering(n),
                    "quant": _quant_entry(q) if q else None,
                    "sparse_filter": n.attrs.get("sparse_filter")})
        pd = per_dev[dname]
        pd["ops"] += 1
        pd["macs"] += macs
        pd["seconds"] += c.seconds
        pd["energy_j"] += c.energy_j
        if n.op != "layout" and not d.integer and accel:
            reasons = [f"{a.name}: {a.supports(n).reason}" for a in accel if not a.supports(n).ok]
            if len(reasons) == len(accel):
                if n.attrs.get("conv_host"):  # why canonicalize left the convolution as it is
                    reasons.insert(0, f"convolution: {n.attrs['conv_host']}")
                fallback.append({"op": n.name, "kind": n.op, "device": dname,
                                 "reason": "; ".join(reasons)})
    placed = {d.name: [n for n in graph.nodes if result.placement[n.name] == d.name] for d in devs}
    alternatives = _alternatives(problem, result, devs, lat, energy)
    return {
        "format": PLAN_FORMAT, "version": PLAN_VERSION,
        "model": {"source": lm.name, "seq_len": lm.seq_len, "graph_fingerprint": graph.fingerprint(),
                  "inputs": [{"name": n, **t.to_json()} for n, t in graph.inputs],
                  "nodes": len(graph.nodes)},
        "objective": problem.objective,
        "devices": [_device_entry(d, s, placed[d.name]) for d, s in zip(devs, specs, strict=True)],
        "ops": ops,
        "schedule": sched,
        "totals": {"latency_s": lat, "energy_j": energy, "per_device": per_dev},
        "partition": {"algorithm": result.algorithm, "exact": result.exact, "states": result.states,
                      "objective_value": result.objective_value,
                      "greedy_objective": greedy.objective_value},
        "fallback_ops": fallback,
        "assumptions": list(ASSUMPTIONS),
        **({"accuracy": _accuracy_entry(problem, result, groups, n_calib)}
           if groups is not None else {}),
        **({"alternatives": alternatives} if alternatives else {}),
    }


def _alternatives(problem: Problem, result: Result, devs: list[Target], lat: float,
                  energy: float) -> list[dict[str, Any]]:
    """Why an accelerator got fewer ops than it can run: per accelerator, the same model priced
    with every op it supports moved onto it (the rest where the plan has them; link transfers
    included, the accuracy budget not), beside the plan's latency and energy."""
    out = []
    for i, d in enumerate(devs):
        if not d.integer:
            continue
        can = [op for op in problem.ops if problem.cost[op][i] is not None]
        moved = [op for op in can if result.placement[op] != d.name]
        if not can or not moved:
            continue
        alt = dict(result.placement)
        alt.update({op: d.name for op in can})
        ev = evaluate(problem, alt)
        entry: dict[str, Any] = {"device": d.name, "ops": len(can), "ops_moved": len(moved),
                                 "feasible": ev is not None, "plan_latency_s": lat,
                                 "plan_energy_j": energy}
        if ev is not None:
            entry.update({"latency_s": ev[0], "energy_j": ev[1],
                          "transfer_s": sum(float(e.get("transfer_in_s", 0.0)) for e in ev[2])})
        out.append(entry)
    return out
