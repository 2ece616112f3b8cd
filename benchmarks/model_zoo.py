"""Every architecture of the model zoo (``compiler.zoo.MODELS``) compiled and executed.

For each model and device set: compile time (export -> plan), the accelerator's share of the
model's MACs (linears, matmuls, attention and convolutions all counted), the output cosine of
``fmforge execute`` against the float model (MiniLM: sentence embeddings of the first 16 shipped
sentences; others: the example input and 3 seeded random inputs) and the ops no accelerator can
run, by kind, with the first reason, under each ``--objective`` (default both: the tiny models'
ops are faster on the host than across the link, so latency keeps them there). ``--min-cosine`` is the compile's accuracy budget (the
CLI's default 0.99; -1 places on cost alone). ``gpt2-small`` (the same architecture as
``gpt2-tiny``, 12 layers of 768) only with ``--models``. Causal decoders also report token
agreement (:func:`token_agreement`: the next token of a tied-embedding head, executed plan vs
float model). Decoders with a decode step (``compiler.zoo.DECODERS``) also run greedy
generation (:func:`generation`, ``--generate N`` tokens, default 8, 0 turns it off): their
``decode@16`` step compiled the same way, 4 random prompts of 8 tokens through it with the
model's own LM head and the executor's KV cache (:mod:`compiler.generate`); free-running and
teacher-forced token agreement with the float model's greedy tokens. ``--json`` prints one JSON
object.

    python -m benchmarks.model_zoo [--devices asic,cpu ...] [--models a,b] [--generate N] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from compiler.driver import compile_model
from compiler.execute import execute_plan, make_impl
from compiler.frontend import load_model
from compiler.interp import run_graph
from compiler.zoo import DECODERS as DECODE_STEPS
from compiler.zoo import MODELS

__all__ = ["main", "measure"]

#: causal decoders: token agreement of a tied-embedding head is reported
DECODERS = ("gpt2", "opt", "llama", "mistral", "qwen2")
#: the models run by default: every architecture once
DEFAULT_MODELS = [m for m in MODELS if m != "gpt2-small"]


def _fallback(plan: dict[str, Any]) -> str:
    kinds: dict[str, list[Any]] = {}
    for f in plan["fallback_ops"]:
        kinds.setdefault(f["kind"], []).append(f)
    parts = []
    for k, fs in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        reason = fs[0]["reason"].split(";")[0].split(": ", 1)[-1]
        parts.append(f"{k} x{len(fs)} ({reason})")
    return "; ".join(parts)


def token_agreement(c: Any, lm: Any, n: int = 4) -> float:
    """Fraction of positions whose next token (argmax over the vocabulary of the last hidden
    state times the input embedding table: a tied head) is the same from the executed plan as
    from the float model, over the example and ``n - 1`` random token sequences."""
    emb = lm.module.m.get_input_embeddings().weight.detach()
    impl = make_impl(c.graph, c.plan)
    g = torch.Generator().manual_seed(99)
    x = lm.example_inputs[0]
    inputs = [x] + [torch.randint(0, emb.shape[0], x.shape, generator=g) for _ in range(n - 1)]
    same = total = 0
    for ids in inputs:
        out = run_graph(c.graph, (ids,), impl=impl)[0]
        with torch.no_grad():
            ref = lm.module(ids)
        same += int(((out @ emb.t()).argmax(-1) == (ref @ emb.t()).argmax(-1)).sum())
        total += ids.numel()
    return same / total


def generation(model: str, devices: str, min_cosine: float | None, calib: int, objective: str,
               n_tokens: int, context: int = 16, n_prompts: int = 4,
               prompt_len: int = 8) -> dict[str, Any]:
    """Greedy generation of ``n_tokens`` tokens through ``model``'s decode step (``decode@
    context``, compiled like the row's model), ``n_prompts`` random prompts of ``prompt_len``
    tokens: free-running and teacher-forced token agreement, teacher-forced logits cosine."""
    from compiler.generate import generate_plan

    c = compile_model(f"{model}/decode@{context}", devices, objective, min_cosine=min_cosine,
                      calib=calib)
    r = generate_plan(c.plan, n_tokens, n_prompts=n_prompts, prompt_len=prompt_len)
    return {"gen_agreement": r["token_agreement"],
            "gen_teacher_forced": r["teacher_forced_agreement"],
            "gen_logits_cosine_mean": r["logits_cosine_mean"],
            "gen_lm_head_device": r["lm_head"]["device"]}


def measure(model: str, devices: str, min_cosine: float | None, calib: int = 16,
            objective: str = "latency", generate: int = 8) -> dict[str, Any]:
    """One row: compile and execute ``model`` on ``devices`` (decoders: and ``generate`` tokens
    of greedy generation through their decode step, :func:`generation`; 0: not)."""
    lm = load_model(model)
    t = time.perf_counter()
    c = compile_model(lm, devices, objective, min_cosine=min_cosine, calib=calib)
    compile_s = time.perf_counter() - t
    per = c.plan["totals"]["per_device"]
    total = sum(d["macs"] for d in per.values()) or 1
    accel = {d["name"] for d in c.plan["devices"] if d["kind"] not in ("cpu", "gpu")}
    share = sum(per[d]["macs"] for d in accel) / total
    r = execute_plan(c.plan, limit=16 if model == "minilm" else 4)
    agree = token_agreement(c, lm) if model.split("-")[0] in DECODERS else None
    gen: dict[str, Any] = {}
    if generate and model in DECODE_STEPS:
        try:
            gen = generation(model, devices, min_cosine, calib, objective, generate)
        except Exception as e:  # the row stands without it
            gen = {"gen_error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    return {**gen, "model": model, "devices": devices, "objective": objective, "compile_s": compile_s, "macs": total,
            "accel_share": share, "cosine_mean": r["cosine_mean"], "cosine_min": r["cosine_min"],
            "expected_cosine": (c.plan.get("accuracy") or {}).get("expected_cosine"),
            "fallback": _fallback(c.plan),
            "fallback_ops": len(c.plan["fallback_ops"]), "token_agreement": agree}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", nargs="+", default=["asic,cpu"])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--min-cosine", type=float, default=0.99)
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--objective", nargs="+", default=["latency", "energy"],
                    choices=("latency", "energy"))
    ap.add_argument("--generate", type=int, default=8, metavar="N",
                    help="greedy generation of N tokens through each decoder's decode step "
                    "(default 8; 0: off)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    budget = None if args.min_cosine < -0.999 else args.min_cosine
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for devices in args.devices:
            for obj in args.objective:
                try:
                    rows.append(measure(model, devices, budget, args.calib, obj,
                                        args.generate))
                except Exception as e:  # a model that does not compile is a row, not a crash
                    rows.append({"model": model, "devices": devices, "objective": obj,
                                 "error": f"{type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else ''}"})
                if not args.json:
                    _print(rows[-1], header=len(rows) == 1)
    if args.json:
        print(json.dumps({"min_cosine": budget, "calib": args.calib, "rows": rows},
                         sort_keys=True))
    return {"rows": rows}


def _gen(r: dict[str, Any]) -> str:
    """The generation column: free-running / teacher-forced agreement, ``error`` or ``-``."""
    if "gen_error" in r:
        return "error"
    if "gen_agreement" not in r:
        return "-"
    return f"{r['gen_agreement']:.3f}/{r['gen_teacher_forced']:.3f}"


def _print(r: dict[str, Any], header: bool) -> None:
    if header:
        print(f"{'model':<15}{'devices':<10}{'objective':<10}{'compile s':>10}{'MMACs':>9}{'accel %':>9}"
              f"{'cos mean':>10}{'cos min':>9}{'tokens':>8}{'generated':>12}  fallback ops (kind x count, first reason)")
    if "error" in r:
        print(f"{r['model']:<15}{r['devices']:<10}{r['objective']:<10}  error: {r['error']}")
        return
    print(f"{r['model']:<15}{r['devices']:<10}{r['objective']:<10}{r['compile_s']:>10.2f}{r['macs'] / 1e6:>9.2f}"
          f"{100 * r['accel_share']:>9.1f}{r['cosine_mean']:>10.5f}{r['cosine_min']:>9.5f}"
          f"{'-' if r['token_agreement'] is None else format(r['token_agreement'], '.3f'):>8}"
          f"{_gen(r):>12}  "
          f"{r['fallback'] or '-'}", flush=True)


if __name__ == "__main__":
    main()
