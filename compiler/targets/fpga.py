"""FPGA target: a board from :mod:`boards.catalog` with the GEMM engine sized to its DSPs/BRAM.

* Array: every R x C (R, C <= 64) whose DSP need (:func:`hw.gemm.gemm_dsps`: one
  MULT18X18D / SB_MAC16 per int8 MAC plus 4 per column for the requantizer) fits the board;
  the one with the fewest total cycles over the graph's linear/matmul ops wins (both dataflows).
* Clock: measured Fmax of pipelined int8 arrays with the open flow (costmodels.md 4.3):
  LFE5U-85F 100 MHz, LFE5U-25F 125 MHz, iCE40UP5K 100 MHz.
* Buffers: the engine's A/B/channel buffers must fit 80% of the block RAM (the rest for FIFOs
  and the host link); a BRAM count is ``ceil(bits / bits_per_block)`` (a lower bound: real
  mapping rounds widths up).
* Weights: in the board's external memory (ULX3S 32 MB SDRAM, OrangeCrab 128 MB DDR3L),
  streamed per op at an assumed effective bandwidth (SDRAM: 16 bit at 100 MHz, 50% efficiency =
  100 MB/s; DDR3L through a soft controller: 200 MB/s); boards without external memory keep
  weights on chip (iCE40 UP5K: SPRAM 128 KB). The total weight bytes placed on the board are
  limited by that capacity (the partitioner enforces it).
* Host link (assumed): ULX3S FT231X UART at 3 Mbaud, 8N1 = 300 kB/s, 1 ms latency (USB
  frames); OrangeCrab USB 1.1 full speed through a soft core, ~0.8 MB/s, 1 ms; iCEBreaker
  FT2232H UART at 3 Mbaud, 300 kB/s. 0.1 W while transferring.
* Energy: board power times busy time (assumed, not measured): 85F boards 1.0 W, 25F 0.5 W,
  UP5K 0.05 W.
* Units and prices: :mod:`compiler.targets.gemm_common` (the GEMM engine; one nonlinear unit
  instance per softmax / layer norm / GELU / ReLU op, each with its measured DSPs, spent from
  the DSPs the array leaves; layout ops on the host; attention never: no unit computes it).
"""

from __future__ import annotations

import math
from typing import Any

from boards.catalog import Board, get_board
from compiler.ir import Graph, Node
from compiler.targets.base import LinkSpec, OpCost, Support, Target
from compiler.targets.gemm_common import (
    GEMM_OPS,
    NONLINEAR_OPS,
    GemmShape,
    UnitTable,
    accel_lowering,
    choose_config,
    gemm_shape,
    host_combine_cost,
    node_cycles,
)
from hw.gemm import GemmSpec, gemm_dsps
from hw.spec import UnitSpec

__all__ = ["FpgaTarget", "FMAX_MHZ", "BOARD_POWER_W", "EXT_MEM_BW", "HOST_LINKS"]

#: measured Fmax of the int8 array per device (costmodels.md 4.3)
FMAX_MHZ = {"LFE5U-85F": 100.0, "LFE5U-25F": 125.0, "iCE40UP5K": 100.0}
#: assumed board power while busy (W)
BOARD_POWER_W = {"LFE5U-85F": 1.0, "LFE5U-25F": 0.5, "iCE40UP5K": 0.05}
#: assumed effective external-memory bandwidth (B/s) by board name prefix
EXT_MEM_BW = {"ulx3s": 100e6, "orangecrab": 200e6}
#: assumed host links by board name prefix
HOST_LINKS = {
    "ulx3s": LinkSpec("FT231X UART 3 Mbaud (8N1)", 300e3, 1e-3, 0.1),
    "orangecrab": LinkSpec("USB 1.1 full speed (soft core)", 0.8e6, 1e-3, 0.1),
    "icebreaker": LinkSpec("FT2232H UART 3 Mbaud (8N1)", 300e3, 1e-3, 0.1),
}


def _prefix(board: Board, table: dict[str, Any], default: Any) -> Any:
    for k, v in table.items():
        if board.name.startswith(k):
            return v
    return default


