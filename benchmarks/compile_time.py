"""Compile time of MiniLM and GPT-2-small (targets: <= 10 s and <= 20 s).

Prints load (module construction, not part of compiling), export, passes (canonicalize,
smoothing, quantize), costing, partition, the total compile time (export -> plan) in wall
seconds, and the compile's CPU seconds (this process, all threads: the number to compare on a
shared machine). ``--smooth`` as ``fmforge compile --smooth`` (default auto); ``--json`` prints
one JSON object. The goal's setting: ``--devices asic,imc,cpu,gpu-a100``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from compiler.driver import DEFAULT_SMOOTH, compile_model
from compiler.frontend import load_model

__all__ = ["main"]

TARGET_S = {"minilm": 10, "gpt2-small": 20}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", default="ulx3s-85f,asic,cpu")
    ap.add_argument("--smooth", default=DEFAULT_SMOOTH)
    ap.add_argument("--models", default="minilm,gpt2-small")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for model in args.models.split(","):
        t = time.perf_counter()
        lm = load_model(model)
        load = time.perf_counter() - t
        cpu = time.process_time()
        c = compile_model(lm, args.devices, smooth=args.smooth)
        rows.append({"model": model, "nodes": len(c.graph.nodes), "load_s": load,
                     **c.timings, "compile_s": c.compile_seconds,
                     "compile_cpu_s": time.process_time() - cpu,
                     "target_s": TARGET_S.get(model)})
    if args.json:
        print(json.dumps({"devices": args.devices, "smooth": args.smooth, "rows": rows},
                         sort_keys=True))
    else:
        print(f"{'model':<12}{'nodes':>6}{'load':>8}{'export':>8}{'passes':>8}{'cost':>8}"
              f"{'part':>8}{'compile':>9}{'cpu':>8}{'target':>8}")
        for r in rows:
            print(f"{r['model']:<12}{r['nodes']:>6}{r['load_s']:>8.2f}{r['export_s']:>8.2f}"
                  f"{r['passes_s']:>8.2f}{r['costing_s']:>8.2f}{r['partition_s']:>8.2f}"
                  f"{r['compile_s']:>9.2f}{r['compile_cpu_s']:>8.2f}{r['target_s'] or '-':>8}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
