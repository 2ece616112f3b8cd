"""Core target: the fmforge core (docs/isa.md), an instruction-driven accelerator that runs
linears, attention (QK^T, masked softmax, AV per head), GELU, residual adds, layer norms and
layout ops from one program per region.

Parameters (``core:rows=8:cols=8:mhz=100:latency=8:bpc=4:sp_kb=256``): array size, clock
(``mhz``, also spelt ``clock_mhz``), external-memory latency (cycles) and bytes per cycle,
scratchpad KiB (``sp_kb``) or bytes (``sp_bytes``), dataflow.

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

On a board (``core:board=ulx3s-85f``) the target is the board SoC that ``fmforge build PLAN``
makes (:mod:`boards.soc`): the same core, its external memory the board's SDRAM through LiteDRAM,
the UART host link of docs/hostlink.md. What changes is the price, which is what that SoC does:

* weights (and every other constant of the weight image) are written into the SDRAM once per
  model over the UART and stay resident: that one-time load is reported in the device's
  ``hardware.weight_load`` and is not part of an inference's latency or energy;
* per inference, values cross the UART only where the partition cuts the graph (token ids or
  embeddings in, results out): the link is the SoC's UART at its baud rate (8N1, ten bits per
  byte) with the protocol's framing (:data:`golden.hostproto.OVERHEAD_BYTES` per frame of
  ``max_payload`` bytes) and an assumed 1 ms turnaround per message (USB frames of the FT231X);
* the clock is the board oscillator (25 MHz on the ULX3S) or, with ``mhz=F``
  (``core:board=ulx3s-85f:mhz=50``), the frequency the SoC's PLL makes nearest ``F``
  (:func:`boards.soc.soc_clock_hz`: exact, refused beyond 1 %); the price uses that achieved
  frequency. SDRAM latency and width are :data:`SDRAM_LATENCY` (measured in simulation)
  and :data:`SDRAM_BPC`, with what the timing model leaves out of the SDRAM path stated there;
* energy is the board's assumed busy power (:data:`compiler.targets.fpga.BOARD_POWER_W`) times
  the time; the core must fit the board by :func:`boards.soc_build.check_soc_fits` (refused
  with the resource named otherwise).
"""

from __future__ import annotations

from typing import Any

from compiler.ir import Graph, Node
from compiler.targets.asic import E_DRAM_J_PER_B, E_MAC_J, E_SRAM_J_PER_B
from compiler.targets.base import LinkSpec, OpCost, Support, Target, parse_params
from golden.errors import UserError, UserValueError
from hw.core_model import program_timing
from hw.core_spec import CORE_UNIT_OPS, CoreSpec

__all__ = ["CoreTarget", "CORE_UNIT_ID"]

CORE_UNIT_ID = "core"
_PARAMS = {"rows": int, "cols": int, "mhz": float, "clock_mhz": float, "latency": int,
           "bpc": int, "sp_kb": int, "sp_bytes": int,
           "dataflow": str, "board": str, "imem": int, "max_m": int, "max_k": int, "max_n": int}

#: SDRAM read latency in core cycles through LiteDRAM's native port: the longest first-beat
#: latency measured in simulation (``python benchmarks/sdram_bandwidth.py``: the LiteDRAM path
#: with the AS4C16M16 chip model at 25 and 50 MHz; 9 on a row hit, 12 on a row miss, 22 behind a
#: refresh). The core's timing model cannot express the rest, so a board price is optimistic:
#: the bridge serves one request at a time (a LOAD of 16-byte rows takes 2.2-2.6x the model),
#: reads stream at 1.87-1.91 bytes a cycle (refreshes) and writes at 0.34-0.39 (a word's
#: command and data every 5 cycles: a STORE takes 5.2-5.9x the model); docs/sdram.md
SDRAM_LATENCY = 22
#: bytes per core cycle of the board core's memory port: the ULX3S's 16-bit SDR chip through
#: GENSDRPHY moves one 16-bit word per clock at best (the port's beat width, so hardware as well
#: as price; long reads measured 1.87-1.91)
SDRAM_BPC = 2
#: rows and columns of a board core's array: 8x8 needs 179 multipliers with its requantizers
#: and fixed units (hw.core_area), the ULX3S-85F has 156
BOARD_ARRAY = 4
#: scratchpad of a board core: its banks are flip-flops behind 9 read and 4 write ports, about
#: 108 LUTs a byte on ECP5 (benchmarks/core_area.py; docs/hostlink.md): about 500 bytes fit
BOARD_SP_BYTES = 256
#: instruction memory of a board SoC (256-bit instructions in block RAM: 2048 take 32 DP16KD;
#: MiniLM's longest program has about 1,500)
BOARD_IMEM = 2048
#: the GEMM engine's operand limits on a board (its A and B buffers are max_m x max_k and
#: max_k x max_n bytes of block RAM: the defaults of an ASIC core would not fit); max_k covers
#: MiniLM's FFN-down (K = 1536), the compiler tiles M and N
BOARD_GEMM_LIMITS = {"max_m": 32, "max_k": 1536, "max_n": 32}
#: the SoC's UART baud (boards.soc.SocConfig default) and frame payload
SOC_BAUD = 1e6
SOC_MAX_PAYLOAD = 1024
#: assumed host turnaround per UART message (FT231X USB frames)
UART_TURNAROUND_S = 1e-3


