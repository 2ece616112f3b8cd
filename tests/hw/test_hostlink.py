"""hw.hostlink.HostLink on the Amaranth simulator against golden.hostproto.DeviceModel: the same
bytes in give the same bytes out, the same external memory and instruction memory; corrupted,
truncated and refused frames included. The core is a stand-in here (start/done/counters driven
by the testbench); tests/boards/test_soc.py runs the real core behind the UART."""

from __future__ import annotations

import random
import struct
import zlib

import pytest
from amaranth import Elaboratable, Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from golden.core import INSTR_BYTES
from golden.hostproto import (
    E_BUSY,
    ERROR,
    INFO,
    LOAD_PROGRAM,
    READ_COUNTERS,
    READ_MEM,
    SOF,
    START,
    STATUS,
    WRITE_MEM,
    DeviceModel,
    FrameParser,
    encode_frame,
)
from hw.extmem import BramMemory
from hw.hostlink import HostLink, crc32_update

EXT, IMEM, MAXP, B, TIMEOUT = 300, 8, 80, 4, 40
COUNTERS = (1234, 56, 78, 9, 0xDEADBEEF)


class _Bench(Elaboratable):
    def __init__(self) -> None:
        self.hl = HostLink(ext_bytes=EXT, imem_instrs=IMEM, max_payload=MAXP, bytes_per_cycle=B,
                           timeout=TIMEOUT)
        self.mem = BramMemory(size=EXT, bytes_per_cycle=B)

    def elaborate(self, platform):
        m = Module()
        m.submodules.hl, m.submodules.mem = self.hl, self.mem
        wiring.connect(m, self.hl.o_req, self.mem.i_req)
        wiring.connect(m, self.mem.o_rsp, self.hl.i_rsp)
        wiring.connect(m, self.hl.o_wdata, self.mem.i_wdata)
        return m


def _good(seq: int, cmd: int, payload: bytes) -> bytes:
    return encode_frame(seq & 0xFF, cmd, payload)


