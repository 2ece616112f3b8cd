"""boards.soc.Soc on the Amaranth simulator: a GEMM program loaded, run and read back through
the UART pins, every answer byte equal to golden.hostproto.DeviceModel's (the golden core
underneath); the counters equal the timing model's with the BRAM's latency."""

from __future__ import annotations

import struct

import pytest
import torch
from amaranth.sim import Simulator

from boards.soc import Soc, SocConfig
from golden.core import Instr, encode_program
from golden.errors import UserValueError
from golden.hostproto import (
    LOAD_PROGRAM,
    READ_COUNTERS,
    READ_MEM,
    START,
    STATUS,
    WRITE_MEM,
    DeviceModel,
    FrameParser,
    encode_frame,
)
from hw.core_model import dma_pieces, instr_cycles, program_timing
from hw.core_spec import CoreSpec
from hw.uart import uart_bits
from tests.boards.conftest import SMALL_CORE

SPEC = SMALL_CORE
CFG = SocConfig(core=SPEC, ext_bytes=512, clock_hz=4e6, baud=1e6, max_payload=128, max_row=8)


def _gemm_program() -> list[Instr]:
    d = {"rows": 4, "cols": 4, "ext_rs": 4, "sp_rs": 4, "sp_cs": 1}
    return [Instr("LOAD", f={"ext": 0, "sp": 0, **d}),
            Instr("LOAD", signal=frozenset("M"), f={"ext": 16, "sp": 16, **d}),
            Instr("GEMM", wait=frozenset("D"), signal=frozenset("D"),
                  f={"a": 0, "b": 16, "c": 32, "m": 4, "k": 4, "n": 4}),
            Instr("STORE", wait=frozenset("M"),
                  f={"ext": 256, "sp": 32, "rows": 4, "cols": 16, "ext_rs": 16, "sp_rs": 16,
                     "sp_cs": 1}),
            Instr("HALT")]


def _counters(prog: list[Instr]) -> tuple[int, ...]:
    """The core's counters by the timing model; memory stalls of a memory that never stalls:
    every LOAD cycle but the start and one per piece (tests/hw/test_core.py's rule)."""
    cfg = SPEC.config()
    t = program_timing(prog, cfg)
    stall = 0
    for i in prog:
        if i.op == "LOAD":
            esz = 1 << i["esz"]
            pieces = dma_pieces(i["cols"], esz, cfg.bytes_per_cycle, i["sp_cs"] == esz)
            stall += instr_cycles(i, cfg) - 1 - i["rows"] * pieces
    return (t.cycles, t.busy["D"], t.busy["M"], t.busy["S"], stall)


def run_soc(transactions: list[bytes], expect: list[int], *, settle: int = 3000) -> list[bytes]:
    """Each transaction's bytes into the rx pin; the tx pin decoded until ``expect[i]`` bytes
    came back (then ``settle`` more cycles for a run to finish)."""
    dut = Soc(CFG)
    div = CFG.divisor
    answers: list[bytes] = []
    rx_bytes: list[int] = []

    finished = []

    async def monitor(ctx):  # decode the tx line: sample each bit in its middle
        while not finished:
            await ctx.tick()
            if ctx.get(dut.tx):
                continue
            for _ in range(div // 2 - 1):
                await ctx.tick()
            bits = []
            for _ in range(9):
                for _ in range(div):
                    await ctx.tick()
                bits.append(ctx.get(dut.tx))
            assert bits[8] == 1, "stop bit"
            rx_bytes.append(sum(b << i for i, b in enumerate(bits[:8])))

    async def bench(ctx):
        for data, n in zip(transactions, expect, strict=True):
            start = len(rx_bytes)
            for byte in data:
                for lvl in uart_bits(byte):
                    ctx.set(dut.rx, lvl)
                    for _ in range(div):
                        await ctx.tick()
            waited = 0
            while len(rx_bytes) - start < n:
                await ctx.tick()
                waited += 1
                assert waited < 200_000, "no answer"
            for _ in range(settle if data[4] == START else 50):
                await ctx.tick()
            answers.append(bytes(rx_bytes[start:]))
        finished.append(True)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(monitor)
    sim.add_testbench(bench)
    sim.run()
    return answers


def test_config_errors():
    with pytest.raises(UserValueError, match="latency must be 2, not 8"):
        SocConfig(core=CoreSpec(rows=2, cols=2))
    with pytest.raises(UserValueError, match="does not fit"):
        SocConfig(core=SPEC, ext_bytes=4, image=bytes(5))
    with pytest.raises(ValueError, match="too fast"):
        SocConfig(core=SPEC, clock_hz=25e6, baud=12e6)


def test_gemm_through_the_uart():
    g = torch.Generator().manual_seed(7)
    a = torch.randint(-128, 128, (4, 4), generator=g)
    b = torch.randint(-128, 128, (4, 4), generator=g)
    a[0, 0], b[0, 0] = -128, -128
    prog = _gemm_program()
    txs = [
        encode_frame(0, WRITE_MEM, struct.pack("<I", 0) + a.to(torch.int8).numpy().tobytes()
                     + b.to(torch.int8).numpy().tobytes()),
        encode_frame(1, LOAD_PROGRAM, struct.pack("<H", 0) + encode_program(prog)[:96]),
        encode_frame(2, LOAD_PROGRAM, struct.pack("<H", 3) + encode_program(prog)[96:]),
        encode_frame(3, START),
        encode_frame(4, STATUS),
        encode_frame(5, READ_MEM, struct.pack("<IH", 256, 64)),
        encode_frame(6, READ_COUNTERS),
    ]
    dev = DeviceModel(ext_bytes=CFG.ext_bytes, imem_instrs=SPEC.imem_instrs,
                      max_payload=CFG.max_payload, sp_bytes=SPEC.sp_bytes, counters=_counters)
    want = [dev.receive(t) for t in txs]
    got = run_soc(txs, [len(w) for w in want])
    assert got == want  # the counters included
    p = FrameParser()
    (ev,) = [e for x in got[5] if (e := p.push(x)) is not None]
    c = torch.frombuffer(bytearray(ev[1].payload), dtype=torch.int32).reshape(4, 4)
    assert torch.equal(c.to(torch.int64), a @ b)
    p = FrameParser()
    (ev,) = [e for x in got[4] if (e := p.push(x)) is not None]
    assert ev[1].payload == b"\x01\x00\x00"  # done, no error
