"""``fmforge build``: build accelerator units into FPGA bitstreams and read back Fmax/utilisation.

``fmforge build gemm --board BOARD --rows R --cols C`` builds the systolic GEMM engine
(:class:`hw.gemm.GemmEngine`) for a board: DSP need is checked against the board before any
tool runs, then Yosys, nextpnr and ecppack/icepack run (YoWASP), and the bitstream lands in
``-o DIR`` (default: the build cache).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from boards.build import build_unit
from boards.catalog import board_names, get_board
from boards.units import DEFAULT_GEMM_BUFFER, check_gemm_fits, gemm_engine
from fmforge.commands._args import float_range, int_range

__all__ = ["register", "run_gemm"]


def register(subparsers: Any) -> None:
    """Add the ``build`` command (with its ``gemm`` unit) to the CLI."""
    p = subparsers.add_parser(
        "build", help="build an accelerator unit into an FPGA bitstream",
        description="Build an accelerator unit for an FPGA board with Yosys, nextpnr and "
                    "ecppack/icepack (YoWASP) and report Fmax and utilisation.")
    units = p.add_subparsers(dest="unit", metavar="UNIT")
    units.required = True
    g = units.add_parser(
        "gemm", help="the R x C systolic int8 GEMM engine",
        description="Build the R x C systolic int8 GEMM engine (hw.gemm.GemmEngine) for a board. "
                    "Its ports are driven from an on-chip LFSR and folded into an LED, so the "
                    "reported Fmax is the engine's own.")
    g.add_argument("--board", required=True, metavar="BOARD",
                   help=f"target board: {', '.join(board_names())}")
    g.add_argument("--rows", required=True, type=int_range(1, 64), help="array rows R")
    g.add_argument("--cols", required=True, type=int_range(1, 64), help="array columns C")
    g.add_argument("--dataflow", choices=("os", "ws"), default="os",
                   help="output- or weight-stationary (default: os)")
    for dim in ("m", "k", "n"):
        g.add_argument(f"--max-{dim}", type=int_range(1, 2**16), default=DEFAULT_GEMM_BUFFER,
                       help=f"largest {dim.upper()} the on-chip buffers take "
                            f"(default: {DEFAULT_GEMM_BUFFER})")
    g.add_argument("--requant", action=argparse.BooleanOptionalAction, default=True,
                   help="build the int8 requantizer epilogue (default: on)")
    g.add_argument("--target-mhz", type=float_range(1, 1000), default=None,
                   help="place-and-route clock target (default: the board's)")
    g.add_argument("--seed", type=int_range(0, 2**31 - 1), default=1, help="nextpnr placement seed (default: 1)")
    g.add_argument("-o", "--output", metavar="DIR", default=None,
                   help="directory for the bitstream and nextpnr log (default: the build cache)")
    g.add_argument("--no-cache", action="store_true", help="rebuild even if cached")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.set_defaults(func=run_gemm)


def _progress(msg: str) -> None:
    print(f"fmforge: {msg}", file=sys.stderr, flush=True)


def run_gemm(args: argparse.Namespace) -> dict[str, Any]:
    """Build the GEMM engine; return the build result as a dict."""
    board = get_board(args.board)
    params = dict(rows=args.rows, cols=args.cols, dataflow=args.dataflow, max_m=args.max_m,
                  max_k=args.max_k, max_n=args.max_n, requant=args.requant)
    need = check_gemm_fits(board, rows=args.rows, cols=args.cols, requant=args.requant)
    unit = gemm_engine(**params)  # validates the parameters (ValueError)
    name = f"gemm_{args.rows}x{args.cols}_{args.dataflow}"
    res = build_unit(unit, board, name=name, build_dir=args.output, target_mhz=args.target_mhz,
                     seed=args.seed, progress=_progress, use_cache=not args.no_cache)
    out = res.to_dict()
    out.update(unit="gemm", array=f"{args.rows}x{args.cols}", dataflow=args.dataflow,
               requant=args.requant, max_m=args.max_m, max_k=args.max_k, max_n=args.max_n,
               dsps_estimated=need)
    if not args.json:
        met = "met" if res.timing_met else "not met"
        print(f"GEMM {args.rows}x{args.cols} {args.dataflow} on {board.name} ({board.part})")
        print(f"  Fmax   {res.fmax_mhz:8.2f} MHz  (target {res.target_mhz:g} MHz, {met})")
        print(f"  DSPs   {res.dsps:8d} / {res.dsps_total}")
        print(f"  LUTs   {res.luts:8d} / {res.luts_total}")
        print(f"  FFs    {res.ffs:8d} / {res.ffs_total}")
        print(f"  BRAMs  {res.brams:8d} / {res.brams_total}")
        print(f"  bitstream {res.bitstream}{' (cached)' if res.cached else ''}")
    return out