def uart_link(board: str, baud: float = SOC_BAUD, max_payload: int = SOC_MAX_PAYLOAD) -> LinkSpec:
    """The SoC's UART host link as a transfer price: payload bytes per second after 8N1 and the
    protocol's framing, and the turnaround latency."""
    from golden.hostproto import OVERHEAD_BYTES
    bps = baud / 10 * max_payload / (max_payload + OVERHEAD_BYTES)
    return LinkSpec(f"{board} UART host link ({baud / 1e6:g} Mbaud 8N1, framed)", bps,
                    UART_TURNAROUND_S, 0.1)


def core_spec(p: dict[str, Any], on_board: bool) -> CoreSpec:
    """The core a ``core`` device builds from its parsed parameters ``p`` (``sp_kb`` already
    in ``sp_bytes``): a board core's defaults (:data:`BOARD_ARRAY`, :data:`SDRAM_LATENCY`,
    :data:`SDRAM_BPC`, :data:`BOARD_SP_BYTES`, :data:`BOARD_IMEM`, :data:`BOARD_GEMM_LIMITS`)
    or an off-board core's (8x8, latency 8, 4 bytes a cycle, 256 KiB, 65536 instructions)."""
    array = BOARD_ARRAY if on_board else 8
    return CoreSpec(rows=p.get("rows", array), cols=p.get("cols", array),
                    dataflow=p.get("dataflow", "os"),
                    latency=p.get("latency", SDRAM_LATENCY if on_board else 8),
                    bytes_per_cycle=p.get("bpc", SDRAM_BPC if on_board else 4),
                    sp_bytes=p.get("sp_bytes", BOARD_SP_BYTES if on_board else 256 * 1024),
                    imem_instrs=p.get("imem", BOARD_IMEM if on_board else 65536),
                    **{f: p[f] if f in p else BOARD_GEMM_LIMITS[f]
                       for f in ("max_m", "max_k", "max_n") if f in p or on_board})


