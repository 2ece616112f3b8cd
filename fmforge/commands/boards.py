"""``fmforge boards``: list the supported FPGA boards and their resources."""

from __future__ import annotations

import argparse
from typing import Any

from boards.catalog import list_boards

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``boards`` command to the CLI."""
    p = subparsers.add_parser(
        "boards", help="list supported FPGA boards and their resources",
        description="List the FPGA boards fmforge can build bitstreams for, with the resource "
                    "totals of their parts (as nextpnr counts them), clock, external memory "
                    "and host link.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _fmt_bits(bits: int) -> str:
    return f"{bits // 1024} Kb"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Return ``{"boards": [...]}``; print a table unless ``--json``."""
    boards = [b.to_dict() for b in list_boards()]
    if not args.json:
        head = f"{'board':<16}{'part':<22}{'LUTs':>7}{'FFs':>7}{'DSPs':>6}{'BRAMs':>7}" \
               f"{'BRAM':>10}{'clock':>8}  memory / host link"
        print(head)
        print("-" * len(head))
        for b in boards:
            extra = b["ext_memory"] or "-"
            if b["spram_bits"]:
                extra = f"SPRAM {_fmt_bits(b['spram_bits'])}; " + (
                    "" if extra == "-" else extra + "; ")
                extra += f"flash {b['flash_bytes'] // (1024 * 1024)} MB"
            print(f"{b['name']:<16}{b['part']:<22}{b['luts']:>7}{b['ffs']:>7}{b['dsps']:>6}"
                  f"{b['brams']:>7}{_fmt_bits(b['bram_bits']):>10}{b['clock_mhz']:>6g}MHz"
                  f"  {extra} / {b['host_link'] or '-'}")
    return {"boards": boards}
