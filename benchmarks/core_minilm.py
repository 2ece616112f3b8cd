"""MiniLM on the fmforge core: accuracy, exact cycles, array utilization per layer, time per
unit, and the same workload's predicted latency/energy on a ULX3S-85F-sized core beside the CPU.

The encoder (6 layers: attention, FFN with GELU, residual adds, layer norms, layout) is compiled
for ``core,cpu`` with the energy objective, so the whole body lands on the core; the program
runs on the golden core (``fmforge run``'s engine) for the shipped sentences, and, with
``--sim``, on the Verilated RTL core (``sim.core_sim``), compared bit for bit and cycle for cycle.

    python benchmarks/core_minilm.py                      # 4 sentences, seq 32, 8x8 array
    python benchmarks/core_minilm.py --seq-len 128 --sentences 2 --json
    python benchmarks/core_minilm.py --sim                # also through the RTL
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any


def layer_table(graph: Any, prog: Any) -> list[dict[str, Any]]:
    """Per encoder layer: cycles spanned, matrix-queue busy cycles and utilization, and busy
    cycles per opcode, from the exact timing of the whole program."""
    from hw.core_model import program_timing

    t = program_timing(prog.instrs, prog.cfg)
    module = {n.name: n.module or "" for n in graph.nodes}
    rows: dict[str, dict[str, Any]] = {}
    for i, op in enumerate(prog.origins):
        m = re.search(r"layer\.(\d+)", module.get(op, ""))
        key = f"layer {m.group(1)}" if m else "other"
        r = rows.setdefault(key, {"layer": key, "first": t.start[i], "last": t.end[i],
                                  "busy": {}})
        r["first"] = min(r["first"], t.start[i])
        r["last"] = max(r["last"], t.end[i])
        ins = prog.instrs[i]
        r["busy"][ins.op] = r["busy"].get(ins.op, 0) + t.end[i] - t.start[i]
    out = []
    for r in rows.values():
        span = r["last"] - r["first"]
        out.append({"layer": r["layer"], "cycles": span, "gemm_busy": r["busy"].get("GEMM", 0),
                    "array_utilization": r["busy"].get("GEMM", 0) / span if span else 0.0,
                    "busy_by_op": r["busy"]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--sim", action="store_true", help="also run the program on the RTL")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from compiler.core_run import run_on_core
    from compiler.driver import compile_model
    from compiler.execute import rebuild_graph
    from hw.gemm import GemmSpec

    torch.set_num_threads(1)
    spec = f"core:rows={args.rows}:cols={args.cols}"
    t0 = time.perf_counter()
    c = compile_model("minilm", f"{spec},cpu", objective="energy", seq_len=args.seq_len)
    compile_s = time.perf_counter() - t0
    r = run_on_core(c.plan, limit=args.sentences)
    progs = r.pop("_programs")
    graph, _ = rebuild_graph(c.plan)
    body = max((p for _, p in progs), key=lambda p: len(p.ops))
    layers = layer_table(graph, body)
    out: dict[str, Any] = {
        "core": spec, "seq_len": args.seq_len, "n_inputs": r["n_inputs"],
        "cosine_mean": r["cosine_mean"], "cosine_min": r["cosine_min"],
        "predicted_cycles": r["predicted_cycles"], "array_utilization": r["array_utilization"],
        "unit_busy": r["unit_busy"], "instructions": r["instructions"],
        "golden_seconds_per_input": r["golden_seconds"] / max(1, r["n_inputs"]),
        "compile_seconds": compile_s, "layers": layers}
    if args.sim:
        out["sim"] = _sim(c.plan, args.sentences)

    # the same workload on a ULX3S-85F-sized core (12x12 = 144 MACs) beside the CPU target
    fmax = max((m.fmax_mhz for m in GemmSpec.measured if m.family == "ecp5"
                and m.config.get("requant", True)), default=100.0)
    board = compile_model("minilm", f"core:rows=12:cols=12:mhz={fmax:.1f},cpu",
                          objective="energy", seq_len=args.seq_len).plan
    cpu = compile_model("minilm", "cpu", objective="latency", seq_len=args.seq_len).plan
    core_dev = next(d for d in board["devices"] if d["kind"] == "core")
    cyc = sum(p["predicted_cycles"] for p in core_dev["hardware"]["programs"])
    out["ulx3s_85f_core"] = {
        "array": "12x12", "clock_mhz": fmax,
        "clock_basis": "the 8x8 GEMM engine with requantizer measured on ECP5-85F "
                       "(hw.gemm.GemmSpec.measured): optimistic, the whole core is not yet "
                       "built and the first small SoC placed at 31 MHz (hw.core_spec basis)",
        "program_cycles": cyc, "program_seconds": cyc / (fmax * 1e6),
        "plan_latency_s": board["totals"]["latency_s"],
        "plan_energy_j": board["totals"]["energy_j"]}
    out["cpu"] = {"plan_latency_s": cpu["totals"]["latency_s"],
                  "plan_energy_j": cpu["totals"]["energy_j"]}
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    print(f"MiniLM on {spec} (seq {args.seq_len}), golden core, {out['n_inputs']} sentences: "
          f"cosine mean {out['cosine_mean']:.5f} min {out['cosine_min']:.5f}; "
          f"{out['instructions']} instructions; {out['predicted_cycles']:,} cycles per input; "
          f"array utilization {100 * out['array_utilization']:.1f}%; golden "
          f"{out['golden_seconds_per_input']:.2f} s per input")
    print("| layer | cycles | GEMM busy | utilization | DMA busy | SFU busy |")
    print("|---|---:|---:|---:|---:|---:|")
    for lr in layers:
        b = lr["busy_by_op"]
        sfu = sum(b.get(k, 0) for k in ("ADD", "LAYERNORM", "SOFTMAX", "GELU"))
        print(f"| {lr['layer']} | {lr['cycles']:,} | {lr['gemm_busy']:,} | "
              f"{100 * lr['array_utilization']:.1f}% | {b.get('LOAD', 0) + b.get('STORE', 0):,} "
              f"| {sfu:,} |")
    q = out["unit_busy"]["ops"]
    print("time per unit (busy cycles per input): " +
          ", ".join(f"{k} {v:,}" for k, v in sorted(q.items(), key=lambda kv: -kv[1])))
    if "sim" in out:
        s = out["sim"]
        print(f"RTL (Verilator), {s['n_inputs']} sentences: bit-exact with the golden core "
              f"{s['match']}; cycles {s['cycles']:,} per sentence vs predicted "
              f"{s['predicted_cycles']:,} (equal: {s['cycles_equal']}); "
              f"{s['sim_seconds_per_input']:.0f} s per sentence ({s['cycles_per_second']:,.0f} "
              f"cycles/s; build {s['build_seconds']:.0f} s once); cosine {s['cosine_mean']:.5f}")
    b, cp = out["ulx3s_85f_core"], out["cpu"]
    print(f"ULX3S-85F-sized core (12x12 at {b['clock_mhz']:.1f} MHz, {b['clock_basis']}): "
          f"{b['program_seconds'] * 1e3:.1f} ms of core programs per sentence; plan "
          f"{b['plan_latency_s'] * 1e3:.1f} ms, {b['plan_energy_j'] * 1e3:.2f} mJ | CPU target: "
          f"{cp['plan_latency_s'] * 1e3:.2f} ms, {cp['plan_energy_j'] * 1e3:.2f} mJ")
    return 0


def _sim(plan: dict[str, Any], n: int) -> dict[str, Any]:
    """The plan's core programs on the Verilated RTL core for ``n`` sentences
    (``fmforge run --sim``'s runner): bit-exactness with the golden core, testbench cycles vs
    the timing model, co-simulation speed."""
    from compiler.core_run import run_on_core
    from fmforge.commands.run import rtl_runner

    stats: dict[str, Any] = {}
    r = run_on_core(plan, limit=n, runner=rtl_runner(stats))
    r.pop("_programs")
    return {"match": stats["match"], "cycles": stats["cycles"] // max(1, r["n_inputs"]),
            "predicted_cycles": stats["predicted_cycles"] // max(1, r["n_inputs"]),
            "cycles_equal": stats["cycles"] == stats["predicted_cycles"],
            "n_inputs": r["n_inputs"], "cosine_mean": r["cosine_mean"],
            "sim_seconds_per_input": stats["sim_seconds"] / max(1, r["n_inputs"]),
            "build_seconds": stats["build_seconds"],
            "cycles_per_second": stats["cycles"] / stats["sim_seconds"]
            if stats["sim_seconds"] else 0.0}


if __name__ == "__main__":
    sys.exit(main())