class CoreTarget(Target):
    """The fmforge core as a compiler target (see the module docstring)."""

    kind = "core"
    integer = True

    def __init__(self, name: str = "core", param_text: str = "") -> None:
        super().__init__(name)
        p = parse_params(param_text, _PARAMS, name)
        if "clock_mhz" in p:  # another name of mhz
            if "mhz" in p:
                raise UserValueError(f"device {name!r}: give the clock once, as mhz= or "
                                     "clock_mhz=")
            p["mhz"] = p.pop("clock_mhz")
        if "sp_kb" in p:  # the scratchpad in KiB or in bytes
            if "sp_bytes" in p:
                raise UserValueError(f"device {name!r}: give the scratchpad once, as sp_kb= or "
                                     "sp_bytes=")
            p["sp_bytes"] = 1024 * p.pop("sp_kb")
        self.board = None
        if "board" in p:
            from boards.catalog import get_board
            try:
                self.board = get_board(p["board"])
            except UserError as e:
                raise type(e)(f"device {name!r}: {e}") from None
            if not self.board.ext_memory_bytes:
                raise UserValueError(f"device {name!r}: {self.board.name} has no external "
                                     "memory to hold the core's weights")
        on_board = self.board is not None
        try:
            self.spec = core_spec(p, on_board)
        except UserError as e:
            raise type(e)(f"device {name!r}: {e}") from None
        self.capacity = {}
        if self.board is not None:
            from boards.soc import soc_clock_hz
            try:  # the frequency the board's PLL makes (the oscillator without mhz=)
                self.mhz = soc_clock_hz(self.board, 1e6 * p["mhz"] if "mhz" in p else None) / 1e6
            except UserError as e:
                raise type(e)(f"device {name!r}: {e}") from None
            self.link = uart_link(self.board.name)
            from compiler.targets.fpga import BOARD_POWER_W
            self.power_w = BOARD_POWER_W.get(self.board.device, 1.0)
            self.predicted = self._check_fits()
            self.capacity = {"weight_bytes": int(self.board.ext_memory_bytes)}
        else:
            self.mhz = p.get("mhz", 100.0)
            self.link = LinkSpec("host memory bus (assumed 1 GB/s)", 1e9, 2e-6, 0.5)
        self._graph: Graph | None = None
        self._cache: dict[str, tuple[Support, OpCost]] = {}

    def _soc(self) -> Any:
        from boards.soc import SocConfig
        assert self.board is not None
        return SocConfig(core=self.spec, ext_bytes=int(self.board.ext_memory_bytes),
                         clock_hz=self.mhz * 1e6, baud=SOC_BAUD, max_payload=SOC_MAX_PAYLOAD,
                         memory="sdram", board=self.board.name)

    def _check_fits(self) -> dict[str, int]:
        from boards.soc_build import check_soc_fits
        try:
            return check_soc_fits(self._soc(), self.board)
        except UserError as e:
            raise UserValueError(f"device {self.name!r}: {e}") from None

    def configure(self, graph: Graph) -> None:
        self._graph = graph
        self._cache = {}

    def _price(self, node: Node) -> tuple[Support, OpCost]:
        if node.name in self._cache:
            return self._cache[node.name]
        from compiler.core_backend import lower_region

        if node.op not in CORE_UNIT_OPS:
            r = (Support(False, f"the core has no instruction for {node.op}"), OpCost(0, 0))
        elif node.op == "attention" and node.attrs.get("sparse_filter"):
            r = (Support(False, "the core's attention program is dense: it does not apply a "
                                "sparse filter's keep mask (yet)"), OpCost(0, 0))
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
                secs = t.cycles / (self.mhz * 1e6)
                if self.board is not None:  # the board's power while busy
                    e = secs * self.power_w
                else:
                    e = macs * E_MAC_J + dma * (E_DRAM_J_PER_B + E_SRAM_J_PER_B)
                res = {"weight_bytes": _const_bytes(self._graph, node)} \
                    if self.board is not None else {}
                r = (Support(True), OpCost(secs, e, t.cycles, res))
        self._cache[node.name] = r
        return r

    def supports(self, node: Node) -> Support:
        return self._price(node)[0]

    def cost(self, node: Node, graph: Graph) -> OpCost:
        return self._price(node)[1]

    def lowering(self, node: Node) -> dict[str, Any]:
        return {"unit": CORE_UNIT_ID, "impl": "golden.core.run_program (compiler.core_backend)"}

    def params(self) -> dict[str, Any]:
        if self.board is not None:
            return {**self.spec.to_json(), "clock_mhz": self.mhz, "link": self.link.to_json(),
                    "board": self.board.name, "part": self.board.part,
                    "memory": f"{self.board.ext_memory} (LiteDRAM)",
                    "memory_bytes": int(self.board.ext_memory_bytes), "power_w": self.power_w,
                    "sdram_latency_assumed": self.spec.latency,
                    "sdram_bytes_per_cycle_assumed": self.spec.bytes_per_cycle}
        return {**self.spec.to_json(), "clock_mhz": self.mhz, "link": self.link.to_json(),
                "e_mac_j": E_MAC_J, "e_dram_j_per_byte": E_DRAM_J_PER_B,
                "e_sram_j_per_byte": E_SRAM_J_PER_B}

    def hardware(self, nodes: list[Node]) -> dict[str, Any]:
        if not nodes:
            return {"units": [], "resources_used": {}, "resources_available": {}}
        if self.board is not None:
            pred = {**self.predicted, "family": self.board.family,
                    "basis": "boards.soc_build.predict_resources (the SoC: core, LiteDRAM, link)"}
        else:
            pred = dict(self.spec.resources("asic"))
        pred["clock_mhz"] = self.mhz
        unit = {"id": CORE_UNIT_ID, "unit": "core", "module": self.spec.component,
                "params": self.spec.to_json(), "ops": [n.name for n in nodes],
                "predicted": pred}
        extra: dict[str, Any] = {}
        if self.board is not None:
            wb = sum(_const_bytes(self._graph, n) for n in nodes) if self._graph else 0
            extra["weight_load"] = {
                "bytes": wb, "seconds": self.link.seconds(wb),
                "note": "once per model, over the UART, into the SDRAM where the weights stay "
                        "resident; not part of an inference's latency"}
            extra["board"] = self.board.name
        return {"units": [unit], "clock_mhz": self.mhz, **extra,
                "resources_used": {"macs": self.spec.rows * self.spec.cols,
                                   "sp_bytes": self.spec.sp_bytes},
                "resources_available": {"macs": self.spec.rows * self.spec.cols,
                                        "sp_bytes": self.spec.sp_bytes}}


def _const_bytes(graph: Graph | None, node: Node) -> int:
    """Bytes of a linear's int8 weights and int32 bias in the weight image (other ops' constants,
    the layer norms' and softmaxes' parameter blocks, are a few hundred bytes: not counted)."""
    a = node.attrs
    if graph is None or node.op != "linear" or "k" not in a or "n" not in a:
        return 0
    return int(a["k"]) * int(a["n"]) + 4 * int(a["n"])
