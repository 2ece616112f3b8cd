"""cocotb test module for the streaming nonlinear units (runs inside the Verilator process).

The parent (:func:`sim.nonlinear_bench.run_verilator`) writes a JSON spec: the stall mode and
seed, and per job the optional parameter-table words (``i_param``), the input words
(``i_data``), the number of output words to collect and a timeout. Jobs run one after another:
the table is loaded, then the input words are driven while the sink collects ``o_data`` words.
Per job the raw output words, the unit's ``cycles`` counter, its sticky ``error`` flag and the
testbench's own edge counts (:func:`count_edges`) go to ``spec["out"]``; checking against the
golden model and the cycle models happens in the parent (no torch here).
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

__all__ = ["elementwise_jobs", "count_edges"]


async def count_edges(dut, n_out: int) -> dict:
    """Count one job's clock edges at the ports, independently of the design's ``cycles``.

    From the first ``i_data`` transfer (valid & ready at an edge) to the ``n_out``-th ``o_data``
    transfer after it, both inclusive: ``tb_cycles``; among those edges, ``tb_sink_stalls``
    (``o_data`` valid & ~ready) and ``tb_source_stalls`` (``i_data`` ready & ~valid). Start it
    before the job's first word is offered; values read right after the edge are what the design
    sampled there (:mod:`sim.cocotb_streams`).
    """
    iv, ir = dut.i_data__valid, dut.i_data__ready
    ov, ordy = dut.o_data__valid, dut.o_data__ready
    edges = sink = source = outs = 0
    started = False
    while outs < n_out:
        await RisingEdge(dut.clk)
        i_valid, i_ready = int(iv.value), int(ir.value)
        if not started:
            if not (i_valid and i_ready):
                continue
            started = True
        edges += 1
        o_valid = int(ov.value)
        if o_valid and int(ordy.value):
            outs += 1
        elif o_valid:
            sink += 1
        if i_ready and not i_valid:
            source += 1
    return {"tb_cycles": edges, "tb_sink_stalls": sink, "tb_source_stalls": source}


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
        counter = cocotb.start_soon(count_edges(dut, j["n_out"]))
        cocotb.start_soon(src.send(j["data"]))
        try:
            words = await sink.recv(j["n_out"], j["timeout_cycles"])
        except TimeoutError as e:
            counter.cancel()
            results.append({"words": [], "cycles": 0, "error": int(dut.error.value), "timeout": str(e),
                            "sim_seconds": time.perf_counter() - t0})
            break
        # the counter's increment for the final transfer cycle shows one edge later
        await RisingEdge(dut.clk)
        # the counter saw the same final transfer edge as the sink, so it has finished
        edges = counter.result() if counter.done() else None
        results.append({"words": words, "cycles": dut.cycles.value.to_unsigned(),
                        "error": int(dut.error.value), "sim_seconds": time.perf_counter() - t0,
                        "edges": edges})
    if monitor:
        await ClockCycles(dut.clk, 1)
        received = [w for r in results for w in r["words"]]
        assert monitor.words == received, "monitor and sink disagree on the o_data transfers"
    Path(spec["out"]).write_text(json.dumps({"results": results}))
