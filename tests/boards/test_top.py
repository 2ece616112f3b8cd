# amaranth: UnusedElaboratable=no
"""Board top level: port accounting, LFSR drive, registered parity tree, elaboration."""

from __future__ import annotations

import pytest
from amaranth.back import verilog
from amaranth.hdl import Cat, Module
from amaranth.sim import Simulator

from boards.catalog import get_board
from boards.top import BoardTop, lfsr32_next, port_bits
from tests.boards.conftest import NoOutputs, TinyMac


def test_port_bits_of_tiny_mac():
    # inputs: 2 lanes x (a, b) int8 + valid + o_acc.ready; outputs: 2 x int32 + valid + ready
    assert port_bits(TinyMac(2)) == (34, 66)


def test_geometry():
    top = BoardTop(TinyMac(2))
    assert top.input_bits == 34
    assert top.drive_words == 2
    assert top.output_bits == 66
    assert top.parity_stages == 4  # 66 -> 17 -> 5 -> 2 -> 1 with 4-input XORs
    assert BoardTop(TinyMac(2), fan_in=2).parity_stages == 7


def test_rejects_bad_units():
    with pytest.raises(ValueError, match="no output ports"):
        BoardTop(NoOutputs())
    with pytest.raises(TypeError, match="wiring.Component"):
        BoardTop(Module())
    with pytest.raises(ValueError, match="fan_in"):
        BoardTop(TinyMac(1), fan_in=9)


def test_lfsr_reference_has_long_period():
    s, seen = 1, set()
    for _ in range(5000):
        seen.add(s)
        s = lfsr32_next(s)
    assert len(seen) == 5000 and 0 not in seen


def test_simulated_harness_drives_inputs_and_folds_outputs():
    unit = TinyMac(2)
    top = BoardTop(unit)
    outs = Cat(unit.o_acc.payload.as_value(), unit.o_acc.valid, unit.i_ab.ready)
    lat = 1 + top.parity_stages
    samples: list[tuple[int, int, int, int]] = []

    async def bench(ctx):
        for _ in range(160):
            await ctx.tick()
            samples.append((ctx.get(unit.i_ab.payload.as_value()), ctx.get(unit.i_ab.valid),
                            ctx.get(outs), ctx.get(top.led)))

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()

    payloads = [s[0] for s in samples]
    # the first drive word follows the LFSR: each cycle is one LFSR step of the last
    steps = sum(lfsr32_next(a) == b for a, b in zip(payloads[2:], payloads[3:], strict=False))
    assert steps == len(payloads) - 3
    # every input bit toggles, valid is not stuck
    assert all(any(p >> bit & 1 for p in payloads) for bit in range(32))
    assert all(any(~p >> bit & 1 for p in payloads) for bit in range(32))
    assert 0 < sum(s[1] for s in samples) < len(samples)
    # the unit really computes (outputs change) and the LED is their parity, `lat` cycles late
    assert len({s[2] for s in samples}) > 50
    checked = 0
    for t in range(lat + 2, len(samples)):
        assert samples[t][3] == bin(samples[t - lat][2]).count("1") % 2, t
        checked += 1
    assert checked > 100
    assert 0 < sum(s[3] for s in samples) < len(samples)


@pytest.mark.parametrize("board", ["ulx3s-25f", "icebreaker"])
def test_elaborates_for_board_platform(board):
    plat = get_board(board).platform()
    plan = plat.build(BoardTop(TinyMac(1)), name="top", do_build=False)
    files = set(plan.files)
    assert "top.il" in files
    constraints = "top.lpf" if board == "ulx3s-25f" else "top.pcf"
    text = plan.files[constraints]
    text = text.decode() if isinstance(text, bytes) else text
    assert "led_0__io" in text  # the LED pin is used


def test_verilog_keeps_the_unit():
    top = BoardTop(TinyMac(1))
    v = verilog.convert(top, ports=[top.led], emit_src=False)
    assert "module top" in v and "unit" in v
