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

import torch

from compiler.core_backend import CORE_OPS, CoreLoweringError, CoreProgram, lower_region
from compiler.execute import plan_inputs, rebuild_graph
from compiler.interp import float_impl, run_graph
from compiler.ir import Graph
from hw.core_model import CoreConfig, program_timing

__all__ = ["encoder_region", "lower_plan", "run_on_core"]


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


def lower_plan(plan: dict[str, Any], cfg: CoreConfig | None = None
               ) -> tuple[Graph, Any, CoreProgram]:
    """Rebuild the plan's graph and lower its encoder body to a core program."""
    graph, lm = rebuild_graph(plan)
    region = encoder_region(graph)
    return graph, lm, lower_region(graph, region, cfg or CoreConfig())


def run_on_core(plan: dict[str, Any], sentences: Sequence[str] | None = None,
                limit: int | None = None, cfg: CoreConfig | None = None) -> dict[str, Any]:
    """Run the plan with its encoder body on the golden core; compare with the float model.

    Returns ``cosine_min``, ``cosine_mean``, ``n_inputs``, ``predicted_cycles``,
    ``array_utilization`` (matrix-queue busy cycles / total), ``unit_busy`` (busy cycles per
    queue and per opcode), ``instructions``, ``program_sha256``, ``image_bytes``,
    ``golden_seconds``.
    """
    cfg = cfg or CoreConfig()
    graph, lm, prog = lower_plan(plan, cfg)
    region = set(prog.ops)
    t0 = time.perf_counter()
    state: dict[str, Any] = {}
    host_in = set(prog.inputs)

    def impl(node: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if node.name in region:
            if "outs" not in state:
                outs, _ = prog.run({k: state[k] for k in host_in})
                state["outs"] = outs
            return state["outs"].get(node.name)  # values inside the region: not read back
        v = float_impl(node, args, kwargs)
        if node.name in host_in:
            state[node.name] = v
        return v

    def one(inp: tuple[torch.Tensor, ...]) -> torch.Tensor:
        state.clear()
        for (name, _), t in zip(graph.inputs, inp, strict=True):
            if name in host_in:
                state[name] = t
        return run_graph(graph, inp, impl=impl)[0]

    cos: list[float] = []
    if lm.name == "minilm":
        from compiler.models import embed, load_sentences
        from compiler.zoo import _minilm, tokenize
        sents = list(sentences) if sentences is not None else load_sentences()
        sents = sents[:limit] if limit else sents
        model, tok = _minilm()
        ref = embed(model, tok, sents)
        ids, am, tt = tokenize(sents, lm.seq_len or 32)
        for i in range(len(sents)):
            out = one((ids[i:i + 1], am[i:i + 1], tt[i:i + 1]))
            msk = am[i:i + 1].unsqueeze(-1).to(out.dtype)
            pooled = (out * msk).sum(1) / msk.sum(1).clamp_min(1e-9)
            e = torch.nn.functional.normalize(pooled, p=2, dim=-1)[0]
            cos.append(float(torch.nn.functional.cosine_similarity(
                e.double()[None], ref[i].double()[None])[0]))
    else:
        for i in range(limit or 4):
            inp = plan_inputs(lm, i)
            out = one(inp)
            with torch.no_grad():
                r = lm.module(*inp)
            r = r[0] if isinstance(r, (tuple, list)) else r
            cos.append(float(torch.nn.functional.cosine_similarity(
                out.flatten().double()[None], r.flatten().double()[None])[0]))
    secs = time.perf_counter() - t0
    tm = program_timing(prog.instrs, cfg)
    return {"cosine_min": min(cos), "cosine_mean": sum(cos) / len(cos), "n_inputs": len(cos),
            "predicted_cycles": tm.cycles,
            "array_utilization": tm.busy["M"] / tm.cycles if tm.cycles else 0.0,
            "unit_busy": {"queues": tm.busy, "ops": tm.busy_by_op},
            "instructions": len(prog.instrs), "program_sha256": prog.digest(),
            "image_bytes": len(prog.image), "core": cfg.to_json(), "golden_seconds": secs,
            "region_ops": len(prog.ops), "model": lm.name}
