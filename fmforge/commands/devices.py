"""``fmforge devices``: the device types the compiler can target and their parameters."""

from __future__ import annotations

import argparse
from typing import Any

from fmforge.commands._args import add_json

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``devices`` command to the CLI."""
    p = subparsers.add_parser("devices", help="list compiler device types and their parameters",
                              description="Device types for 'fmforge compile --devices': FPGA "
                                          "boards, asic, imc, cpu, gpu, with default parameters.")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Return ``{"devices": [...]}``; print a table unless ``--json``."""
    from compiler.targets import device_types

    devs = device_types()
    if not args.json:
        for d in devs:
            link = d["link"]["name"] if d["link"] else "host"
            print(f"{d['name']:<16}{d['kind']:<6}{link:<34}{d['description']}")
    return {"devices": devs}
