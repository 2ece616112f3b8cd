"""Shared test units for tests/boards: a small stream MAC component to build and wrap.

No `from __future__ import annotations` here: `data.Struct` reads its annotations.
"""


import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.core_spec import CoreSpec
from hw.extmem import BRAM_LATENCY

__all__ = ["MacPair", "TinyMac", "NoOutputs", "SMALL_CORE", "fake_build_unit"]

#: the smallest core the SoC tests simulate and elaborate: 2x2 array, 128 B scratchpad
SMALL_CORE = CoreSpec(rows=2, cols=2, latency=BRAM_LATENCY, sp_bytes=128, imem_instrs=8, max_m=4,
                      max_k=4, max_n=4, queue_depth=2)


class MacPair(data.Struct):
    """One int8 operand pair."""

    a: signed(8)
    b: signed(8)


class TinyMac(wiring.Component):
    """``lanes`` int8 x int8 -> int32 MACs, 2-stage pipelined, with stream-like ports.

    ``i_ab``: stream of ``lanes`` operand pairs (always ready); ``o_acc``: stream of the
    ``lanes`` running sums, valid two cycles after an accepted input. One multiplier per lane.
    """

    def __init__(self, lanes: int = 2):
        self.lanes = lanes
        super().__init__({
            "i_ab": In(stream.Signature(data.ArrayLayout(MacPair, lanes))),
            "o_acc": Out(stream.Signature(data.ArrayLayout(signed(32), lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i_ab.ready.eq(1)
        v1, v2 = Signal(), Signal()
        m.d.sync += [v1.eq(self.i_ab.valid), v2.eq(v1)]
        for i in range(self.lanes):
            a, b = Signal(signed(8), name=f"a{i}"), Signal(signed(8), name=f"b{i}")
            p, acc = Signal(signed(16), name=f"p{i}"), Signal(signed(32), name=f"acc{i}")
            m.d.sync += [a.eq(self.i_ab.payload[i].a), b.eq(self.i_ab.payload[i].b),
                         p.eq(a * b)]
            with m.If(v2):
                m.d.sync += acc.eq(acc + p)
            m.d.comb += self.o_acc.payload[i].eq(acc)
        m.d.comb += self.o_acc.valid.eq(v2)
        return m


class NoOutputs(wiring.Component):
    """A component with only an input port (nothing would survive synthesis)."""

    def __init__(self):
        super().__init__({"x": In(8)})

    def elaborate(self, platform):
        return Module()


@pytest.fixture
def fmforge_cache(tmp_path, monkeypatch):
    """A private, empty build cache for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FMFORGE_CACHE", str(cache))
    return cache


def fake_build_unit(seen: dict, bitstream: str, fmax_mhz: float, target_mhz: float | None = None,
                    luts: int = 30000, ffs: int = 20000, dsps: int = 120, brams: int = 112):
    """A stand-in for ``boards.build.build_unit`` (monkeypatched into ``boards.soc_build``): it
    records its arguments in ``seen`` and reports an ECP5-85F build with these figures
    (``target_mhz`` None: the one it was asked for)."""
    from boards.build import BuildResult

    def build(top, board, **kw):
        seen.update(kw, top=top, board=board)
        return BuildResult(board=board.name, name=kw["name"], bitstream=bitstream, log="",
                           fmax_mhz=fmax_mhz,
                           target_mhz=kw["target_mhz"] if target_mhz is None else target_mhz,
                           luts=luts, ffs=ffs, dsps=dsps, brams=brams, luts_total=83640,
                           ffs_total=83640, dsps_total=156, brams_total=208, seconds=1.0,
                           key="k", seed=1)
    return build
