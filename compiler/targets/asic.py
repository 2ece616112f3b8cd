"""ASIC target: a parametric accelerator built from the same GEMM engine (``hw.gemm``).

Parameters (``asic:rows=32:cols=32:mhz=1000:sram_kb=1024:dram_gbs=25.6``): array size, clock,
on-chip SRAM for the engine buffers, DRAM bandwidth for weights (weights stream from DRAM on
every op: no residency across ops is assumed). Cycles: :func:`hw.gemm.gemm_cycles` via
:mod:`compiler.targets.gemm_common`. Energy (costmodels.md 4.1, Horowitz 45 nm):
int8 MAC with 32-bit accumulate 0.3 pJ; SRAM 2.5 pJ/B (32 KB banks) for every operand byte
loaded into the array buffers and every result byte; DRAM 160 pJ/B for weights; leakage
ignored. Host link (assumed): PCIe gen3 x8-class, 8 GB/s, 5 us, 0.5 W while transferring.
Units and prices: :mod:`compiler.targets.gemm_common` (one instance per nonlinear op,
``lanes`` lanes each; layout ops on the host; attention never: no unit computes it).
"""

from __future__ import annotations

from typing import Any

from compiler.ir import Graph, Node
from compiler.targets.base import LinkSpec, OpCost, Support, Target, parse_params
from compiler.targets.gemm_common import (
    GEMM_OPS,
    NONLINEAR_OPS,
    UnitTable,
    accel_lowering,
    experts_hit,
    fit_buffers,
    gemm_shape,
    host_combine_cost,
    node_cycles,
)
from golden.errors import UserValueError
from hw.gemm import GemmSpec
from hw.spec import UnitSpec

__all__ = ["AsicTarget", "E_MAC_J", "E_SRAM_J_PER_B", "E_DRAM_J_PER_B"]

E_MAC_J = 0.3e-12
E_SRAM_J_PER_B = 2.5e-12
E_DRAM_J_PER_B = 160e-12
_PARAMS = {"rows": int, "cols": int, "mhz": float, "sram_kb": int, "dram_gbs": float,
           "dataflow": str, "lanes": int}


class AsicTarget(Target):
    """Parametric ASIC accelerator (see the module docstring)."""

    kind = "asic"
    integer = True

    def __init__(self, name: str = "asic", param_text: str = "") -> None:
        super().__init__(name)
        p = parse_params(param_text, _PARAMS, name)
        self.rows = p.get("rows", 32)
        self.cols = p.get("cols", 32)
        if self.rows > 64 or self.cols > 64:
            raise UserValueError(f"device {name!r}: rows and cols must be <= 64 (hw.gemm limit)")
        self.mhz = p.get("mhz", 1000.0)
        self.sram_kb = p.get("sram_kb", 1024)
        self.dram_bw = p.get("dram_gbs", 25.6) * 1e9
        self.dataflow = p.get("dataflow", "os")
        self.lanes = p.get("lanes", 1)
        if self.dataflow not in ("os", "ws"):
            raise UserValueError(f"device {name!r}: dataflow must be os or ws, not {self.dataflow!r}")
        self.link = LinkSpec("PCIe-class 8 GB/s", 8e9, 5e-6, 0.5)
        self.capacity = {}
        self.units = UnitTable()

    @property
    def config(self) -> GemmSpec | None:
        """The GEMM engine built for the graph (None: none fits the SRAM)."""
        return self.units.gemm

    def configure(self, graph: Graph) -> None:
        shapes = [gemm_shape(n) for n in graph.nodes if n.op in GEMM_OPS]
        bufs = fit_buffers(self.rows, self.cols, self.dataflow, shapes, self.sram_kb * 8192)
        self.units.gemm = None if bufs is None else GemmSpec(
            rows=self.rows, cols=self.cols, dataflow=self.dataflow, max_m=bufs[0],
            max_k=bufs[1], max_n=bufs[2], requant=True)
        self.units.configure_nonlinear(graph, self.lanes)

    def supports(self, node: Node) -> Support:
        if node.attrs.get("keep_float"):
            return Support(False, f"kept in float: {node.attrs['keep_float']}")
        if node.op == "layout":
            return Support(False, "no loader unit in hw/ reorders data: layout ops run on the host")
        if node.op in GEMM_OPS:
            if self.config is None:
                return Support(False, f"engine buffers for K={node.attrs['k']} exceed "
                                      f"{self.sram_kb} KB SRAM")
            return Support(True)
        if node.op in NONLINEAR_OPS:
            s = self.units.nonlinear.get(node.name)
            if not isinstance(s, UnitSpec):
                return Support(False, f"no {node.op} unit instance: {s}")
            return Support(True)
        if node.op == "attention":
            return Support(False, "no attention unit in hw/")
        return Support(False, f"no ASIC unit for {node.op} ({node.target})")

    def cost(self, node: Node, graph: Graph) -> OpCost:
        if node.op in GEMM_OPS:
            assert self.config is not None
            s = gemm_shape(node)
            comp, load, _ = node_cycles(self.config, node)
            cycles = comp + load
            t = cycles / (self.mhz * 1e6)
            wbytes = s.k * s.n if node.op == "linear" else 0
            op_bytes = s.batch * (s.m * s.k + s.k * s.n + s.m * s.n)
            if node.op == "grouped_linear":  # the weights of the experts that got rows
                wbytes = round(experts_hit(node) * s.k * s.n)
                op_bytes = s.m * s.k + wbytes + s.m * s.n
            t += wbytes / self.dram_bw
            e = s.batch * s.m * s.k * s.n * E_MAC_J + op_bytes * E_SRAM_J_PER_B + \
                wbytes * E_DRAM_J_PER_B
            host_t, host_e = host_combine_cost(node, self.link)
            return OpCost(t + host_t, e + host_e, cycles)
        cycles = self.units.nonlinear_cycles(node)
        el = node.out[0].numel
        return OpCost(cycles / (self.mhz * 1e6), 2 * el * E_SRAM_J_PER_B, cycles)

    def lowering(self, node: Node) -> dict[str, Any]:
        return accel_lowering(node)

    def params(self) -> dict[str, Any]:
        return {"rows": self.rows, "cols": self.cols, "clock_mhz": self.mhz,
                "sram_kb": self.sram_kb, "dram_bytes_s": self.dram_bw, "lanes": self.lanes,
                "dataflow": self.dataflow, "e_mac_j": E_MAC_J, "e_sram_j_per_byte": E_SRAM_J_PER_B,
                "e_dram_j_per_byte": E_DRAM_J_PER_B, "link": self.link.to_json(),
                "gemm": self.config.to_json() if self.config else None}

    def hardware(self, nodes: list[Node]) -> dict[str, Any]:
        units = self.units.entries(nodes, "asic", self.mhz)
        used: dict[str, Any] = {"macs": 0, "sram_bits": 0, "unit_multipliers": 0,
                                "unit_buffer_bits": 0}
        for u in units:
            if u["unit"] == "gemm":
                used["macs"] = self.rows * self.cols
                used["sram_bits"] = u["predicted"]["buffer_bits"]
            else:
                used["unit_multipliers"] += u["predicted"]["dsps"]
                used["unit_buffer_bits"] += u["predicted"]["buffer_bits"]
        return {"units": units, "clock_mhz": self.mhz, "resources_used": used,
                "resources_available": {"macs": self.rows * self.cols,
                                        "sram_bits": self.sram_kb * 8192}}
