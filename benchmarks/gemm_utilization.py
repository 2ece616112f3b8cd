"""RTL-measured utilization of the GEMM engine on transformer shapes, beside SCALE-Sim.

Every row runs the GEMM through cocotb + Verilator (bit-exact check against golden.gemm) and
reports the engine's measured compute cycle count, the cycle model's prediction, the compute
utilization ``M*K*N / (cycles * R * C)``, the testbench-counted end-to-end cycles (first operand
word to last result row, loads included; checked against hw.gemm.gemm_total_cycles), the
end-to-end utilization ``M*K*N / (tb_cycles * R * C)`` and SCALE-Sim's no-overlap figure for
the same array and dataflow (closed forms in hw.gemm.scalesim_cycles, checked against SCALE-Sim
v3 runs; SCALE-Sim counts compute only, so compare it with the compute columns).

    python benchmarks/gemm_utilization.py            # 4x4, 8x8, 16x16; OS and WS; 7 shapes
    python benchmarks/gemm_utilization.py --sizes 8 --dataflows os --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from hw.gemm import GemmSpec, scalesim_cycles
from sim.cosim import run_gemm_verilator
from sim.gemm_bench import GemmJob

SHAPES = [(128, 384, 384), (128, 384, 1536), (128, 1536, 384), (128, 64, 128), (128, 128, 64),
          (1, 384, 384), (128, 768, 768)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4,8,16", help="square array sizes (default 4,8,16)")
    ap.add_argument("--dataflows", default="os,ws")
    ap.add_argument("--shapes", default=None, help="M:K:N,... (default: the transformer shapes)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    shapes = SHAPES if not args.shapes else [tuple(int(x) for x in s.split(":")) for s in args.shapes.split(",")]
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for df in args.dataflows.split(","):
            cfg = GemmSpec(rows=size, cols=size, dataflow=df, max_m=max(m for m, _, _ in shapes),
                             max_k=max(k for _, k, _ in shapes), max_n=max(n for _, _, n in shapes))
            jobs = [GemmJob(m, k, n, seed=i) for i, (m, k, n) in enumerate(shapes)]
            t0 = time.perf_counter()
            res = run_gemm_verilator(cfg, jobs)
            print(f"[{size}x{size} {df}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
            for (m, k, n), r in zip(shapes, res, strict=True):
                ss = scalesim_cycles(size, size, df, m, k, n)
                rows.append({
                    "array": f"{size}x{size}", "dataflow": df, "m": m, "k": k, "n": n,
                    "match": r["match"], "cycles": r["cycles"], "predicted_cycles": r["predicted_cycles"],
                    "compute_utilization": r["compute_utilization"], "tb_cycles": r["tb_cycles"],
                    "tb_load_cycles": r["tb_load_cycles"], "predicted_total_cycles": r["predicted_total_cycles"],
                    "timing_ok": r["timing_ok"], "utilization": r["utilization"], "scalesim_cycles": ss,
                    "scalesim_utilization": m * k * n / (ss * size * size),
                })
    if args.json:
        print(json.dumps({"results": rows}))
        return 0
    hdr = f"{'array':>6} {'df':>3} {'M':>4} {'K':>5} {'N':>5} {'compute':>9} {'model':>5} {'util':>7} " \
          f"{'end2end':>9} {'load':>7} {'model':>5} {'util':>7} {'SCALE-Sim':>10} {'util':>7} {'golden':>6}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['array']:>6} {r['dataflow']:>3} {r['m']:>4} {r['k']:>5} {r['n']:>5} {r['cycles']:>9,d} "
              f"{'=' if r['cycles'] == r['predicted_cycles'] else '!':>5} {100 * r['compute_utilization']:>6.2f}% "
              f"{r['tb_cycles']:>9,d} {r['tb_load_cycles']:>7,d} {'=' if r['timing_ok'] else '!':>5} "
              f"{100 * r['utilization']:>6.2f}% "
              f"{r['scalesim_cycles']:>10,d} {100 * r['scalesim_utilization']:>6.2f}% "
              f"{'ok' if r['match'] else 'FAIL':>6}")
    print("compute: the engine's cycle counter, '=' when it equals hw.gemm.gemm_cycles; end2end: edges the "
          "testbench counted from the first operand word to the last row (load: of them, loading), '=' when "
          "it equals hw.gemm.gemm_total_cycles; golden: bit-exact vs golden.gemm")
    return 0 if all(r["match"] and r["cycles"] == r["predicted_cycles"] and r["timing_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
