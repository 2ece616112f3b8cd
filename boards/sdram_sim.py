"""The board's LiteDRAM SDR SDRAM path as a simulation top: :class:`SdramSimTop`.

What :class:`boards.litedram.SdramMemory` puts on the board (:class:`hw.native_bridge.NativeBridge`,
:class:`boards.litedram.SdramInit` and the generated ``litedram_core``, wired by
:func:`boards.litedram.litedram_path`) with the SDRAM pins brought out for a chip model
(:class:`sim.sdram_chip.SdrSdramChip` in the cocotb test :mod:`sim.cocotb_sdram`) instead of
the FPGA's I/O, and no ``ODDRX1F`` for the SDRAM clock: the chip model samples the pins at the
falling edge of the system clock, which is what the board's inverted SDRAM clock does.

:func:`sim_litedram_verilog` turns the generated Verilog into one Verilator compiles: the data
pins' ``TRELLIS_IO`` tristates stay, but ``litedram_core`` gets two more outputs, ``sdram_dq_o``
and ``sdram_dq_oe`` (the PHY's output register and output enable per data line), and
``sdram_dq`` is the chip's side only; the ECP5 primitives it instantiates (``FD1S3BX``,
``OFS1P3BX``, ``IFS1P3BX``, ``TRELLIS_IO``) get behavioural models (:data:`ECP5_SIM_PRIMITIVES`).
:func:`sdram_sim_verilog` is the whole design.

The chip's pins come out as one packed vector ``sd_pins`` (:data:`PIN_FIELDS`, from bit 0 up)
so that a testbench reads them once a cycle, and ``sd_dq_i`` takes what the chip drives.
"""

from __future__ import annotations

import re

from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from boards.litedram import LiteDramCore, init_sequence, litedram_path
from golden.errors import UserValueError
from hw.core import mem_request_layout

__all__ = ["ECP5_SIM_PRIMITIVES", "PIN_FIELDS", "SdramSimTop", "sdram_sim_verilog",
           "sim_litedram_verilog"]

#: the fields of ``sd_pins`` from bit 0 up: (name, width)
PIN_FIELDS = (("we_n", 1), ("cas_n", 1), ("ras_n", 1), ("cs_n", 1), ("cke", 1), ("ba", 2),
              ("a", 13), ("dm", 2), ("dq", 16), ("dq_oe", 16))
DQ_BITS = 16

#: behavioural Verilog for the ECP5 primitives in LiteDRAM's GENSDRPHY output (simulation only:
#: the flip-flops with their clock enable and asynchronous preset, the bidirectional buffer with
#: its pad an input from the chip model)
ECP5_SIM_PRIMITIVES = """
module FD1S3BX (input CK, input D, input PD, output reg Q);
  initial Q = 1'b1;
  always @(posedge CK or posedge PD) if (PD) Q <= 1'b1; else Q <= D;
endmodule
module OFS1P3BX (input SCLK, input SP, input D, input PD, output reg Q);
  initial Q = 1'b1;
  always @(posedge SCLK or posedge PD) if (PD) Q <= 1'b1; else if (SP) Q <= D;
endmodule
module IFS1P3BX (input SCLK, input SP, input D, input PD, output reg Q);
  initial Q = 1'b1;
  always @(posedge SCLK or posedge PD) if (PD) Q <= 1'b1; else if (SP) Q <= D;
endmodule
module TRELLIS_IO #(parameter DIR = "BIDIR") (input B, input I, input T, output O);
  assign O = T ? B : I;
endmodule
"""

_PORT = re.compile(r"^(\s*)input\s+wire\s+\[(\d+):0\]\s+sdram_dq,\s*$", re.M)
_TRI = re.compile(r"\.B\s*\(sdram_dq\[(\d+)\]\),\s*\.I\s*\((\w+)\),\s*\.T\s*\(\(~(\w+)\)\)")


