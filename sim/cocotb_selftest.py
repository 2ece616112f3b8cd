"""cocotb self-test of the stream BFMs on :class:`sim.loopback.StreamLoopback` (one test per stall mode)."""

from __future__ import annotations

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles

from sim.cocotb_streams import StreamMonitor, StreamSink, StreamSource
from sim.streams import STALL_MODES, Scoreboard, stall_pattern

__all__ = ["loopback"]


@cocotb.test(timeout_time=200, timeout_unit="ms")
@cocotb.parametrize(stall=list(STALL_MODES))
async def loopback(dut, stall):
    """Words sent through the FIFO arrive in order, once each; the monitor sees the same."""
    seed = int(os.environ.get("FMFORGE_SEED", "1"))
    width = len(dut.i_s__payload)
    rng = random.Random(seed)
    words = [rng.getrandbits(width) for _ in range(300)] + [0, (1 << width) - 1]
    pattern = stall_pattern(stall, seed)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    src = StreamSource(dut, "i_s", dut.clk, pattern.fork(1))
    snk = StreamSink(dut, "o_s", dut.clk, pattern.fork(2))
    mon = StreamMonitor(dut, "o_s", dut.clk)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    cocotb.start_soon(mon.run())
    cocotb.start_soon(src.send(words))
    sb = Scoreboard(f"loopback/{stall}")
    sb.expect(words)
    for w in await snk.recv(len(words), timeout_cycles=20 * len(words)):
        sb.receive(w)
    await ClockCycles(dut.clk, 1)
    sb.check_done()
    assert mon.words == words, "monitor disagrees with the sink"
    if stall in ("backpressure", "both"):
        assert mon.stall_cycles > 0, "backpressure mode never stalled the stream"
    assert src.sent == len(words)
