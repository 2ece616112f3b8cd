"""cocotb test module for the SpAtten pruning unit (runs inside the Verilator process).

The parent (:func:`sim.sparse_spatten_bench.run_verilator`) writes a JSON spec: the stall mode
and seed, and per job the ``prm`` value, the ``i_data`` words, the number of ``o_data`` words
and a timeout. Jobs run one after another (the unit keeps its importances between them): the
``prm`` port is set, the input words are driven while the sink collects the output words and
:func:`sim.cocotb_elementwise.count_edges` counts the job's edges at the ports. Per job the raw
output words, the unit's ``cycles`` and ``error`` and the edge counts go to ``spec["out"]``;
the parent checks them against the golden model (no torch here).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge

from sim.cocotb_elementwise import count_edges
from sim.cocotb_streams import (
    StreamMonitor,
    StreamSink,
    StreamSource,
    load_bench_spec,
    start_clock_and_reset,
)

__all__ = ["spatten_jobs"]


@cocotb.test(timeout_time=600, timeout_unit="sec")
async def spatten_jobs(dut):
    """Run every job of the spec in order on one unit."""
    spec, pattern = load_bench_spec()
    src = StreamSource(dut, "i_data", dut.clk, pattern.fork(1))
    sink = StreamSink(dut, "o_data", dut.clk, pattern.fork(99))
    monitor = StreamMonitor(dut, "o_data", dut.clk) if spec.get("monitor") else None
    dut.prm.value = 0
    await start_clock_and_reset(dut, monitor)
    results = []
    for j in spec["jobs"]:
        dut.prm.value = j["prm"]   # held until the job's last output word is taken
        t0 = time.perf_counter()
        counter = cocotb.start_soon(count_edges(dut, j["n_out"]))
        cocotb.start_soon(src.send(j["data"]))
        try:
            words = await sink.recv(j["n_out"], j["timeout_cycles"])
        except TimeoutError as e:
            counter.cancel()
            results.append({"words": [], "cycles": 0, "error": int(dut.error.value), "timeout": str(e),
                            "sim_seconds": time.perf_counter() - t0})
            break
        # the unit's counter shows the final transfer cycle one edge later
        await RisingEdge(dut.clk)
        edges = counter.result() if counter.done() else None
        results.append({"words": words, "cycles": dut.cycles.value.to_unsigned(),
                        "error": int(dut.error.value), "sim_seconds": time.perf_counter() - t0,
                        "edges": edges})
    if monitor:
        await ClockCycles(dut.clk, 1)
        received = [w for r in results for w in r["words"]]
        assert monitor.words == received, "monitor and sink disagree on the o_data transfers"
    Path(spec["out"]).write_text(json.dumps({"results": results}))
