"""On-chip external memory for the core's memory port: :class:`BramMemory`.

It serves the request/response/write-data streams of :class:`hw.core.Core` (and of
:class:`hw.hostlink.HostLink`, which speaks the same port) from block RAM, so a small model's
weights and activations live on chip. Any byte address works: the memory is ``B`` byte-wide banks
(byte ``a`` in bank ``a mod B``, row ``a // B``) and each beat's bytes are rotated into place.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
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

    Timing (the memory model of :mod:`sim.core_sim` with ``L = 2``, so the core's counters equal
    :func:`hw.core_model.program_timing` with ``latency = 2``): requests queue in order
    (:attr:`QUEUE_DEPTH` entries; ``i_req`` is ready while there is room); a read's first beat is
    offered :data:`BRAM_LATENCY` cycles after its request's transfer and not before the cycle
    after the previous request's last beat, then one beat a cycle while taken (a refused beat
    holds); a write's beats are taken at once while it is the head (from the cycle after its
    request's transfer).
    """

    QUEUE_DEPTH = 16

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

        def rows_for(addr):
            """(row of bank j, beat lane of bank j) for a beat starting at ``addr``."""
            out = []
            for j in range(B):
                lane = (j - addr[:lb])[:lb] if lb else 0
                out.append(((addr + lane) >> lb, lane))
            return out

        # the request queue: the head is served in place; ``off`` bytes of it are done
        m.submodules.q = q = fifo.SyncFIFO(width=len(self.i_req.payload.as_value()),
                                           depth=self.QUEUE_DEPTH)
        m.d.comb += [q.w_data.eq(self.i_req.payload.as_value()), q.w_en.eq(self.i_req.valid),
                     self.i_req.ready.eq(q.w_rdy)]
        head = data.View(mem_request_layout(), q.r_data)
        off = Signal(19)
        base = Signal(33)
        left = Signal(19)
        m.d.comb += [base.eq(head.addr + off), left.eq(head.length - off)]
        last = Signal()
        m.d.comb += last.eq(left <= B)
        is_rd = Signal()
        is_wr = Signal()
        m.d.comb += [is_rd.eq(q.r_rdy & ~head.write & (head.length != 0)),
                     is_wr.eq(q.r_rdy & head.write & (head.length != 0))]
        pop = Signal()
        with m.If(q.r_rdy & (head.length == 0)):
            m.d.comb += pop.eq(1)

        # reads: a beat is read from the banks when the output register is free next cycle
        rvalid = Signal()
        rot = Signal(max(lb, 1))
        issue = Signal()
        m.d.comb += [issue.eq(is_rd & (~rvalid | self.o_rsp.ready)), self.o_rsp.valid.eq(rvalid)]
        m.d.sync += rvalid.eq(issue | (rvalid & ~self.o_rsp.ready))
        for j, (rd, _wr) in enumerate(banks):
            row, _lane = rows_for(base)[j]
            m.d.comb += [rd.addr.eq(row[:rw]), rd.en.eq(issue)]
        with m.If(issue):
            m.d.sync += rot.eq(base[:lb] if lb else 0)
        data_ = [rd.data for rd, _ in banks]
        lanes = []
        for i in range(B):
            sel = Signal(8, name=f"lane{i}")
            with m.Switch(rot):
                for r in range(B):
                    with m.Case(r):
                        m.d.comb += sel.eq(data_[(r + i) % B])
            lanes.append(sel)
        m.d.comb += self.o_rsp.payload.eq(Cat(*lanes))

        # writes: the head's beats are taken at once
        wbeat = self.i_wdata.payload
        wtake = Signal()
        m.d.comb += [self.i_wdata.ready.eq(is_wr), wtake.eq(is_wr & self.i_wdata.valid)]
        for j, (_rd, wr) in enumerate(banks):
            row, lane = rows_for(base)[j]
            m.d.comb += [wr.addr.eq(row[:rw]), wr.data.eq(wbeat.word_select(lane, 8)),
                         wr.en.eq(wtake & (lane < left) & (base + lane < self._size))]

        with m.If(issue | wtake):
            m.d.sync += off.eq(off + B)
            with m.If(last):
                m.d.comb += pop.eq(1)
        with m.If(pop):
            m.d.sync += off.eq(0)
        m.d.comb += q.r_en.eq(pop)
        return m
