"""Partition quality: predicted latency of exact DP vs greedy vs all-CPU vs all-accelerator
(accelerator where it can run the op, CPU otherwise), for MiniLM on several device sets.
CPU times use the roofline mode so the table is reproducible. ``--json`` prints one object."""

from __future__ import annotations

import argparse
import json

import torch

from compiler.driver import compile_model
from compiler.frontend import load_model
from compiler.partition import evaluate

__all__ = ["main", "DEVICE_SETS"]

DEVICE_SETS = ("ulx3s-85f,cpu:mode=roofline", "ulx3s-25f,cpu:mode=roofline",
               "asic,cpu:mode=roofline", "imc,cpu:mode=roofline",
               "asic,imc,cpu:mode=roofline", "asic,gpu-a100,cpu:mode=roofline")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--objective", default="latency", choices=("latency", "energy"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lm = load_model(args.model)
    rows = []
    for devs in DEVICE_SETS:
        c = compile_model(lm, devs, args.objective)
        p = c.problem
        k = 0 if args.objective == "latency" else 1
        host = p.devices[p.host]
        all_cpu = evaluate(p, {op: host for op in p.ops})
        accel = {op: next((p.devices[d] for d in range(len(p.devices))
                           if p.cost[op][d] is not None), host) for op in p.ops}
        all_acc = evaluate(p, accel)
        rows.append({"devices": devs, "exact": c.result.objective_value,
                     "greedy": c.greedy.objective_value,
                     "all_cpu": all_cpu[k] if all_cpu else None,
                     "all_accelerator": all_acc[k] if all_acc else None,
                     "exact_is_exact": c.result.exact})
    if args.json:
        print(json.dumps({"model": args.model, "objective": args.objective, "rows": rows},
                         sort_keys=True))
    else:
        unit = "ms" if args.objective == "latency" else "mJ"
        print(f"{args.model}, predicted {args.objective} ({unit})")
        print(f"{'devices':<36}{'exact DP':>11}{'greedy':>11}{'all-CPU':>11}{'all-accel':>11}")
        for r in rows:
            f = [r[x] * 1e3 if r[x] is not None else float("nan")
                 for x in ("exact", "greedy", "all_cpu", "all_accelerator")]
            print(f"{r['devices']:<36}" + "".join(f"{v:>11.3f}" for v in f))
    return {"rows": rows}


if __name__ == "__main__":
    main()
