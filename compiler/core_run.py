"""Run a compiled plan's transformer body on the fmforge core (golden interpreter).

:func:`encoder_region` picks the ops the core runs: from the first ``linear`` to the last
``layer_norm`` in graph order (MiniLM: the six encoder layers; the embedding lookup, the mask
preparation and the pooling stay on the host). :func:`run_on_core` lowers that region with
:func:`compiler.core_backend.lower_region`, runs the host ops in float, the region on the golden
core (:func:`golden.core.run_program`), and compares the sentence embeddings with the float model.
Its exact timing comes from :func:`hw.core_model.program_timing` on the same program.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from compiler.core_backend import CORE_OPS, CoreLoweringError, CoreProgram, lower_region
from compiler.execute import rebuild_graph
from compiler.ir import Graph
from hw.core_model import CoreConfig, program_timing

__all__ = ["attach_programs", "core_impl", "core_regions", "encoder_region", "lower_plan",
           "plan_programs", "run_on_core", "write_program_files"]


def encoder_region(graph: Graph) -> list[str]:
    """Names of the ops from the first ``linear`` to the last ``layer_norm`` (graph order);
    ``CoreLoweringError`` names an op in between that the core cannot run."""
    names = [n.name for n in graph.nodes]
    ops = [n.op for n in graph.nodes]
    if "linear" not in ops or "layer_norm" not in ops:
        raise CoreLoweringError("the model has no linear ... layer_norm body for the core")
    i0 = ops.index("linear")
    i1 = len(ops) - 1 - ops[::-1].index("layer_norm")
    region = names[i0:i1 + 1]
    for nm in region:
        n = graph.node(nm)
        if n.op not in CORE_OPS:
            raise CoreLoweringError(f"op {nm} ({n.op}, {n.target}) inside the encoder body has "
                                    f"no core instruction (core ops: {', '.join(CORE_OPS)})")
    return region


def core_regions(plan: dict[str, Any], graph: Graph) -> list[tuple[dict[str, Any], list[str]]]:
    """(core device entry, op names) of every run of consecutive graph-order ops the plan places
    on a core device: each run is convex, so one program computes it."""
    devs = {d["name"]: d for d in plan["devices"]}
    place = {o["name"]: o["device"] for o in plan["ops"]}
    out: list[tuple[dict[str, Any], list[str]]] = []
    run: list[str] = []
    cur = None
    for n in graph.nodes:
        d = devs[place[n.name]]
        if d["kind"] == "core" and (cur is None or cur == d["name"]):
            run.append(n.name)
            cur = d["name"]
            continue
        if run:
            out.append((devs[cur], run))  # type: ignore[index]
        run, cur = ([n.name], d["name"]) if d["kind"] == "core" else ([], None)
    if run:
        out.append((devs[cur], run))  # type: ignore[index]
    return out


def _device_config(dev: dict[str, Any]) -> CoreConfig:
    from hw.core_spec import CoreSpec
    p = dev["params"]
    spec = CoreSpec(**{k: p[k] for k in CoreSpec.__dataclass_fields__ if k in p})
    return spec.config()


def plan_programs(plan: dict[str, Any], graph: Graph) -> list[tuple[str, CoreProgram]]:
    """(device name, program) of every core region of the plan, lowered from ``graph``."""
    return [(dev["name"], lower_region(graph, names, _device_config(dev)))
            for dev, names in core_regions(plan, graph)]


def _entry(prog: CoreProgram) -> dict[str, Any]:
    import hashlib

    from hw.core_model import program_timing
    t = program_timing(prog.instrs, prog.cfg)

    def vmap(vals: dict[str, Any]) -> dict[str, Any]:
        return {k: {"fmt": v.fmt, "first_byte": int(v.addr.min()), "shape": list(v.addr.shape),
                    "scale": v.scale if isinstance(v.scale, float) else None}
                for k, v in vals.items()}

    return {"ops": list(prog.ops), "instructions": len(prog.instrs),
            "predicted_cycles": t.cycles, "busy_cycles": t.busy,
            "program_sha256": hashlib.sha256(prog.program_bytes()).hexdigest(),
            "image_sha256": hashlib.sha256(prog.image).hexdigest(),
            "image_bytes": len(prog.image), "ext_bytes": prog.ext_bytes,
            "inputs": vmap(prog.inputs), "outputs": vmap(prog.outputs)}


def attach_programs(plan: dict[str, Any], graph: Graph) -> list[tuple[str, CoreProgram]]:
    """Lower the plan's core regions and record each program in its device's
    ``hardware.programs`` (content hashes, memory map, exact predicted cycles)."""
    progs = plan_programs(plan, graph)
    for d in plan["devices"]:
        if d["kind"] == "core":
            d["hardware"]["programs"] = [_entry(p) for name, p in progs if name == d["name"]]
    return progs


def write_program_files(plan_path: Any, progs: list[tuple[str, CoreProgram]]) -> list[str]:
    """Write ``<plan>.<device>.<i>.program.bin`` / ``.image.bin`` beside the plan (atomically)."""
    from pathlib import Path

    from golden.outputs import write_atomic
    base = Path(plan_path)
    out = []
    for i, (dev, p) in enumerate(progs):
        for kind, data in (("program", p.program_bytes()), ("image", p.image)):
            f = base.with_name(f"{base.stem}.{dev}.{i}.{kind}.bin")
            write_atomic(f, data)
            out.append(str(f))
    return out


def core_impl(plan: dict[str, Any], graph: Graph, base: Any, runner: Any = None) -> Any:
    """A node implementation for :func:`compiler.interp.run_graph`: the plan's core regions run
    on the golden core (each region's program once per input, on its first op), every other op
    through ``base``. ``CoreLoweringError`` when a program differs from the one the plan records
    (content hash)."""
    progs = plan_programs(plan, graph)
    want = [p for d in plan["devices"] if d["kind"] == "core"
            for p in d["hardware"].get("programs", [])]
    if len(want) != len(progs) or any(
            w["program_sha256"] != _entry(p)["program_sha256"] or
            w["image_sha256"] != _entry(p)["image_sha256"] for w, (_, p) in zip(
                want, progs, strict=False)):
        raise CoreLoweringError("the plan's core programs do not match what its model lowers to "
                                "(field devices[].hardware.programs: content hash differs; "
                                "recompile the plan)")
    impl = programs_impl(graph, [p for _, p in progs], base, runner)
    impl.programs = progs  # type: ignore[attr-defined]
    return impl


def programs_impl(graph: Graph, progs: Sequence[CoreProgram], base: Any,
                  runner: Any = None) -> Any:
    """A node implementation running each program's ops on the golden core (the program once
    per input, on its first op) and every other op through ``base``; call ``impl.start(inputs)``
    before each input. ``runner(prog, inputs) -> outputs`` replaces the golden core (the RTL)."""
    owner = {nm: i for i, p in enumerate(progs) for nm in p.ops}
    state: dict[str, Any] = {}
    runs: dict[int, dict[str, Any]] = {}

    def impl(node: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        i = owner.get(node.name)
        if i is None:
            v = base(node, args, kwargs)
        else:  # the region's program runs once, on its first op; inner values are not read back
            if i not in runs:
                prog = progs[i]
                ins = {k: state[k] for k in prog.inputs}
                runs[i] = runner(prog, ins) if runner else prog.run(ins)[0]
            v = runs[i].get(node.name)
        if v is not None:
            state[node.name] = v
        return v

    def start(inputs: Any) -> None:
        """Call before each input: forget the previous input's values and program runs."""
        state.clear()
        runs.clear()
        for (name, _), t in zip(graph.inputs, inputs, strict=True):
            state[name] = t

    impl.start = start  # type: ignore[attr-defined]
    impl.programs = [("core", p) for p in progs]  # type: ignore[attr-defined]
    return impl


