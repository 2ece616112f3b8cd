"""What running ops in integer costs in accuracy, measured on calibration data.

The partitioner's accuracy budget (``fmforge compile --min-cosine``) needs, for every op it may
place on an integer device, an estimate of what that placement does to the model's output. Ops
are grouped: one **group** is the ops of one kind (``linear``, ``layer_norm``, ``softmax``, ...)
that integer devices with the same numerics can run. Numerics: the GEMM engines and nonlinear
units of fpga/asic (and any other digital integer device) compute exactly what :mod:`golden`
computes, so they form one family, ``int8``; an ``imc`` device whose ADC resolves every column
sum computes the same exact int8 GEMM (``int8`` too), otherwise its ADC model makes each distinct
set of imc parameters its own family. Devices whose ops the per-op executor
path does not reproduce (the ``core``, which runs whole regions on the golden core with its own
16-bit residual stream) are not measured: :func:`numerics` gives None and no cost is charged.

Measurement (:func:`measure_groups`): the graph runs on the calibration samples (the ones the
quantize pass calibrated on) once in float and once per group with only that group's ops in
integer, through the plan executor's own per-op implementation
(:func:`compiler.execute.make_impl`), so the figure is what ``fmforge execute`` would see for
that group alone. The model output is compared per sample by cosine similarity: for MiniLM the
sentence embedding (mean pooling over the attention mask, as ``fmforge execute`` compares), else
each output on its own, the smallest cosine counting (a decode step's logits and hidden state
are not averaged away by its many key/value outputs). A group's ``cosine`` is the mean over the
samples and its ``drop`` is
``1 - cosine`` (never below 0). Results are cached in ``graph.analyses`` (keyed by the group's
ops, their scales and the samples), so a second partition of the same graph costs nothing.

The estimate of a placement is ``1 - sum(drop)`` over the groups with at least one op in
integer (:func:`compiler.partition.expected_cosine`): additive, and conservative for a group
only partly in integer (it is charged in full). :func:`partition_within_budget` measures only
the groups an optimal placement wants (see there). On MiniLM (16 calibration sentences): linear
alone costs 0.008 (cosine 0.992), the 13 layer norms 0.25 (their int8 input cannot hold the
residual stream's outliers).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compiler.ir import Graph
from compiler.passes.quantize import QUANT_KINDS
from compiler.targets.base import Target

__all__ = ["MEASURED_KINDS", "Group", "integer_groups", "measure_groups", "numerics",
           "partition_within_budget"]

#: graph.analyses key of the cached measurements
_CACHE = "integer_cost"


@dataclass(frozen=True)
class Group:
    """Ops of one kind that integer devices of one numerics family run (see module doc)."""

    key: str
    kind: str
    numerics: str
    ops: tuple[str, ...]
    devices: tuple[str, ...]
    #: mean output cosine over the calibration samples with only this group in integer (None:
    #: not measured)
    cosine: float | None = None
    samples: int = 0

    @property
    def drop(self) -> float:
        """Cosine lost by running this group in integer (0 or more; 0 when not measured)."""
        return 0.0 if self.cosine is None else max(0.0, 1.0 - self.cosine)

    def to_json(self) -> dict[str, Any]:
        """The plan's form (without the op list: ``ops`` is the count)."""
        return {"group": self.key, "kind": self.kind, "numerics": self.numerics,
                "devices": list(self.devices), "ops": len(self.ops), "cosine": self.cosine,
                "cosine_drop": None if self.cosine is None else self.drop}


#: integer device kinds whose ops the executor runs one by one (what is measured)
MEASURED_KINDS = ("fpga", "asic", "imc")


def numerics(device: Target) -> str | None:
    """The numerics family of an integer device (None for float devices and devices that are
    not measured, see :data:`MEASURED_KINDS`)."""
    if not device.integer or device.kind not in MEASURED_KINDS:
        return None
    if device.kind == "imc":
        p = device.params()
        full = p["xbar"] * (2 ** p["dac_bits"] - 1) * (2 ** p["cell_bits"] - 1)
        if full < 2 ** p["adc_bits"]:  # the ADC resolves every column sum: exact int8 GEMM
            return "int8"
        keys = ("xbar", "cell_bits", "dac_bits", "adc_bits")
        return "imc(" + ",".join(f"{k}={p[k]}" for k in keys) + ")"
    return "int8"


def integer_groups(graph: Graph, devices: Sequence[Target],
                   supported: dict[str, list[bool]]) -> list[Group]:
    """The groups of ``graph``: ``supported[op][d]`` says whether device ``d`` runs ``op``.

    Only op kinds with an integer implementation (the quantized kinds) form groups; the others
    (layout ops) are exact on the int8 grid and cost nothing.
    """
    found: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for n in graph.nodes:
        if n.op not in QUANT_KINDS:
            continue
        for d, dev in enumerate(devices):
            fam = numerics(dev)
            if fam is None or not supported[n.name][d]:
                continue
            ops, devs = found.setdefault((n.op, fam), ([], []))
            if n.name not in ops:
                ops.append(n.name)
            if dev.name not in devs:
                devs.append(dev.name)
    fams = {fam for _, fam in found}
    out = []
    for (kind, fam), (ops, devs) in sorted(found.items()):
        key = kind if len(fams) == 1 else f"{kind}@{fam}"
        out.append(Group(key, kind, fam, tuple(ops), tuple(devs)))
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    den = float(a.norm() * b.norm())
    if den == 0:
        return 1.0 if float((a - b).abs().max()) == 0 else 0.0
    return max(-1.0, min(1.0, float(a @ b) / den))


