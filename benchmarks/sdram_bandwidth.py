"""The board SDRAM's latency and bandwidth as the core's DMA sees them, measured in simulation.

The LiteDRAM path of the ULX3S (boards.sdram_sim: NativeBridge + SdramInit + the generated
LiteDRAM controller) runs in Verilator with the behavioural AS4C16M16 chip model
(sim.sdram_chip) on its pins (fmforge.sdram_sim.run_sdram_ops), at the SoC clocks the board plan
uses (boards.soc.soc_clock_hz: the 25 MHz oscillator, and 50 MHz from the PLL). For each DMA
pattern (rows of 16/64/384/1536 bytes, sequential or strided so every row opens a new DRAM row
in the same bank; writes, then reads of the same rows, whose data is checked) the requests go
back to back, as the core's DMA offers them, and the table gives, in core cycles:

* ``L`` first beat: request taken -> first read beat (min / median / max over the rows);
* ``row``: cycles from one row's request to the next (median / max: the max includes a refresh);
* ``B/cyc``: bytes per cycle over the whole pattern, refreshes included;
* ``meas``: the DMA instruction's cycles as measured (``DMA_SETUP`` + first request to last data
  beat + 1) against ``hw.core_model.instr_cycles`` with the compiler's board constants
  (``model``) and with ``--latency/--bpc`` if given.

Usage: ``python benchmarks/sdram_bandwidth.py [--clock-mhz 25 50] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boards.soc import soc_clock_hz  # noqa: E402
from compiler.targets.core import SDRAM_BPC, SDRAM_LATENCY  # noqa: E402
from fmforge.sdram_sim import run_sdram_ops  # noqa: E402
from golden.core import Instr  # noqa: E402
from hw.core_model import DMA_SETUP, CoreConfig, instr_cycles  # noqa: E402

BOARD = "ulx3s-85f"
ROW_BYTES = (16, 64, 384, 1536)
#: a stride that keeps the bank and changes the DRAM row (ROW_BANK_COL: 1 KiB columns x 4 banks)
MISS_STRIDE = 8192
BASE = 0x10000


def patterns() -> list[tuple[str, int, int, int]]:
    """(name, row bytes, rows, stride)."""
    out = []
    for n in ROW_BYTES:
        rows = max(8, 6144 // n)
        out.append(("seq", n, rows, n))
        out.append(("row-miss", n, rows, MISS_STRIDE * (1 + (n - 1) // MISS_STRIDE)))
    return out


def model_cycles(op: str, rows: int, n: int, latency: int, bpc: int) -> int:
    ins = Instr(op, f={"rows": rows, "cols": n, "esz": 0, "sp_cs": 1})
    return instr_cycles(ins, CoreConfig(latency=latency, bytes_per_cycle=bpc))


def run_clock(clock_hz: float, seed: int = 0) -> tuple[list[dict], dict, float]:
    rng = random.Random(seed)
    ops: list[dict] = []
    plan = []
    base = BASE
    for name, n, rows, stride in patterns():
        addrs = [base + i * stride for i in range(rows)]
        data = [bytes(rng.randrange(256) for _ in range(n)) for _ in addrs]
        plan.append((name, n, rows, "write", len(ops), data))
        ops += [{"write": a, "data": d.hex()} for a, d in zip(addrs, data, strict=True)]
        ops.append({"idle": 50})
        plan.append((name, n, rows, "read", len(ops), data))
        ops += [{"read": a, "length": n} for a in addrs]
        ops.append({"idle": 50})
        base = (addrs[-1] + n + 2 * MISS_STRIDE) // MISS_STRIDE * MISS_STRIDE
    t0 = time.time()
    res = run_sdram_ops(ops, board=BOARD, clock_hz=clock_hz, bytes_per_cycle=SDRAM_BPC,
                        strict=False, progress=lambda m: print(m, file=sys.stderr))
    wall = time.time() - t0
    rows_out = []
    for name, n, rows, kind, i0, data in plan:
        rs = res["ops"][i0:i0 + rows]
        if kind == "read":
            bad = sum(r["data"] != d.hex() for r, d in zip(rs, data, strict=True))
            if bad:
                raise AssertionError(f"{clock_hz / 1e6:g} MHz {name} {n} B: {bad} rows read "
                                     "back wrong")
        lat = [r["first_at"] - r["req_at"] for r in rs]
        period = [b["req_at"] - a["req_at"] for a, b in zip(rs, rs[1:], strict=False)]
        period.append(rs[-1]["free_at"] - rs[-1]["req_at"])
        span = rs[-1]["last_at"] - rs[0]["req_at"] + 1
        total = rs[-1]["free_at"] - rs[0]["req_at"]
        op = "LOAD" if kind == "read" else "STORE"
        rows_out.append({
            "clock_mhz": clock_hz / 1e6, "op": kind, "pattern": name, "row_bytes": n,
            "rows": rows, "lat_min": min(lat), "lat_med": statistics.median(lat),
            "lat_max": max(lat), "row_med": statistics.median(period), "row_max": max(period),
            "bytes_per_cycle": n * rows / total, "refreshes": sum(r["refreshes"] for r in rs),
            "activates": sum(r["activates"] for r in rs),
            "measured_instr_cycles": DMA_SETUP + span,
            "model_instr_cycles": model_cycles(op, rows, n, SDRAM_LATENCY, SDRAM_BPC),
        })
    return rows_out, res["chip"], wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clock-mhz", type=float, nargs="+", default=[25.0, 50.0])
    ap.add_argument("--latency", type=int, help="also price with this L")
    ap.add_argument("--bpc", type=int, help="also price with this B")
    ap.add_argument("--json", type=Path, help="write the rows here")
    a = ap.parse_args(argv)
    everything = []
    for mhz in a.clock_mhz:
        hz = soc_clock_hz(BOARD, None if mhz == 25.0 else mhz * 1e6)
        rows, chip, wall = run_clock(hz)
        print(f"\n{BOARD} SDRAM at {hz / 1e6:g} MHz (CL {chip['cl']}, BL {chip['bl']}; "
              f"min cycles {chip['min_cycles']}; refresh every "
              f"{statistics.median(chip['refresh_intervals']):g} cycles; "
              f"{wall:.1f} s simulated)")
        if chip["violations"]:
            print(f"  chip model: {len(chip['violations'])} protocol/timing violations, first: "
                  f"{chip['violations'][0]}")
        hdr = (f"{'op':5} {'pattern':8} {'bytes':>5} {'rows':>4} | {'L min/med/max':>13} | "
               f"{'row med/max':>11} | {'B/cyc':>5} | {'refr':>4} {'act':>4} | "
               f"{'meas':>6} {'model':>6}")
        extra = a.latency is not None or a.bpc is not None
        if extra:
            hdr += f" {'alt':>6}"
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            line = (f"{r['op']:5} {r['pattern']:8} {r['row_bytes']:5} {r['rows']:4} | "
                    f"{r['lat_min']:3}/{r['lat_med']:4g}/{r['lat_max']:3}  | "
                    f"{r['row_med']:5g}/{r['row_max']:4} | {r['bytes_per_cycle']:5.2f} | "
                    f"{r['refreshes']:4} {r['activates']:4} | "
                    f"{r['measured_instr_cycles']:6} {r['model_instr_cycles']:6}")
            if extra:
                alt = model_cycles("LOAD" if r["op"] == "read" else "STORE", r["rows"],
                                   r["row_bytes"], a.latency if a.latency is not None
                                   else SDRAM_LATENCY, a.bpc or SDRAM_BPC)
                r["alt_instr_cycles"] = alt
                line += f" {alt:6}"
            print(line)
        reads = [r for r in rows if r["op"] == "read"]
        writes = [r for r in rows if r["op"] == "write"]
        ratio = [r["measured_instr_cycles"] / r["model_instr_cycles"] for r in rows]
        print(f"first read beat: {min(r['lat_min'] for r in reads)}-"
              f"{max(r['lat_max'] for r in reads)} cycles (row hit median "
              f"{statistics.median(r['lat_med'] for r in reads if r['pattern'] == 'seq'):g}, "
              f"row miss {statistics.median(r['lat_med'] for r in reads if r['pattern'] != 'seq'):g}"
              f"); reads {min(r['bytes_per_cycle'] for r in reads):.2f}-"
              f"{max(r['bytes_per_cycle'] for r in reads):.2f} B/cycle, writes "
              f"{min(r['bytes_per_cycle'] for r in writes):.2f}-"
              f"{max(r['bytes_per_cycle'] for r in writes):.2f}; measured / model "
              f"(L={SDRAM_LATENCY}, B={SDRAM_BPC}): {min(ratio):.2f}-{max(ratio):.2f}")
        everything.append({"clock_hz": hz, "chip": {k: chip[k] for k in
                                                     ("cl", "bl", "min_cycles", "violations")},
                           "rows": rows})
    if a.json:
        a.json.write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
