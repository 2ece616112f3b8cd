"""hw.uart: the transmitter's line levels bit for bit, the receiver on lines of a slightly
different rate, a loopback, a bad stop bit."""

from __future__ import annotations

import random

import pytest
from amaranth import Elaboratable, Module
from amaranth.sim import Simulator

from hw.uart import UartRx, UartTx, uart_bits, uart_divisor


def test_construction_errors():
    with pytest.raises(ValueError, match="divisor must be at least 4 cycles a bit, not 3"):
        UartRx(divisor=3)
    with pytest.raises(ValueError, match="divisor must be a positive integer, not 0"):
        UartTx(divisor=0)
    assert uart_divisor(50e6, 3e6) == 17
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(10e6, 3e6)
    assert uart_bits(0x35) == [0, 1, 0, 1, 0, 1, 1, 0, 0, 1]


@pytest.mark.parametrize("divisor", [4, 7])
def test_tx_levels(divisor):
    dut = UartTx(divisor=divisor)
    data = [0x00, 0xFF, 0xA5, 0x3C]
    levels: list[int] = []

    async def bench(ctx):
        assert ctx.get(dut.tx) == 1
        for b in data:
            ctx.set(dut.i_data.payload, b)
            ctx.set(dut.i_data.valid, 1)
            await ctx.tick().until(dut.i_data.ready)
            ctx.set(dut.i_data.valid, 0)
            for _ in range(10 * divisor):
                levels.append(ctx.get(dut.tx))
                await ctx.tick()
            assert ctx.get(dut.tx) == 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = [lvl for b in data for lvl in uart_bits(b) for _ in range(divisor)]
    assert levels == want


@pytest.mark.parametrize("divisor, bit_cycles, seed", [(8, 8, 1), (8, 8.15, 2), (8, 7.85, 3),
                                                      (5, 5, 4)])
def test_rx_rates(divisor, bit_cycles, seed):
    """Characters sent at ``bit_cycles`` per bit (a rate off by up to 2%), with random idle
    gaps, are received; one with a low stop bit raises frame_error and is dropped."""
    rng = random.Random(seed)
    dut = UartRx(divisor=divisor)
    data = [rng.randrange(256) for _ in range(12)] + [0x00, 0xFF]
    bad_at = 5
    got: list[int] = []
    errors = []

    async def line(ctx):
        t = 0.0
        for i, b in enumerate(data):
            bits = uart_bits(b)
            if i == bad_at:
                bits[-1] = 0
            for lvl in bits:
                ctx.set(dut.rx, lvl)
                t += bit_cycles
                while t >= 1:
                    await ctx.tick()
                    t -= 1
            ctx.set(dut.rx, 1)
            # after a bad stop bit the line must idle before the next start bit can be found
            for _ in range(20 * divisor if i == bad_at else rng.choice([0, 1, 2 * divisor])):
                await ctx.tick()
        for _ in range(4 * divisor):
            await ctx.tick()

    async def sink(ctx):
        while True:
            ready = rng.random() < 0.5
            ctx.set(dut.o_data.ready, ready)
            _, _, v, p, fe = await ctx.tick().sample(dut.o_data.valid, dut.o_data.payload,
                                                     dut.frame_error)
            if v and ready:
                got.append(p)
            if fe:
                errors.append(len(got))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(sink, background=True)
    sim.add_testbench(line)
    sim.run()
    assert got == data[:bad_at] + data[bad_at + 1:]
    assert errors == [bad_at]


class _Loop(Elaboratable):
    def __init__(self, divisor: int) -> None:
        self.tx, self.rx = UartTx(divisor=divisor), UartRx(divisor=divisor)

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx, m.submodules.rx = self.tx, self.rx
        m.d.comb += self.rx.rx.eq(self.tx.tx)
        return m


def test_loopback_back_to_back():
    top = _Loop(4)
    data = list(range(256))
    got: list[int] = []

    async def src(ctx):
        for b in data:
            ctx.set(top.tx.i_data.payload, b)
            ctx.set(top.tx.i_data.valid, 1)
            await ctx.tick().until(top.tx.i_data.ready)
        ctx.set(top.tx.i_data.valid, 0)

    async def sink(ctx):
        ctx.set(top.rx.o_data.ready, 1)
        n = 0
        while len(got) < len(data):
            _, _, v, p = await ctx.tick().sample(top.rx.o_data.valid, top.rx.o_data.payload)
            if v:
                got.append(p)
            n += 1
            assert n < 50 * len(data), "timeout"

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(src, background=True)
    sim.add_testbench(sink)
    sim.run()
    assert got == data
