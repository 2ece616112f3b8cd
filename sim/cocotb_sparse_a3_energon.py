"""cocotb test module for the sparse-attention filters (runs inside the Verilator process).

The parent (:func:`sim.sparse_a3_energon_bench.run_verilator`) writes a JSON spec: the stall
mode and seed, the unit's input stream names, and per job the packed ``prm`` word, the words of
every input stream, the number of mask words to collect and a timeout. Jobs run one after
another: ``prm`` is set, every input stream's source starts (each stream is taken only in its
phase), the sink collects the mask words. Per job the raw words, the unit's ``cycles`` and
``error`` and the testbench's own edge counts (:func:`count_edges`) go to ``spec["out"]``;
checking against the golden model and the cycle model happens in the parent (no torch here).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cocotb
from cocotb.triggers import RisingEdge

from sim.cocotb_streams import StreamSink, StreamSource, load_bench_spec, start_clock_and_reset

__all__ = ["sparse_filter_jobs", "count_edges"]


async def count_edges(dut, inputs: list[str], output: str, n_out: int) -> dict:
    """One job's clock edges at the ports, independently of the design's ``cycles``: from the
    first transfer on any input stream to the ``n_out``-th output transfer, both inclusive
    (``tb_cycles``); among them the edges with the output valid and not ready
    (``tb_sink_stalls``) and, per input stream, ready and not valid (``tb_source_stalls``)."""
    ins = [(getattr(dut, f"{s}__valid"), getattr(dut, f"{s}__ready")) for s in inputs]
    ov, ordy = getattr(dut, f"{output}__valid"), getattr(dut, f"{output}__ready")
    edges = sink = source = outs = 0
    started = False
    while outs < n_out:
        await RisingEdge(dut.clk)
        pairs = [(int(v.value), int(r.value)) for v, r in ins]
        if not started:
            if not any(v and r for v, r in pairs):
                continue
            started = True
        edges += 1
        o_valid = int(ov.value)
        if o_valid and int(ordy.value):
            outs += 1
        elif o_valid:
            sink += 1
        source += sum(1 for v, r in pairs if r and not v)
    return {"tb_cycles": edges, "tb_sink_stalls": sink, "tb_source_stalls": source}


@cocotb.test(timeout_time=3600, timeout_unit="sec")
async def sparse_filter_jobs(dut):
    """Run every job of the spec in order on one filter unit."""
    spec, pattern = load_bench_spec()
    inputs, output = spec["inputs"], spec["output"]
    srcs = {s: StreamSource(dut, s, dut.clk, pattern.fork(i + 1)) for i, s in enumerate(inputs)}
    sink = StreamSink(dut, output, dut.clk, pattern.fork(99))
    dut.prm.value = 0
    await start_clock_and_reset(dut)
    results = []
    for j in spec["jobs"]:
        dut.prm.value = j["prm"]
        t0 = time.perf_counter()
        counter = cocotb.start_soon(count_edges(dut, inputs, output, j["n_out"]))
        senders = [cocotb.start_soon(srcs[s].send(j["streams"][s])) for s in inputs]
        try:
            words = await sink.recv(j["n_out"], j["timeout_cycles"])
        except TimeoutError as e:
            counter.cancel()
            for t in senders:
                t.cancel()
            results.append({"words": [], "cycles": 0, "error": int(dut.error.value), "timeout": str(e),
                            "sim_seconds": time.perf_counter() - t0})
            break
        await RisingEdge(dut.clk)       # the counter saw the final transfer edge as the sink did
        edges = counter.result() if counter.done() else None
        results.append({"words": words, "cycles": dut.cycles.value.to_unsigned(),
                        "error": int(dut.error.value), "sim_seconds": time.perf_counter() - t0,
                        "edges": edges})
    Path(spec["out"]).write_text(json.dumps({"results": results}))