def lower_plan(plan: dict[str, Any], cfg: CoreConfig | None = None
               ) -> tuple[Graph, Any, CoreProgram]:
    """Rebuild the plan's graph and lower its encoder body to a core program."""
    graph, lm = rebuild_graph(plan)
    region = encoder_region(graph)
    return graph, lm, lower_region(graph, region, cfg or CoreConfig())


def run_on_core(plan: dict[str, Any], sentences: Sequence[str] | None = None,
                limit: int | None = None, cfg: CoreConfig | None = None,
                runner: Any = None, memory: dict[str, int] | None = None) -> dict[str, Any]:
    """Run the plan with its core part on the golden core; compare with the float model.

    The core part is the plan's core regions when it has a core device (their programs must
    match the plan's content hashes), else the encoder body (:func:`encoder_region`) lowered
    for ``cfg``; every other op runs where the plan placed it. Returns ``cosine_min``,
    ``cosine_mean``, ``n_inputs``, ``predicted_cycles`` (per input, all programs),
    ``array_utilization`` (matrix-queue busy cycles / total), ``unit_busy`` (busy cycles per
    queue and per opcode), ``programs``, ``instructions``, ``image_bytes``, ``golden_seconds``,
    and ``_programs`` (the (device, :class:`CoreProgram`) pairs; not JSON). ``runner`` as in
    :func:`programs_impl` (the RTL instead of the golden core). ``memory`` (``latency``,
    ``bytes_per_cycle``) overrides the external-memory parameters the programs are timed and
    simulated with (the programs themselves do not depend on them).
    """
    from compiler.execute import execute_plan, make_impl

    graph, lm = rebuild_graph(plan)
    if any(d["kind"] == "core" for d in plan["devices"]):
        impl = core_impl(plan, graph, make_impl(graph, plan), runner)
    else:
        prog = lower_region(graph, encoder_region(graph), cfg or CoreConfig())
        impl = programs_impl(graph, [prog], make_impl(graph, plan), runner)
    progs = impl.programs
    if memory:
        import dataclasses
        for _, p in progs:
            p.cfg = dataclasses.replace(p.cfg, **memory)
    t0 = time.perf_counter()
    r = execute_plan(plan, sentences=sentences, limit=limit, impl=impl, graph=(graph, lm))
    secs = time.perf_counter() - t0
    busy = dict.fromkeys("DMS", 0)
    by_op: dict[str, int] = {}
    cycles = 0
    for _, p in progs:
        t = program_timing(p.instrs, p.cfg)
        cycles += t.cycles
        for k, v in t.busy.items():
            busy[k] += v
        for k, v in t.busy_by_op.items():
            by_op[k] = by_op.get(k, 0) + v
    return {"cosine_min": r["cosine_min"], "cosine_mean": r["cosine_mean"],
            "n_inputs": r["n_inputs"], "predicted_cycles": cycles,
            "array_utilization": busy["M"] / cycles if cycles else 0.0,
            "unit_busy": {"queues": busy, "ops": by_op}, "programs": len(progs),
            "instructions": sum(len(p.instrs) for _, p in progs),
            "image_bytes": sum(len(p.image) for _, p in progs),
            "core": progs[0][1].cfg.to_json(), "golden_seconds": secs,
            "region_ops": sum(len(p.ops) for _, p in progs), "model": lm.name,
            "_programs": progs}
