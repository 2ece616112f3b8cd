"""From the core's external-memory port to a word-addressed DRAM port: :class:`NativeBridge`.

The core (and the host link) speak byte-addressed requests with ``B``-byte beats
(:class:`hw.core.Core`); a DRAM controller's user port (LiteDRAM's *native* port) speaks
``D``-byte words: a command stream (word address, write flag), a write-data stream (word and
byte enables) and a read-data stream. The bridge splits every request into the words it touches,
masks the partial first and last words of a write with byte enables (no read-modify-write), and
re-packs read words into beats starting at the request's first byte.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from hw.core import mem_request_layout
from hw.lib import check_positive

__all__ = ["NativeBridge", "native_cmd_layout", "native_wdata_layout"]


def native_cmd_layout(addr_bits: int) -> data.StructLayout:
    """A DRAM command: word ``addr``, ``we``."""
    return data.StructLayout({"addr": unsigned(addr_bits), "we": unsigned(1)})


def native_wdata_layout(word_bytes: int) -> data.StructLayout:
    """Write data: ``data`` (``word_bytes`` little-endian bytes) and ``we`` (a bit per byte)."""
    return data.StructLayout({"data": unsigned(8 * word_bytes), "we": unsigned(word_bytes)})


def _pow2(name: str, v: int) -> int:
    check_positive(name, v, 64)
    if v & (v - 1):
        raise ValueError(f"{name} must be a power of two, not {v}")
    return v


class NativeBridge(wiring.Component):
    """Core memory port (``i_req``, ``o_rsp``, ``i_wdata``: the memory side of
    :class:`hw.core.Core`'s port, ``B = bytes_per_cycle``) to a native DRAM port (``o_cmd``,
    ``o_wdat``, ``i_rdat``: ``D = word_bytes`` bytes a word, ``addr_bits`` of word address;
    byte address ``a`` is word ``a // D``, lane ``a % D``).

    One request at a time, in order. A read issues a command per word it touches (as fast as
    ``o_cmd`` takes them) and takes one word a cycle into a ``B + D``-byte buffer, offering a
    beat whenever ``B`` bytes (or the request's last bytes) are there: at steady state a beat
    per ``B / D`` words. A write gathers the beats and writes one word per command, with byte
    enables for the bytes of the request only (two cycles a word: command, then data).
    """

    def __init__(self, *, bytes_per_cycle: int = 4, word_bytes: int = 2,
                 addr_bits: int = 24) -> None:
        self._B = _pow2("bytes_per_cycle", bytes_per_cycle)
        self._D = _pow2("word_bytes", word_bytes)
        self._ab = check_positive("addr_bits", addr_bits, 40)
        beat = unsigned(8 * bytes_per_cycle)
        super().__init__({
            "i_req": In(stream.Signature(mem_request_layout())),
            "o_rsp": Out(stream.Signature(beat)),
            "i_wdata": In(stream.Signature(beat)),
            "o_cmd": Out(stream.Signature(native_cmd_layout(addr_bits))),
            "o_wdat": Out(stream.Signature(native_wdata_layout(word_bytes))),
            "i_rdat": In(stream.Signature(unsigned(8 * word_bytes))),
        })

    bytes_per_cycle = property(lambda self: self._B)
    word_bytes = property(lambda self: self._D)
    addr_bits = property(lambda self: self._ab)

    def elaborate(self, platform):  # noqa: C901 - two datapaths written out
        m = Module()
        B, D = self._B, self._D
        lgD = exact_log2(D)
        cap = B + D
        buf = Signal(8 * cap)
        cnt = Signal(range(cap + 1))
        left_in = Signal(19)     # request bytes not yet in the buffer (read) / not yet taken
        left_out = Signal(19)    # request bytes not yet sent on (beats / words)
        waddr = Signal(self._ab)  # next word to command
        ncmd = Signal(19)        # read commands left to issue
        skip = Signal(range(D))  # the lane of the request's first byte
        first = Signal()
        p = self.i_req.payload

        def take(n_bytes, value, amount):
            """``value`` limited to ``amount`` bytes (``amount`` a Value)."""
            mask = Signal(8 * n_bytes, name="take_mask")
            with m.Switch(amount):
                for k in range(n_bytes + 1):
                    with m.Case(k):
                        m.d.comb += mask.eq((1 << (8 * k)) - 1)
            return value & mask

        with m.FSM(name="bridge"):
            with m.State("IDLE"):
                m.d.comb += self.i_req.ready.eq(1)
                with m.If(self.i_req.valid & (p.length != 0)):
                    last_word = (p.addr + p.length - 1) >> lgD
                    m.d.sync += [waddr.eq(p.addr >> lgD), skip.eq(p.addr[:lgD] if lgD else 0),
                                 left_in.eq(p.length), left_out.eq(p.length), first.eq(1),
                                 cnt.eq(0), buf.eq(0),
                                 ncmd.eq(last_word - (p.addr >> lgD) + 1)]
                    with m.If(p.write):
                        m.next = "WRITE"
                    with m.Else():
                        m.next = "READ"

            # ---- read: commands out, words in, beats out
            with m.State("READ"):
                m.d.comb += [self.o_cmd.valid.eq(ncmd != 0), self.o_cmd.payload.addr.eq(waddr),
                             self.o_cmd.payload.we.eq(0)]
                with m.If(self.o_cmd.valid & self.o_cmd.ready):
                    m.d.sync += [ncmd.eq(ncmd - 1), waddr.eq(waddr + 1)]
                full = Signal()
                m.d.comb += full.eq((cnt >= B) | ((left_in == 0) & (cnt != 0)))
                m.d.comb += [self.o_rsp.valid.eq(full), self.o_rsp.payload.eq(buf[:8 * B])]
                emit = Signal()
                m.d.comb += emit.eq(full & self.o_rsp.ready)
                gone = Signal(range(B + 1))
                m.d.comb += gone.eq(Mux(emit, Mux(cnt >= B, B, cnt), 0))
                room = Signal()
                m.d.comb += room.eq((cnt - gone <= B) & (left_in != 0))
                m.d.comb += self.i_rdat.ready.eq(room)
                n_in = Signal(range(D + 1))
                avail = Signal(range(D + 1))
                m.d.comb += avail.eq(Mux(first, D - skip, D))
                m.d.comb += n_in.eq(Mux(left_in < avail, left_in, avail))
                word = Signal(8 * D)
                m.d.comb += word.eq(Mux(first, self.i_rdat.payload >> (skip * 8),
                                        self.i_rdat.payload))
                got = Signal()
                m.d.comb += got.eq(self.i_rdat.valid & room)
                shifted = Signal(8 * cap)
                m.d.comb += shifted.eq(Mux(emit, buf >> (8 * B), buf))
                base = Signal(range(cap + 1))
                m.d.comb += base.eq(cnt - gone)
                ins = Signal(8 * cap)
                m.d.comb += ins.eq(Cat(take(D, word, n_in), Const(0, 8 * B)) << (base * 8))
                m.d.sync += [buf.eq(shifted | Mux(got, ins, 0)),
                             cnt.eq(base + Mux(got, n_in, 0))]
                with m.If(got):
                    m.d.sync += [left_in.eq(left_in - n_in), first.eq(0)]
                with m.If(emit):
                    m.d.sync += left_out.eq(left_out - gone)
                    with m.If(left_out == gone):
                        m.next = "IDLE"

            # ---- write: beats in, words out (command, then data)
            with m.State("WRITE"):
                need = Signal(range(D + 1))   # bytes of the next word
                lane0 = Signal(range(D))
                m.d.comb += [lane0.eq(Mux(first, skip, 0))]
                m.d.comb += need.eq(Mux(left_out < D - lane0, left_out, D - lane0))
                ready_word = Signal()
                m.d.comb += ready_word.eq((cnt >= need) & (left_out != 0))
                m.d.comb += self.i_wdata.ready.eq((cnt <= D) & (left_in != 0))
                with m.If(self.i_wdata.valid & self.i_wdata.ready):
                    n_b = Signal(range(B + 1))
                    m.d.comb += n_b.eq(Mux(left_in < B, left_in, B))
                    m.d.sync += [buf.eq(buf | (Cat(take(B, self.i_wdata.payload, n_b),
                                                   Const(0, 8 * D)) << (cnt * 8))),
                                 cnt.eq(cnt + n_b), left_in.eq(left_in - n_b)]
                with m.If(ready_word):
                    m.next = "W_CMD"
            with m.State("W_CMD"):
                m.d.comb += [self.o_cmd.valid.eq(1), self.o_cmd.payload.addr.eq(waddr),
                             self.o_cmd.payload.we.eq(1)]
                with m.If(self.o_cmd.ready):
                    m.next = "W_DATA"
            with m.State("W_DATA"):
                lane0 = Mux(first, skip, 0)
                need = Signal(range(D + 1), name="need_d")
                m.d.comb += need.eq(Mux(left_out < D - lane0, left_out, D - lane0))
                enables = Signal(D)
                with m.Switch(Cat(need, lane0)):
                    for k in range(D + 1):
                        for s in range(D):
                            with m.Case(k | (s << len(need))):
                                m.d.comb += enables.eq((((1 << k) - 1) << s) & ((1 << D) - 1))
                m.d.comb += [self.o_wdat.valid.eq(1),
                             self.o_wdat.payload.data.eq((buf[:8 * D] << (lane0 * 8))[:8 * D]),
                             self.o_wdat.payload.we.eq(enables)]
                with m.If(self.o_wdat.ready):
                    m.d.sync += [buf.eq(buf >> (need * 8)), cnt.eq(cnt - need),
                                 left_out.eq(left_out - need), waddr.eq(waddr + 1), first.eq(0)]
                    with m.If(left_out == need):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "WRITE"
        return m