def run_link(transactions: list[bytes], *, seed: int = 0, run_cycles: int = 30,
             busy_probe: bool = False) -> tuple[list[bytes], bytes, bytes]:
    """Send each transaction's bytes (random gaps shorter than the timeout), then collect what
    comes back until the line has been quiet for long; returns (answers, ext memory, imem)."""
    b = _Bench()
    hl = b.hl
    rng = random.Random(seed)
    answers: list[bytes] = []
    imem = bytearray(IMEM * INSTR_BYTES)
    state = {"ext": b""}

    async def core(ctx):  # the core's stand-in: runs run_cycles after start
        cnts = (hl.cnt_cycles, hl.cnt_busy_d, hl.cnt_busy_m, hl.cnt_busy_s, hl.cnt_mem_stall)
        left = -1
        while True:
            _, _, st, we, wa, wd = await ctx.tick().sample(hl.start, hl.imem_w_en, hl.imem_w_addr,
                                                          hl.imem_w_data)
            if we:
                imem[wa * INSTR_BYTES:(wa + 1) * INSTR_BYTES] = wd.to_bytes(INSTR_BYTES, "little")
            if st:
                ctx.set(hl.done, 0)
                left = run_cycles
            elif left > 0:
                left -= 1
            elif left == 0:
                ctx.set(hl.done, 1)
                for sig, v in zip(cnts, COUNTERS, strict=True):
                    ctx.set(sig, v)
                left = -1

    async def bench(ctx):
        ctx.set(hl.o_tx.ready, 1)
        for data in transactions:
            out = bytearray()
            for i, byte in enumerate(data):
                ctx.set(hl.i_rx.payload, byte)
                ctx.set(hl.i_rx.valid, 1)
                await ctx.tick().until(hl.i_rx.ready)
                ctx.set(hl.i_rx.valid, 0)
                for _ in range(rng.choice([0, 0, 1, 3, TIMEOUT // 2]) if i < len(data) - 1 else 0):
                    await ctx.tick()
            quiet = 0
            while quiet < 3 * TIMEOUT + 300:  # the longest command works ~200 cycles silently
                ready = rng.random() < 0.7
                ctx.set(hl.o_tx.ready, ready)
                _, _, v, p = await ctx.tick().sample(hl.o_tx.valid, hl.o_tx.payload)
                if v and ready:
                    out.append(p)
                    quiet = 0
                else:
                    quiet += 1
            answers.append(bytes(out))
        state["ext"] = bytes(
            ctx.get(b.mem.banks[a % B].data[a // B]) for a in range(EXT))

    sim = Simulator(b)
    sim.add_clock(1e-8)
    sim.add_testbench(core, background=True)
    sim.add_testbench(bench)
    sim.run()
    return answers, state["ext"], bytes(imem)


def golden_link(transactions: list[bytes]) -> tuple[list[bytes], bytes, bytes]:
    d = DeviceModel(ext_bytes=EXT, imem_instrs=IMEM, max_payload=MAXP, sp_bytes=64,
                    counters=lambda prog: COUNTERS)
    outs = []
    for t in transactions:
        out = d.receive(t)
        outs.append(out + d.idle())
    return outs, bytes(d.mem.ext.tolist()), bytes(d.imem)


def check_same(transactions: list[bytes], **kw) -> list[bytes]:
    got, ext, imem = run_link(transactions, **kw)
    want, gext, gimem = golden_link(transactions)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"transaction {i}: {transactions[i].hex()} answered {g.hex()}, " \
                       f"golden {w.hex()}"
    assert ext == gext
    assert imem == gimem
    return got


# ---------------------------------------------------------------------------------- construction

@pytest.mark.parametrize("kw, msg", [
    (dict(ext_bytes=0), "ext_bytes must be a positive integer, not 0"),
    (dict(max_payload=50), "max_payload must be at least 66, not 50"),
    (dict(timeout=-1), "timeout must be a positive integer, not -1"),
    (dict(imem_instrs=1 << 17), "imem_instrs must be at most 65536, not 131072"),
])
def test_construction_errors(kw, msg):
    args = dict(ext_bytes=100, imem_instrs=4)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        HostLink(**args)


def test_crc32_update_matches_zlib():
    rng = random.Random(5)
    data = bytes(rng.randrange(256) for _ in range(24))
    crc = Signal(32)
    byte = Signal(8)
    nxt = Signal(32)
    m = Module()
    m.d.comb += nxt.eq(crc32_update(crc, byte))

    async def bench(ctx):
        c = 0xFFFFFFFF
        for i, x in enumerate(data):
            ctx.set(crc, c)
            ctx.set(byte, x)
            c = ctx.get(nxt)
            assert c ^ 0xFFFFFFFF == zlib.crc32(data[:i + 1])

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


# ------------------------------------------------------------------------------------ co-sim

def _scenario() -> list[bytes]:
    prog = bytes(range(64)) + bytes(32)  # two instructions of bytes, then a HALT (zeros)
    txs = [
        _good(0, INFO, b""),
        _good(1, WRITE_MEM, struct.pack("<I", 3) + bytes(range(1, 42))),      # unaligned, 41 B
        _good(2, READ_MEM, struct.pack("<IH", 1, 47)),                         # unaligned read
        _good(3, WRITE_MEM, struct.pack("<I", EXT - 5) + b"\xaa" * 5),         # the last bytes
        _good(4, READ_MEM, struct.pack("<IH", EXT - 7, 7)),
        _good(5, LOAD_PROGRAM, struct.pack("<H", 5) + prog[:64]),
        _good(6, STATUS, b""),
        _good(7, READ_COUNTERS, b""),
        _good(8, WRITE_MEM, struct.pack("<I", EXT - 4) + b"\x01" * 5),         # out of range
        _good(9, READ_MEM, struct.pack("<IH", 0, MAXP + 1)),                  # too long
        _good(10, LOAD_PROGRAM, struct.pack("<H", IMEM - 1) + prog[:64]),     # out of range
        _good(11, LOAD_PROGRAM, struct.pack("<H", 0) + prog[:40]),            # not 2 + 32k
        _good(12, 0x55, b"xyz"),                                              # unknown
        _good(13, START, b"\x00"),                                            # wrong length
        encode_frame(14, WRITE_MEM, struct.pack("<I", 0) + b"\x77" * 3)[:-1] + b"\x00",  # bad CRC
        bytes([SOF]) + struct.pack("<HBB", MAXP + 1, 15, WRITE_MEM) + bytes(20),   # LEN too big
        _good(16, WRITE_MEM, struct.pack("<I", 0) + b"\x66" * 9)[:11],        # truncated
        bytes([SOF, 3]),                                                      # truncated in header
        b"\x00\x13\x37",                                                      # noise: no answer
        _good(17, WRITE_MEM, struct.pack("<I", 100) + b"\x5a"),               # works afterwards
        _good(18, READ_MEM, struct.pack("<IH", 98, 5)),
    ]
    return txs


def test_scenario_matches_golden():
    got = check_same(_scenario(), seed=1)
    assert got[18] == b""
    assert FrameParser().push(got[0][0]) is None and got[0][0] == SOF


def test_start_status_busy():
    """START, then commands that need the memory while the core runs: BUSY, nothing changed;
    STATUS while running says not done; after done, the counters."""
    w = _good(1, WRITE_MEM, struct.pack("<I", 0) + b"\x11\x22")
    txs = [_good(0, START, b""), w, _good(2, STATUS, b""), _good(3, START, b"")]
    got, ext, _ = run_link(txs, seed=2, run_cycles=100_000)
    frames = []
    for g in got:
        p = FrameParser()
        frames.append([ev[1] for x in g if (ev := p.push(x)) is not None])
    assert frames[0][0].cmd == START | 0x80
    assert (frames[1][0].cmd, frames[1][0].payload) == (ERROR, bytes([E_BUSY, WRITE_MEM]))
    assert (frames[2][0].cmd, frames[2][0].payload) == (STATUS | 0x80, b"\x00\x00\x00")
    assert (frames[3][0].cmd, frames[3][0].payload) == (ERROR, bytes([E_BUSY, START]))
    assert ext[:2] == b"\x00\x00"
    # a short run: done by the time STATUS comes, and the same bytes as the golden model
    check_same([_good(0, START, b""), _good(1, STATUS, b""), _good(2, READ_COUNTERS, b""), w],
               seed=3, run_cycles=5)


def _random_transactions(rng: random.Random, n: int) -> list[bytes]:
    txs = []
    for i in range(n):
        kind = rng.choice(["write", "write", "read", "read", "prog", "status", "info",
                           "counters", "bad_cmd", "corrupt", "truncate", "big"])
        if kind in ("write", "corrupt", "truncate"):
            k = rng.randint(1, MAXP - 4)
            addr = rng.choice([rng.randrange(EXT), rng.randrange(EXT - k + 1) if k <= EXT else 0,
                               EXT - k + rng.randint(0, 3)])
            f = _good(i, WRITE_MEM, struct.pack("<I", addr) +
                      bytes(rng.randrange(256) for _ in range(k)))
        elif kind == "read":
            k = rng.choice([1, rng.randint(1, MAXP), MAXP + 1, 0])
            f = _good(i, READ_MEM, struct.pack("<IH", rng.randrange(EXT + 4), k))
        elif kind == "prog":
            k = rng.randint(1, 2)
            extra = rng.choice([0, 0, 0, 1])
            f = _good(i, LOAD_PROGRAM, struct.pack("<H", rng.randrange(IMEM + 1))
                      + bytes(rng.randrange(256) for _ in range(32 * k + extra)))
        elif kind == "status":
            f = _good(i, STATUS, b"" if rng.random() < 0.8 else b"\x01")
        elif kind == "info":
            f = _good(i, INFO, b"")
        elif kind == "counters":
            f = _good(i, READ_COUNTERS, b"")
        elif kind == "bad_cmd":
            f = _good(i, rng.choice([0, 8, 0x81, 0xFF, rng.randrange(256)]),
                      bytes(rng.randrange(256) for _ in range(rng.randint(0, 8))))
        else:  # LEN above max_payload
            f = bytes([SOF]) + struct.pack("<HBB", rng.randint(MAXP + 1, 0xFFFF), i, WRITE_MEM)
            f += bytes(rng.randrange(256) for _ in range(rng.randint(0, 20)))
        if kind == "corrupt":
            f = bytearray(f)
            f[rng.randrange(1, len(f))] ^= 1 << rng.randrange(8)
            f = bytes(f)
        if kind == "truncate":
            f = f[:rng.randrange(1, len(f))]
        if len(f) > 4 and f[4] == START:
            continue  # a random program would run: test_start_status_busy covers START
        txs.append(f)
    return txs


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_frames_match_golden(seed):
    rng = random.Random(seed)
    check_same(_random_transactions(rng, 40), seed=seed)
