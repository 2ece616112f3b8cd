"""CPU target: PyTorch on the host; runs every op.

``mode=measured`` (default): each distinct op (ATen target, argument shapes and dtypes) is timed
on this machine (one warm-up, then the minimum of 5 runs) and cached in
``$FMFORGE_CACHE/cpu_op_times.json`` (default ``~/.cache/fmforge``), keyed also by the torch
version, the machine and the thread count, so the same inputs give the same plan. A
``grouped_linear`` (a mixture of experts' expert GEMMs) is timed with its rows split evenly over
the experts (zero offsets would route no row and time nothing).
``mode=roofline``: ``max(flops / 50 GFLOP/s, bytes / 10 GB/s) + 3 us`` (deterministic everywhere).
Energy: busy time times an assumed 15 W (two busy cores).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from compiler.frontend import resolve_target
from compiler.ir import Graph, Node, Param, Ref, map_structure
from compiler.targets.base import LinkSpec, OpCost, Support, Target, parse_params
from golden.errors import UserValueError

__all__ = ["CpuTarget", "op_flops", "cache_path", "CPU_POWER_W", "roofline_seconds"]

CPU_POWER_W = 15.0
_PEAK_FLOPS = 50e9
_MEM_BW = 10e9
_OVERHEAD_S = 3e-6


def roofline_seconds(flops: float, nbytes: float) -> float:
    """Host time of work outside the op graph (``mode=roofline`` constants)."""
    return max(flops / _PEAK_FLOPS, nbytes / _MEM_BW) + _OVERHEAD_S


def cache_path() -> Path:
    """Where measured CPU op times are cached."""
    # FMFORGE_CACHE like every other fmforge cache; FMFORGE_CACHE_DIR, its old name, still works
    base = (os.environ.get("FMFORGE_CACHE") or os.environ.get("FMFORGE_CACHE_DIR")
            or str(Path.home() / ".cache" / "fmforge"))
    return Path(base) / "cpu_op_times.json"


def op_flops(node: Node) -> float:
    """Approximate arithmetic of an op (2 per MAC; a few per element for nonlinear ops)."""
    a = node.attrs
    if node.op in ("linear", "matmul", "attention") or a.get("macs"):  # convolutions too
        return 2.0 * a["macs"]
    per = {"softmax": 5, "layer_norm": 8, "rms_norm": 6, "gelu": 10, "silu": 6, "relu": 1,
           "add": 1, "mul": 1}
    el = sum(t.numel for t in node.out)
    return float(per.get(node.op, 1 if node.op != "layout" else 0) * el)


def _bytes(node: Node, graph: Graph) -> int:
    b = node.out_bytes
    for i in node.inputs:
        b += sum(t.nbytes for t in graph.value_type(i))
    for w in node.weights:
        p = graph.params[w]
        b += p.numel() * p.element_size()
    return b


class CpuTarget(Target):
    """The host CPU (see the module docstring)."""

    kind = "cpu"
    is_host = True

    def __init__(self, name: str = "cpu", param_text: str = "") -> None:
        super().__init__(name)
        p = parse_params(param_text, {"mode": str}, name)
        self.mode = p.get("mode", "measured")
        if self.mode not in ("measured", "roofline"):
            raise UserValueError(f"device {name!r}: mode must be measured or roofline, not {self.mode!r}")
        self.link = LinkSpec("host memory", float("inf"), 0.0, 0.0)
        self._cache: dict[str, float] | None = None
        self._dirty = False

    def supports(self, node: Node) -> Support:
        return Support(True)

    def _key(self, node: Node, graph: Graph) -> str:
        def sig(x: Any) -> Any:
            if isinstance(x, Ref):
                return [list(t.shape) + [t.dtype] for t in graph.value_type(x.name)]
            if isinstance(x, Param):
                p = graph.params[x.name]
                return list(p.shape) + [str(p.dtype)]
            return x
        args = map_structure((node.args, node.kwargs), sig)
        key = [node.target, repr(args), torch.__version__, platform.machine(),
               platform.processor(), torch.get_num_threads()]
        if node.op == "grouped_linear":  # timed with its rows routed (see _measure)
            key.append("routed uniformly")
        return json.dumps(key)

    def _load_cache(self) -> dict[str, float]:
        if self._cache is None:
            try:
                self._cache = json.loads(cache_path().read_text())
            except (OSError, ValueError):
                self._cache = {}
        return self._cache

    def save_cache(self) -> None:
        """Write new measurements to the cache file (atomically)."""
        if not self._dirty or self._cache is None:
            return
        p = cache_path()
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".cpu_op_times.", dir=p.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(self._cache, f, sort_keys=True)
            os.replace(tmp, p)
            self._dirty = False
        except OSError:
            pass  # a read-only home only costs re-measuring

    def _measure(self, node: Node, graph: Graph) -> float:
        gen = torch.Generator().manual_seed(0)

        def make(x: Any) -> Any:
            if isinstance(x, Param):
                return graph.params[x.name]
            types = graph.value_type(x.name)
            vals = []
            for t in types:
                dt = getattr(torch, t.dtype, torch.float32)
                if dt.is_floating_point:
                    vals.append(torch.randn(t.shape, generator=gen).to(dt))
                elif dt == torch.bool:
                    vals.append(torch.ones(t.shape, dtype=dt))
                else:
                    vals.append(torch.zeros(t.shape, dtype=dt))
            return vals[0] if not graph.node_map().get(x.name, Node("", "", "", (), {}, ())).multi \
                else tuple(vals)

        fn = resolve_target(node.target)
        args = map_structure(node.args, make)
        kwargs = map_structure(node.kwargs, make)
        if node.op == "grouped_linear" and "offsets_arg" in node.attrs:
            # zero offsets would route no row: split them evenly (a gathered one, routed by
            # expert indices, costs the same whatever they are)
            i, e, m = int(node.attrs["offsets_arg"]), int(node.attrs["experts"]), int(node.attrs["m"])
            offs = torch.tensor([m * (j + 1) // e for j in range(e)], dtype=args[i].dtype)
            args = (*args[:i], offs, *args[i + 1:])
        best = float("inf")
        with torch.no_grad():
            fn(*args, **kwargs)
            for _ in range(5):
                t0 = time.perf_counter()
                fn(*args, **kwargs)
                best = min(best, time.perf_counter() - t0)
        return best

    def seconds(self, node: Node, graph: Graph) -> float:
        """Predicted (measured or roofline) seconds of ``node`` on this CPU."""
        if self.mode == "roofline":
            return max(op_flops(node) / _PEAK_FLOPS, _bytes(node, graph) / _MEM_BW) + _OVERHEAD_S
        cache = self._load_cache()
        key = self._key(node, graph)
        if key not in cache:
            try:
                cache[key] = self._measure(node, graph)
            except Exception:  # an op that will not run on synthetic data: use the roofline
                cache[key] = max(op_flops(node) / _PEAK_FLOPS,
                                 _bytes(node, graph) / _MEM_BW) + _OVERHEAD_S
            self._dirty = True
        return cache[key]

    def cost(self, node: Node, graph: Graph) -> OpCost:
        t = self.seconds(node, graph)
        return OpCost(t, t * CPU_POWER_W)

    def params(self) -> dict[str, Any]:
        return {"mode": self.mode, "power_w": CPU_POWER_W, "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "roofline": {"peak_flops": _PEAK_FLOPS, "mem_bytes_s": _MEM_BW,
                             "overhead_s": _OVERHEAD_S}}

    def hardware(self, nodes: list[Node]) -> dict[str, Any]:
        return {"units": [], "resources_used": {}, "resources_available": {}}
