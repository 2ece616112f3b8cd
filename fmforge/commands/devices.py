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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def _param_lines(d: dict[str, Any], width: int = 96) -> list[str]:
    """The device's parameters (``--devices NAME:key=value`` overrides them) and capacity,
    wrapped to ``width`` columns."""
    items = [f"{k}={_fmt(v)}" for k, v in d["params"].items()]
    items += [f"capacity.{k}={_fmt(v)}" for k, v in d["capacity"].items()]
    lines, cur = [], ""
    for it in items:
        if cur and len(cur) + 2 + len(it) > width:
            lines.append(cur)
            cur = it
        else:
            cur = f"{cur}, {it}" if cur else it
    return [*lines, cur] if cur else lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Return ``{"devices": [...]}``; print a table unless ``--json``."""
    from compiler.targets import device_types

    devs = device_types()
    if not args.json:
        for d in devs:
            link = d["link"]["name"] if d["link"] else "host"
            print(f"{d['name']:<16}{d['kind']:<6}{link:<34}{d['description']}")
            for line in _param_lines(d):
                print(f"    {line}")
    return {"devices": devs}
