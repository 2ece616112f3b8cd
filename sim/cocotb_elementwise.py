"""cocotb test module for the streaming nonlinear units (runs inside the Verilator process).

The parent (:func:`sim.nonlinear_bench.run_verilator`) writes a JSON spec: the stall mode and
seed, and per job the optional parameter-table words (``i_param``), the input words
(``i_data``), the number of output words to collect and a timeout. Jobs run one after another:
the table is loaded, then the input words are driven while the sink collects ``o_data`` words.
Per job the raw output words, the unit's ``cycles`` counter and its sticky ``error`` flag go to
``spec["out"]``; checking against the golden model happens in the parent (no torch here).
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

__all__ = ["elementwise_jobs"]


@cocotb.test(timeout_time=3600, timeout_unit="sec")
async def elementwise_jobs(dut):
    """Run every job of the spec in order on one unit."""
    spec, pattern = load_bench_spec()
    src = StreamSource(dut, "i_data", dut.clk, pattern.fork(1))
    psrc = StreamSource(dut, "i_param", dut.clk, pattern.fork(2)) if spec.get("has_param") else None
    sink = StreamSink(dut, "o_data", dut.clk, pattern.fork(99))
    monitor = StreamMonitor(dut, "o_data", dut.clk) if spec.get("monitor") else None
    await start_clock_and_reset(dut, monitor)
    results = []
    for j in spec["jobs"]:
        if psrc is not None and j.get("param"):
            await psrc.send(j["param"])
        t0 = time.perf_counter()
        cocotb.start_soon(src.send(j["data"]))
        try:
            words = await sink.recv(j["n_out"], j["timeout_cycles"])
        except TimeoutError as e:
            results.append({"words": [], "cycles": 0, "error": int(dut.error.value), "timeout": str(e),
                            "sim_seconds": time.perf_counter() - t0})
            break
        # the counter's increment for the final transfer cycle shows one edge later
        await RisingEdge(dut.clk)
        results.append({"words": words, "cycles": dut.cycles.value.to_unsigned(),
                        "error": int(dut.error.value), "sim_seconds": time.perf_counter() - t0})
    if monitor:
        await ClockCycles(dut.clk, 1)
        received = [w for r in results for w in r["words"]]
        assert monitor.words == received, "monitor and sink disagree on the o_data transfers"
    Path(spec["out"]).write_text(json.dumps({"results": results}))
