"""``fmforge run PLAN --golden``: run the plan's transformer body on the fmforge core.

The encoder body (first linear to last layer norm) is lowered to a core program (docs/isa.md)
and run on the golden core, the bit-exact interpreter that the core's RTL is verified against;
the host runs the embedding lookup, mask preparation and pooling. Reports the embedding cosine
against the float model and the program's exact predicted cycles. With ``-o DIR`` the program
and its memory image are written there (``program.bin``, ``image.bin``, ``core.json`` with their
sha256). Running the program on the Verilated core RTL (``--sim``) follows the core's SFU RTL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from fmforge.commands._args import add_json, int_range
from golden.errors import UserValueError

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``run`` command to the CLI."""
    p = subparsers.add_parser("run", help="run a plan's transformer body on the fmforge core",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("plan", help="plan JSON written by 'fmforge compile'")
    p.add_argument("--golden", action="store_true", default=True,
                   help="run on the golden core (the default and, for now, the only engine)")
    p.add_argument("--sentences", help="text file, one sentence per line (default: shipped set)")
    p.add_argument("--limit", type=int_range(1, 2**20), help="run at most this many inputs")
    p.add_argument("--rows", type=int_range(1, 64), default=8, help="array rows")
    p.add_argument("--cols", type=int_range(1, 64), default=8, help="array columns")
    p.add_argument("--memory-latency", type=int_range(0, 10000), default=8,
                   help="external memory latency in cycles")
    p.add_argument("--memory-bytes-per-cycle", type=int_range(1, 1024), default=4,
                   help="external memory bytes per cycle")
    p.add_argument("--sp-kb", type=int_range(16, 65536), default=256, help="scratchpad KiB")
    p.add_argument("-o", "--output", help="directory for program.bin, image.bin, core.json")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Lower, run on the golden core, report."""
    import torch

    from compiler.core_run import lower_plan, run_on_core
    from compiler.models import load_sentences
    from compiler.plan import load_plan
    from hw.core_model import CoreConfig

    out_dir = Path(args.output) if args.output else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UserValueError(f"-o {args.output}: exists and is not a directory")
    plan = load_plan(args.plan)
    torch.set_num_threads(1)
    cfg = CoreConfig(rows=args.rows, cols=args.cols, latency=args.memory_latency,
                     bytes_per_cycle=args.memory_bytes_per_cycle, sp_bytes=args.sp_kb * 1024,
                     imem_instrs=65536)
    sents = load_sentences(args.sentences) if args.sentences else None
    r = run_on_core(plan, sentences=sents, limit=args.limit, cfg=cfg)
    if out_dir is not None:
        _, _, prog = lower_plan(plan, cfg)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {"program.bin": prog.program_bytes(), "image.bin": prog.image}
        meta = {"core": cfg.to_json(), "ops": prog.ops, "sha256": {
            k: hashlib.sha256(v).hexdigest() for k, v in files.items()},
            "inputs": {k: {"fmt": v.fmt, "scale": v.scale, "first_byte": int(v.addr.min())}
                       for k, v in prog.inputs.items()},
            "outputs": {k: {"fmt": v.fmt, "first_byte": int(v.addr.min())}
                        for k, v in prog.outputs.items()}}
        files["core.json"] = json.dumps(meta, indent=1, sort_keys=True).encode()
        for name, data in files.items():
            tmp = out_dir / f".{name}.part"
            tmp.write_bytes(data)
            tmp.replace(out_dir / name)
        r["files"] = sorted(str(out_dir / n) for n in files)
    if not args.json:
        print(f"{r['model']} on the golden core ({r['region_ops']} ops, {r['instructions']} "
              f"instructions): {r['n_inputs']} inputs, cosine vs float min "
              f"{r['cosine_min']:.5f} mean {r['cosine_mean']:.5f}")
        q = r["unit_busy"]["queues"]
        print(f"predicted {r['predicted_cycles']:,} cycles per input on {cfg.rows}x{cfg.cols}; "
              f"array utilization {100 * r['array_utilization']:.1f}%; busy D {q['D']:,} "
              f"M {q['M']:,} S {q['S']:,}")
    return r
