"""hw.dsp: registered products in the fabric form (simulated) and the MULT18X18D form (elaborated)."""

from __future__ import annotations

import re

import pytest
from amaranth import Module, Signal, signed, unsigned
from amaranth.back import rtlil
from amaranth.sim import Simulator

from hw.dsp import is_ecp5, registered_product
from hw.gemm import GemmEngine
from hw.requant import Requantizer


class _FakeEcp5:
    family = "ecp5"


def test_is_ecp5():
    assert is_ecp5(_FakeEcp5())
    assert not is_ecp5(None)
    assert not is_ecp5(object())


@pytest.mark.parametrize("reg_inputs", [False, True])
def test_fabric_form_latency_and_values(reg_inputs):
    m = Module()
    a = Signal(signed(8))
    b = Signal(unsigned(16))
    ce = Signal(init=1)
    p = registered_product(m, None, a, b, ce=ce, width=24, reg_inputs=reg_inputs, name="t")
    lat = 2 if reg_inputs else 1
    pairs = [(-128, 65535), (127, 1), (-1, 40000), (0, 7), (5, 3)]
    seen = []

    async def tb(ctx):
        for i in range(len(pairs) + lat):
            if i < len(pairs):
                ctx.set(a, pairs[i][0])
                ctx.set(b, pairs[i][1])
            await ctx.tick()
            seen.append(ctx.get(p))
        # a low clock enable holds the product
        ctx.set(ce, 0)
        ctx.set(a, 9)
        await ctx.tick().repeat(3)
        seen.append(ctx.get(p))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert seen[lat - 1 : lat - 1 + len(pairs)] == [x * y for x, y in pairs]
    assert seen[-1] == pairs[-1][0] * pairs[-1][1]


def test_operand_wider_than_the_multiplier_is_refused():
    with pytest.raises(ValueError, match="does not fit an 18-bit signed multiplier"):
        registered_product(Module(), None, Signal(unsigned(18)), Signal(8), ce=1, width=26,
                           reg_inputs=False, name="w")


def test_ecp5_form_is_a_mult18x18d_with_its_registers():
    m = Module()
    p = registered_product(m, _FakeEcp5(), Signal(signed(8)), Signal(signed(8)), ce=Signal(),
                           width=16, reg_inputs=True, name="pe")
    text = rtlil.convert(m, ports=[p], platform=_FakeEcp5(), emit_src=False)
    assert text.count("cell \\MULT18X18D") == 1
    for param in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK"):
        assert re.search(rf'parameter \\{param} "CLK0"', text), param


@pytest.mark.parametrize(("rows", "cols", "requant"), [(2, 2, True), (3, 4, True), (2, 4, False)])
def test_engine_on_ecp5_uses_one_dsp_per_mac_and_four_per_requant_column(rows, cols, requant):
    eng = GemmEngine(rows=rows, cols=cols, max_m=8, max_k=8, max_n=8, requant=requant)
    text = rtlil.convert(eng, platform=_FakeEcp5(), emit_src=False)
    assert text.count("cell \\MULT18X18D") == rows * cols + (4 * cols if requant else 0)


def test_requantizer_on_ecp5_uses_four_dsps_per_lane():
    text = rtlil.convert(Requantizer(lanes=2, channels=4), platform=_FakeEcp5(), emit_src=False)
    assert text.count("cell \\MULT18X18D") == 8
