"""Core target: the fmforge core (docs/isa.md), an instruction-driven accelerator that runs
linears, attention (QK^T, masked softmax, AV per head), GELU, residual adds, layer norms and
layout ops from one program per region.

Parameters (``core:rows=8:cols=8:mhz=100:latency=8:bpc=4:sp_kb=256``): array size, clock,
external-memory latency (cycles) and bytes per cycle, scratchpad KiB, dataflow.

Support: an op is placed on the core only when :mod:`compiler.core_backend` lowers it (the
reason otherwise is the lowering error). Cost: the exact cycles of the op's own program
(:func:`hw.core_model.program_timing` of the op lowered alone, its inputs read from and its output
written to external memory); layout ops are free (address arithmetic: the consumer's DMA reads
the elements where they are). The plan's prediction for a whole region is the exact timing of
the region's program (:func:`compiler.core_backend.lower_region`), which overlaps ops.
Energy (shared/reference/costmodels.md 4.1, the ASIC target's constants): 0.3 pJ per int8 MAC,
160 pJ per external-memory byte moved by the DMA, 2.5 pJ per scratchpad byte read or written by
the array and the special-function units. The host writes inputs into and reads results from the
core's external memory over an assumed 1 GB/s, 2 us bus (0.5 W while transferring).
"""

from __future__ import annotations

from typing import Any

from compiler.ir import Graph, Node
from compiler.targets.asic import E_DRAM_J_PER_B, E_MAC_J, E_SRAM_J_PER_B
from compiler.targets.base import LinkSpec, OpCost, Support, Target, parse_params
from golden.errors import UserError
from hw.core_model import program_timing
from hw.core_spec import CORE_UNIT_OPS, CoreSpec

__all__ = ["CoreTarget", "CORE_UNIT_ID"]

CORE_UNIT_ID = "core"
_PARAMS = {"rows": int, "cols": int, "mhz": float, "latency": int, "bpc": int, "sp_kb": int,
           "dataflow": str}


class CoreTarget(Target):
    """The fmforge core as a compiler target (see the module docstring)."""

    kind = "core"
    integer = True

    def __init__(self, name: str = "core", param_text: str = "") -> None:
        super().__init__(name)
        p = parse_params(param_text, _PARAMS, name)
        try:
            self.spec = CoreSpec(rows=p.get("rows", 8), cols=p.get("cols", 8),
                                 dataflow=p.get("dataflow", "os"), latency=p.get("latency", 8),
                                 bytes_per_cycle=p.get("bpc", 4),
                                 sp_bytes=1024 * p.get("sp_kb", 256), imem_instrs=65536)
        except UserError as e:
            raise type(e)(f"device {name!r}: {e}") from None
        self.mhz = p.get("mhz", 100.0)
        self.link = LinkSpec("host memory bus (assumed 1 GB/s)", 1e9, 2e-6, 0.5)
        self.capacity = {}
        self._graph: Graph | None = None
        self._cache: dict[str, tuple[Support, OpCost]] = {}

    def configure(self, graph: Graph) -> None:
        self._graph = graph
        self._cache = {}

    def _price(self, node: Node) -> tuple[Support, OpCost]:
        if node.name in self._cache:
            return self._cache[node.name]
        from compiler.core_backend import lower_region

        if node.op not in CORE_UNIT_OPS:
            r = (Support(False, f"the core has no instruction for {node.op}"), OpCost(0, 0))
        elif node.attrs.get("keep_float") and node.op != "gelu":
            r = (Support(False, f"kept in float: {node.attrs['keep_float']}"), OpCost(0, 0))
        elif node.op == "layout" and not node.inputs:
            r = (Support(False, "a layout of a constant: computed on the host"), OpCost(0, 0))
        else:
            assert self._graph is not None, "configure() first"
            try:
                prog = lower_region(self._graph, [node.name], self.spec.config(),
                                    outputs=[node.name])
            except UserError as e:
                r = (Support(False, str(e)), OpCost(0, 0))
            else:
                t = program_timing(prog.instrs, self.spec.config())
                macs = int(node.attrs.get("macs", 0)) or sum(
                    i["m"] * i["k"] * i["n"] for i in prog.instrs if i.op == "GEMM")
                dma = sum(i["rows"] * i["cols"] * (1, 2, 4, 4)[i["esz"]]
                          for i in prog.instrs if i.op in ("LOAD", "STORE"))
                e = macs * E_MAC_J + dma * (E_DRAM_J_PER_B + E_SRAM_J_PER_B)
                r = (Support(True), OpCost(t.cycles / (self.mhz * 1e6), e, t.cycles))
        self._cache[node.name] = r
        return r

    def supports(self, node: Node) -> Support:
        return self._price(node)[0]

    def cost(self, node: Node, graph: Graph) -> OpCost:
        return self._price(node)[1]

    def lowering(self, node: Node) -> dict[str, Any]:
        return {"unit": CORE_UNIT_ID, "impl": "golden.core.run_program (compiler.core_backend)"}

    def params(self) -> dict[str, Any]:
        return {**self.spec.to_json(), "clock_mhz": self.mhz, "link": self.link.to_json(),
                "e_mac_j": E_MAC_J, "e_dram_j_per_byte": E_DRAM_J_PER_B,
                "e_sram_j_per_byte": E_SRAM_J_PER_B}

    def hardware(self, nodes: list[Node]) -> dict[str, Any]:
        if not nodes:
            return {"units": [], "resources_used": {}, "resources_available": {}}
        pred = dict(self.spec.resources("asic"))
        pred["clock_mhz"] = self.mhz
        unit = {"id": CORE_UNIT_ID, "unit": "core", "module": self.spec.component,
                "params": self.spec.to_json(), "ops": [n.name for n in nodes],
                "predicted": pred}
        return {"units": [unit], "clock_mhz": self.mhz,
                "resources_used": {"macs": self.spec.rows * self.spec.cols,
                                   "sp_bytes": self.spec.sp_bytes},
                "resources_available": {"macs": self.spec.rows * self.spec.cols,
                                        "sp_bytes": self.spec.sp_bytes}}
