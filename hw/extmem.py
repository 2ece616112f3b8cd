"""On-chip external memory for the core's memory port: :class:`BramMemory`.

It serves the request/response/write-data streams of :class:`hw.core.Core` (and of
:class:`hw.hostlink.HostLink`, which speaks the same port) from block RAM, so a small model's
weights and activations live on chip. Any byte address works: the memory is ``B`` byte-wide banks
(byte ``a`` in bank ``a mod B``, row ``a // B``) and each beat's bytes are rotated into place.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from hw.core import mem_request_layout
from hw.lib import check_positive

__all__ = ["BramMemory", "BRAM_LATENCY"]

BRAM_LATENCY = 2
"""Cycles from a read request's transfer to its first beat (the core timing model's ``L``)."""


class BramMemory(wiring.Component):
    """Byte-addressed memory of ``size`` bytes behind the core's external-memory port.

    Parameters (keyword-only): ``size`` (bytes), ``bytes_per_cycle`` ``B`` (a power of two, the
    beat width), ``init`` (bytes from address 0, e.g. a weight image; the rest is zero).

    Interface (the memory side of :class:`hw.core.Core`'s port):
      ``i_req`` (In stream of :func:`hw.core.mem_request_layout`): ready while idle.
      ``o_rsp`` (Out stream of ``8*B`` bits): the read beats, ``ceil(length / B)`` of them, the
      first byte of the request in the low byte of the first beat (bytes past ``size`` read 0).
      ``i_wdata`` (In stream of ``8*B`` bits): the write beats, taken at once; bytes past the
      request's length or past ``size`` are not written.

    Timing (the model of :mod:`sim.core_sim` with ``L = 2``): a request is taken in an idle cycle;
    the first read beat is offered :data:`BRAM_LATENCY` cycles after, then one beat a cycle while
    taken (a refused beat holds); write beats are taken one a cycle from the cycle after the
    request. The next request is taken the cycle after the last beat.
    """

    def __init__(self, *, size: int, bytes_per_cycle: int = 4, init: bytes | Sequence[int] = b""
                 ) -> None:
        self._size = check_positive("size", size, 1 << 32)
        check_positive("bytes_per_cycle", bytes_per_cycle, 64)
        if bytes_per_cycle & (bytes_per_cycle - 1):
            raise ValueError(f"bytes_per_cycle must be a power of two, not {bytes_per_cycle}")
        self._bpc = bytes_per_cycle
        self._init = bytes(init)
        if len(self._init) > size:
            raise ValueError(f"init has {len(self._init)} bytes, more than size {size}")
        beat = unsigned(8 * bytes_per_cycle)
        super().__init__({"i_req": In(stream.Signature(mem_request_layout())),
                          "o_rsp": Out(stream.Signature(beat)),
                          "i_wdata": In(stream.Signature(beat))})

    size = property(lambda self: self._size)
    bytes_per_cycle = property(lambda self: self._bpc)

    @property
    def bank_depth(self) -> int:
        return -(-self._size // self._bpc)

    def elaborate(self, platform):
        m = Module()
        B = self._bpc
        lb = exact_log2(B)
        depth = self.bank_depth
        rw = max(ceil_log2(depth), 1)
        banks = []
        self.banks = []  # the last elaboration's bank memories, for testbenches to read
        for j in range(B):
            init = list(self._init[j::B])
            m.submodules[f"bank{j}"] = mem = memory.Memory(shape=8, depth=depth, init=init)
            self.banks.append(mem)
            banks.append((mem.read_port(), mem.write_port()))

        base = Signal(32)        # byte address of the next beat
        rem = Signal(19)         # bytes left to issue (read) or take (write)
        out_rem = Signal(19)     # read bytes left to deliver
        rot = Signal(lb + 1)     # rotation of the beat being read
        rvalid = Signal()
        m.d.comb += self.o_rsp.valid.eq(rvalid)

        def rows_for(addr):
            """(row of bank j, beat lane of bank j) for a beat starting at ``addr``."""
            out = []
            for j in range(B):
                lane = (j - addr[:lb])[:lb] if lb else 0
                row = (addr + lane) >> lb
                out.append((row, lane))
            return out

        en = Signal()
        m.d.comb += en.eq(~rvalid | self.o_rsp.ready)
        for j, (rd, _wr) in enumerate(banks):
            row, _lane = rows_for(base)[j]
            m.d.comb += [rd.addr.eq(row[:rw]), rd.en.eq(en)]
        # read data: lane i of the beat is bank (rot + i) mod B
        data = [rd.data for rd, _ in banks]
        lanes = []
        for i in range(B):
            sel = Signal(8, name=f"lane{i}")
            with m.Switch(rot[:lb] if lb else 0):
                for r in range(B):
                    with m.Case(r):
                        m.d.comb += sel.eq(data[(r + i) % B])
            lanes.append(sel)
        m.d.comb += self.o_rsp.payload.eq(Cat(*lanes))

        wbeat = self.i_wdata.payload
        with m.FSM(name="extmem"):
            with m.State("IDLE"):
                m.d.comb += self.i_req.ready.eq(1)
                with m.If(self.i_req.valid):
                    p = self.i_req.payload
                    m.d.sync += [base.eq(p.addr), rem.eq(p.length), out_rem.eq(p.length)]
                    with m.If(p.write):
                        m.next = "WRITE"
                    with m.Elif(p.length != 0):
                        m.next = "READ"
            with m.State("READ"):
                with m.If(en):
                    m.d.sync += rvalid.eq(rem != 0)
                    with m.If(rem != 0):
                        m.d.sync += [base.eq(base + B), rem.eq(Mux(rem > B, rem - B, 0))]
                with m.If(rvalid & self.o_rsp.ready):
                    m.d.sync += out_rem.eq(out_rem - B)
                    with m.If(out_rem <= B):
                        m.d.sync += rvalid.eq(0)
                        m.next = "IDLE"
            with m.State("WRITE"):
                m.d.comb += self.i_wdata.ready.eq(1)
                with m.If(rem == 0):
                    m.next = "IDLE"
                with m.Elif(self.i_wdata.valid):
                    for j, (_rd, wr) in enumerate(banks):
                        row, lane = rows_for(base)[j]
                        m.d.comb += [wr.addr.eq(row[:rw]), wr.data.eq(wbeat.word_select(lane, 8)),
                                     wr.en.eq((lane < rem) & (base + lane < self._size))]
                    m.d.sync += [base.eq(base + B), rem.eq(rem - B)]
                    with m.If(rem <= B):
                        m.d.sync += rem.eq(0)
                        m.next = "IDLE"
        # a read issue: rot follows the beat's base address
        with m.If(en & (rem != 0)):
            m.d.sync += rot.eq(base[:lb] if lb else 0)
        return m
