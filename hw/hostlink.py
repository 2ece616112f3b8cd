"""The host-link controller: frames from the UART to the core, its memories and back.

:class:`HostLink` implements the device side of docs/hostlink.md; its golden model is
:class:`golden.hostproto.DeviceModel` (the co-simulation feeds both the same bytes and compares
the bytes out and the memory). :func:`crc32_update` is the CRC-32 of one byte as logic.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.core import INSTR_BYTES
from golden.hostproto import (
    E_BAD_ADDRESS,
    E_BAD_COMMAND,
    E_BAD_CRC,
    E_BAD_LENGTH,
    E_BUSY,
    E_TRUNCATED,
    ERROR,
    INFO,
    LOAD_PROGRAM,
    PROTOCOL_VERSION,
    READ_COUNTERS,
    READ_MEM,
    RESPONSE_BIT,
    SOF,
    START,
    STATUS,
    WRITE_MEM,
)
from hw.core import INSTR_BITS, mem_request_layout
from hw.lib import check_positive

__all__ = ["HostLink", "crc32_update"]

_POLY = 0xEDB88320  # CRC-32, reflected


def crc32_update(crc: Value, byte: Value) -> Value:
    """The CRC-32 register after one more byte (reflected, no final xor: the register starts
    at 0xFFFFFFFF and the checksum is its complement, as :func:`golden.hostproto.crc32`)."""
    c = crc ^ Cat(byte, Const(0, 24))
    for _ in range(8):
        c = (c >> 1) ^ Mux(c[0], Const(_POLY, 32), Const(0, 32))
    return c[:32]


class HostLink(wiring.Component):
    """Device side of the host link (docs/hostlink.md); golden model
    :class:`golden.hostproto.DeviceModel`.

    Parameters (keyword-only): ``ext_bytes`` (external memory size: the address check),
    ``imem_instrs`` (the core's instruction memory), ``max_payload`` (frame buffer, one
    ``max_payload``-byte RAM), ``bytes_per_cycle`` (the memory port's beat), ``timeout`` (cycles
    of line silence that end a frame: a truncated frame, or the discard after a framing error;
    a few character times).

    Interface:
      ``i_rx`` (In stream of 8 bits, from :class:`hw.uart.UartRx`), ``o_tx`` (Out stream of 8
      bits, to :class:`hw.uart.UartTx`).
      ``o_req``, ``i_rsp``, ``o_wdata``: the external-memory port of :class:`hw.core.Core`
      (same layout and rules), used by WRITE_MEM and READ_MEM.
      ``imem_w_en``, ``imem_w_addr``, ``imem_w_data`` (Out): the core's instruction-memory write
      port. ``start`` (Out): the core's start pulse. ``done``, ``error``, ``error_pc`` and the
      counters ``cnt_*`` (In): the core's.
      ``running`` (Out): from START until the core's ``done``; meanwhile the core owns the
      memory and WRITE_MEM, READ_MEM, LOAD_PROGRAM and START are answered BUSY.

    Timing: bytes are taken as they arrive (one a cycle at most); a frame is acted on after its
    CRC; WRITE_MEM moves one payload byte every two cycles, READ_MEM one byte a cycle after each
    beat, LOAD_PROGRAM one instruction per ``2 * 32 + 1`` cycles; the answer goes out a byte at
    a time as the transmitter takes it. None of it is near the UART's pace.
    """

    def __init__(self, *, ext_bytes: int, imem_instrs: int, max_payload: int = 1024,
                 bytes_per_cycle: int = 4, timeout: int = 1000) -> None:
        self._ext = check_positive("ext_bytes", ext_bytes, 1 << 32)
        self._imem = check_positive("imem_instrs", imem_instrs, 1 << 16)
        self._maxp = check_positive("max_payload", max_payload, 0xFFFF)
        if max_payload < 2 * INSTR_BYTES + 2:
            raise ValueError(f"max_payload must be at least {2 * INSTR_BYTES + 2}, "
                             f"not {max_payload}")
        self._bpc = check_positive("bytes_per_cycle", bytes_per_cycle, 64)
        self._timeout = check_positive("timeout", timeout, 1 << 30)
        beat = unsigned(8 * bytes_per_cycle)
        super().__init__({
            "i_rx": In(stream.Signature(8)),
            "o_tx": Out(stream.Signature(8)),
            "o_req": Out(stream.Signature(mem_request_layout())),
            "i_rsp": In(stream.Signature(beat)),
            "o_wdata": Out(stream.Signature(beat)),
            "imem_w_en": Out(1),
            "imem_w_addr": Out(range(imem_instrs)),
            "imem_w_data": Out(INSTR_BITS),
            "start": Out(1),
            "done": In(1),
            "error": In(1),
            "error_pc": In(16),
            "cnt_cycles": In(32),
            "cnt_busy_d": In(32),
            "cnt_busy_m": In(32),
            "cnt_busy_s": In(32),
            "cnt_mem_stall": In(32),
            "running": Out(1),
        })

    ext_bytes = property(lambda self: self._ext)
    imem_instrs = property(lambda self: self._imem)
    max_payload = property(lambda self: self._maxp)
    bytes_per_cycle = property(lambda self: self._bpc)
    timeout = property(lambda self: self._timeout)

    def elaborate(self, platform):  # noqa: C901 - one protocol state machine, written out
        m = Module()
        B, maxp = self._bpc, self._maxp
        m.submodules.buf = buf = memory.Memory(shape=8, depth=maxp, init=[])
        bw, br = buf.write_port(), buf.read_port(transparent_for=())
        ra = Signal(range(maxp))
        m.d.comb += [br.addr.eq(ra), br.en.eq(1)]

        rx, tx = self.i_rx, self.o_tx
        got = Signal()
        m.d.comb += got.eq(rx.valid & rx.ready)
        byte = rx.payload

        # ---- line silence
        idle = Signal(range(self._timeout + 1))
        quiet = Signal()
        with m.If(got):
            m.d.sync += idle.eq(0)
        with m.Elif(idle != self._timeout):
            m.d.sync += idle.eq(idle + 1)
        m.d.comb += quiet.eq(idle == self._timeout)

        # ---- the running core
        start_q = Signal()
        m.d.sync += start_q.eq(self.start)
        with m.If(self.start):
            m.d.sync += self.running.eq(1)
        with m.Elif(self.running & self.done & ~start_q):
            m.d.sync += self.running.eq(0)

        # ---- frame fields
        crc = Signal(32, init=0xFFFFFFFF)
        length = Signal(16)
        seq = Signal(8)
        cmd = Signal(8)
        hidx = Signal(2)
        pidx = Signal(16)
        crc_rx = Signal(32)
        head = Signal(48)  # the first six payload bytes
        code = Signal(8)

        # response: header fields, payload in the buffer [0, rlen), CRC as it goes out
        rcmd = Signal(8)
        rlen = Signal(16)
        small = Signal(20 * 8)
        fidx = Signal(16)
        tstep = Signal(4)
        tidx = Signal(16)
        tcrc = Signal(32)

        # the command's operands
        addr = head[:32]
        count = head[32:48]
        first = head[:16]
        dlen = Signal(17)
        m.d.comb += dlen.eq(length - 4)
        ninstr = Signal(16)
        m.d.comb += ninstr.eq((length - 2) >> 5)

        # memory transfers
        mi = Signal(17)     # buffer index
        lane = Signal(range(max(B, 2)))
        beat = Signal(8 * B)
        left = Signal(17)   # bytes left
        iw = Signal(INSTR_BITS)
        ib = Signal(range(INSTR_BYTES))
        ij = Signal(16)

        def finish_ok(nbytes=0):
            m.d.sync += [rcmd.eq(cmd | RESPONSE_BIT), rlen.eq(nbytes)]

        def fail(c):
            m.d.sync += [code.eq(c)]

        with m.FSM(name="hostlink"):
            with m.State("HUNT"):
                m.d.comb += rx.ready.eq(1)
                with m.If(got & (byte == SOF)):
                    m.d.sync += [crc.eq(0xFFFFFFFF), seq.eq(0), cmd.eq(0), hidx.eq(0),
                                 pidx.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += rx.ready.eq(1)
                with m.If(got):
                    m.d.sync += [crc.eq(crc32_update(crc, byte)), hidx.eq(hidx + 1)]
                    with m.Switch(hidx):
                        with m.Case(0):
                            m.d.sync += length[:8].eq(byte)
                        with m.Case(1):
                            m.d.sync += length[8:].eq(byte)
                        with m.Case(2):
                            m.d.sync += seq.eq(byte)
                        with m.Case(3):
                            m.d.sync += cmd.eq(byte)
                            with m.If(length > maxp):
                                m.d.sync += code.eq(E_BAD_LENGTH)
                                m.next = "DISCARD"
                            with m.Elif(length == 0):
                                m.next = "CRC"
                            with m.Else():
                                m.next = "PAYLOAD"
                with m.Elif(quiet):
                    m.d.sync += code.eq(E_TRUNCATED)
                    m.next = "ERROR"
            with m.State("PAYLOAD"):
                m.d.comb += rx.ready.eq(1)
                m.d.comb += [bw.addr.eq(pidx), bw.data.eq(byte), bw.en.eq(got)]
                with m.If(got):
                    m.d.sync += [crc.eq(crc32_update(crc, byte)), pidx.eq(pidx + 1)]
                    for k in range(6):
                        with m.If(pidx == k):
                            m.d.sync += head[8 * k:8 * k + 8].eq(byte)
                    with m.If(pidx == length - 1):
                        m.d.sync += hidx.eq(0)
                        m.next = "CRC"
                with m.Elif(quiet):
                    m.d.sync += code.eq(E_TRUNCATED)
                    m.next = "ERROR"
            with m.State("CRC"):
                m.d.comb += rx.ready.eq(1)
                with m.If(got):
                    m.d.sync += [crc_rx.eq(Cat(crc_rx[8:], byte)), hidx.eq(hidx + 1)]
                    with m.If(hidx == 3):
                        m.next = "CHECK"
                with m.Elif(quiet):
                    m.d.sync += code.eq(E_TRUNCATED)
                    m.next = "ERROR"
            with m.State("CHECK"):
                with m.If(crc_rx != ~crc):
                    m.d.sync += code.eq(E_BAD_CRC)
                    m.next = "DISCARD"
                with m.Else():
                    m.next = "DECODE"
            with m.State("DISCARD"):
                m.d.comb += rx.ready.eq(1)
                with m.If(quiet & ~got):
                    m.next = "ERROR"
            with m.State("DECODE"):
                busy = self.running
                m.d.sync += [fidx.eq(0), left.eq(dlen), mi.eq(Mux(cmd == LOAD_PROGRAM, 2, 4)),
                             lane.eq(0), beat.eq(0), ib.eq(0), ij.eq(0)]
                end_w = Signal(34)
                m.d.comb += end_w.eq(addr + dlen)
                with m.Switch(cmd):
                    with m.Case(WRITE_MEM):
                        with m.If(length < 5):
                            fail(E_BAD_LENGTH)
                            m.next = "ERROR"
                        with m.Elif(end_w > self._ext):
                            fail(E_BAD_ADDRESS)
                            m.next = "ERROR"
                        with m.Elif(busy):
                            fail(E_BUSY)
                            m.next = "ERROR"
                        with m.Else():
                            m.next = "W_REQ"
                    with m.Case(READ_MEM):
                        with m.If((length != 6) | (count == 0) | (count > maxp)):
                            fail(E_BAD_LENGTH)
                            m.next = "ERROR"
                        with m.Elif(addr + count > self._ext):
                            fail(E_BAD_ADDRESS)
                            m.next = "ERROR"
                        with m.Elif(busy):
                            fail(E_BUSY)
                            m.next = "ERROR"
                        with m.Else():
                            m.next = "R_REQ"
                    with m.Case(LOAD_PROGRAM):
                        with m.If((length < 2 + INSTR_BYTES)
                                  | ((length - 2)[:5] != 0)):
                            fail(E_BAD_LENGTH)
                            m.next = "ERROR"
                        with m.Elif(first + ninstr > self._imem):
                            fail(E_BAD_ADDRESS)
                            m.next = "ERROR"
                        with m.Elif(busy):
                            fail(E_BUSY)
                            m.next = "ERROR"
                        with m.Else():
                            m.next = "P_FETCH"
                    with m.Case(START, STATUS, READ_COUNTERS, INFO):
                        with m.If(length != 0):
                            fail(E_BAD_LENGTH)
                            m.next = "ERROR"
                        with m.Elif((cmd == START) & busy):
                            fail(E_BUSY)
                            m.next = "ERROR"
                        with m.Elif(cmd == START):
                            m.d.comb += self.start.eq(1)
                            finish_ok()
                            m.next = "TX"
                        with m.Elif(cmd == STATUS):
                            finish_ok(3)
                            m.d.sync += small.eq(Cat(self.done & ~start_q, self.error,
                                                     Const(0, 6), self.error_pc))
                            m.next = "FILL"
                        with m.Elif(cmd == READ_COUNTERS):
                            finish_ok(20)
                            m.d.sync += small.eq(Cat(self.cnt_cycles, self.cnt_busy_d,
                                                     self.cnt_busy_m, self.cnt_busy_s,
                                                     self.cnt_mem_stall))
                            m.next = "FILL"
                        with m.Else():
                            finish_ok(9)
                            m.d.sync += small.eq(Cat(Const(PROTOCOL_VERSION, 8),
                                                     Const(maxp, 16), Const(self._imem, 16),
                                                     Const(self._ext, 32)))
                            m.next = "FILL"
                    with m.Default():
                        fail(E_BAD_COMMAND)
                        m.next = "ERROR"

            # ---- WRITE_MEM: one request, then beats packed from the buffer
            with m.State("W_REQ"):
                m.d.comb += [self.o_req.valid.eq(1), self.o_req.payload.addr.eq(addr),
                             self.o_req.payload.length.eq(dlen), self.o_req.payload.write.eq(1)]
                with m.If(self.o_req.ready):
                    m.next = "W_FETCH"
            with m.State("W_FETCH"):
                m.d.comb += ra.eq(mi)
                m.next = "W_TAKE"
            with m.State("W_TAKE"):
                m.d.comb += ra.eq(mi)
                with m.Switch(lane):
                    for k in range(B):
                        with m.Case(k):
                            m.d.sync += beat[8 * k:8 * k + 8].eq(br.data)
                m.d.sync += [mi.eq(mi + 1), left.eq(left - 1), lane.eq(lane + 1)]
                with m.If((lane == B - 1) | (left == 1)):
                    m.next = "W_BEAT"
                with m.Else():
                    m.next = "W_FETCH"
            with m.State("W_BEAT"):
                m.d.comb += [self.o_wdata.valid.eq(1), self.o_wdata.payload.eq(beat)]
                with m.If(self.o_wdata.ready):
                    m.d.sync += [beat.eq(0), lane.eq(0)]
                    with m.If(left == 0):
                        finish_ok()
                        m.next = "TX"
                    with m.Else():
                        m.next = "W_FETCH"

            # ---- READ_MEM: one request, beats unpacked into the buffer
            with m.State("R_REQ"):
                m.d.comb += [self.o_req.valid.eq(1), self.o_req.payload.addr.eq(addr),
                             self.o_req.payload.length.eq(count), self.o_req.payload.write.eq(0)]
                with m.If(self.o_req.ready):
                    m.d.sync += [left.eq(count), mi.eq(0)]
                    m.next = "R_WAIT"
            with m.State("R_WAIT"):
                m.d.comb += self.i_rsp.ready.eq(1)
                with m.If(self.i_rsp.valid):
                    m.d.sync += [beat.eq(self.i_rsp.payload), lane.eq(0)]
                    m.next = "R_STORE"
            with m.State("R_STORE"):
                m.d.comb += [bw.addr.eq(mi), bw.data.eq(beat.word_select(lane, 8)), bw.en.eq(1)]
                m.d.sync += [mi.eq(mi + 1), left.eq(left - 1), lane.eq(lane + 1)]
                with m.If(left == 1):
                    finish_ok()
                    m.d.sync += rlen.eq(count)
                    m.next = "TX"
                with m.Elif(lane == B - 1):
                    m.next = "R_WAIT"

            # ---- LOAD_PROGRAM: 32 bytes into an instruction word, then the write port
            with m.State("P_FETCH"):
                m.d.comb += ra.eq(mi)
                m.next = "P_TAKE"
            with m.State("P_TAKE"):
                m.d.comb += ra.eq(mi)
                m.d.sync += [iw.eq(Cat(iw[8:], br.data)), mi.eq(mi + 1), ib.eq(ib + 1)]
                with m.If(ib == INSTR_BYTES - 1):
                    m.next = "P_WRITE"
                with m.Else():
                    m.next = "P_FETCH"
            with m.State("P_WRITE"):
                m.d.comb += [self.imem_w_en.eq(1), self.imem_w_addr.eq(first + ij),
                             self.imem_w_data.eq(iw)]
                m.d.sync += ij.eq(ij + 1)
                with m.If(ij == ninstr - 1):
                    finish_ok()
                    m.next = "TX"
                with m.Else():
                    m.next = "P_FETCH"

            # ---- answers
            with m.State("ERROR"):
                m.d.sync += [rcmd.eq(ERROR), rlen.eq(2), small.eq(Cat(code, cmd)), fidx.eq(0)]
                m.next = "FILL"
            with m.State("FILL"):
                m.d.comb += [bw.addr.eq(fidx), bw.data.eq(small.word_select(fidx[:5], 8)),
                             bw.en.eq(1)]
                m.d.sync += fidx.eq(fidx + 1)
                with m.If(fidx == rlen - 1):
                    m.next = "TX"
            with m.State("TX"):
                m.d.sync += [tstep.eq(0), tidx.eq(0), tcrc.eq(0xFFFFFFFF)]
                m.next = "T_HEAD"
            with m.State("T_HEAD"):
                hdr = Cat(Const(SOF, 8), rlen, seq, rcmd)
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(hdr.word_select(tstep[:3], 8))]
                with m.If(tx.ready):
                    m.d.sync += tstep.eq(tstep + 1)
                    with m.If(tstep != 0):
                        m.d.sync += tcrc.eq(crc32_update(tcrc, tx.payload))
                    with m.If(tstep == 4):
                        m.d.sync += tstep.eq(0)
                        with m.If(rlen == 0):
                            m.next = "T_CRC"
                        with m.Else():
                            m.next = "T_FETCH"
            with m.State("T_FETCH"):
                m.d.comb += ra.eq(tidx)
                m.next = "T_PAY"
            with m.State("T_PAY"):
                m.d.comb += [ra.eq(tidx), tx.valid.eq(1), tx.payload.eq(br.data)]
                with m.If(tx.ready):
                    m.d.sync += [tcrc.eq(crc32_update(tcrc, br.data)), tidx.eq(tidx + 1)]
                    with m.If(tidx == rlen - 1):
                        m.next = "T_CRC"
                    with m.Else():
                        m.next = "T_FETCH"
            with m.State("T_CRC"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq((~tcrc).word_select(tstep[:2], 8))]
                with m.If(tx.ready):
                    m.d.sync += tstep.eq(tstep + 1)
                    with m.If(tstep == 3):
                        m.next = "HUNT"
        return m
