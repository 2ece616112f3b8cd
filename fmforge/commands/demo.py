"""``fmforge demo``: the main job on the built-in default, end to end.

1. compile all-MiniLM-L6-v2 for the demo device sets and execute the plans bit-accurately;
   compile it for the board SoC (``core:board=ulx3s-85f,cpu``) with both objectives and say
   where the board wins or why not; then compile it for the fmforge core (``core,cpu``, energy
   objective: the whole encoder on the core) and run the core program on the golden core with its exact cycle count;
2. co-simulate the systolic GEMM engine (8x8, output-stationary) on a MiniLM projection shape
   on cocotb + Verilator, bit-exact against the golden model and cycle-exact against the model;
3. build that engine, requantizer included, into a real ULX3S-85F bitstream and read back Fmax
   and utilization.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from fmforge.commands._args import add_json, write_atomic

__all__ = ["register", "run", "run_board", "run_compile", "run_core", "DEMO_BOARD",
           "DEMO_DEVICE_SETS"]

#: the device sets the demo compiles for (the FPGA over its UART, and an ASIC card)
DEMO_DEVICE_SETS = ("ulx3s-85f,cpu", "asic,cpu")
#: the board SoC (the fmforge core on the ULX3S, priced as it runs: weights resident in SDRAM,
#: the UART link, the board clock and power), compiled for both objectives
DEMO_BOARD = "core:board=ulx3s-85f,cpu"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="run the main job on the built-in default",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--board", default="ulx3s-85f", help="board for the bitstream step (default ulx3s-85f)")
    p.add_argument("--skip-build", action="store_true", help="skip the FPGA bitstream step")
    add_json(p)
    p.set_defaults(func=run)


def run_compile(out_dir: str | None = None, sentences: int = 64, verbose: bool = True) -> dict[str, Any]:
    """Compile MiniLM for each of :data:`DEMO_DEVICE_SETS`, execute each plan on ``sentences``
    shipped sentences, print both reports; returns ``{device_set: {compile, execute}}``."""
    import torch

    from compiler.driver import compile_model
    from compiler.execute import execute_plan
    from compiler.plan import dumps_plan, write_timeline
    from fmforge.commands.compile import report, summarize

    torch.set_num_threads(1)
    base = Path(out_dir or tempfile.mkdtemp(prefix="fmforge-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for devs in DEMO_DEVICE_SETS:
        c = compile_model("minilm", devs)
        path = base / f"plan-{devs.replace(',', '_')}.json"
        write_atomic(path, dumps_plan(c.plan))
        png = write_timeline(c.plan, path.with_suffix(".png"))
        comp = summarize(c.plan, str(path), c.compile_seconds)
        comp["timeline"] = str(png)
        ex = execute_plan(c.plan, limit=sentences)
        results[devs] = {"compile": comp, "execute": ex}
        if verbose:
            print(f"== minilm on {devs}")
            print(report(comp))
            print(f"execute: {ex['n_inputs']} sentences, cosine vs float min "
                  f"{ex['cosine_min']:.5f} mean {ex['cosine_mean']:.5f}")
    return results


def run_board(verbose: bool = True) -> dict[str, Any]:
    """Compile MiniLM for :data:`DEMO_BOARD` with the latency and the energy objective and print
    both reports (where the board wins, or why it does not, with the numbers)."""
    from compiler.driver import compile_model
    from fmforge.commands.compile import summarize

    out: dict[str, Any] = {}
    for objective in ("latency", "energy"):
        c = compile_model("minilm", DEMO_BOARD, objective=objective)
        comp = summarize(c.plan, f"<{objective}>", c.compile_seconds)
        out[objective] = comp
        if verbose:
            placed = {n: d["ops"] for n, d in comp["devices"].items()}
            print(f"== minilm on {DEMO_BOARD}, objective {objective}: ops per device {placed}, "
                  f"predicted {comp['predicted_latency_s'] * 1e3:.3f} ms, "
                  f"{comp['predicted_energy_j'] * 1e3:.3f} mJ")
            board = next(d for d in c.plan["devices"] if d["kind"] == "core")
            wl = board["hardware"].get("weight_load")
            if wl:
                print(f"   weights resident in SDRAM: {wl['bytes']:,} bytes loaded once in "
                      f"{wl['seconds']:.1f} s over the UART")
            lin = next((f for f in comp.get("fallback_ops", []) if f["kind"] == "linear"),
                       None)
            if lin and objective == "energy":  # once: the same for both objectives
                p = board["params"]
                print(f"   the board core ({p['rows']}x{p['cols']}, {p['sp_bytes']} B scratchpad: "
                      "flip-flops at ~108 LUTs a byte, docs/hostlink.md) runs no linear: "
                      f"{lin['reason'].split(': ', 1)[-1]}")
            for a in comp.get("alternatives", []):
                if a["feasible"]:
                    print(f"   why not more on the board: all {a['ops']} ops it can run there "
                          f"would take {a['latency_s'] * 1e3:.1f} ms (UART {a['transfer_s'] * 1e3:.1f}"
                          f" ms) and {a['energy_j'] * 1e3:.1f} mJ, against the plan's "
                          f"{a['plan_latency_s'] * 1e3:.3f} ms and {a['plan_energy_j'] * 1e3:.1f} mJ")
    return out


def run_core(sentences: int = 8, verbose: bool = True) -> dict[str, Any]:
    """MiniLM's encoder on the fmforge core: compile ``core,cpu`` (energy objective), run the
    core programs on the golden core, report cosine, exact cycles and array utilization."""
    from compiler.core_run import run_on_core
    from compiler.driver import compile_model

    c = compile_model("minilm", "core,cpu", objective="energy")
    r = run_on_core(c.plan, limit=sentences)
    r.pop("_programs")
    on_core = sum(1 for o in c.plan["ops"] if o["device"] == "core")
    if verbose:
        q = r["unit_busy"]["queues"]
        print(f"== minilm on core,cpu (energy): {on_core} of {len(c.plan['ops'])} ops on the "
              f"core, {r['programs']} programs, {r['instructions']} instructions\n"
              f"execute on the golden core: {r['n_inputs']} sentences, cosine vs float min "
              f"{r['cosine_min']:.5f} mean {r['cosine_mean']:.5f}\n"
              f"predicted {r['predicted_cycles']:,} cycles per sentence on 8x8 (exact timing "
              f"model), array utilization {100 * r['array_utilization']:.1f}%, busy D "
              f"{q['D']:,} M {q['M']:,} S {q['S']:,}")
    return r


def _say(args, text: str) -> None:
    if not args.json:
        print(text, flush=True)


def run(args: argparse.Namespace) -> dict:
    out: dict[str, Any] = {}
    ok = True
    if not args.skip_build:  # an unknown board is refused before minutes of work
        from boards.catalog import get_board

        get_board(args.board)
    _say(args, "== 1. compile all-MiniLM-L6-v2 and execute the plan bit-accurately")
    out["compile"] = run_compile(verbose=not args.json)
    out["board"] = run_board(verbose=not args.json)
    out["core"] = run_core(verbose=not args.json)
    from sim.cosim import cosim_gemm

    _say(args, "\n== 2. co-simulate the GEMM engine (8x8 OS, MiniLM projection 128x384x384, requantized)")
    r = cosim_gemm(rows=8, cols=8, dataflow="os", m=128, k=384, n=384, seed=0, requant=True, bias=True)
    out["cosim"] = {k: r[k] for k in ("match", "cycles", "predicted_cycles", "tb_cycles", "predicted_total_cycles",
                                      "timing_ok", "utilization", "compute_utilization", "sim_seconds",
                                      "cycles_per_second", "macs_per_second")}
    ok &= r["match"] and r["cycles"] == r["predicted_cycles"] and r["timing_ok"]
    _say(args, f"   golden match: {r['match']}   compute cycles {r['cycles']:,} (predicted {r['predicted_cycles']:,})"
               f"   end to end {r['tb_cycles']:,} (predicted {r['predicted_total_cycles']:,})\n"
               f"   utilization {100 * r['utilization']:.2f}% end to end, {100 * r['compute_utilization']:.2f}% "
               f"of compute   {r['macs_per_second'] / 1e6:.2f} M simulated MACs/s")
    if not args.skip_build:
        from boards.build import build_unit
        from boards.catalog import get_board
        from boards.units import gemm_engine

        board = get_board(args.board)
        _say(args, f"\n== 3. build the 8x8 GEMM engine with its requantizer for {board.name} ({board.part})")
        # the configuration the accelerator uses: MAC array, controller, buffers and the
        # requantizing epilogue (what `fmforge build gemm --rows 8 --cols 8` builds)
        unit = gemm_engine(rows=8, cols=8, dataflow="os", max_m=64, max_k=64, max_n=64, requant=True)
        res = build_unit(unit, board, name="gemm_8x8_os",
                         progress=None if args.json else (lambda m: print(f"   {m}", file=sys.stderr, flush=True)))
        out["build"] = res.to_dict()
        _say(args, f"   Fmax {res.fmax_mhz:.1f} MHz   DSPs {res.dsps}/{res.dsps_total}   LUTs {res.luts}/{res.luts_total}"
                   f"   FFs {res.ffs}   BRAMs {res.brams}/{res.brams_total}\n   bitstream {res.bitstream}")
    out["ok"] = bool(ok)
    return out
