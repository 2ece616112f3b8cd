"""cocotb bus-functional models for Amaranth ``lib.stream`` interfaces.

Amaranth flattens a stream member ``i_x`` into the ports ``i_x__valid``, ``i_x__ready`` and
``i_x__payload`` (one packed vector, fields from the low bit up). These classes drive and watch
such ports under a :class:`sim.streams.StallPattern`.

Handshake convention: values are read right after ``await RisingEdge(clk)``, which gives what
the design sampled at that edge; a transfer happens at an edge where valid and ready were both
high. Python runs once per cycle only while a stream is busy: sources when they have words, the
sink only while it is waiting for words, so long computations between transfers cost nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from sim.streams import StallPattern, stall_pattern

try:
    from cocotb.simtime import get_sim_time
except ImportError:  # cocotb < 2.0
    from cocotb.utils import get_sim_time

__all__ = ["StreamSource", "StreamSink", "StreamMonitor", "stream_ports", "load_bench_spec", "start_clock_and_reset",
           "CLOCK_PERIOD_NS", "edge_index"]

#: period of the clock :func:`start_clock_and_reset` starts
CLOCK_PERIOD_NS = 10


def edge_index() -> int:
    """Index of the clock edge just awaited (edges at 0, 10, 20, ... ns count 0, 1, 2, ...)."""
    return int(get_sim_time(unit="ns")) // CLOCK_PERIOD_NS


def stream_ports(dut, prefix: str):
    """The (valid, ready, payload) handles of stream ``prefix`` on ``dut``."""
    try:
        return (getattr(dut, f"{prefix}__valid"), getattr(dut, f"{prefix}__ready"),
                getattr(dut, f"{prefix}__payload"))
    except AttributeError as e:
        raise AttributeError(f"{dut._name} has no stream named {prefix!r}") from e


class StreamSource:
    """Offers words on a stream, one per cycle unless the stall pattern idles.

    With ``record`` the :func:`edge_index` of every transfer is appended to ``accepted_at``.
    """

    def __init__(self, dut, prefix: str, clk, stall: StallPattern, *, record: bool = False) -> None:
        self.valid, self.ready, self.payload = stream_ports(dut, prefix)
        self.clk = clk
        self.stall = stall
        self.sent = 0
        self.record = record
        self.accepted_at: list[int] = []
        self.valid.value = 0

    async def send(self, words: Sequence[int]) -> None:
        """Send ``words`` in order; returns after the last one was accepted."""
        valid, ready, payload, clk = self.valid, self.ready, self.payload, self.clk
        for w in words:
            idle = self.stall.idle_run()
            if idle:
                valid.value = 0
                await ClockCycles(clk, idle)
            valid.value = 1
            payload.value = w
            while True:
                await RisingEdge(clk)
                if ready.value:
                    break
            self.sent += 1
            if self.record:
                self.accepted_at.append(edge_index())
        valid.value = 0


class StreamSink:
    """Accepts words from a stream, refusing (ready low) as the stall pattern says.

    With ``record``, while :meth:`recv` runs, the :func:`edge_index` of every edge at which it
    refused a valid word is appended to ``stalled_at`` and that of the latest transfer is kept in
    ``last_at``.
    """

    def __init__(self, dut, prefix: str, clk, stall: StallPattern, *, record: bool = False) -> None:
        self.valid, self.ready, self.payload = stream_ports(dut, prefix)
        self.clk = clk
        self.stall = stall
        self.record = record
        self.stalled_at: list[int] = []
        self.last_at: int | None = None
        self.ready.value = 0

    async def recv(self, count: int, timeout_cycles: int) -> list[int]:
        """Receive ``count`` words; raises ``TimeoutError`` after ``timeout_cycles`` cycles."""
        valid, ready, payload, clk = self.valid, self.ready, self.payload, self.clk
        out: list[int] = []
        cycles = 0
        always = self.stall.backpressure_p == 0
        if always:
            ready.value = 1
        while len(out) < count:
            if not always:
                r = self.stall.sink_ready()
                ready.value = r
            else:
                r = True
            await RisingEdge(clk)
            if r and valid.value:
                out.append(payload.value.to_unsigned())
                if self.record:
                    self.last_at = edge_index()
            elif self.record and valid.value:
                self.stalled_at.append(edge_index())
            cycles += 1
            if cycles > timeout_cycles:
                raise TimeoutError(f"sink timed out after {timeout_cycles} cycles with {len(out)}/{count} words")
        ready.value = 0
        return out


class StreamMonitor:
    """Passively records every transfer (valid and ready high at an edge) on a stream."""

    def __init__(self, dut, prefix: str, clk) -> None:
        self.valid, self.ready, self.payload = stream_ports(dut, prefix)
        self.clk = clk
        self.words: list[int] = []
        self.stall_cycles = 0  # cycles with valid high and ready low

    async def run(self) -> None:
        while True:
            await RisingEdge(self.clk)
            if self.valid.value:
                if self.ready.value:
                    self.words.append(self.payload.value.to_unsigned())
                else:
                    self.stall_cycles += 1


def load_bench_spec() -> tuple[dict, StallPattern]:
    """The JSON spec the parent process wrote (``$FMFORGE_BENCH_SPEC``) and its stall pattern."""
    spec = json.loads(Path(os.environ["FMFORGE_BENCH_SPEC"]).read_text())
    return spec, stall_pattern(spec["stall"], spec["seed"])


async def start_clock_and_reset(dut, monitor: StreamMonitor | None = None) -> None:
    """Start a 100 MHz clock on ``dut.clk``, hold ``dut.rst`` for two cycles, settle one cycle,
    then start ``monitor`` (if any)."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 1)
    if monitor:
        cocotb.start_soon(monitor.run())
