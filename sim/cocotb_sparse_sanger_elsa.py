"""cocotb test module for the Sanger and ELSA sparse-attention filters (runs inside the
Verilator process).

The parent (:func:`sim.sparse_sanger_elsa_bench.run_verilator`) writes a JSON spec: the stall
mode and seed, and per job the ``prm`` value, the key words, the query words, the number of
mask words to collect and a timeout. Jobs run one after another: ``prm`` is set, then the key
and query sources run concurrently (the unit takes queries only after its keys) while the sink
collects ``o_mask`` words. Per job the raw mask words, the unit's ``cycles`` and sticky
``error`` and the testbench's own edge counts (:func:`count_filter_edges`) go to
``spec["out"]``; checking happens in the parent (no torch here).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cocotb
from cocotb.triggers import RisingEdge

from sim.cocotb_streams import StreamSink, StreamSource, load_bench_spec, start_clock_and_reset

__all__ = ["count_filter_edges", "filter_jobs"]


async def count_filter_edges(dut, n_out: int) -> dict:
    """One job's clock edges from its first ``i_key`` transfer to its ``n_out``-th ``o_mask``
    transfer, both inclusive (``tb_cycles``), and among them the edges with ``o_mask`` valid and
    not ready (``tb_sink_stalls``) or an input stream ready and not valid (``tb_source_stalls``).
    Start it before the job's first key word is offered."""
    kv, kr = dut.i_key__valid, dut.i_key__ready
    qv, qr = dut.i_query__valid, dut.i_query__ready
    ov, ordy = dut.o_mask__valid, dut.o_mask__ready
    edges = sink = source = outs = 0
    started = False
    while outs < n_out:
        await RisingEdge(dut.clk)
        k_valid, k_ready = int(kv.value), int(kr.value)
        if not started:
            if not (k_valid and k_ready):
                continue
            started = True
        edges += 1
        o_valid = int(ov.value)
        if o_valid and int(ordy.value):
            outs += 1
        elif o_valid:
            sink += 1
        if (k_ready and not k_valid) or (int(qr.value) and not int(qv.value)):
            source += 1
    return {"tb_cycles": edges, "tb_sink_stalls": sink, "tb_source_stalls": source}


@cocotb.test(timeout_time=3600, timeout_unit="sec")
async def filter_jobs(dut):
    """Run every job of the spec in order on one filter."""
    spec, pattern = load_bench_spec()
    ksrc = StreamSource(dut, "i_key", dut.clk, pattern.fork(1))
    qsrc = StreamSource(dut, "i_query", dut.clk, pattern.fork(3))
    sink = StreamSink(dut, "o_mask", dut.clk, pattern.fork(99))
    dut.prm.value = 0
    await start_clock_and_reset(dut)
    results = []
    for j in spec["jobs"]:
        dut.prm.value = j["prm"]
        t0 = time.perf_counter()
        counter = cocotb.start_soon(count_filter_edges(dut, j["n_out"]))
        cocotb.start_soon(ksrc.send(j["keys"]))
        cocotb.start_soon(qsrc.send(j["queries"]))
        try:
            words = await sink.recv(j["n_out"], j["timeout_cycles"])
        except TimeoutError as e:
            counter.cancel()
            results.append({"words": [], "cycles": 0, "error": int(dut.error.value), "timeout": str(e),
                            "sim_seconds": time.perf_counter() - t0})
            break
        # the counter's increment for the final transfer shows one edge later
        await RisingEdge(dut.clk)
        results.append({"words": words, "cycles": dut.cycles.value.to_unsigned(),
                        "error": int(dut.error.value), "sim_seconds": time.perf_counter() - t0,
                        "edges": counter.result() if counter.done() else None})
    Path(spec["out"]).write_text(json.dumps({"results": results}))
