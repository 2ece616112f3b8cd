"""``fmforge build``: build accelerator units into FPGA bitstreams and read back Fmax/utilisation.

``fmforge build gemm --board BOARD --rows R --cols C`` builds the systolic GEMM engine
(:class:`hw.gemm.GemmEngine`) for a board: DSP need is checked against the board before any
tool runs, then Yosys, nextpnr and ecppack/icepack run (YoWASP), and the bitstream lands in
``-o DIR`` (default: the build cache).

``fmforge build PLAN [--device NAME] [--board BOARD] [-o DIR] [--json]`` builds the plan's core
device into the board SoC (:mod:`boards.soc`: the core, its external memory in block RAM and the
UART host link of docs/hostlink.md): the predicted resources are checked against the board
before any tool runs, and the measured ones are reported beside them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from boards.build import build_unit
from boards.catalog import board_names, get_board
from boards.units import DEFAULT_GEMM_BUFFER, check_gemm_fits, gemm_engine
from fmforge.commands._args import float_range, int_range

__all__ = ["register", "run_gemm", "run_plan"]


def register(subparsers: Any) -> None:
    """Add the ``build`` command (with its ``gemm`` unit) to the CLI."""
    cls = subparsers._parser_class
    subparsers._parser_class = _build_parser_class(cls)
    try:
        p = subparsers.add_parser(
            "build", help="build a plan's core SoC or an accelerator unit into an FPGA bitstream",
            description="Build a plan's core device into the board SoC (fmforge build PLAN), or "
                        "one accelerator unit (fmforge build gemm ...), with Yosys, nextpnr and "
                        "ecppack/icepack (YoWASP), and report Fmax and utilisation.")
    finally:
        subparsers._parser_class = cls
    _register_units(p)


def _build_parser_class(base: type) -> type:
    class BuildParser(base):  # type: ignore[misc, valid-type]
        """``fmforge build PLAN ...`` is ``fmforge build plan PLAN ...``."""

        base_class = base

        def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
            args = list(sys.argv[1:] if args is None else args)
            if args and not args[0].startswith("-") and args[0] not in ("gemm", "plan"):
                args = ["plan", *args]
            return super().parse_known_args(args, namespace)

    return BuildParser


def _register_units(p: Any) -> None:
    units = p.add_subparsers(dest="unit", metavar="PLAN | gemm",
                             parser_class=getattr(type(p), "base_class", type(p)))
    units.required = True
    _register_plan(units)
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


def _register_plan(units: Any) -> None:
    q = units.add_parser(
        "plan", help="a plan's core device as the board SoC (also: fmforge build PLAN)",
        description="Build the plan's core device into the board SoC: the core with the plan's "
                    "parameters, its external memory in block RAM and the UART host link "
                    "(docs/hostlink.md). Refuses before any tool runs when the prediction does "
                    "not fit the board; reports measured resources and Fmax beside the plan's.")
    q.add_argument("plan", help="plan JSON written by 'fmforge compile'")
    q.add_argument("--device", metavar="NAME", help="the plan's core device (default: its only one)")
    q.add_argument("--board", default=None, metavar="BOARD",
                   help="target board (default: the device's board, core:board=B, else "
                        f"ulx3s-85f): {', '.join(board_names())}")
    q.add_argument("--memory", choices=("bram", "sdram"), default=None,
                   help="external memory: on-chip block RAM (small models; the default for a "
                        "plain core device) or the board's SDRAM through LiteDRAM (the default "
                        "for core:board=B; needs the 'build' extra)")
    q.add_argument("--ext-kb", type=int_range(1, 1 << 20), default=None,
                   help="external memory KiB (default: what the plan's programs use, or 64)")
    q.add_argument("--baud", type=float_range(1200, 12e6), default=1e6,
                   help="host link baud rate (default: 1000000)")
    q.add_argument("--max-row", type=int_range(1, 4096), default=512,
                   help="the core's longest S-queue row (default: 512)")
    q.add_argument("--target-mhz", type=float_range(1, 1000), default=None,
                   help="place-and-route clock target (default: the board's; for a SoC on a "
                        "PLL, its clock)")
    q.add_argument("--seed", type=int_range(0, 2**31 - 1), default=1,
                   help="nextpnr placement seed (default: 1)")
    q.add_argument("-o", "--output", metavar="DIR", default=None,
                   help="directory for the bitstream and nextpnr log (default: the build cache)")
    q.add_argument("--no-cache", action="store_true", help="rebuild even if cached")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=run_plan)


def _core_device(plan: dict[str, Any], name: str | None) -> dict[str, Any]:
    from golden.errors import UserLookupError, UserValueError
    cores = [d for d in plan["devices"] if d["kind"] == "core"]
    if name is not None:
        for d in plan["devices"]:
            if d["name"] == name:
                return d
        raise UserLookupError(f"the plan has no device {name!r}; its devices: "
                              f"{', '.join(d['name'] for d in plan['devices'])}")
    if not cores:
        raise UserValueError("the plan has no core device to build: compile with "
                             "--devices core,cpu (or name one with --device)")
    if len(cores) > 1:
        raise UserValueError(f"the plan has {len(cores)} core devices "
                             f"({', '.join(d['name'] for d in cores)}): pick one with --device")
    return cores[0]


def run_plan(args: argparse.Namespace) -> dict[str, Any]:
    """Build the plan's core device as the board SoC; return the measured and predicted numbers."""
    from boards.soc_build import build_soc, check_soc_fits, soc_config_for_device
    from compiler.plan import load_plan

    plan = load_plan(args.plan)
    dev = _core_device(plan, args.device)
    planned_board = dev.get("params", {}).get("board")
    if planned_board and args.board and get_board(args.board).name != planned_board:
        from golden.errors import UserValueError
        raise UserValueError(f"device {dev['name']!r} was planned for {planned_board}, not "
                             f"{args.board}: recompile for that board")
    board = get_board(args.board or planned_board or "ulx3s-85f")
    memory = args.memory or ("sdram" if planned_board else "bram")
    cfg = soc_config_for_device(dev, ext_bytes=None if args.ext_kb is None else args.ext_kb * 1024,
                                baud=args.baud,
                                max_row=args.max_row, memory=memory, board=board.name)
    check_soc_fits(cfg, board)  # before any tool (build_soc checks again, cheaply)
    res, pred = build_soc(cfg, board, name="fmforge_soc", build_dir=args.output,
                          target_mhz=args.target_mhz, seed=args.seed, progress=_progress,
                          use_cache=not args.no_cache)
    planned = float(dev["params"].get("clock_mhz") or dev["hardware"].get("clock_mhz")
                    or board.clock_mhz)
    measured = {"luts": res.luts, "ffs": res.ffs, "dsps": res.dsps, "brams": res.brams}
    totals = {"luts": res.luts_total, "ffs": res.ffs_total, "dsps": res.dsps_total,
              "brams": res.brams_total}
    out = {
        "bitstream": res.bitstream, "log": res.log, "board": board.name, "device": dev["name"],
        "fmax_mhz": res.fmax_mhz, "clock_mhz_planned": planned,
        "timing_met": res.fmax_mhz >= planned, "target_mhz": res.target_mhz,
        "clock_mhz_board": board.clock_mhz, "clock_mhz_soc": cfg.clock_hz / 1e6,
        "cached": res.cached, "seconds": res.seconds,
        "resources": {k: {"measured": measured[k], "predicted": pred[k], "available": totals[k]}
                      for k in measured},
        "soc": {"rows": cfg.core.rows, "cols": cfg.core.cols, "sp_bytes": cfg.core.sp_bytes,
                "imem_instrs": cfg.core.imem_instrs, "ext_bytes": cfg.ext_bytes,
                "memory": {"bram": "block RAM", "sdram": "SDRAM (LiteDRAM)"}[cfg.memory],
                "memory_latency": cfg.core.latency, "baud": cfg.baud},
    }
    if not args.json:
        met = "met" if out["timing_met"] else "NOT met"
        print(f"SoC of {dev['name']} ({cfg.core.rows}x{cfg.core.cols} core) on {board.name} "
              f"({board.part})")
        runs = (f"runs on the {board.clock_mhz:g} MHz board clock"
                if cfg.clock_hz == board.clock_mhz * 1e6 else
                f"runs at {cfg.clock_hz / 1e6:.6g} MHz from a PLL on the {board.clock_mhz:g} MHz "
                "board clock")
        print(f"  Fmax   {res.fmax_mhz:8.2f} MHz  (plan {planned:g} MHz: {met}; {runs})")
        for k in ("luts", "ffs", "dsps", "brams"):
            r = out["resources"][k]
            print(f"  {k.upper():6s} {r['measured']:8d} / {r['available']}  "
                  f"(predicted {r['predicted']})")
        print(f"  bitstream {res.bitstream}{' (cached)' if res.cached else ''}")
    return out


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
