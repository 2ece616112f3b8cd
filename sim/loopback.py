"""A wire-level stream shell for self-testing the cocotb BFMs: a small FIFO between two streams."""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.errors import UserValueError

__all__ = ["StreamLoopback"]


class StreamLoopback(wiring.Component):
    """``i_s`` -> ``SyncFIFOBuffered(depth)`` -> ``o_s``; payload ``width`` bits, order preserved.

    Latency 1 cycle from ``i_s`` to ``o_s`` when empty; throughput one word per cycle.
    """

    def __init__(self, *, width: int = 72, depth: int = 4) -> None:
        if not isinstance(width, int) or width < 1:
            raise UserValueError(f"width must be a positive integer, not {width!r}")
        if not isinstance(depth, int) or depth < 2:
            raise UserValueError(f"depth must be an integer >= 2, not {depth!r}")
        self._width, self._depth = width, depth
        super().__init__({"i_s": In(stream.Signature(width)), "o_s": Out(stream.Signature(width))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=self._width, depth=self._depth)
        wiring.connect(m, wiring.flipped(self.i_s), q.w_stream)
        wiring.connect(m, q.r_stream, wiring.flipped(self.o_s))
        return m