def sim_litedram_verilog(core: LiteDramCore) -> str:
    """The generated ``litedram_core`` for Verilator: ``sdram_dq_o``/``sdram_dq_oe`` outputs
    added (see the module docstring), the ``timescale`` line removed (the whole design has
    one). Raises :class:`golden.errors.UserValueError` when the Verilog is not shaped as
    expected (another LiteDRAM version or PHY)."""
    text = core.verilog.read_text()
    port = _PORT.search(text)
    tris = {int(i): (o, oe) for i, o, oe in _TRI.findall(text)}
    if port is None or not tris:
        raise UserValueError(f"{core.verilog.name}: no 'input wire [N:0] sdram_dq' port or no "
                             "TRELLIS_IO on it: not GENSDRPHY on ECP5 as boards.sdram_sim expects")
    width = int(port.group(2)) + 1
    if width != DQ_BITS or sorted(tris) != list(range(width)):
        raise UserValueError(f"{core.verilog.name}: sdram_dq is {width} bits with tristates on "
                             f"{len(tris)} of them; the simulation top expects {DQ_BITS}")
    ind = port.group(1)
    text = (text[:port.end()] + f"\n{ind}output wire [{width - 1}:0] sdram_dq_o,"
            f"\n{ind}output wire [{width - 1}:0] sdram_dq_oe," + text[port.end():])
    assigns = "".join(f"assign sdram_dq_o[{i}] = {o};\nassign sdram_dq_oe[{i}] = {oe};\n"
                      for i, (o, oe) in sorted(tris.items()))
    end = text.rindex("endmodule")
    text = text[:end] + assigns + text[end:]
    return re.sub(r"^`timescale.*\n", "", text, flags=re.M)


class SdramSimTop(wiring.Component):
    """The LiteDRAM path with the chip's pins brought out (module docstring).

    Interface: the memory side of the core's port, as :class:`boards.litedram.SdramMemory`
    (``i_req``, ``o_rsp``, ``i_wdata``, ``ready``), and ``sd_pins`` (Out, :data:`PIN_FIELDS`
    packed), ``sd_dq_i`` (In 16: what the chip drives on its data pins).
    ``delay_scale`` stretches the initialisation's waits (:class:`boards.litedram.SdramInit`).
    """

    def __init__(self, core: LiteDramCore, *, bytes_per_cycle: int = 2,
                 delay_scale: int = 1) -> None:
        self._core = core
        self._bpc = bytes_per_cycle
        self._scale = delay_scale
        self._seq = init_sequence(core)
        beat = unsigned(8 * bytes_per_cycle)
        super().__init__({"i_req": In(stream.Signature(mem_request_layout())),
                          "o_rsp": Out(stream.Signature(beat)),
                          "i_wdata": In(stream.Signature(beat)),
                          "ready": Out(1),
                          "sd_pins": Out(sum(w for _, w in PIN_FIELDS)),
                          "sd_dq_i": In(DQ_BITS)})

    @property
    def sequence(self):
        return list(self._seq)

    def elaborate(self, platform):
        m = Module()
        p = {name: Signal(w, name=f"sd_{name}") for name, w in PIN_FIELDS}
        litedram_path(m, self, self._seq, self._bpc, {
            "o_sdram_a": p["a"], "o_sdram_ba": p["ba"], "o_sdram_cas_n": p["cas_n"],
            "o_sdram_cke": p["cke"], "o_sdram_cs_n": p["cs_n"], "o_sdram_dm": p["dm"],
            "i_sdram_dq": self.sd_dq_i, "o_sdram_dq_o": p["dq"], "o_sdram_dq_oe": p["dq_oe"],
            "o_sdram_ras_n": p["ras_n"], "o_sdram_we_n": p["we_n"]},
            delay_scale=self._scale)
        m.d.comb += self.sd_pins.eq(Cat(*(p[name] for name, _ in PIN_FIELDS)))
        return m


def sdram_sim_verilog(core: LiteDramCore, *, bytes_per_cycle: int = 2,
                      name: str = "sdram_sim_top") -> str:
    """The whole simulation design: :class:`SdramSimTop` (module ``name``), the simulation
    ``litedram_core`` and the ECP5 primitive models."""
    from amaranth.back import verilog

    top = verilog.convert(SdramSimTop(core, bytes_per_cycle=bytes_per_cycle), name=name,
                          emit_src=False)
    return "`timescale 1ns / 1ps\n" + top + sim_litedram_verilog(core) + ECP5_SIM_PRIMITIVES
