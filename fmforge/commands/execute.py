"""``fmforge execute``: run a plan bit-accurately and compare with the float model."""

from __future__ import annotations

import argparse
from typing import Any

from fmforge.commands._args import add_json, int_range

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``execute`` command to the CLI."""
    p = subparsers.add_parser("execute", help="run a plan bit-accurately and compare with float",
                              description="Run every op where the plan placed it (golden integer "
                                          "models on accelerators, PyTorch on CPU/GPU) and report "
                                          "the cosine similarity with the float model.")
    p.add_argument("plan", help="plan JSON written by 'fmforge compile'")
    p.add_argument("--sentences", help="text file, one sentence per line (MiniLM plans; default: "
                   "the shipped set)")
    p.add_argument("--limit", type=int_range(1, 2**20), help="run at most this many inputs")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Execute the plan; return cosine_min, cosine_mean, max_abs_err, n_inputs."""
    import torch

    from compiler.execute import execute_plan
    from compiler.models import load_sentences
    from compiler.plan import load_plan

    plan = load_plan(args.plan)
    torch.set_num_threads(1)
    sents = load_sentences(args.sentences) if args.sentences else None
    r = execute_plan(plan, sentences=sents, limit=args.limit)
    if not args.json:
        print(f"{r['model']}: {r['n_inputs']} inputs, cosine vs float min {r['cosine_min']:.5f} "
              f"mean {r['cosine_mean']:.5f}, max abs err {r['max_abs_err']:.4g}; ops per device "
              + ", ".join(f"{k} {v}" for k, v in sorted(r["ops_per_device"].items())))
    return r
