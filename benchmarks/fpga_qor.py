"""FPGA quality of results of the systolic GEMM engine: Fmax and utilisation per board and array.

Builds :class:`hw.gemm.GemmEngine` of several array sizes for ECP5-85F (ULX3S), ECP5-25F
(ULX3S) and iCE40 UP5K (iCEBreaker) with the open toolchain (YoWASP Yosys + nextpnr), and
prints a table: board, array, dataflow, requantizer, Fmax, DSPs, LUTs, FFs, BRAMs. For every
board it also builds the largest array whose multipliers fit the part (one hard multiplier per
int8 MAC, four per output column for the int32 requantizer) and, when that one does not fit
for other reasons (LUTs, BRAM), steps down until one does.

Usage::

    python benchmarks/fpga_qor.py                       # default sweep (long: many minutes)
    python benchmarks/fpga_qor.py --boards ulx3s-85f --arrays 8x8 --no-requant   # MAC array only
    python benchmarks/fpga_qor.py --boards ulx3s-85f --arrays 8x8 --requant      # with the requantizer
    python benchmarks/fpga_qor.py --json > qor.json
    python benchmarks/fpga_qor.py --plot qor.png

Builds are cached (``$FMFORGE_CACHE``, default ``~/.cache/fmforge``), so a rerun only builds
what changed. Progress goes to stderr; the table (or one JSON object) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boards.build import BuildError, DoesNotFitError, build_unit  # noqa: E402
from boards.catalog import get_board  # noqa: E402
from boards.units import DEFAULT_GEMM_BUFFER, gemm_dsps, gemm_engine  # noqa: E402

__all__ = ["DEFAULT_REQUANT_SWEEP", "DEFAULT_SWEEP", "largest_candidates", "main", "run_sweep"]

#: board -> arrays built by default (the largest fitting arrays are added automatically)
DEFAULT_SWEEP: dict[str, list[tuple[int, int]]] = {
    "ulx3s-85f": [(4, 4), (8, 8)],
    "ulx3s-25f": [(2, 2), (4, 4)],
    "icebreaker": [(1, 1), (2, 2)],
}
#: board -> arrays also built WITH the requantizing epilogue by default (the configuration the
#: accelerator uses: ``fmforge build gemm --board ulx3s-85f --rows 8 --cols 8``)
DEFAULT_REQUANT_SWEEP: dict[str, list[tuple[int, int]]] = {
    "ulx3s-85f": [(8, 8)],
}


def largest_candidates(board: str, requant: bool, count: int = 3) -> list[tuple[int, int]]:
    """Arrays R x C (R <= C, C <= 2R) whose DSP need fits ``board``, most MACs first."""
    b = get_board(board)
    shapes = [(r, c) for r in range(1, 33) for c in range(r, 2 * r + 1)
              if gemm_dsps(b, rows=r, cols=c, requant=requant) <= b.dsps]
    shapes.sort(key=lambda s: (-s[0] * s[1], s[1] - s[0]))
    return shapes[:count]


def _parse_array(text: str) -> tuple[int, int]:
    try:
        r, c = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"array must look like 8x8, not {text!r}") from None
    if r < 1 or c < 1:
        raise argparse.ArgumentTypeError(f"array dimensions must be positive, not {text!r}")
    return r, c


def _build_one(board: str, rows: int, cols: int, dataflow: str, requant: bool, buf: int,
               seed: int) -> dict[str, Any]:
    row: dict[str, Any] = {"board": board, "array": f"{rows}x{cols}", "rows": rows,
                           "cols": cols, "dataflow": dataflow, "requant": requant,
                           "macs": rows * cols, "max_mkn": buf,
                           "dsps_estimated": gemm_dsps(board, rows=rows, cols=cols,
                                                       requant=requant)}
    b = get_board(board)
    if row["dsps_estimated"] > b.dsps:
        row.update(status="does not fit", reason=f"needs {row['dsps_estimated']} DSPs, "
                                                 f"{b.name} has {b.dsps}")
        return row
    unit = gemm_engine(rows=rows, cols=cols, dataflow=dataflow, max_m=buf, max_k=buf,
                       max_n=buf, requant=requant)
    t0 = time.monotonic()
    try:
        res = build_unit(unit, b, name=f"gemm_{rows}x{cols}_{dataflow}", seed=seed,
                         progress=lambda s: print(f"  {board} {rows}x{cols} {dataflow}: {s}",
                                                  file=sys.stderr, flush=True))
    except DoesNotFitError as e:
        row.update(status="does not fit", reason=str(e))
        return row
    except BuildError as e:
        row.update(status="failed", reason=str(e))
        return row
    d = res.to_dict()
    d.pop("utilisation", None)
    row.update(status="ok", fmax_mhz=res.fmax_mhz, timing_met=res.timing_met,
               target_mhz=res.target_mhz, dsps=res.dsps, dsps_total=res.dsps_total,
               luts=res.luts, luts_total=res.luts_total, ffs=res.ffs, ffs_total=res.ffs_total,
               brams=res.brams, brams_total=res.brams_total, build_seconds=res.seconds,
               wall_seconds=round(time.monotonic() - t0, 1), cached=res.cached,
               bitstream=res.bitstream,
               gmacs=round(rows * cols * res.fmax_mhz / 1000.0, 2))
    return row


def run_sweep(boards: list[str], arrays: list[tuple[int, int]] | None, dataflows: list[str],
              requant: bool, buf: int, seed: int, largest: bool,
              requant_arrays: list[tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    """Build every (board, array, dataflow); return one row dict per build.

    ``requant_arrays`` (per board: :data:`DEFAULT_REQUANT_SWEEP` when ``None``) are built with
    the requantizer in addition when ``requant`` is off.
    """
    rows: list[dict[str, Any]] = []
    for board in boards:
        if not requant:
            extra = (DEFAULT_REQUANT_SWEEP.get(board, []) if requant_arrays is None
                     else requant_arrays)
            for dataflow in dataflows:
                for r, c in extra:
                    print(f"fpga_qor: {board} {r}x{c} {dataflow} with requant",
                          file=sys.stderr, flush=True)
                    rows.append(_build_one(board, r, c, dataflow, True, buf, seed))
        shapes = list(arrays) if arrays is not None else list(DEFAULT_SWEEP.get(board, []))
        for dataflow in dataflows:
            for r, c in shapes:
                print(f"fpga_qor: {board} {r}x{c} {dataflow}", file=sys.stderr, flush=True)
                rows.append(_build_one(board, r, c, dataflow, requant, buf, seed))
            if largest:
                for r, c in largest_candidates(board, requant):
                    if (r, c) in shapes:
                        break
                    print(f"fpga_qor: {board} {r}x{c} {dataflow} (largest by DSPs)",
                          file=sys.stderr, flush=True)
                    row = _build_one(board, r, c, dataflow, requant, buf, seed)
                    row["largest_try"] = True
                    rows.append(row)
                    if row["status"] == "ok":
                        break
    # mark the largest array that built per (board, dataflow, requant)
    for key in {(r["board"], r["dataflow"], r["requant"]) for r in rows}:
        ok = [r for r in rows if (r["board"], r["dataflow"], r["requant"]) == key and r["status"] == "ok"]
        if ok:
            max(ok, key=lambda r: r["macs"])["largest_fitting"] = True
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'board':<12}{'array':>7}{'flow':>5}{'rq':>4}{'Fmax MHz':>10}{'DSPs':>10}"
            f"{'LUTs':>14}{'FFs':>14}{'BRAM':>9}{'GMAC/s':>8}  note")
    out = [head, "-" * len(head)]
    for r in rows:
        rq = "y" if r["requant"] else "n"
        if r["status"] != "ok":
            out.append(f"{r['board']:<12}{r['array']:>7}{r['dataflow']:>5}{rq:>4}"
                       f"{'-':>10}{r['dsps_estimated']:>10}{'':>14}{'':>14}{'':>9}{'':>8}  "
                       f"{r['status']}: {r['reason']}")
            continue
        note = []
        if r.get("largest_fitting"):
            note.append("largest that fits")
        if r.get("cached"):
            note.append("cached")
        out.append(
            f"{r['board']:<12}{r['array']:>7}{r['dataflow']:>5}{rq:>4}{r['fmax_mhz']:>10.1f}"
            f"{r['dsps']:>5}/{r['dsps_total']:<4}{r['luts']:>7}/{r['luts_total']:<6}"
            f"{r['ffs']:>7}/{r['ffs_total']:<6}{r['brams']:>4}/{r['brams_total']:<4}"
            f"{r['gmacs']:>8.2f}  {', '.join(note)}")
    return "\n".join(out)


def _plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for board in sorted({r["board"] for r in ok}):
        pts = sorted((r["macs"], r["fmax_mhz"], r["dsps"] / r["dsps_total"])
                     for r in ok if r["board"] == board)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=board)
        ax2.plot([p[0] for p in pts], [100 * p[2] for p in pts], "s-", label=board)
    ax1.set_xscale("log", base=2)
    ax2.set_xscale("log", base=2)
    ax1.set(xlabel="int8 MACs (R x C)", ylabel="Fmax (MHz)", title="GEMM engine Fmax")
    ax2.set(xlabel="int8 MACs (R x C)", ylabel="DSPs used (%)", title="DSP utilisation")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


#: CLI arguments of each nonlinear unit's build (the `fmforge verilog UNIT` factories)
NONLINEAR_UNITS = {
    "requant": ["--lanes", "4", "--channels", "384"],
    "gelu": ["--lanes", "4"],
    "softmax": ["--lanes", "4", "--max-length", "128"],
    "layernorm": ["--lanes", "4", "--length", "384"],
    "rmsnorm": ["--lanes", "4", "--length", "384"],
    "silu": ["--lanes", "4"],
}


def run_units(boards: list[str], units: list[str], seed: int) -> list[dict[str, Any]]:
    """Build the integer nonlinear units (4 lanes, MiniLM row lengths) and measure them."""
    from fmforge.commands.verilog import UNITS

    rows = []
    for board in boards:
        for unit in units:
            if unit not in NONLINEAR_UNITS:
                raise ValueError(f"unit must be one of {', '.join(NONLINEAR_UNITS)}, not {unit!r}")
            _, add_args, make = UNITS[unit]
            ap = argparse.ArgumentParser()
            add_args(ap)
            comp = make(ap.parse_args(NONLINEAR_UNITS[unit]))
            name = f"{unit}_p4"
            base = dict(board=board, array=unit, dataflow="-", requant=unit == "requant",
                        params=" ".join(NONLINEAR_UNITS[unit]), dsps_estimated="-", gmacs=0.0)
            try:
                res = build_unit(comp, board, name=name, seed=seed,
                                 progress=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
            except (BuildError, DoesNotFitError) as e:
                rows.append({**base, "status": "failed", "reason": str(e).split(" (logs in")[0]})
                continue
            rows.append({**res.to_dict(), **base, "status": "ok"})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the sweep from the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--boards", default="ulx3s-85f,ulx3s-25f,icebreaker",
                   help="comma-separated board names")
    p.add_argument("--arrays", default=None,
                   help="comma-separated arrays like 4x4,8x8 (default: a per-board sweep)")
    p.add_argument("--dataflow", default="os", help="comma-separated: os, ws or os,ws")
    p.add_argument("--requant", action=argparse.BooleanOptionalAction, default=None,
                   help="--requant: build every array with the int8 requantizer epilogue; "
                        "--no-requant: the MAC arrays only; default: the MAC arrays plus the "
                        "arrays of DEFAULT_REQUANT_SWEEP (8x8 on ulx3s-85f) with the requantizer")
    p.add_argument("--max-size", type=int, default=DEFAULT_GEMM_BUFFER,
                   help=f"max_m = max_k = max_n of the engines (default {DEFAULT_GEMM_BUFFER})")
    p.add_argument("--no-largest", action="store_true",
                   help="skip the largest-array-that-fits builds")
    p.add_argument("--seed", type=int, default=1, help="nextpnr seed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="PNG", default=None, help="also write a plot")
    p.add_argument("--units", default=None,
                   help="build the nonlinear units instead of GEMM arrays: comma-separated from "
                        f"{', '.join(NONLINEAR_UNITS)} (4 lanes, MiniLM row lengths)")
    args = p.parse_args(argv)
    boards = [get_board(b.strip()).name for b in args.boards.split(",") if b.strip()]
    arrays = [_parse_array(a) for a in args.arrays.split(",")] if args.arrays else None
    dataflows = [d.strip() for d in args.dataflow.split(",") if d.strip()]
    for d in dataflows:
        if d not in ("os", "ws"):
            p.error(f"dataflow must be os or ws, not {d!r}")
    if args.units:
        rows = run_units(boards, [u.strip() for u in args.units.split(",") if u.strip()], args.seed)
    else:
        rows = run_sweep(boards, arrays, dataflows, bool(args.requant), args.max_size, args.seed,
                         largest=not args.no_largest,
                         requant_arrays=[] if args.requant is False else None)
    if args.plot:
        _plot(rows, args.plot)
    if args.json:
        print(json.dumps({"results": rows}, sort_keys=True))
    else:
        print(_table(rows))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
