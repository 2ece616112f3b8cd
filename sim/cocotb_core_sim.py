"""cocotb test run by :func:`sim.core_sim.run_core_sim`: reset, then wait for the top's
``finished`` flag; no Python per cycle (the clock is cocotb's GPI clock, the program loader, the
external memory and the cycle counter are Verilog in ``core_sim_top``). Writes the testbench's
cycle count and the core's counters as JSON to ``$FMFORGE_CORE_SIM_RESULT``."""

from __future__ import annotations

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, Timer

__all__ = ["run_program"]

_COUNTERS = ("cnt_cycles", "cnt_busy_d", "cnt_busy_m", "cnt_busy_s", "cnt_mem_stall", "error",
             "error_pc")


@cocotb.test()
async def run_program(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns", impl="gpi").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.finished)
    await Timer(1, unit="ns")
    out = {"cycles": int(dut.tb_cycles.value)}
    out.update({k: int(getattr(dut, k).value) for k in _COUNTERS})
    with open(os.environ["FMFORGE_CORE_SIM_RESULT"], "w") as f:
        json.dump(out, f)