class FpgaTarget(Target):
    """One FPGA board (see the module docstring)."""

    kind = "fpga"
    integer = True

    def __init__(self, name: str, mhz: float | None = None) -> None:
        super().__init__(name)
        self.board = get_board(name)
        self.mhz = mhz or FMAX_MHZ.get(self.board.device, 100.0)
        self.power_w = BOARD_POWER_W.get(self.board.device, 1.0)
        self.link = _prefix(self.board, HOST_LINKS, LinkSpec("UART", 300e3, 1e-3, 0.1))
        if self.board.ext_memory_bytes:
            self.weight_capacity = int(self.board.ext_memory_bytes)
            self.weight_bw: float | None = _prefix(self.board, EXT_MEM_BW, 100e6)
            self.weight_home = self.board.ext_memory or "external memory"
        else:
            self.weight_capacity = self.board.spram_bits // 8
            self.weight_bw = None
            self.weight_home = "SPRAM"
        self.capacity = {"weight_bytes": self.weight_capacity}
        self.buffer_budget = int(self.board.bram_bits * 0.8)
        self.units = UnitTable()
        self.reserved_dsps = 0
        self._why_no_engine = "no linear/matmul op to size the engine for"

    @property
    def config(self) -> GemmSpec | None:
        """The GEMM engine built for the graph (None: none fits)."""
        return self.units.gemm

    def _fits(self, r: int, c: int) -> bool:
        return gemm_dsps(r, c, True, self.board.family) <= self.board.dsps - self.reserved_dsps

    def configure(self, graph: Graph) -> None:
        """Pick the array and buffers for the graph's GEMMs (see the module docstring).

        Every nonlinear op gets its own unit instance (its constants are elaboration constants).
        DSPs for one instance of each nonlinear kind the graph has are reserved first, and the
        GEMM array gets the rest; the DSPs left after the array are the ``dsps`` capacity the
        partitioner spends on nonlinear instances (each op's cost carries its instance's DSPs).
        """
        self.units.configure_nonlinear(graph)
        per_kind: dict[str, int] = {}
        for s in self.units.nonlinear.values():
            if isinstance(s, UnitSpec):
                d = s.resources(self.board.family)["dsps"]
                per_kind[s.kind] = max(per_kind.get(s.kind, 0), d)
        self.reserved_dsps = sum(per_kind.values())
        counts: dict[GemmShape, int] = {}
        for n in graph.nodes:
            if n.op in GEMM_OPS:
                s = gemm_shape(n)
                counts[s] = counts.get(s, 0) + 1
        self.units.gemm = choose_config(sorted(counts.items(), key=lambda x: repr(x[0])),
                                        self._fits, self.buffer_budget)
        if self.config is None and counts:
            k = max(s.k for s in counts)
            self._why_no_engine = (f"no GEMM engine fits {self.board.name}: buffers for K={k} "
                                   f"exceed {self.buffer_budget} BRAM bits")
        gemm = gemm_dsps(self.config.rows, self.config.cols, True, self.board.family) \
            if self.config else 0
        self.capacity = {"weight_bytes": self.weight_capacity,
                         "dsps": max(0, self.board.dsps - gemm)}

    def supports(self, node: Node) -> Support:
        if node.attrs.get("keep_float"):
            return Support(False, f"kept in float: {node.attrs['keep_float']}")
        if node.op == "layout":
            return Support(False, "no loader unit in hw/ reorders data: layout ops run on the host")
        if node.op in GEMM_OPS:
            if self.config is None:
                return Support(False, self._why_no_engine)
            if node.attrs["k"] > self.config.max_k:
                return Support(False, f"K={node.attrs['k']} exceeds max_k={self.config.max_k}")
            if node.op in ("linear", "grouped_linear") \
                    and self._weight_bytes(node) > self.weight_capacity:
                return Support(False, f"weights ({self._weight_bytes(node)} B) exceed "
                                      f"{self.weight_home} ({self.weight_capacity} B)")
            return Support(True)
        if node.op in NONLINEAR_OPS:
            s = self.units.nonlinear.get(node.name)
            if not isinstance(s, UnitSpec):
                return Support(False, f"no {node.op} unit instance: {s}")
            need = s.resources(self.board.family)["dsps"]
            if need > self.capacity.get("dsps", 0):
                return Support(False, f"its {s.kind} unit needs {need} DSPs, "
                                      f"{self.capacity.get('dsps', 0)} left beside the GEMM engine")
            return Support(True)
        if node.op == "attention":
            return Support(False, "no attention unit in hw/")
        return Support(False, f"no FPGA unit for {node.op} ({node.target})")

    @staticmethod
    def _weight_bytes(node: Node) -> int:
        a = node.attrs
        if node.op == "grouped_linear":  # every expert's weights and channel table are held
            return int(a["experts"]) * int(a["k"] * a["n"] + 4 * a["n"])
        return int(a["k"] * a["n"] + 4 * a["n"]) if node.op == "linear" else 0

    def cost(self, node: Node, graph: Graph) -> OpCost:
        if node.op in GEMM_OPS:
            assert self.config is not None
            comp, load, _ = node_cycles(self.config, node)
            cycles = comp + load
            t = cycles / (self.mhz * 1e6)
            wb = self._weight_bytes(node)
            if wb and self.weight_bw:
                t += wb / self.weight_bw
            host_t, host_e = host_combine_cost(node, self.link)
            res = {"weight_bytes": wb} if wb else {}
            return OpCost(t + host_t, t * self.power_w + host_e, cycles, res)
        spec = self.units.spec_of(node)
        assert spec is not None
        cycles = self.units.nonlinear_cycles(node)
        t = cycles / (self.mhz * 1e6)
        return OpCost(t, t * self.power_w, cycles,
                      {"dsps": spec.resources(self.board.family)["dsps"]})

    def lowering(self, node: Node) -> dict[str, Any]:
        return accel_lowering(node)

    def params(self) -> dict[str, Any]:
        b = self.board
        return {"board": b.name, "part": b.part, "dsps": b.dsps, "brams": b.brams,
                "bram_bits": b.bram_bits, "luts": b.luts, "clock_mhz": self.mhz,
                "weight_memory": self.weight_home, "weight_capacity_bytes": self.weight_capacity,
                "weight_bandwidth_bytes_s": self.weight_bw, "power_w": self.power_w,
                "link": self.link.to_json(),
                "gemm": self.config.to_json() if self.config else None}

    def hardware(self, nodes: list[Node]) -> dict[str, Any]:
        block = self.board.bram_bits // max(self.board.brams, 1)
        units = self.units.entries(nodes, self.board.family, self.mhz)
        used: dict[str, Any] = {"dsps": 0, "brams": 0, "luts": 0, "weight_bytes": 0}
        for u in units:
            p = u["predicted"]
            if p.get("brams") is None:  # a lower bound: real mapping rounds widths up
                p["brams"] = math.ceil(p["buffer_bits"] / block)
            used["dsps"] += p["dsps"]
            used["brams"] += p["brams"]
            used["luts"] += p["luts"]
        used["weight_bytes"] = sum(self._weight_bytes(n) for n in nodes)
        return {"units": units, "clock_mhz": self.mhz, "resources_used": used,
                "resources_available": {"dsps": self.board.dsps, "brams": self.board.brams,
                                        "luts": self.board.luts,
                                        "weight_bytes": self.weight_capacity}}
