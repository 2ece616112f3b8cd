"""``fmforge sparsity``: how much attention each sparse-attention filter skips on MiniLM.

Runs all-MiniLM-L6-v2 with every attention layer replaced by a filter golden model (A^3,
ELSA, SpAtten, Energon, Sanger) at its default setting, or over its knob sweep with
``--sweep``, and reports keep ratio, attention-output error, embedding cosine and
nearest-neighbour agreement against the dense model. No fine-tuning is done.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fmforge.commands._args import MAX_THREADS, int_range

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``sparsity`` command."""
    p = subparsers.add_parser(
        "sparsity",
        help="measure how much attention each sparse filter skips on MiniLM",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--methods", default="a3,elsa,spatten,energon,sanger",
                   help="comma-separated methods (default: all five)")
    p.add_argument("--sweep", action="store_true", help="evaluate every knob setting of each method")
    p.add_argument("--sentences", default=None, metavar="FILE",
                   help="text file, one sentence per line (default: the shipped 240 sentences)")
    p.add_argument("--float", dest="integer", action="store_false",
                   help="use the float twins instead of the bit-accurate integer filters")
    p.add_argument("--threads", type=int_range(1, MAX_THREADS), default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine one thread "
                        "measured 2-3x faster than two)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate and return ``{"results": [...], "n_sentences": N}``."""
    import torch

    from compiler.models import load_sentences
    from compiler.sparsity import evaluate, format_table, parse_methods

    methods = parse_methods(args.methods)
    sentences = load_sentences(args.sentences)
    torch.set_num_threads(getattr(args, "threads", 1))
    progress = None if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    result = evaluate(methods, sweep=args.sweep, sentences=sentences,
                      integer=getattr(args, "integer", True), progress=progress)
    if not args.json:
        print(format_table(result))
    return result
