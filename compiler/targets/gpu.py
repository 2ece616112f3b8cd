"""GPU target: a roofline of a named GPU; runs every op (in float32, PyTorch CUDA when present,
else the executor runs its ops with PyTorch on the CPU: same float semantics). Measured CUDA
timings are not implemented yet: the plan always uses the roofline and says so.

Roofline numbers (datasheets, dense, no sparsity), float32 CUDA cores since PyTorch does not
use TF32 for matmul by default:

* ``a100``: A100 SXM 80 GB, 19.5 TFLOP/s FP32, 2.039 TB/s HBM2e, 400 W, PCIe 4 x16 ~25 GB/s;
* ``h100``: H100 SXM, 67 TFLOP/s FP32, 3.35 TB/s HBM3, 700 W, PCIe 5 x16 ~50 GB/s.

Time per op ``max(flops / peak, bytes / bandwidth) + 5 us`` (kernel launch); energy = time x
board power (an upper bound). Link latency 10 us.
"""

from __future__ import annotations

from typing import Any

import torch

from compiler.ir import Graph, Node
from compiler.targets.base import LinkSpec, OpCost, Support, Target, parse_params
from compiler.targets.cpu import _bytes, op_flops
from golden.errors import UserLookupError

__all__ = ["GpuTarget", "GPUS"]

GPUS: dict[str, dict[str, float]] = {
    "a100": {"flops": 19.5e12, "mem_bw": 2.039e12, "power_w": 400.0, "link_bw": 25e9},
    "h100": {"flops": 67e12, "mem_bw": 3.35e12, "power_w": 700.0, "link_bw": 50e9},
}
_LAUNCH_S = 5e-6


class GpuTarget(Target):
    """A GPU (see the module docstring); ``gpu`` is ``gpu-a100`` unless CUDA is present."""

    kind = "gpu"

    def __init__(self, name: str = "gpu", model: str = "a100", param_text: str = "") -> None:
        super().__init__(name)
        parse_params(param_text, {}, name)
        if model not in GPUS:
            raise UserLookupError(f"unknown GPU {model!r}; known: {', '.join(GPUS)}")
        self.model = model
        self.spec = GPUS[model]
        self.cuda = torch.cuda.is_available()
        self.link = LinkSpec(f"PCIe ({model})", self.spec["link_bw"], 10e-6, 5.0)

    def supports(self, node: Node) -> Support:
        return Support(True)

    def cost(self, node: Node, graph: Graph) -> OpCost:
        if node.op == "layout" and node.target == "getitem":
            return OpCost(0.0, 0.0)
        t = max(op_flops(node) / self.spec["flops"],
                _bytes(node, graph) / self.spec["mem_bw"]) + _LAUNCH_S
        return OpCost(t, t * self.spec["power_w"])

    def params(self) -> dict[str, Any]:
        return {"model": self.model, "cuda_present": self.cuda, **self.spec,
                "launch_s": _LAUNCH_S, "link": self.link.to_json(),
                "timing": "roofline"}

    def hardware(self, nodes: list[Node]) -> dict[str, Any]:
        return {"units": [], "resources_used": {}, "resources_available": {}}
