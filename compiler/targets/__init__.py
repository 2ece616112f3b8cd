"""Compiler targets, one module each: fpga, asic, imc, cpu, gpu (see :mod:`compiler.targets.base`).

Device specs: a board name from :mod:`boards.catalog` (``ulx3s-85f``), ``cpu``,
``gpu``/``gpu-a100``/``gpu-h100``, ``asic``, ``imc``, ``core`` (the fmforge core); parameters follow after colons
(``asic:rows=16:cols=16``, ``imc:adc_bits=6``, ``cpu:mode=roofline``). A device list is
comma-separated; names must be unique (``asic#2`` style suffixes are not supported).
"""

from __future__ import annotations

import re
from typing import Any

from boards.catalog import board_names
from compiler.targets.asic import AsicTarget
from compiler.targets.base import LinkSpec, OpCost, Support, Target
from compiler.targets.core import CoreTarget
from compiler.targets.cpu import CpuTarget
from compiler.targets.fpga import FpgaTarget
from compiler.targets.gpu import GPUS, GpuTarget
from compiler.targets.imc import ImcTarget
from golden.errors import UserLookupError, UserValueError

__all__ = ["AsicTarget", "CoreTarget", "CpuTarget", "FpgaTarget", "GpuTarget", "ImcTarget", "LinkSpec",
           "OpCost", "Support", "Target", "device_types", "make_device", "parse_devices"]


def make_device(spec: str) -> Target:
    """One device from its spec (see the module docstring); LookupError names unknown devices."""
    spec = spec.strip()
    base, _, params = spec.partition(":")
    key = base.lower()
    if key == "cpu":
        return CpuTarget(spec if params else "cpu", params)
    if key == "gpu" or key.startswith("gpu-"):
        model = key[4:] if key.startswith("gpu-") else "a100"
        return GpuTarget(key, model, params)
    if key == "asic":
        return AsicTarget(spec, params)
    if key == "imc":
        return ImcTarget(spec, params)
    if key == "core":
        return CoreTarget(spec, params)
    if key in board_names():
        if params:
            raise UserValueError(f"device {spec!r}: boards take no parameters")
        return FpgaTarget(key)
    known = ["cpu", "gpu", *(f"gpu-{g}" for g in GPUS), "asic", "imc", "core", *board_names()]
    raise UserLookupError(f"unknown device {base!r}; devices: {', '.join(known)}")


def parse_devices(text: str) -> list[Target]:
    """A comma-separated device list -> targets (unique names, at least one)."""
    specs = [s for s in (x.strip() for x in str(text).split(",")) if s]
    if not specs:
        raise UserValueError("no devices given (e.g. --devices ulx3s-85f,cpu)")
    devs = [make_device(s) for s in specs]
    seen: set[str] = set()
    for d in devs:
        if d.name in seen:
            raise UserValueError(f"device {d.name!r} is listed twice")
        seen.add(d.name)
    return devs


def _summary(doc: str | None) -> str:
    """First docstring line without its pointers to the source (``(see the module docstring)``,
    reST markup)."""
    first = (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""
    first = re.sub(r"\s*\(see the module docstring\)", "", first)
    first = re.sub(r";?\s*``gpu`` is ``gpu-a100`` unless CUDA is present", "", first)
    return first.replace("``", "").strip()


def device_types() -> list[dict[str, Any]]:
    """Every device type with its default parameters (what ``fmforge devices`` prints)."""
    out: list[dict[str, Any]] = []
    for name in ["cpu", "gpu-a100", "gpu-h100", "asic", "imc", "core", *board_names()]:
        d = make_device(name)
        out.append({"name": name, "kind": d.kind, "params": d.params(),
                    "capacity": dict(d.capacity), "link": d.link.to_json()
                    if d.link.bandwidth_bytes_s != float("inf") else None,
                    "description": _summary(type(d).__doc__)})
    return out
