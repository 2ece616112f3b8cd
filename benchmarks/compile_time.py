"""Compile time of MiniLM and a 12-layer GPT-2-small-sized random model (targets: <= 10 s, <= 60 s).

Prints load (module construction, not part of compiling), export, passes, costing, partition and
the total compile time (export -> plan). ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from compiler.driver import compile_model
from compiler.frontend import load_model

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", default="ulx3s-85f,asic,cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for model in ("minilm", "gpt2-small"):
        t = time.perf_counter()
        lm = load_model(model)
        load = time.perf_counter() - t
        c = compile_model(lm, args.devices)
        rows.append({"model": model, "nodes": len(c.graph.nodes), "load_s": load,
                     **c.timings, "compile_s": c.compile_seconds,
                     "target_s": 10 if model == "minilm" else 60})
    if args.json:
        print(json.dumps({"devices": args.devices, "rows": rows}, sort_keys=True))
    else:
        print(f"{'model':<12}{'nodes':>6}{'load':>8}{'export':>8}{'passes':>8}{'cost':>8}"
              f"{'part':>8}{'compile':>9}{'target':>8}")
        for r in rows:
            print(f"{r['model']:<12}{r['nodes']:>6}{r['load_s']:>8.2f}{r['export_s']:>8.2f}"
                  f"{r['passes_s']:>8.2f}{r['costing_s']:>8.2f}{r['partition_s']:>8.2f}"
                  f"{r['compile_s']:>9.2f}{r['target_s']:>8}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
