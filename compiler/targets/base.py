"""The target interface: what a device can run, what it costs, what it holds, how it lowers.

Every target is one small class (see :mod:`compiler.targets`) with

* ``supports(node) -> Support`` (``ok`` and, when not, the reason);
* ``cost(node, graph) -> OpCost`` (seconds, joules, cycles, resources the op occupies);
* ``capacity`` (resource -> limit, e.g. ``{"weight_bytes": 33554432}``), enforced by the
  partitioner over all the ops placed on the device;
* ``lowering(node) -> dict`` (which unit and which golden/torch implementation runs the op);
* ``link`` (its connection to the host: bandwidth, latency, power);
* ``configure(graph)`` (choose the hardware configuration for the graph before costing) and
  ``hardware(nodes)`` (the units to build, their parameters and predicted resources).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compiler.ir import Graph, Node
from golden.errors import UserValueError

__all__ = ["LinkSpec", "OpCost", "Support", "Target", "parse_params"]


@dataclass(frozen=True)
class Support:
    """Whether a target runs an op, and why not."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class OpCost:
    """Predicted cost of one op on one device."""

    seconds: float
    energy_j: float
    cycles: int | None = None
    resources: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LinkSpec:
    """A link between a device and the host."""

    name: str
    bandwidth_bytes_s: float
    latency_s: float
    power_w: float = 0.0

    def seconds(self, nbytes: int) -> float:
        """Time to move ``nbytes`` (latency + size / bandwidth); 0 for no bytes."""
        return 0.0 if nbytes <= 0 else self.latency_s + nbytes / self.bandwidth_bytes_s

    def energy(self, nbytes: int) -> float:
        """Energy of a transfer: link power times its duration."""
        return self.power_w * self.seconds(nbytes)

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "bandwidth_bytes_s": self.bandwidth_bytes_s,
                "latency_s": self.latency_s, "power_w": self.power_w}


def parse_params(text: str, allowed: dict[str, type], device: str) -> dict[str, Any]:
    """Parse ``k=v:k=v`` device parameters, checking names and types (errors name the device)."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for item in text.split(":"):
        k, sep, v = item.partition("=")
        if not sep or k not in allowed:
            raise UserValueError(f"device {device!r}: unknown parameter {item!r}; parameters: "
                             f"{', '.join(sorted(allowed))}")
        try:
            val = allowed[k](v)
        except ValueError:
            raise UserValueError(f"device {device!r}: parameter {k} must be "
                             f"{allowed[k].__name__}, not {v!r}") from None
        if isinstance(val, (int, float)) and not isinstance(val, bool) and val <= 0:
            raise UserValueError(f"device {device!r}: parameter {k} must be positive, not {v!r}")
        out[k] = val
    return out


class Target:
    """Base class of all targets (see the module docstring)."""

    kind: str = "target"
    #: host devices hold the graph inputs and outputs (the CPU)
    is_host: bool = False
    #: True for devices computing on quantized int8 data (activations travel as int8)
    integer: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.capacity: dict[str, int] = {}
        self.link = LinkSpec("host", float("inf"), 0.0)

    def configure(self, graph: Graph) -> None:
        """Choose the hardware configuration for ``graph`` (default: nothing to choose)."""

    def supports(self, node: Node) -> Support:  # pragma: no cover - abstract
        raise NotImplementedError

    def cost(self, node: Node, graph: Graph) -> OpCost:  # pragma: no cover - abstract
        raise NotImplementedError

    def lowering(self, node: Node) -> dict[str, Any]:
        """How the op executes on this device (unit and implementation)."""
        return {"unit": "torch", "impl": f"torch {node.target}"}

    def params(self) -> dict[str, Any]:
        """The device's parameters (what ``fmforge devices`` and the plan show)."""
        return {}

    def hardware(self, nodes: list[Node]) -> dict[str, Any]:
        """Units to build for the ops placed here, with predicted resources and clock."""
        return {"units": [], "resources_used": {}, "resources_available": dict(self.capacity)}
