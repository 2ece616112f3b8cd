"""``fmforge run PLAN``: run a plan's core part on the fmforge core.

The core part is the plan's ``core`` device regions (compiled with ``--devices core,...``), or,
for a plan without a core device, its encoder body (first linear to last layer norm) lowered for
a core built from the options below. It runs on the golden core, the bit-exact interpreter the
core's RTL is verified against; the other ops run where the plan placed them. Reports the
embedding cosine against the float model and the programs' exact predicted cycles, with
``--trace FILE.png`` a timeline of the three queues (DMA, matrix, special functions) and with
``-o DIR`` the programs and memory images (``<device>.<i>.program.bin`` / ``.image.bin``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fmforge.commands._args import add_json, check_output_file, float_range, int_range
from golden.errors import UserValueError

__all__ = ["register", "rtl_runner", "run", "write_trace"]


def _ranges(v: Any) -> list[tuple[int, int]]:
    """(first byte, byte count) of every address tensor of a core value (and its twins)."""
    out = []
    for a, esz in ((v.addr, v.esz), (v.addr_lo, 1),
                   (None if v.wide is None else v.wide.addr, 2)):
        if a is not None and a.numel():
            lo, hi = int(a.min()), int(a.max()) + esz
            out.append((lo, hi - lo))
    return out


def rtl_runner(stats: dict[str, Any], progress: Any = None) -> Any:
    """A program runner for :func:`compiler.core_run.programs_impl` that runs each program on
    the Verilated core (:func:`sim.core_sim.run_core_sim`) and on the golden core, compares the
    output bytes, and returns the RTL's outputs. ``stats`` accumulates ``match``, ``cycles``
    (testbench), ``predicted_cycles``, ``busy`` (the core's counters), ``memory_stall_cycles``,
    ``sim_seconds``, ``runs``."""
    import dataclasses

    import torch

    from golden.core import CoreMemory, run_program
    from hw.core_model import program_timing
    from sim.core_sim import run_core_sim

    stats.update(match=True, cycles=0, predicted_cycles=0, memory_stall_cycles=0,
                 sim_seconds=0.0, build_seconds=0.0, runs=0, busy={"D": 0, "M": 0, "S": 0},
                 errors=[])

    def runner(prog: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        mem = prog.memory(inputs)
        ins = {lo: mem.ext[lo:lo + n].numpy().tobytes()
               for v in prog.inputs.values() for lo, n in _ranges(v)}
        outs = [r for v in prog.outputs.values() for r in _ranges(v)]
        gold = CoreMemory(1, 1)
        gold.ext, gold.sp = mem.ext.clone(), mem.sp.clone()
        run_program(prog.instrs, gold)
        imem = 1 << max(4, (len(prog.instrs) - 1).bit_length())
        cfg = dataclasses.replace(prog.cfg, imem_instrs=imem)
        got, cycles, res = run_core_sim(prog.program_bytes(), prog.image, ins, outs, cfg,
                                        ext_bytes=prog.ext_bytes, progress=progress)
        ok = all(g == gold.ext[lo:lo + n].numpy().tobytes()
                 for g, (lo, n) in zip(got, outs, strict=True)) and not res["error"]
        stats["match"] &= ok
        if res["error"]:
            stats["errors"].append(f"error flag at pc {res['error_pc']}")
        stats["cycles"] += cycles
        stats["predicted_cycles"] += program_timing(prog.instrs, prog.cfg).cycles
        stats["memory_stall_cycles"] += res["cnt_mem_stall"]
        for q in "DMS":
            stats["busy"][q] += res[f"cnt_busy_{q.lower()}"]
        stats["sim_seconds"] += res["sim_seconds"]
        stats["build_seconds"] += res["build_seconds"]
        stats["runs"] += 1
        for (lo, n), g in zip(outs, got, strict=True):  # downstream ops read the RTL's bytes
            mem.ext[lo:lo + n] = torch.frombuffer(bytearray(g), dtype=torch.uint8)
        return {name: prog.read(mem, name) for name in prog.outputs}

    return runner


def register(subparsers: Any) -> None:
    """Add the ``run`` command to the CLI."""
    p = subparsers.add_parser("run", help="run a plan's core part on the fmforge core",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("plan", help="plan JSON written by 'fmforge compile'")
    p.add_argument("--golden", action="store_true",
                   help="run on the golden core (the default without --sim)")
    p.add_argument("--sim", action="store_true",
                   help="run the core programs on the Verilated RTL core (weights preloaded in its "
                        "simulated memory), compared bit for bit with the golden core and cycle "
                        "for cycle with the timing model")
    p.add_argument("--board-sim", action="store_true",
                   help="run the core programs through the host runtime on the Verilated board "
                        "SoC, every frame over its UART pins (fmforge.board_run)")
    p.add_argument("--port", metavar="DEV", help="run the core programs on a board over this "
                   "serial port (its bitstream from 'fmforge build PLAN'; fmforge.board_run)")
    p.add_argument("--port-baud", type=int_range(1200, 12_000_000), default=1_000_000,
                   help="serial baud rate (default: 1000000, the SoC's)")
    p.add_argument("--port-timeout", type=float_range(0.01, 3600), default=5.0,
                   help="seconds per answer")
    p.add_argument("--sentences", help="text file, one sentence per line (default: shipped set)")
    p.add_argument("--limit", type=int_range(1, 2**20), help="run at most this many inputs")
    p.add_argument("--rows", type=int_range(1, 64), default=8,
                   help="array rows (plans without a core device)")
    p.add_argument("--cols", type=int_range(1, 64), default=8,
                   help="array columns (plans without a core device)")
    p.add_argument("--memory-latency", type=int_range(0, 10000),
                   help="external memory latency in cycles (default: the plan's core device, "
                        "else 8)")
    p.add_argument("--memory-bytes-per-cycle", type=int_range(1, 64),
                   help="external memory bytes per cycle (default: the plan's core device, "
                        "else 4)")
    p.add_argument("--sp-kb", type=int_range(16, 16384), default=256,
                   help="scratchpad KiB (plans without a core device)")
    p.add_argument("--trace", help="PNG timeline of the queues' activity, every program")
    p.add_argument("-o", "--output", help="directory for the programs and memory images")
    add_json(p)
    p.set_defaults(func=run)


def write_trace(progs: list[Any], path: str | Path) -> Path:
    """A timeline PNG: one lane per queue per program, instructions coloured by opcode."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from golden.outputs import write_atomic
    from hw.core_model import program_timing

    colors = {"LOAD": "tab:blue", "STORE": "tab:cyan", "GEMM": "tab:red", "ADD": "tab:olive",
              "LAYERNORM": "tab:purple", "SOFTMAX": "tab:orange", "GELU": "tab:green"}
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.9 * len(progs)))
    lanes, offset = [], 0
    for k, (dev, p) in enumerate(progs):
        t = program_timing(p.instrs, p.cfg)
        for q in "DMS":
            y = len(lanes)
            lanes.append(f"{dev}.{k} {q}" if len(progs) > 1 else q)
            for i, ins in enumerate(p.instrs[:-1]):
                if ins.queue == q and t.end[i] > t.start[i]:
                    ax.broken_barh([(offset + t.start[i], t.end[i] - t.start[i])], (y - 0.4, 0.8),
                                   color=colors.get(ins.op, "gray"), linewidth=0)
        offset += t.cycles
    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.set_xlabel("cycle")
    ax.set_title("fmforge core: queue activity (D: DMA, M: matrix, S: special functions)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), ncol=7, fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the core part on the golden core, report."""
    import torch

    from compiler.core_run import run_on_core, write_program_files
    from compiler.models import load_sentences
    from compiler.plan import load_plan
    from hw.core_model import CoreConfig

    out_dir = Path(args.output) if args.output else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UserValueError(f"-o {args.output}: exists and is not a directory")
    if args.trace:
        check_output_file(args.trace, "trace")
    plan = load_plan(args.plan)
    torch.set_num_threads(1)
    memory = {k: v for k, v in (("latency", args.memory_latency),
                                ("bytes_per_cycle", args.memory_bytes_per_cycle)) if v is not None}
    cfg = CoreConfig(rows=args.rows, cols=args.cols, sp_bytes=args.sp_kb * 1024,
                     imem_instrs=65536, **memory)
    sents = load_sentences(args.sentences) if args.sentences else None
    stats: dict[str, Any] = {}
    runner = rtl_runner(stats, None if args.json else (
        lambda m: print(f"   {m}", file=sys.stderr, flush=True))) if args.sim else None
    if args.board_sim or args.port:  # the board SoC through its UART (fmforge.board_run)
        from fmforge.board_run import board_report, board_runner, plan_clock_hz
        runner = board_runner(stats, None if args.json else (
            lambda m: print(f"   {m}", file=sys.stderr, flush=True)), port=args.port,
            baud=args.port_baud, timeout=args.port_timeout, clock_hz=plan_clock_hz(plan))
    r = run_on_core(plan, sentences=sents, limit=args.limit, cfg=cfg, runner=runner,
                    memory=memory)
    progs = r.pop("_programs")
    if args.sim:
        n = max(1, r["n_inputs"])
        r.update(engine="rtl", match=stats["match"] and stats["cycles"] ==
                 stats["predicted_cycles"], bit_exact=stats["match"],
                 cycles=stats["cycles"] // n, predicted_cycles=stats["predicted_cycles"] // n,
                 memory_stall_cycles=stats["memory_stall_cycles"] // n,
                 array_utilization=stats["busy"]["M"] / stats["cycles"] if stats["cycles"]
                 else 0.0, unit_busy={"queues": {q: v // n for q, v in stats["busy"].items()},
                                      "ops": r["unit_busy"]["ops"]},
                 sim_seconds=stats["sim_seconds"], build_seconds=stats["build_seconds"],
                 rtl_errors=stats["errors"])
    elif args.board_sim or args.port:
        board_report(r, stats)
        r["engine"] = "board" if args.port else "board-sim"
    else:
        r["engine"] = "golden"
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        r["files"] = write_program_files(out_dir / "core.json", progs)
    if args.trace:
        r["trace"] = str(write_trace(progs, args.trace))
    if not args.json and args.sim:
        print(f"RTL core (Verilator): bit-exact with the golden core: {r['bit_exact']}; cycles "
              f"{r['cycles']:,} per input, predicted {r['predicted_cycles']:,}; memory stalls "
              f"{r['memory_stall_cycles']:,}; simulated in {r['sim_seconds']:.1f} s "
              f"(+ {r['build_seconds']:.1f} s build)")
    if not args.json:
        print(f"{r['model']} on the {r['engine']} core ({r['region_ops']} ops in {r['programs']} "
              f"program(s), {r['instructions']} instructions): {r['n_inputs']} inputs, cosine "
              f"vs float min {r['cosine_min']:.5f} mean {r['cosine_mean']:.5f}")
        q = r["unit_busy"]["queues"]
        c = r["core"]
        print(f"predicted {r['predicted_cycles']:,} cycles per input on {c['rows']}x{c['cols']}; "
              f"array utilization {100 * r['array_utilization']:.1f}%; busy D {q['D']:,} "
              f"M {q['M']:,} S {q['S']:,}")
    return r
