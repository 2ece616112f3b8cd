"""Co-simulation speed: the same GEMM on cocotb + Verilator and on the Amaranth simulator.

Both runs are in one process, one after the other, on the same engine configuration and the
same operands; the ratio is what to read (these machines are shared and noisy). Reported:
simulated cycles per wall-second and MACs per wall-second over each job's wall time (operand
loading, computation and result collection), bit-exactness against golden.gemm.

    python benchmarks/cosim_speed.py                 # 8x8 OS, 64x64x64 and 128x384x384
    python benchmarks/cosim_speed.py --json
"""

from __future__ import annotations

import argparse
import json
import sys

from hw.gemm import GemmSpec
from sim.cosim import run_gemm_verilator
from sim.gemm_bench import GemmJob
from sim.pysim import run_gemm_pysim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--dataflow", default="os")
    ap.add_argument("--pysim-shape", default="64:64:64", help="M:K:N for both simulators")
    ap.add_argument("--verilator-shape", default="128:384:384", help="an extra, larger shape for Verilator only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    small = tuple(int(x) for x in args.pysim_shape.split(":"))
    big = tuple(int(x) for x in args.verilator_shape.split(":"))
    cfg = GemmSpec(rows=args.size, cols=args.size, dataflow=args.dataflow,
                     max_m=max(small[0], big[0]), max_k=max(small[1], big[1]), max_n=max(small[2], big[2]))
    rows = []
    vl = run_gemm_verilator(cfg, [GemmJob(*small, seed=1), GemmJob(*big, seed=2)])
    for shape, r in zip((small, big), vl, strict=True):
        rows.append({"simulator": "cocotb+verilator", "shape": "x".join(map(str, shape)), **_pick(r)})
    ps = run_gemm_pysim(cfg, [GemmJob(*small, seed=1)])[0]
    macs = small[0] * small[1] * small[2]
    ps["cycles_per_second"] = ps["cycles"] / ps["sim_seconds"]
    ps["macs_per_second"] = macs / ps["sim_seconds"]
    rows.append({"simulator": "amaranth", "shape": "x".join(map(str, small)), **_pick(ps)})
    ratio = rows[0]["macs_per_second"] / rows[2]["macs_per_second"]
    if args.json:
        print(json.dumps({"results": rows, "verilator_over_amaranth": ratio}))
        return 0
    print(f"GEMM engine {args.size}x{args.size} {args.dataflow}")
    hdr = f"{'simulator':>17} {'M x K x N':>12} {'cycles':>9} {'wall s':>8} {'cycles/s':>11} {'MACs/s':>12} {'golden':>6}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['simulator']:>17} {r['shape']:>12} {r['cycles']:>9,d} {r['sim_seconds']:>8.2f} "
              f"{r['cycles_per_second']:>11,.0f} {r['macs_per_second']:>12,.0f} {'ok' if r['match'] else 'FAIL':>6}")
    print(f"Verilator / Amaranth simulator on {rows[0]['shape']}: {ratio:.1f}x")
    return 0 if all(r["match"] for r in rows) else 1


def _pick(r: dict) -> dict:
    return {k: r[k] for k in ("match", "cycles", "sim_seconds", "cycles_per_second", "macs_per_second")}


if __name__ == "__main__":
    sys.exit(main())