def _summary(outs: Sequence[Any], inputs: Sequence[torch.Tensor], pooled: bool
             ) -> list[torch.Tensor]:
    """What is compared: MiniLM's mean-pooled embedding, else every tensor output."""
    if pooled:
        h, mask = outs[0], inputs[1].unsqueeze(-1).to(outs[0].dtype)
        return [(h * mask).sum(1) / mask.sum(1).clamp_min(1e-9)]
    return [o.detach() for o in outs if isinstance(o, torch.Tensor)]


def _min_cos(got: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> float:
    """The smallest cosine over the outputs (a decode step's logits are judged on their own,
    not drowned in its keys and values)."""
    return min((_cos(a, b) for a, b in zip(got, ref, strict=True)), default=1.0)


def _samples_key(samples: Sequence[Sequence[torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for s in samples:
        for t in s:
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _group_key(graph: Graph, g: Group, samples_key: str, pooled: bool) -> str:
    nodes = graph.node_map()
    quant = [nodes[o].attrs.get("quant") for o in g.ops]
    blob = json.dumps([g.kind, g.numerics, list(g.ops), quant, samples_key, pooled],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def measure_groups(graph: Graph, devices: Sequence[Target], groups: Sequence[Group],
                   samples: Sequence[Sequence[torch.Tensor]], pooled: bool = False) -> list[Group]:
    """Each group with its measured ``cosine`` (see the module docstring); cached in
    ``graph.analyses``."""
    from compiler.execute import make_impl
    from compiler.interp import run_graph

    cache: dict[str, float] = graph.analyses.setdefault(_CACHE, {})
    skey = _samples_key(samples)
    keys = [_group_key(graph, g, skey, pooled) for g in groups]
    todo = [(g, k) for g, k in zip(groups, keys, strict=True) if k not in cache]
    if todo:
        by_name = {d.name: d for d in devices}
        host = {"name": "<float>", "kind": "cpu", "params": {}}
        every = [{"name": n.name, "device": host["name"]} for n in graph.nodes]
        ref_impl = make_impl(graph, {"devices": [host], "ops": every})
        refs = [_summary(run_graph(graph, s, impl=ref_impl), s, pooled) for s in samples]
        for g, k in todo:
            dev = by_name[g.devices[0]]  # same numerics family: any of its devices
            idev = {"name": dev.name, "kind": dev.kind, "params": dev.params()}
            members = set(g.ops)
            ops = [{"name": n.name, "device": idev["name"] if n.name in members
                    else host["name"]} for n in graph.nodes]
            impl = make_impl(graph, {"devices": [host, idev], "ops": ops})
            cos = [_min_cos(_summary(run_graph(graph, s, impl=impl), s, pooled), r)
                   for s, r in zip(samples, refs, strict=True)]
            cache[k] = sum(cos) / len(cos)
    return [Group(g.key, g.kind, g.numerics, g.ops, g.devices, cache[k], len(samples))
            for g, k in zip(groups, keys, strict=True)]


def partition_within_budget(problem: Any, graph: Graph, devices: Sequence[Target],
                            samples: Sequence[Sequence[torch.Tensor]], min_cosine: float,
                            pooled: bool = False) -> tuple[Any, list[Group]]:
    """Exact placement of a :class:`compiler.partition.Problem` built from ``graph`` and
    ``devices`` whose estimated output cosine stays >= ``min_cosine``; returns the result and
    the groups (measured ones with their cosine, the others with ``cosine`` None).

    Groups are measured lazily: the DP runs with the unmeasured groups' drops taken as 0 (a
    relaxation: every allowed placement stays allowed), the groups its best placement uses are
    measured, and it runs again until that placement uses measured groups only; then it is
    allowed and no allowed placement is cheaper, so it is the exact optimum. A group that no
    optimum wants (the layer norms of a latency plan, everything when the accelerator loses
    anyway) costs no measurement. On exit ``problem.acc_drop`` holds the measured groups only.
    """
    from compiler.partition import expected_cosine, groups_used, partition_dp

    supported = {op: [c is not None for c in row] for op, row in problem.cost.items()}
    groups = {g.key: g for g in integer_groups(graph, devices, supported)}
    fam = [numerics(d) for d in devices]
    member = {(op, g.numerics): g.key for g in groups.values() for op in g.ops}
    problem.acc_group = {op: [member.get((op, f)) if f is not None and ok else None
                              for f, ok in zip(fam, supported[op], strict=True)]
                         for op in problem.ops}
    problem.min_cosine = min_cosine
    measured: dict[str, Group] = {}
    while True:
        problem.acc_drop = {k: measured[k].drop if k in measured else 0.0 for k in groups}
        result = partition_dp(problem)
        new = sorted(groups_used(problem, result.placement) - set(measured))
        if not new:
            break
        for g in measure_groups(graph, devices, [groups[k] for k in new], samples, pooled):
            measured[g.key] = g
    problem.acc_drop = {k: g.drop for k, g in measured.items()}
    result.expected_cosine = expected_cosine(problem, result.placement)
    return result, [measured.get(k, g) for k, g in groups.items()]
