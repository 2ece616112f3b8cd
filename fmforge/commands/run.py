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
from pathlib import Path
from typing import Any

from fmforge.commands._args import add_json, check_output_file, int_range
from golden.errors import UserValueError

__all__ = ["register", "run", "write_trace"]


def register(subparsers: Any) -> None:
    """Add the ``run`` command to the CLI."""
    p = subparsers.add_parser("run", help="run a plan's core part on the fmforge core",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("plan", help="plan JSON written by 'fmforge compile'")
    p.add_argument("--golden", action="store_true", default=True,
                   help="run on the golden core (the default)")
    p.add_argument("--sentences", help="text file, one sentence per line (default: shipped set)")
    p.add_argument("--limit", type=int_range(1, 2**20), help="run at most this many inputs")
    p.add_argument("--rows", type=int_range(1, 64), default=8,
                   help="array rows (plans without a core device)")
    p.add_argument("--cols", type=int_range(1, 64), default=8,
                   help="array columns (plans without a core device)")
    p.add_argument("--memory-latency", type=int_range(0, 10000), default=8,
                   help="external memory latency in cycles (plans without a core device)")
    p.add_argument("--memory-bytes-per-cycle", type=int_range(1, 64), default=4,
                   help="external memory bytes per cycle (plans without a core device)")
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
    cfg = CoreConfig(rows=args.rows, cols=args.cols, latency=args.memory_latency,
                     bytes_per_cycle=args.memory_bytes_per_cycle, sp_bytes=args.sp_kb * 1024,
                     imem_instrs=65536)
    sents = load_sentences(args.sentences) if args.sentences else None
    r = run_on_core(plan, sentences=sents, limit=args.limit, cfg=cfg)
    progs = r.pop("_programs")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        r["files"] = write_program_files(out_dir / "core.json", progs)
    if args.trace:
        r["trace"] = str(write_trace(progs, args.trace))
    if not args.json:
        print(f"{r['model']} on the golden core ({r['region_ops']} ops in {r['programs']} "
              f"program(s), {r['instructions']} instructions): {r['n_inputs']} inputs, cosine "
              f"vs float min {r['cosine_min']:.5f} mean {r['cosine_mean']:.5f}")
        q = r["unit_busy"]["queues"]
        c = r["core"]
        print(f"predicted {r['predicted_cycles']:,} cycles per input on {c['rows']}x{c['cols']}; "
              f"array utilization {100 * r['array_utilization']:.1f}%; busy D {q['D']:,} "
              f"M {q['M']:,} S {q['S']:,}")
    return r
