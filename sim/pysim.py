"""Amaranth-simulator runner: drive stream components from Python testbenches.

Generic stream source/sink coroutines (with stall patterns from :mod:`sim.streams`) and a GEMM
runner on top of them. The Amaranth simulator is slow (pure Python, per cycle), so it serves
small configurations; :mod:`sim.verilator` runs the large ones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from amaranth.sim import Simulator

from hw.gemm import GemmSpec
from sim.gemm_bench import (
    GemmJob,
    check_result,
    check_timing,
    job_timings,
    make_stimulus,
)
from sim.streams import StallPattern, stall_pattern

__all__ = ["stream_source", "stream_sink", "handshake_monitor", "run_gemm_pysim"]


async def stream_source(ctx, strm, words: Sequence[int], stall: StallPattern) -> None:
    """Offer ``words`` on ``strm`` (payload as raw bits), idling as ``stall`` says."""
    payload = strm.payload.as_value() if hasattr(strm.payload, "as_value") else strm.payload
    for w in words:
        for _ in range(stall.idle_run()):
            await ctx.tick()
        ctx.set(strm.valid, 1)
        ctx.set(payload, w)
        await ctx.tick().until(strm.ready)
        ctx.set(strm.valid, 0)


async def stream_sink(ctx, strm, count: int, stall: StallPattern, out: list[int], timeout: int) -> None:
    """Collect ``count`` payloads from ``strm`` into ``out``, refusing as ``stall`` says."""
    payload = strm.payload.as_value() if hasattr(strm.payload, "as_value") else strm.payload
    cycles = 0
    while len(out) < count:
        ready = stall.sink_ready()
        ctx.set(strm.ready, ready)
        _, _, valid, value = await ctx.tick().sample(strm.valid, payload)
        if valid and ready:
            out.append(value)
        cycles += 1
        if cycles > timeout:
            raise TimeoutError(f"sink timed out after {timeout} cycles with {len(out)}/{count} words")
    ctx.set(strm.ready, 0)


async def handshake_monitor(ctx, inputs, out, load_edges: list[int], stall_edges: list[int],
                            final_edges: list[int]) -> None:
    """Count clock edges and record, by edge index, every transfer on the ``inputs`` streams, every
    edge at which ``out`` is valid but not ready, and every transfer of ``out`` with ``last`` set.

    Values are sampled at each edge (what the design saw), so a transfer is valid & ready there.
    """
    sigs = []
    for strm in inputs:
        sigs += [strm.valid, strm.ready]
    sigs += [out.valid, out.ready, out.payload.last]
    edge = 0
    async for _clk, _rst, *v in ctx.tick().sample(*sigs):
        if any(v[i] and v[i + 1] for i in range(0, 2 * len(inputs), 2)):
            load_edges.append(edge)
        ov, orr, ol = v[-3:]
        if ov and not orr:
            stall_edges.append(edge)
        elif ov and orr and ol:
            final_edges.append(edge)
        edge += 1


def run_gemm_pysim(cfg: GemmSpec, jobs: Sequence[GemmJob], stall: str = "none", seed: int = 0,
                   vcd: str | None = None) -> list[dict]:
    """Run ``jobs`` back to back on one engine in the Amaranth simulator.

    One background source per input stream carries every job's words in order (the engine takes
    each job's words only while it loads that job); the sink splits the output by job. A monitor
    counts clock edges itself (:func:`handshake_monitor`, :func:`sim.gemm_bench.job_timings`).
    Returns one dict per job: ``job``, ``match``, ``mismatches``, ``cycles`` (the engine's
    counter), ``predicted_cycles``, ``sim_seconds``, the testbench counts ``tb_cycles``,
    ``tb_load_cycles``, ``tb_stall_cycles``, ``tb_after_load_cycles`` and their check
    (:func:`sim.gemm_bench.check_timing`: ``predicted_total_cycles``, ``timing_ok``, ...).
    """
    dut = cfg.build()
    stims = [make_stimulus(cfg, j) for j in jobs]
    pattern = stall_pattern(stall, seed)
    results: list[dict] = []
    streams = {
        "cmd": (dut.i_cmd, [s.cmd for s in stims]),
        "a": (dut.i_a, [w for s in stims for w in s.a]),
        "b": (dut.i_b, [w for s in stims for w in s.b]),
        "chan": (dut.i_chan, [w for s in stims for w in s.chan]),
    }

    def source(strm, words, salt):
        async def tb(ctx):
            await stream_source(ctx, strm, words, pattern.fork(salt))
        return tb

    async def bench(ctx):
        sink_pattern = pattern.fork(99)
        for job, st in zip(jobs, stims, strict=True):
            t0 = time.perf_counter()
            got: list[int] = []
            timeout = 20 * (st.predicted_cycles + len(st.a) + len(st.b) + len(st.chan)) + 1000
            await stream_sink(ctx, dut.o_c, len(st.expected_rows), sink_pattern, got, timeout)
            cycles = ctx.get(dut.cycles)  # the final row's transfer cycle is counted by now
            res = check_result(cfg, job, st, got)
            results.append({
                "job": job.describe(), "match": res["match"], "mismatches": res["mismatches"],
                "cycles": int(cycles), "predicted_cycles": st.predicted_cycles,
                "sim_seconds": time.perf_counter() - t0,
            })

    loads: list[int] = []
    stalls: list[int] = []
    finals: list[int] = []

    async def monitor(ctx):
        await handshake_monitor(ctx, [dut.i_a, dut.i_b, dut.i_chan], dut.o_c, loads, stalls, finals)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for salt, (strm, words) in enumerate(streams.values()):
        sim.add_testbench(source(strm, words, salt), background=True)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(bench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    for job, st, r, t in zip(jobs, stims, results, job_timings(loads, stalls, finals), strict=True):
        r.update(t)
        r.update(check_timing(cfg, job, st, t, stall))
    return results
