"""hw.core on the Amaranth simulator: random LOAD/STORE/GEMM programs against golden.core,
bit for bit (external memory and scratchpad), and cycle for cycle against hw.core_model."""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass

import pytest
import torch
from amaranth.sim import Simulator

from golden.core import CoreMemory, Instr, check_races, encode, run_program
from hw.core import Core
from hw.core_model import CoreConfig, program_timing

HALT = Instr("HALT")


def _core(cfg: CoreConfig, max_dim: int) -> Core:
    return Core(rows=cfg.rows, cols=cfg.cols, dataflow=cfg.dataflow,
                bytes_per_cycle=cfg.bytes_per_cycle, queue_depth=cfg.queue_depth,
                sp_bytes=cfg.sp_bytes, imem_instrs=cfg.imem_instrs, max_m=max_dim,
                max_k=max_dim, max_n=max_dim)


@dataclass
class Run:
    cycles: int
    ext: bytes
    sp: bytes
    error: int
    error_pc: int
    busy: dict[str, int]
    mem_stall: int
    cnt_cycles: int


def run_core(cfg: CoreConfig, raw_prog: list[bytes], ext: bytes, *, stall: float = 0.0,
             seed: int = 0, max_dim: int = 16, timeout: int = 100_000) -> Run:
    """Write the program, pulse ``start``, count clock edges until ``done``; the memory model
    offers a read's first beat ``latency`` cycles after the request's transfer and idles/refuses
    with probability ``stall`` per cycle."""
    dut = _core(cfg, max_dim)
    B, L = cfg.bytes_per_cycle, max(cfg.latency, 1)
    mem = bytearray(ext)
    rng = random.Random(seed)
    out: dict = {}

    async def memory(ctx):
        reads: deque = deque()   # [avail cycle, addr, length, beat]
        writes: deque = deque()  # [addr, length, beat]
        offering = False
        cyc = 0
        while True:
            if not offering and reads and reads[0][0] <= cyc and not (stall and rng.random() < stall):
                addr, length, beat = reads[0][1:]
                lo = beat * B
                chunk = bytes(mem[addr + lo:addr + min(lo + B, length)])
                ctx.set(dut.i_rsp.payload, int.from_bytes(chunk.ljust(B, b"\0"), "little"))
                offering = True
            ctx.set(dut.i_rsp.valid, offering)
            ctx.set(dut.o_req.ready, not (stall and rng.random() < stall))
            ctx.set(dut.o_wdata.ready, not (stall and rng.random() < stall))
            _, _, qv, qr, qp, rv, rr, wv, wr, wd = await ctx.tick().sample(
                dut.o_req.valid, dut.o_req.ready, dut.o_req.payload.as_value(),
                dut.i_rsp.valid, dut.i_rsp.ready, dut.o_wdata.valid, dut.o_wdata.ready,
                dut.o_wdata.payload)
            if rv and rr:
                offering = False
                reads[0][3] += 1
                if reads[0][3] * B >= reads[0][2]:
                    reads.popleft()
                else:
                    reads[0][0] = cyc + 1
            if wv and wr:
                addr, length, beat = writes[0]
                lo = beat * B
                n = min(B, length - lo)
                mem[addr + lo:addr + lo + n] = wd.to_bytes(B, "little")[:n]
                writes[0][2] += 1
                if writes[0][2] * B >= length:
                    writes.popleft()
            if qv and qr:
                addr, length, write = qp & 0xFFFFFFFF, (qp >> 32) & 0x3FFFF, qp >> 50 & 1
                assert length > 0
                if write:
                    writes.append([addr, length, 0])
                else:
                    reads.append([cyc + L, addr, length, 0])
            cyc += 1

    async def bench(ctx):
        for i, word in enumerate(raw_prog):
            ctx.set(dut.imem_w_en, 1)
            ctx.set(dut.imem_w_addr, i)
            ctx.set(dut.imem_w_data, int.from_bytes(word, "little"))
            await ctx.tick()
        ctx.set(dut.imem_w_en, 0)
        await ctx.tick()
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        n = 0
        while not ctx.get(dut.done):
            await ctx.tick()
            n += 1
            assert n < timeout, "core did not finish"
        await ctx.tick()  # done stays high; the counters have stopped
        assert ctx.get(dut.done)
        spd = dut.scratchpad.data
        out["sp"] = bytes(ctx.get(spd[i]) for i in range(cfg.sp_bytes))
        out.update(cycles=n, error=ctx.get(dut.error), error_pc=ctx.get(dut.error_pc),
                   busy={"D": ctx.get(dut.cnt_busy_d), "M": ctx.get(dut.cnt_busy_m),
                         "S": ctx.get(dut.cnt_busy_s)},
                   mem_stall=ctx.get(dut.cnt_mem_stall), cnt_cycles=ctx.get(dut.cnt_cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(memory, background=True)
    sim.add_testbench(bench)
    sim.run()
    return Run(ext=bytes(mem), **out)


# --------------------------------------------------------------------------- programs


def _dma(op, ext, sp, rows, cols, ext_rs, sp_rs, sp_cs, esz=0, wait=(), sig=()):
    return Instr(op, frozenset(wait), frozenset(sig),
                 {"ext": ext, "sp": sp, "rows": rows, "cols": cols, "ext_rs": ext_rs,
                  "sp_rs": sp_rs, "sp_cs": sp_cs, "esz": esz})


def _golden(prog, ext, sp_bytes):
    mem = CoreMemory(len(ext), sp_bytes)
    mem.write("ext", 0, ext)
    run_program(prog, mem)
    return bytes(mem.ext.tolist()), bytes(mem.sp.tolist())


def _check(cfg, prog, ext, **kw):
    check_races(prog)
    run = run_core(cfg, [encode(i) for i in prog], ext, **kw)
    g_ext, g_sp = _golden(prog, ext, cfg.sp_bytes)
    assert run.error == 0
    assert run.ext == g_ext
    assert run.sp == g_sp
    t = program_timing(prog, cfg)
    return run, t


def test_dma_only_program_cycle_exact():
    cfg = CoreConfig(rows=2, cols=2, latency=3, bytes_per_cycle=4, queue_depth=2, sp_bytes=512,
                     imem_instrs=16)
    rnd = random.Random(1)
    ext = bytes(rnd.randrange(256) for _ in range(1024))
    prog = [
        _dma("LOAD", 10, 0, 3, 5, 7, 5, 1),                # dense rows
        _dma("LOAD", 40, 100, 4, 3, 3, 1, 4),              # transpose into sp
        _dma("LOAD", 80, 200, 2, 3, 16, 24, 8, esz=2),     # int32 elements, scattered
        _dma("STORE", 600, 0, 3, 5, 5, 5, 1),
        _dma("STORE", 700, 100, 3, 4, 4, 4, 1),
        _dma("STORE", 800, 200, 2, 3, 12, 24, 8, esz=2),
        _dma("STORE", 900, 1, 2, 2, 9, 3, 2, esz=1),       # 16-bit elements
        HALT,
    ]
    run, t = _check(cfg, prog, ext)
    assert run.cycles == t.cycles
