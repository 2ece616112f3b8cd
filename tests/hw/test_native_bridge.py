"""hw.native_bridge.NativeBridge against a Python word memory behind a native port (commands,
write data with byte enables, read data after a latency), with random stalls on every stream:
random byte-addressed reads and writes of any length and alignment give the bytes a flat
byte memory gives."""

from __future__ import annotations

import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from hw.native_bridge import NativeBridge

SIZE = 256


def run_bridge(ops, *, B: int, D: int, seed: int, stall: float):
    dut = NativeBridge(bytes_per_cycle=B, word_bytes=D, addr_bits=16)
    rng = random.Random(seed)
    words = [rng.randrange(1 << (8 * D)) for _ in range(SIZE // D)]
    flat = bytearray(b"".join(w.to_bytes(D, "little") for w in words))
    reads_got: list[bytes] = []

    def busy() -> bool:
        return stall > 0 and rng.random() < stall

    async def dram(ctx):
        pending: deque = deque()      # read words to return: [ready cycle, word address]
        wq: deque = deque()           # write commands waiting for their data
        cyc = 0
        offering = None
        while True:
            if offering is None and pending and pending[0][0] <= cyc and not busy():
                offering = words[pending.popleft()[1]]
            ctx.set(dut.i_rdat.valid, offering is not None)
            ctx.set(dut.i_rdat.payload, offering or 0)
            ctx.set(dut.o_cmd.ready, not busy())
            ctx.set(dut.o_wdat.ready, bool(wq) and not busy())
            _, _, cv, cr, ca, cw, wv, wr, wd, we, rv, rr = await ctx.tick().sample(
                dut.o_cmd.valid, dut.o_cmd.ready, dut.o_cmd.payload.addr, dut.o_cmd.payload.we,
                dut.o_wdat.valid, dut.o_wdat.ready, dut.o_wdat.payload.data,
                dut.o_wdat.payload.we, dut.i_rdat.valid, dut.i_rdat.ready)
            if rv and rr:
                offering = None
            if wv and wr:
                a = wq.popleft()
                old = words[a].to_bytes(D, "little")
                new = wd.to_bytes(D, "little")
                words[a] = int.from_bytes(bytes(new[i] if we >> i & 1 else old[i]
                                                for i in range(D)), "little")
            if cv and cr:
                if cw:
                    wq.append(ca)
                else:
                    pending.append([cyc + 3, ca])
            cyc += 1

    async def bench(ctx):
        for write, addr, data in ops:
            n = len(data)
            ctx.set(dut.i_req.payload.addr, addr)
            ctx.set(dut.i_req.payload.length, n)
            ctx.set(dut.i_req.payload.write, write)
            ctx.set(dut.i_req.valid, 1)
            await ctx.tick().until(dut.i_req.ready)
            ctx.set(dut.i_req.valid, 0)
            if write:
                for i in range(0, n, B):
                    while busy():
                        await ctx.tick()
                    ctx.set(dut.i_wdata.payload, int.from_bytes(data[i:i + B].ljust(B, b"\0"),
                                                                "little"))
                    ctx.set(dut.i_wdata.valid, 1)
                    await ctx.tick().until(dut.i_wdata.ready)
                    ctx.set(dut.i_wdata.valid, 0)
                flat[addr:addr + n] = data
            else:
                got = bytearray()
                t = 0
                while len(got) < n:
                    ready = not busy()
                    ctx.set(dut.o_rsp.ready, ready)
                    _, _, v, pl = await ctx.tick().sample(dut.o_rsp.valid, dut.o_rsp.payload)
                    if v and ready:
                        got += pl.to_bytes(B, "little")[:n - len(got)]
                    t += 1
                    assert t < 5000, "read timeout"
                ctx.set(dut.o_rsp.ready, 0)
                reads_got.append(bytes(got))
                assert bytes(got) == bytes(flat[addr:addr + n]), (addr, n)
        for _ in range(20):  # the last write's words land
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(dram, background=True)
    sim.add_testbench(bench)
    sim.run()
    memory = b"".join(w.to_bytes(D, "little") for w in words)
    return memory, bytes(flat), reads_got


def _ops(rng: random.Random, n: int):
    out = []
    for _ in range(n):
        length = rng.choice([1, 2, 3, rng.randint(1, 40)])
        addr = rng.randrange(SIZE - length + 1)
        write = rng.random() < 0.5
        out.append((write, addr, bytes(rng.randrange(256) for _ in range(length))))
        if write and rng.random() < 0.5:  # read it back, shifted
            a2 = max(0, addr - rng.randint(0, 3))
            out.append((False, a2, bytes(min(length + 3, SIZE - a2))))
    return out


@pytest.mark.parametrize("B, D, seed, stall", [(4, 2, 1, 0.0), (4, 2, 2, 0.3), (4, 4, 3, 0.3),
                                               (2, 4, 4, 0.2), (8, 2, 5, 0.2)])
def test_bridge_matches_byte_memory(B, D, seed, stall):
    rng = random.Random(seed)
    memory, flat, reads = run_bridge(_ops(rng, 30), B=B, D=D, seed=seed, stall=stall)
    assert memory == flat
    assert reads


def test_construction_errors():
    with pytest.raises(ValueError, match="word_bytes must be a power of two, not 3"):
        NativeBridge(word_bytes=3)
