"""cocotb test module for the GEMM engine (runs inside the Verilator process).

The parent process (:func:`sim.cosim.run_gemm_verilator`) writes a JSON spec with the stream
words of every job and the stall mode, and points ``FMFORGE_BENCH_SPEC`` at it. This module
drives the words, collects the raw output rows and the engine's cycle counter per job, counts
clock edges itself (the edge of every operand word's transfer, of every refused output row and
of each job's final row: :func:`sim.gemm_bench.job_timings` turns them into ``tb_cycles`` etc.)
and writes them to ``spec["out"]``. Checking against the golden model happens in the parent, so the
simulator process never imports torch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge

from sim.cocotb_streams import (
    StreamMonitor,
    StreamSink,
    StreamSource,
    load_bench_spec,
    start_clock_and_reset,
)

__all__ = ["gemm_jobs"]


@cocotb.test(timeout_time=3600, timeout_unit="sec")
async def gemm_jobs(dut):
    """Run every job of the spec back to back on one engine."""
    spec, pattern = load_bench_spec()
    sources = {name: StreamSource(dut, f"i_{name}", dut.clk, pattern.fork(i), record=name != "cmd")
               for i, name in enumerate(("cmd", "a", "b", "chan"))}
    sink = StreamSink(dut, "o_c", dut.clk, pattern.fork(99), record=True)
    monitor = StreamMonitor(dut, "o_c", dut.clk) if spec.get("monitor") else None
    await start_clock_and_reset(dut, monitor)
    jobs = spec["jobs"]
    for name, src in sources.items():
        words = [w for j in jobs for w in ([j["cmd"]] if name == "cmd" else j[name])]
        cocotb.start_soon(src.send(words))
    results = []
    for j in jobs:
        t0 = time.perf_counter()
        words = await sink.recv(j["n_rows"], j["timeout_cycles"])
        final_edge = sink.last_at
        # values read after an edge are those sampled at it: the counter's increment for the
        # final row's transfer cycle shows one edge later
        await RisingEdge(dut.clk)
        results.append({
            "words": words,
            "cycles": dut.cycles.value.to_unsigned(),
            "sim_seconds": time.perf_counter() - t0,
            "final_edge": final_edge,
        })
    if monitor:
        await ClockCycles(dut.clk, 1)
        monitored = monitor.words
        received = [w for r in results for w in r["words"]]
        assert monitored == received, "monitor and sink disagree on the o_c transfers"
    edges = {
        "load": sorted(e for name in ("a", "b", "chan") for e in sources[name].accepted_at),
        "stall": sink.stalled_at,
    }
    Path(spec["out"]).write_text(json.dumps({"results": results, "edges": edges}))
