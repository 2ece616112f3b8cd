"""Accuracy of a quantized decode step by KV-cache fill, and of greedy generation through it.

``python -m benchmarks.decode_fill --models gpt2-tiny,llama-tiny --context 16``: compiles each
decoder's ``decode@T`` step (``asic,cpu``, ``--objective energy``, the default accuracy budget,
16 calibration samples) unless ``--plan`` gives a plan file, then runs held-out steps through
the executor at several fill levels (``--fills``, default 0, 1, 2, 4, 7, T; ``--steps`` steps
each, seeded, every cache the float model's own from a prefill of random tokens) and compares
the step's logits and last hidden state with the float step's (cosine per step, min and mean
per fill). ``--generate N`` adds :func:`compiler.generate.generate_plan` (8 random prompts of 8
tokens): free-running and teacher-forced token agreement, logits and hidden cosine.
``--json FILE`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from compiler.driver import compile_model
from compiler.execute import rebuild_graph
from compiler.generate import fill_cosines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="gpt2-tiny,llama-tiny,qwen2-tiny")
    ap.add_argument("--context", type=int, default=16)
    ap.add_argument("--fills", default=None, help="comma-separated fill levels")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--plan", default=None, help="a compiled decode-step plan (one model)")
    ap.add_argument("--save-plan", default=None, help="write the compiled plan (one model)")
    ap.add_argument("--generate", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    fills = ([int(v) for v in a.fills.split(",")] if a.fills
             else sorted({0, 1, 2, 4, 7, a.context}))
    report: dict[str, Any] = {}
    for model in ([None] if a.plan else a.models.split(",")):
        t0 = time.perf_counter()
        if a.plan:
            with open(a.plan) as fh:
                plan = json.load(fh)
        else:
            plan = compile_model(f"{model}/decode@{a.context}", "asic,cpu", "energy",
                                 calib=a.calib).plan
            if a.save_plan:
                with open(a.save_plan, "w") as fh:
                    json.dump(plan, fh)
        name = plan["model"]["source"]
        t1 = time.perf_counter()
        graph = rebuild_graph(plan)
        r: dict[str, Any] = {"compile_s": round(t1 - t0, 1),
                             "fills": fill_cosines(plan, fills, a.steps, graph=graph),
                             "expected_cosine": plan.get("accuracy", {}).get("expected_cosine")}
        print(f"{name}: compile {r['compile_s']} s, plan expects {r['expected_cosine']}")
        print("  fill  logits min / mean    hidden min / mean")
        for f, c in r["fills"].items():
            print(f"  {f:4d}  {c['logits_min']:.5f} / {c['logits_mean']:.5f}  "
                  f"{c['hidden_min']:.5f} / {c['hidden_mean']:.5f}")
        if a.generate:
            from compiler.generate import generate_plan
            gr = generate_plan(plan, a.generate, graph=graph)
            r["generate"] = {k: gr[k] for k in (
                "token_agreement", "teacher_forced_agreement", "exact_sequences",
                "logits_cosine_mean", "logits_cosine_min", "hidden_cosine_mean",
                "hidden_cosine_min")}
            print("  generate: " + ", ".join(f"{k} {v:.4g}" for k, v in r["generate"].items()))
        report[name] = r
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
