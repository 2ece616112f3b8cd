"""The fmforge core: instruction fetch/dispatch, token-synchronised D, M and S queues, a
strided DMA engine on an external-memory port, GEMM on :class:`hw.gemm.GemmEngine` and the
special-function units (:class:`hw.gelu.Gelu`, :class:`hw.layernorm.LayerNorm`,
:class:`hw.softmax.Softmax` with run-time parameters, and an ADD pipeline).

It runs every instruction of docs/isa.md exactly as :func:`golden.core.run_program` does, in
exactly the cycles :func:`hw.core_model.program_timing` gives (its module docstring has the
formulas; the cycle-level account of where they come from is in :class:`Core`).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden.core import INSTR_BYTES, OPCODES
from golden.errors import UserValueError
from hw.core_model import DMA_OUTSTANDING, SOFTMAX_LANES, sp_width
from hw.gelu import Gelu
from hw.gemm import GemmEngine, _check_dataflow
from hw.layernorm import LayerNorm
from hw.lib import check_positive, saturate_bits
from hw.requant import REQUANT_STAGES, requant_stages
from hw.softmax import Softmax

__all__ = ["Core", "INSTR_BITS", "mem_request_layout"]

INSTR_BITS = 8 * INSTR_BYTES
_OP = {name: op.code for name, op in OPCODES.items()}
_Q_D, _Q_M, _Q_S = 0, 1, 2


def mem_request_layout() -> data.StructLayout:
    """External-memory request: byte ``addr``, ``length`` in bytes, ``write`` flag."""
    return data.StructLayout({"addr": unsigned(32), "length": unsigned(18), "write": unsigned(1)})


def _w(raw: Value, i: int) -> Value:
    return raw[32 * i:32 * (i + 1)]


class _Port:
    """A logical scratchpad port: ``addr`` (byte), ``data`` (``8 * width`` bits, byte 0 at
    ``addr``), read ``en`` (default 1) or write ``en`` and byte ``mask``."""

    def __init__(self, addr: Signal, data: Signal, en: Signal, mask: Signal | None = None) -> None:
        self.addr, self.data, self.en, self.mask = addr, data, en, mask


class _Scratchpad:
    """``sp_bytes`` bytes in ``width`` byte-wide banks (byte ``a`` in bank ``a mod width``, row
    ``a // width``). A logical port reads or writes up to ``width`` consecutive bytes at any byte
    address in one cycle: every bank is touched once, its row is the address's row or the next,
    and the bytes are rotated into place (reads: one cycle of latency, like a memory port)."""

    def __init__(self, m: Module, sp_bytes: int, width: int) -> None:
        self.m = m
        self.width = width
        self.lw = ceil_log2(width)
        self.abits = max(ceil_log2(sp_bytes), self.lw + 1)
        depth = max(1, -(-sp_bytes // width))
        self.banks = []
        for j in range(width):
            bank = memory.Memory(shape=unsigned(8), depth=depth, init=[])
            m.submodules[f"sp_bank{j}"] = bank
            self.banks.append(bank)

    def read_port(self, name: str) -> _Port:
        m, w, lw = self.m, self.width, self.lw
        addr = Signal(self.abits, name=f"{name}_addr")
        en = Signal(init=1, name=f"{name}_en")
        data = Signal(8 * w, name=f"{name}_data")
        lo_d = Signal(lw, name=f"{name}_lo")
        lo, row = addr[:lw], addr[lw:]
        ports = [b.read_port() for b in self.banks]
        for j, p in enumerate(ports):
            m.d.comb += [p.addr.eq(row + (lo > j)), p.en.eq(en)]
        with m.If(en):
            m.d.sync += lo_d.eq(lo)
        raw = Cat(*(p.data for p in ports))
        m.d.comb += data.eq(Cat(raw, raw) >> (lo_d * 8))
        return _Port(addr, data, en)

    def write_port(self, name: str) -> _Port:
        m, w, lw = self.m, self.width, self.lw
        addr = Signal(self.abits, name=f"{name}_addr")
        en = Signal(name=f"{name}_en")
        data = Signal(8 * w, name=f"{name}_data")
        mask = Signal(w, name=f"{name}_mask")
        lo, row = addr[:lw], addr[lw:]
        rd = Signal(8 * w, name=f"{name}_rot")
        rm = Signal(w, name=f"{name}_rotm")
        m.d.comb += [rd.eq((Cat(data, data) << (lo * 8))[8 * w:]),
                     rm.eq((Cat(mask, mask) << lo)[w:])]
        for j, bank in enumerate(self.banks):
            p = bank.write_port()
            m.d.comb += [p.addr.eq(row + (lo > j)), p.data.eq(rd[8 * j:8 * j + 8]),
                         p.en.eq(en & rm[j])]
        return _Port(addr, data, en, mask)

    def peek(self, ctx, addr: int) -> int:
        """Byte ``addr`` in a simulator testbench (``ctx.get``)."""
        return ctx.get(self.banks[addr % self.width].data[addr // self.width])


class Core(wiring.Component):
    """The fmforge core (D, M and S queues; every instruction of docs/isa.md).

    Parameters (keyword-only)
    -------------------------
    rows, cols, dataflow : the GEMM engine's array (:class:`hw.gemm.GemmEngine`).
    bytes_per_cycle : int   bytes ``B`` per external-memory data beat.
    queue_depth : int   entries of each instruction queue's FIFO.
    sp_bytes : int   scratchpad size (bytes).
    imem_instrs : int   instruction-memory entries (256-bit instructions).
    max_m, max_k, max_n : int   the largest GEMM (the engine's buffers and the result buffer).
    max_row : int   the longest S-queue row (ADD ``cols``, LAYERNORM/SOFTMAX ``cols``): the
      units' row buffers and the ADD multiplier tables.

    Interface
    ---------
    Host:
      ``imem_w_en``, ``imem_w_addr``, ``imem_w_data`` (In): instruction-memory write port (one
      256-bit instruction, the little-endian integer of its 32 bytes, per cycle with
      ``imem_w_en``); write the program before ``start``.
      ``start`` (In): a one-cycle pulse while not running starts the program at pc 0 and clears
      the counters, tokens and flags. The cycle after the pulse is cycle 0.
      ``done`` (Out): rises in the cycle in which ``HALT`` (or an error) has stopped dispatch and
      every queue is empty and idle; it stays high until the next ``start``.
      ``error`` (Out): sticky; an illegal instruction (unknown opcode, reserved word-0 bits,
      tokens on ``HALT``, a queue waiting for/signalling itself, reserved ``esz``) or one the
      RTL does not take (a GEMM dimension 0 or above ``max_*``; an S instruction with no
      elements or a row above ``max_row``) stops dispatch at that instruction; ``error_pc``
      holds its pc. Not checked: a LAYERNORM block's ``n`` (the RTL uses ``cols``), parameter
      values outside the units' ranges (gamma beyond int16, beta beyond int48, a softmax
      ``mult`` beyond 16 bits: the compiler never writes them).
      Counters (Out, 32 bits, valid while and after running): ``cnt_cycles`` (cycles from cycle 0
      to ``done``; equals the cycle index in which ``done`` rises), ``cnt_busy_d/m/s`` (cycles each
      queue's executor is busy: the start cycle of an instruction and every cycle until its end,
      exclusive, = :attr:`hw.core_model.Timing.busy`), ``cnt_mem_stall`` (cycles in which the DMA
      waits for the memory: a LOAD with pieces left and no data beat offered (the first beat's
      ``max(L, 1)`` cycles of latency and any request-limit gap included), a STORE data beat
      ready and not transferred: refused, or its row's request not yet taken). A LOAD's or
      STORE's busy cycles are its data cycles (1 + pieces, STORE one more) plus these.
    External memory (little-endian bytes):
      ``o_req`` (Out stream of :func:`mem_request_layout`): one request per DMA row: ``addr`` (the
      row's first byte), ``length`` (``cols * esz`` bytes), ``write``.
      ``i_rsp`` (In stream of ``8*B`` bits): the data beats of read requests, in request order,
      ``ceil(length / B)`` beats per request, the row's first byte in the low byte of the first
      beat; bytes past ``length`` are ignored. Requests may run ahead of the data (up to
      ``DMA_OUTSTANDING`` rows); the timing model assumes a memory that takes them at once and
      offers a read's first beat ``L`` cycles after its request's transfer, and not before the
      previous read's last beat (``L >= 1``; the timing model uses ``max(L, 1)``).
      ``o_wdata`` (Out stream of ``8*B`` bits): the data beats of write requests, each offered
      only after its request's transfer, same packing; bytes past ``length`` are zero. Writes
      are posted (no response).

    Number formats and semantics: those of :func:`golden.core.run_program` (bit exact).

    Organisation and timing (the cycle account behind :mod:`hw.core_model`):

    * Fetch/dispatch: instruction ``pc`` is read from the instruction memory (synchronous read,
      the next address presented one cycle ahead) and dispatched in the cycle its queue's FIFO
      (``queue_depth``, :class:`amaranth.lib.fifo.SyncFIFO`) has room, one per cycle in program
      order; a FIFO entry is visible to its executor the cycle after it is written and a slot
      frees the cycle after its entry is taken. ``HALT`` stops dispatch.
    * Executors (D, M): in its idle cycle an executor takes its FIFO's head when every waited
      token counter (one per ordered queue pair, 8 bits) is non-zero and decrements them (the
      instruction's start cycle). In its last busy cycle it increments the signalled counters,
      so a waiting head can start in the next cycle (the end cycle), as can its own successor.
    * Scratchpad: ``sp_bytes`` bytes in ``sp_width`` byte-wide banks
      (:func:`hw.core_model.sp_width`: a power of two holding a memory beat, an A word, an int32
      result row and four int32 logits); every port moves up to ``sp_width`` consecutive bytes at
      any byte address a cycle (each bank touched once, bytes rotated into place). D has a read
      and a write port, M five read ports (A, B, bias, multipliers, shifts) and a write port, S
      three read ports (x, b, key mask) and two write ports, so the queues never contend.
    * DMA rows move in pieces, one a cycle: a piece is the part of a row in one memory beat and,
      when ``sp_cs != esz``, in one element (:func:`hw.core_model.dma_pieces`: ``P =
      ceil(cols*esz/B)`` for contiguous rows). Row requests run ahead of the data, one a cycle,
      while fewer than ``DMA_OUTSTANDING`` (8) requested rows are incomplete.
    * LOAD: start cycle, then requests from the next cycle; the first beat ``L' = max(L, 1)``
      cycles after the first request, then one piece a cycle, rows back to back:
      ``1 + L' + P*(1 + (rows-1) % 8) + (rows-1)//8 * max(P + L', 8*P)`` (the last term is
      ``(rows-1)*P`` when ``L' <= 7*P``: no gap). Just 1 when ``rows * cols == 0``.
    * STORE: start cycle, pieces read one a cycle from the next, each beat offered in the cycle
      after its last piece's read once its row's request has gone: ``2 + rows * P``.
    * GEMM: in the start cycle the operand generators start; the command goes to the engine the
      next cycle. From then on, one scratchpad read per engine word and stream, in parallel:
      B (C bytes), A in WS (R bytes), channel words (bias, multipliers, shifts, 4C bytes each
      from three ports); A in OS (a column of a row block) through a transposer that reads the R
      rows of an R-byte chunk, one a cycle, and sends the chunk's columns from a shift register
      while the next chunk is read. The engine loads, computes (:func:`hw.gemm.gemm_cycles`) and
      each result row it sends is written in that cycle, a row (C int8 or int32 lanes) at a time:
      ``X + gemm_cycles + 3`` with ``X`` = :func:`hw.core_model.gemm_stream_cycles`. With
      ``acc`` the engine runs raw into the result buffer; after its final row one row chunk
      (C columns of a row, row-major) a cycle reads the result word, C_old, bias, multipliers and
      shifts, and sum, sat32 and (requant) the requantizer's six stages follow:
      ``X + gemm_cycles + M*ceil(N/C) + 6`` (int32) or ``+ 12`` (int8).
    * S queue: a start cycle, the parameter block read one 32-bit word a cycle into registers,
      the ADD multiplier tables or the layer norm's gamma/beta RAMs, one cycle for the last
      word, then the elements stream from the scratchpad (x/a, b and the key mask through their
      ports) into the unit, which holds them back while it works on a row (layer norm, softmax);
      ADD, GELU and LAYERNORM take one element a cycle, SOFTMAX a word of up to
      ``SOFTMAX_LANES`` (4) logits of one row; every output (element or softmax word) is written
      in its cycle (int8, int16 twin, split-int16 planes or int32): ``3 + W + U``
      (:func:`hw.core_model.sfu_param_words`, :func:`hw.core_model.sfu_unit_cycles`).
    """

    def __init__(self, *, rows: int, cols: int, dataflow: str = "os", bytes_per_cycle: int = 4,
                 queue_depth: int = 4, sp_bytes: int = 4096, imem_instrs: int = 256,
                 max_m: int = 64, max_k: int = 64, max_n: int = 64, max_row: int = 512) -> None:
        self._rows = check_positive("rows", rows, 64)
        self._cols = check_positive("cols", cols, 64)
        self._dataflow = _check_dataflow(dataflow)
        self._bpc = check_positive("bytes_per_cycle", bytes_per_cycle, 64)
        self._qd = check_positive("queue_depth", queue_depth, 1024)
        self._sp = check_positive("sp_bytes", sp_bytes, 1 << 24)
        self._imem = check_positive("imem_instrs", imem_instrs, 1 << 16)
        self._max_m = check_positive("max_m", max_m, 1 << 16)
        self._max_k = check_positive("max_k", max_k, 1 << 16)
        self._max_n = check_positive("max_n", max_n, 1 << 16)
        self._max_row = check_positive("max_row", max_row, 4096)
        if max_row % SOFTMAX_LANES:
            raise UserValueError(f"max_row must be a multiple of {SOFTMAX_LANES} (the softmax "
                                 f"unit's lanes), not {max_row}")
        beat = unsigned(8 * bytes_per_cycle)
        super().__init__({
            "imem_w_en": In(1),
            "imem_w_addr": In(range(imem_instrs)),
            "imem_w_data": In(INSTR_BITS),
            "start": In(1),
            "done": Out(1),
            "error": Out(1),
            "error_pc": Out(16),
            "cnt_cycles": Out(32),
            "cnt_busy_d": Out(32),
            "cnt_busy_m": Out(32),
            "cnt_busy_s": Out(32),
            "cnt_mem_stall": Out(32),
            "o_req": Out(stream.Signature(mem_request_layout())),
            "i_rsp": In(stream.Signature(beat)),
            "o_wdata": Out(stream.Signature(beat)),
        })

    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    dataflow = property(lambda self: self._dataflow)
    bytes_per_cycle = property(lambda self: self._bpc)
    queue_depth = property(lambda self: self._qd)
    sp_bytes = property(lambda self: self._sp)
    imem_instrs = property(lambda self: self._imem)
    max_m = property(lambda self: self._max_m)
    max_k = property(lambda self: self._max_k)
    max_n = property(lambda self: self._max_n)
    max_row = property(lambda self: self._max_row)

    @property
    def sp_width(self) -> int:
        """Scratchpad banks (bytes a logical port moves a cycle): :func:`hw.core_model.sp_width`."""
        return sp_width(self._rows, self._cols, self._bpc)

    @property
    def result_depth(self) -> int:
        """Words (of ``cols`` int32) in the GEMM result buffer: ``max_m * ceil(max_n / cols)``."""
        return self._max_m * -(-self._max_n // self._cols)

    # ------------------------------------------------------------------------------------------

    def elaborate(self, platform):  # noqa: C901 - the core's control, written out in order
        m = Module()
        B, R, C = self._bpc, self._rows, self._cols

        # ---- memories
        m.submodules.imem = imem = memory.Memory(shape=unsigned(INSTR_BITS), depth=self._imem,
                                                 init=[])
        iw = imem.write_port()
        ir = imem.read_port()
        m.d.comb += [iw.en.eq(self.imem_w_en), iw.addr.eq(self.imem_w_addr),
                     iw.data.eq(self.imem_w_data)]
        sp = _Scratchpad(m, self._sp, self.sp_width)
        self.scratchpad = sp  # the last elaboration's scratchpad, for testbenches to read
        d_wr, m_wr = sp.write_port("dw"), sp.write_port("mw")
        d_rd, pa, pb, pc1, pc2, pc3 = (sp.read_port(n) for n in ("dr", "pa", "pb", "pc1", "pc2",
                                                                   "pc3"))

        m.submodules.gemm = eng = GemmEngine(rows=R, cols=C, dataflow=self._dataflow,
                                             max_m=self._max_m, max_k=self._max_k,
                                             max_n=self._max_n, requant=True)
        m.submodules.res = res = memory.Memory(shape=unsigned(32 * C), depth=self.result_depth,
                                               init=[])
        r_wr, r_rd = res.write_port(), res.read_port()

        m.submodules.dq = dq = fifo.SyncFIFO(width=INSTR_BITS, depth=self._qd)
        m.submodules.mq = mq = fifo.SyncFIFO(width=INSTR_BITS, depth=self._qd)
        m.submodules.sq = sq = fifo.SyncFIFO(width=INSTR_BITS, depth=self._qd)

        # ---- run state and counters
        running = Signal()
        halted = Signal()
        err = Signal()
        err_pc = Signal(16)
        done_r = Signal()
        pc = Signal(16)
        cnt_cycles, cnt_bd, cnt_bm, cnt_bs, cnt_stall = (
            Signal(32, name=n) for n in ("cnt_cyc", "cnt_bd", "cnt_bm", "cnt_bs", "cnt_stall"))
        m.d.comb += [self.error.eq(err), self.error_pc.eq(err_pc), self.cnt_cycles.eq(cnt_cycles),
                     self.cnt_busy_d.eq(cnt_bd), self.cnt_busy_m.eq(cnt_bm),
                     self.cnt_busy_s.eq(cnt_bs), self.cnt_mem_stall.eq(cnt_stall)]
        go = Signal()
        m.d.comb += go.eq(self.start & ~running)

        # token counters tok[(src, dst)]
        pairs = [(s, d) for s in range(3) for d in range(3) if s != d]
        tok = {p: Signal(8, name=f"tok_{'DMS'[p[0]]}{'DMS'[p[1]]}") for p in pairs}
        inc = {p: Signal(name=f"inc_{'DMS'[p[0]]}{'DMS'[p[1]]}") for p in pairs}
        dec = {p: Signal(name=f"dec_{'DMS'[p[0]]}{'DMS'[p[1]]}") for p in pairs}
        for p in pairs:
            with m.If(go):
                m.d.sync += tok[p].eq(0)
            with m.Else():
                m.d.sync += tok[p].eq(tok[p] + inc[p] - dec[p])

        # ---- fetch, decode, dispatch
        ins = ir.data
        w0 = ins[:32]
        opc = w0[:8]
        wait, sig = w0[8:11], w0[12:15]
        stop = Signal()
        m.d.comb += stop.eq(halted | err)
        is_dma = (opc == _OP["LOAD"]) | (opc == _OP["STORE"])
        is_gemm = opc == _OP["GEMM"]
        bad = Signal()
        s_bad = w0[11] | w0[15] | wait[_Q_S] | sig[_Q_S]
        is_sfu = (opc >= _OP["ADD"]) & (opc <= _OP["GELU"])
        g_m, g_k, g_n = ins[128:144], ins[144:160], _w(ins, 5)
        with m.If(opc == _OP["HALT"]):
            m.d.comb += bad.eq(w0[8:] != 0)
        with m.Elif(is_dma):
            m.d.comb += bad.eq(w0[11] | w0[15] | (w0[18:] != 0) | wait[_Q_D] | sig[_Q_D]
                               | (w0[16:18] == 3))
        with m.Elif(is_gemm):
            m.d.comb += bad.eq(w0[11] | w0[15] | w0[19] | (w0[25:] != 0) | wait[_Q_M] | sig[_Q_M]
                               | (g_m == 0) | (g_k == 0) | (g_n == 0) | (g_m > self._max_m)
                               | (g_k > self._max_k) | (g_n > self._max_n))
        with m.Elif(opc == _OP["ADD"]):
            m.d.comb += bad.eq(s_bad | w0[19] | (w0[26:] != 0) | (ins[128:144] == 0)
                               | (ins[144:160] == 0) | (ins[144:160] > self._max_row))
        with m.Elif((opc == _OP["LAYERNORM"]) | (opc == _OP["SOFTMAX"])):
            m.d.comb += bad.eq(s_bad | Mux(opc == _OP["SOFTMAX"], w0[19:] != 0, w0[18:] != 0)
                               | (ins[96:112] == 0) | (ins[112:128] == 0)
                               | (ins[112:128] > self._max_row))
        with m.Elif(opc == _OP["GELU"]):
            m.d.comb += bad.eq(s_bad | (w0[17:] != 0) | (_w(ins, 3) == 0))
        with m.Else():
            m.d.comb += bad.eq(1)  # unknown opcode
        dispatching = Signal()
        stop_now = Signal()
        m.d.comb += [dq.w_data.eq(ins), mq.w_data.eq(ins), sq.w_data.eq(ins)]
        with m.If(running & ~stop):
            with m.If(bad):
                m.d.comb += stop_now.eq(1)
                m.d.sync += [err.eq(1), err_pc.eq(pc)]
            with m.Elif(opc == _OP["HALT"]):
                m.d.comb += stop_now.eq(1)
                m.d.sync += halted.eq(1)
            with m.Elif(is_dma):
                m.d.comb += [dq.w_en.eq(1), dispatching.eq(dq.w_rdy)]
            with m.Elif(is_sfu):
                m.d.comb += [sq.w_en.eq(1), dispatching.eq(sq.w_rdy)]
            with m.Else():
                m.d.comb += [mq.w_en.eq(1), dispatching.eq(mq.w_rdy)]
        with m.If(dispatching):
            m.d.sync += pc.eq(pc + 1)
        m.d.comb += ir.addr.eq(Mux(running, Mux(dispatching, pc + 1, pc), 0))

        d_idle, m_idle, s_idle = Signal(), Signal(), Signal()
        done_now = Signal()
        m.d.comb += done_now.eq(running & (stop | stop_now) & ~dq.r_rdy & ~mq.r_rdy & ~sq.r_rdy
                                & d_idle & m_idle & s_idle)
        m.d.comb += self.done.eq(done_r | done_now)
        with m.If(go):
            m.d.sync += [running.eq(1), halted.eq(0), err.eq(0), err_pc.eq(0), done_r.eq(0),
                         pc.eq(0), cnt_cycles.eq(0), cnt_bd.eq(0), cnt_bm.eq(0), cnt_bs.eq(0),
                         cnt_stall.eq(0)]
        with m.Elif(done_now):
            m.d.sync += [running.eq(0), done_r.eq(1)]
        with m.Elif(running):
            m.d.sync += cnt_cycles.eq(cnt_cycles + 1)

        def can_start(head, q):
            ok = Const(1)
            for s in range(3):
                if s != q:
                    ok = ok & (~head[8 + s] | (tok[(s, q)] != 0))
            return ok

        def take(head, q):
            for s in range(3):
                if s != q:
                    m.d.comb += dec[(s, q)].eq(head[8 + s])

        def finish(raw, q):
            for d in range(3):
                if d != q:
                    m.d.comb += inc[(q, d)].eq(raw[12 + d])

        # ---- D executor: LOAD / STORE
        # A row is moved in pieces: a piece is the bytes of the row that share one memory beat
        # and, when the scratchpad side is strided (sp_cs != esz), one element. A contiguous row
        # is thus one piece per beat; a scattered (LOAD) or gathered (STORE) row one piece per
        # element per beat it touches. One piece a cycle. Requests run ahead of the data by up
        # to DMA_OUTSTANDING rows (requested rows not yet complete).
        d_ins = Signal(INSTR_BITS)
        d_rows = d_ins[96:112]
        d_ext_rs, d_sp_rs, d_sp_cs = _w(d_ins, 4), _w(d_ins, 5), _w(d_ins, 6)
        d_code = d_ins[16:18]
        d_store, d_contig = Signal(), Signal()
        d_nbytes = Signal(18)
        d_rq = Signal(16)       # rows requested
        d_done = Signal(16)     # rows complete (LOAD: last piece written; STORE: last beat sent)
        d_ir = Signal(16)       # STORE: the row of the next piece read
        d_qext = Signal(32)     # the next request's address
        d_pos = Signal(18)      # row byte of the next piece
        d_bo = Signal(range(max(B, 2)))  # its byte within the beat
        d_eb = Signal(2)        # its byte within the element (strided rows)
        d_sprow, d_col, d_dst = (Signal(32, name=n) for n in ("d_sprow", "d_col", "d_dst"))
        d_busy, d_stall, d_run = Signal(), Signal(), Signal()

        row_left = Signal(18)
        elem_left = Signal(3)
        cap = Signal(range(B + 1))
        p_len = Signal(range(B + 1))
        p_rowend, p_beatend, p_elemend = Signal(), Signal(), Signal()
        m.d.comb += [
            row_left.eq(d_nbytes - d_pos),
            elem_left.eq((Const(1, 3) << d_code) - d_eb),
            cap.eq(Mux(~d_contig & (elem_left < B - d_bo), elem_left, B - d_bo)),
            p_len.eq(Mux(row_left < cap, row_left, cap)),
            p_rowend.eq(p_len == row_left),
            p_beatend.eq((d_bo + p_len == B) | p_rowend),
            p_elemend.eq(p_len == elem_left),
        ]

        def d_piece():
            """Advance past the current piece."""
            with m.If(p_rowend):
                nxt = d_sprow + d_sp_rs
                m.d.sync += [d_pos.eq(0), d_bo.eq(0), d_eb.eq(0), d_sprow.eq(nxt),
                             d_col.eq(nxt), d_dst.eq(nxt)]
            with m.Else():
                m.d.sync += [d_pos.eq(d_pos + p_len),
                             d_bo.eq(Mux(d_bo + p_len == B, 0, d_bo + p_len))]
                with m.If(~d_contig & p_elemend):
                    m.d.sync += [d_eb.eq(0), d_col.eq(d_col + d_sp_cs),
                                 d_dst.eq(d_col + d_sp_cs)]
                with m.Else():
                    m.d.sync += [d_eb.eq(d_eb + p_len), d_dst.eq(d_dst + p_len)]

        # requests: one a cycle while rows remain and fewer than DMA_OUTSTANDING are incomplete
        m.d.comb += [
            self.o_req.valid.eq(d_run & (d_rq != d_rows) & (d_rq - d_done < DMA_OUTSTANDING)),
            self.o_req.payload.addr.eq(d_qext), self.o_req.payload.length.eq(d_nbytes),
            self.o_req.payload.write.eq(d_store),
        ]
        with m.If(self.o_req.valid & self.o_req.ready):
            m.d.sync += [d_rq.eq(d_rq + 1), d_qext.eq(d_qext + d_ext_rs)]

        # LOAD: the piece of the offered beat goes to the scratchpad in its cycle
        m.d.comb += [d_wr.addr.eq(d_dst), d_wr.data.eq(self.i_rsp.payload >> (d_bo * 8)),
                     d_wr.mask.eq(Cat(*(p_len > j for j in range(sp.width))))]
        # STORE: pieces read one a cycle; a beat is offered the cycle after its last piece's
        # read, once its row's request has been transferred
        s_v, s_beatend, s_rowend, s_last = Signal(), Signal(), Signal(), Signal()
        s_bo = Signal.like(d_bo)
        s_len = Signal.like(p_len)
        s_row = Signal(16)
        wbuf = Signal(8 * B)
        merged = Signal(8 * B)
        hold, req_ok = Signal(), Signal()
        piece = d_rd.data & Cat(*(Mux(s_len > j, 0xFF, 0) for j in range(sp.width)))
        m.d.comb += [
            merged.eq(wbuf | (piece << (s_bo * 8))),
            req_ok.eq(d_rq > s_row),
            self.o_wdata.payload.eq(merged),
            self.o_wdata.valid.eq(s_v & s_beatend & req_ok),
            hold.eq(s_v & s_beatend & ~(req_ok & self.o_wdata.ready)),
            d_rd.addr.eq(d_dst), d_rd.en.eq(~hold),
        ]
        with m.FSM(name="dfsm"):
            with m.State("IDLE"):
                m.d.comb += d_idle.eq(1)
                head = dq.r_data
                with m.If(dq.r_rdy & can_start(head, _Q_D)):
                    m.d.comb += [dq.r_en.eq(1), d_busy.eq(1)]
                    take(head, _Q_D)
                    cols = head[112:128]
                    nb = Signal(18)
                    m.d.comb += nb.eq(cols << head[16:18])
                    m.d.sync += [d_ins.eq(head), d_nbytes.eq(nb), d_rq.eq(0), d_done.eq(0),
                                 d_ir.eq(0), d_qext.eq(_w(head, 1)), d_pos.eq(0), d_bo.eq(0),
                                 d_eb.eq(0), d_sprow.eq(_w(head, 2)), d_col.eq(_w(head, 2)),
                                 d_dst.eq(_w(head, 2)), d_store.eq(head[:8] == _OP["STORE"]),
                                 d_contig.eq(_w(head, 6) == (Const(1, 3) << head[16:18])),
                                 s_v.eq(0), wbuf.eq(0)]
                    with m.If((head[96:112] == 0) | (cols == 0)):
                        finish(head, _Q_D)
                    with m.Elif(head[:8] == _OP["LOAD"]):
                        m.next = "LOAD"
                    with m.Else():
                        m.next = "STORE"
            with m.State("LOAD"):
                m.d.comb += [d_busy.eq(1), d_run.eq(1), d_stall.eq(~self.i_rsp.valid)]
                with m.If(self.i_rsp.valid):
                    m.d.comb += [d_wr.en.eq(1), self.i_rsp.ready.eq(p_beatend)]
                    d_piece()
                    with m.If(p_rowend):
                        m.d.sync += d_done.eq(d_done + 1)
                        with m.If(d_done == d_rows - 1):
                            finish(d_ins, _Q_D)
                            m.next = "IDLE"
            with m.State("STORE"):
                m.d.comb += [d_busy.eq(1), d_run.eq(1), d_stall.eq(hold)]
                with m.If(~hold):
                    with m.If(s_v):
                        m.d.sync += wbuf.eq(Mux(s_beatend, 0, merged))
                        with m.If(s_rowend):
                            m.d.sync += d_done.eq(d_done + 1)
                        with m.If(s_last):
                            finish(d_ins, _Q_D)
                            m.next = "IDLE"
                    with m.If(d_ir != d_rows):
                        m.d.sync += [s_v.eq(1), s_bo.eq(d_bo), s_len.eq(p_len),
                                     s_beatend.eq(p_beatend), s_rowend.eq(p_rowend),
                                     s_row.eq(d_ir), s_last.eq(p_rowend & (d_ir == d_rows - 1))]
                        d_piece()
                        with m.If(p_rowend):
                            m.d.sync += d_ir.eq(d_ir + 1)
                    with m.Else():
                        m.d.sync += s_v.eq(0)
        with m.If(running & d_busy):
            m.d.sync += cnt_bd.eq(cnt_bd + 1)
        with m.If(running & d_stall):
            m.d.sync += cnt_stall.eq(cnt_stall + 1)

        # ---- M executor: GEMM
        g_ins = Signal(INSTR_BITS)
        gc = _w(g_ins, 3)
        gm, gk, gn = g_ins[128:144], g_ins[144:160], _w(g_ins, 5)[:17]
        gbias, grq, gacc, gsh = g_ins[16], g_ins[17], g_ins[18], g_ins[20:25]
        g_bias_addr, g_qp = _w(g_ins, 6), _w(g_ins, 7)
        hd = mq.r_data  # the head, for the operand generators' start in the start cycle
        m_busy = Signal()
        gen_go = Signal()
        # with acc the engine runs raw (A @ B, exact int32): bias, C_old << acc_shift,
        # saturation and requant are done in the accumulate write-back
        m.d.comb += [eng.i_cmd.payload.m.eq(gm), eng.i_cmd.payload.k.eq(gk),
                     eng.i_cmd.payload.n.eq(gn), eng.i_cmd.payload.bias.eq(gbias & ~gacc),
                     eng.i_cmd.payload.requant.eq(grq & ~gacc)]

        def word_gen(name, port, strm, nl, base, so, si, n_i, limit):
            """Engine words of ``nl`` lanes, each one scratchpad read of ``nl`` consecutive
            bytes: for each outer block (``o`` += nl while below ``limit``), for each of ``n_i``
            inner steps, the word at ``base + block*so + i*si``; lanes at ``o + l >= limit``
            are zero. Word ``j`` is read in cycle ``j`` after the start and offered the next."""
            act = Signal(name=f"{name}_act")
            inner = Signal(17, name=f"{name}_i")
            ob = Signal(18, name=f"{name}_ob")
            a_o, a_i = Signal(32, name=f"{name}_ao"), Signal(32, name=f"{name}_ai")
            dv = Signal(name=f"{name}_dv")
            dob = Signal(18, name=f"{name}_dob")
            m.d.comb += port.addr.eq(a_i)
            m.d.sync += [dv.eq(act), dob.eq(ob)]
            with m.If(gen_go):
                m.d.sync += [act.eq(1), inner.eq(0), ob.eq(0), a_o.eq(base), a_i.eq(base)]
            with m.Elif(act):
                with m.If(inner == n_i - 1):
                    m.d.sync += [inner.eq(0), ob.eq(ob + nl), a_o.eq(a_o + so),
                                 a_i.eq(a_o + so)]
                    with m.If(ob + nl >= limit):
                        m.d.sync += act.eq(0)
                with m.Else():
                    m.d.sync += [inner.eq(inner + 1), a_i.eq(a_i + si)]
            m.d.comb += strm.valid.eq(dv)
            for lane in range(nl):
                m.d.comb += strm.payload[lane].eq(
                    Mux(dob + lane < limit, port.data[8 * lane:8 * lane + 8], 0))

        if self._dataflow == "os":
            # A words are columns of a row block: R rows of an R-byte chunk are read (one row a
            # cycle) into a fill buffer, copied to a shift register when complete and sent one
            # column a cycle while the next chunk is read
            t_act = Signal()
            t_rr = Signal(range(max(R, 2)))
            t_k0, t_ib = Signal(17), Signal(17)
            t_arow, t_ablk, t_arb = Signal(32), Signal(32), Signal(32)
            t_dv, t_dok, t_dlast = Signal(), Signal(), Signal()
            t_drr = Signal.like(t_rr)
            t_dw = Signal(range(R + 1))
            rk = Signal(32)
            m.d.comb += [rk.eq(gk * R), pa.addr.eq(t_arow)]
            m.d.sync += [t_dv.eq(t_act), t_drr.eq(t_rr), t_dok.eq(t_ib + t_rr < gm),
                         t_dw.eq(Mux(gk - t_k0 < R, gk - t_k0, R)), t_dlast.eq(t_rr == R - 1)]
            with m.If(gen_go):
                m.d.sync += [t_act.eq(1), t_rr.eq(0), t_k0.eq(0), t_ib.eq(0),
                             t_arow.eq(_w(hd, 1)), t_ablk.eq(_w(hd, 1)), t_arb.eq(_w(hd, 1))]
            with m.Elif(t_act):
                with m.If(t_rr == R - 1):
                    m.d.sync += t_rr.eq(0)
                    with m.If(t_k0 + R >= gk):
                        m.d.sync += [t_k0.eq(0), t_ib.eq(t_ib + R), t_arb.eq(t_arb + rk),
                                     t_ablk.eq(t_arb + rk), t_arow.eq(t_arb + rk)]
                        with m.If(t_ib + R >= gm):
                            m.d.sync += t_act.eq(0)
                    with m.Else():
                        m.d.sync += [t_k0.eq(t_k0 + R), t_ablk.eq(t_ablk + R),
                                     t_arow.eq(t_ablk + R)]
                with m.Else():
                    m.d.sync += [t_rr.eq(t_rr + 1), t_arow.eq(t_arow + gk)]
            chunk = Mux(t_dok, pa.data[:8 * R], 0)
            fill = [Signal(8 * R, name=f"t_fill{r}") for r in range(R - 1)]
            emit = [Signal(8 * R, name=f"t_emit{r}") for r in range(R)]
            t_cnt = Signal(range(R + 1))
            with m.If(t_dv):
                for r in range(R - 1):
                    with m.If(t_drr == r):
                        m.d.sync += fill[r].eq(chunk)
            with m.If(t_dv & t_dlast):
                m.d.sync += [emit[r].eq(fill[r]) for r in range(R - 1)]
                m.d.sync += [emit[R - 1].eq(chunk), t_cnt.eq(t_dw)]
            with m.Elif(t_cnt != 0):
                m.d.sync += [e.eq(e >> 8) for e in emit] + [t_cnt.eq(t_cnt - 1)]
            m.d.comb += eng.i_a.valid.eq(t_cnt != 0)
            m.d.comb += [eng.i_a.payload[r].eq(emit[r][:8]) for r in range(R)]
        else:
            word_gen("ga", pa, eng.i_a, R, _w(hd, 1), R, gk, gm, gk)
        word_gen("gb", pb, eng.i_b, C, _w(hd, 2), C, gn, gk, gn)

        # channel words: per column block, bias, multipliers and shifts (int32 each) read in
        # parallel, 4 * C bytes each
        ch_act, ch_dv = Signal(), Signal()
        ch_nb, ch_dnb = Signal(18), Signal(18)
        ch_off = Signal(32)
        n4 = Signal(32)
        m.d.comb += [n4.eq(gn << 2), pc1.addr.eq(g_bias_addr + ch_off), pc2.addr.eq(g_qp + ch_off),
                     pc3.addr.eq(g_qp + n4 + ch_off)]
        m.d.sync += [ch_dv.eq(ch_act), ch_dnb.eq(ch_nb)]
        with m.If(gen_go):
            m.d.sync += [ch_act.eq((hd[16] | hd[17]) & ~hd[18]), ch_nb.eq(0), ch_off.eq(0)]
        with m.Elif(ch_act):
            m.d.sync += [ch_nb.eq(ch_nb + C), ch_off.eq(ch_off + 4 * C)]
            with m.If(ch_nb + C >= gn):
                m.d.sync += ch_act.eq(0)
        m.d.comb += eng.i_chan.valid.eq(ch_dv)
        for c in range(C):
            lane = eng.i_chan.payload[c]
            ok = ch_dnb + c < gn
            m.d.comb += [lane.bias.eq(Mux(ok & gbias, pc1.data[32 * c:32 * c + 32], 0)),
                         lane.mult.eq(Mux(ok, pc2.data[32 * c:32 * c + 32], 0)),
                         lane.shift.eq(Mux(ok, pc3.data[32 * c:32 * c + 6], 0))]

        # result rows: position counters (row within the tile / row, first column), the result
        # buffer address (acc: column-block-major, word jb * max_m + row) and, without acc, the
        # row's scratchpad address: the row is written there in the cycle it is offered
        mm = self._max_m
        rx_r = Signal(17)       # row within the tile (OS) / row (WS)
        rx_mb = Signal(18)      # OS: first row of the row block
        rx_nb = Signal(18)      # first column of the column block
        rx_jb = Signal(range(self.result_depth + mm + 1))  # jb * max_m
        rx_idx = Signal(range(self.result_depth + mm + R + 1))
        wa, wtb, wrb = Signal(32), Signal(32), Signal(32)
        out32 = Signal()
        rowstep, colstep, rbstep = Signal(32), Signal(32), Signal(32)
        m.d.comb += [out32.eq(~grq | gacc), rowstep.eq(Mux(out32, gn << 2, gn)),
                     colstep.eq(Mux(out32, 4 * C, C)), rbstep.eq(rowstep * R)]
        m.d.comb += [eng.o_c.ready.eq(1), r_wr.en.eq(eng.o_c.valid), r_wr.addr.eq(rx_idx),
                     r_wr.data.eq(Value.cast(eng.o_c.payload.data))]
        with m.If(gen_go):
            m.d.sync += [rx_r.eq(0), rx_mb.eq(0), rx_nb.eq(0), rx_jb.eq(0), rx_idx.eq(0),
                         wa.eq(_w(hd, 3)), wtb.eq(_w(hd, 3)), wrb.eq(_w(hd, 3))]
        with m.Elif(eng.o_c.valid):
            if self._dataflow == "os":
                with m.If((rx_r == R - 1) | (rx_mb + rx_r == gm - 1)):
                    m.d.sync += rx_r.eq(0)
                    with m.If(rx_nb + C >= gn):
                        m.d.sync += [rx_nb.eq(0), rx_jb.eq(0), rx_mb.eq(rx_mb + R),
                                     rx_idx.eq(rx_mb + R), wrb.eq(wrb + rbstep),
                                     wtb.eq(wrb + rbstep), wa.eq(wrb + rbstep)]
                    with m.Else():
                        m.d.sync += [rx_nb.eq(rx_nb + C), rx_jb.eq(rx_jb + mm),
                                     rx_idx.eq(rx_jb + mm + rx_mb), wtb.eq(wtb + colstep),
                                     wa.eq(wtb + colstep)]
                with m.Else():
                    m.d.sync += [rx_r.eq(rx_r + 1), rx_idx.eq(rx_idx + 1), wa.eq(wa + rowstep)]
            else:
                with m.If(rx_r == gm - 1):
                    m.d.sync += [rx_r.eq(0), rx_jb.eq(rx_jb + mm), rx_idx.eq(rx_jb + mm),
                                 rx_nb.eq(rx_nb + C), wtb.eq(wtb + colstep),
                                 wa.eq(wtb + colstep)]
                with m.Else():
                    m.d.sync += [rx_r.eq(rx_r + 1), rx_idx.eq(rx_idx + 1), wa.eq(wa + rowstep)]
        lanes_ok = [rx_nb + c < gn for c in range(C)]
        lanes = [eng.o_c.payload.data[c].as_unsigned() for c in range(C)]
        with m.If(~gacc):
            m.d.comb += [m_wr.addr.eq(wa), m_wr.en.eq(eng.o_c.valid),
                         m_wr.data.eq(Mux(out32, Cat(*lanes), Cat(*(v[:8] for v in lanes)))),
                         m_wr.mask.eq(Mux(out32, Cat(*(Mux(ok, 0xF, 0) for ok in lanes_ok)),
                                          Cat(*lanes_ok)))]

        # accumulate-on-top write-back (acc), after the engine's final row: one row chunk (row
        # mi, C columns from nb) a cycle in row-major order; in its cycle the result buffer word
        # and C_old, bias, multiplier and shift (C int32 each) are read; a cycle later
        # sum = A@B + bias + (C_old << acc_shift) is registered, then sat32 (int32 out written
        # then), then hw.requant.requant_stages (the int8 row written six cycles later). An
        # element's C_old bytes are read before anything overlapping them is written.
        wb_act = Signal()
        wb_mi, wb_nb = Signal(17), Signal(18)
        wb_jb = Signal(range(self.result_depth + mm + 1))
        wb_ca, wb_rca, wb_off = Signal(32), Signal(32), Signal(32)
        wb_last = Signal()
        m.d.comb += wb_last.eq((wb_nb + C >= gn) & (wb_mi == gm - 1))
        with m.If(wb_act):
            m.d.comb += [r_rd.addr.eq(wb_jb + wb_mi), pa.addr.eq(wb_ca),
                         pc1.addr.eq(g_bias_addr + wb_off), pc2.addr.eq(g_qp + wb_off),
                         pc3.addr.eq(g_qp + n4 + wb_off)]
            with m.If(wb_nb + C >= gn):
                m.d.sync += [wb_nb.eq(0), wb_jb.eq(0), wb_off.eq(0), wb_mi.eq(wb_mi + 1),
                             wb_rca.eq(wb_rca + n4), wb_ca.eq(wb_rca + n4)]
                with m.If(wb_mi == gm - 1):
                    m.d.sync += wb_act.eq(0)
            with m.Else():
                m.d.sync += [wb_nb.eq(wb_nb + C), wb_jb.eq(wb_jb + mm), wb_off.eq(wb_off + 4 * C),
                             wb_ca.eq(wb_ca + 4 * C)]
        # stage 1: the data of the chunk read last cycle
        v1, l1 = Signal(), Signal()
        ok1 = Signal(C)
        ca1 = Signal(32)
        m.d.sync += [v1.eq(wb_act), l1.eq(wb_last), ca1.eq(wb_ca),
                     ok1.eq(Cat(*(wb_nb + c < gn for c in range(C))))]
        v2, l2, v3, l3 = Signal(), Signal(), Signal(), Signal()
        ok2, ok3 = Signal(C), Signal(C)
        ca2, ca3 = Signal(32), Signal(32)
        m.d.sync += [v2.eq(v1), l2.eq(l1), ok2.eq(ok1), ca2.eq(ca1),
                     v3.eq(v2), l3.eq(l2), ok3.eq(ok2), ca3.eq(ca2)]
        y32s, m2s, sh2s = [], [], []
        for c in range(C):
            s1 = Signal(signed(66), name=f"acs{c}")
            y32 = Signal(signed(32), name=f"acy{c}")
            m1, m2 = Signal(signed(32), name=f"acm1_{c}"), Signal(signed(32), name=f"acm2_{c}")
            sh1, sh2 = Signal(6, name=f"acsh1_{c}"), Signal(6, name=f"acsh2_{c}")
            raw = r_rd.data.word_select(c, 32).as_signed()
            cold = pa.data[32 * c:32 * c + 32].as_signed()
            bias = pc1.data[32 * c:32 * c + 32].as_signed()
            m.d.sync += [s1.eq(raw + Mux(gbias, bias, 0) + (cold << gsh)),
                         m1.eq(pc2.data[32 * c:32 * c + 32]), sh1.eq(pc3.data[32 * c:32 * c + 6]),
                         y32.eq(saturate_bits(s1, 32)), m2.eq(m1), sh2.eq(sh1)]
            y32s.append(y32)
            m2s.append(m2)
            sh2s.append(sh2)
        y8s = requant_stages(m, Const(1), y32s, m2s, sh2s, "acrq", platform=platform)
        # the requantizer's six stages: valid, last, lane mask and address delayed alongside
        vq, lq, okq, caq = v3, l3, ok3, ca3
        for t in range(REQUANT_STAGES):
            nv, nl_, nok, nca = (Signal(name=f"acqv{t}"), Signal(name=f"acql{t}"),
                                 Signal(C, name=f"acqok{t}"), Signal(32, name=f"acqca{t}"))
            m.d.sync += [nv.eq(vq), nl_.eq(lq), nok.eq(okq), nca.eq(caq)]
            vq, lq, okq, caq = nv, nl_, nok, nca
        ac_done = Signal()
        with m.If(gacc):
            with m.If(grq):
                m.d.comb += [m_wr.addr.eq(gc + (caq - gc)[2:32]), m_wr.en.eq(vq),
                             m_wr.data.eq(Cat(*(y[:8] for y in y8s))), m_wr.mask.eq(okq),
                             ac_done.eq(vq & lq)]
            with m.Else():
                m.d.comb += [m_wr.addr.eq(ca3), m_wr.en.eq(v3),
                             m_wr.data.eq(Cat(*(y.as_unsigned() for y in y32s))),
                             m_wr.mask.eq(Cat(*(Mux(ok3[c], 0xF, 0) for c in range(C)))),
                             ac_done.eq(v3 & l3)]

        with m.FSM(name="mfsm"):
            with m.State("IDLE"):
                m.d.comb += m_idle.eq(1)
                head = mq.r_data
                with m.If(mq.r_rdy & can_start(head, _Q_M)):
                    m.d.comb += [mq.r_en.eq(1), m_busy.eq(1), gen_go.eq(1)]
                    take(head, _Q_M)
                    m.d.sync += g_ins.eq(head)
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [m_busy.eq(1), eng.i_cmd.valid.eq(1)]
                with m.If(eng.i_cmd.ready):
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += m_busy.eq(1)
                with m.If(eng.o_c.valid & eng.o_c.payload.last):
                    with m.If(gacc):
                        m.d.sync += [wb_act.eq(1), wb_mi.eq(0), wb_nb.eq(0), wb_jb.eq(0),
                                     wb_off.eq(0), wb_ca.eq(gc), wb_rca.eq(gc)]
                        m.next = "WB"
                    with m.Else():
                        finish(g_ins, _Q_M)
                        m.next = "IDLE"
            with m.State("WB"):
                m.d.comb += m_busy.eq(1)
                with m.If(ac_done):
                    finish(g_ins, _Q_M)
                    m.next = "IDLE"
        with m.If(running & m_busy):
            m.d.sync += cnt_bm.eq(cnt_bm + 1)

        self._elab_sfu(m, sp, sq, s_idle, cnt_bs, running, can_start, take, finish)
        return m

    def _elab_sfu(self, m, sp, sq, s_idle, cnt_bs, running, can_start, take, finish):
        """The S executor: ADD, GELU, LAYERNORM, SOFTMAX (see the class docstring)."""
        R = self._max_row
        xr = sp.read_port("sx")    # x / a elements and parameter words
        br = sp.read_port("sb")    # b elements (ADD)
        kr = sp.read_port("sk")    # key-mask bytes (SOFTMAX)
        yw = sp.write_port("sy")   # y (int8 or int32)
        y2w = sp.write_port("sy2")  # y16 / y_lo
        m.submodules.gelu = gelu = Gelu(lanes=1, runtime=True)
        m.submodules.lnorm = ln = LayerNorm(lanes=1, runtime=True, max_n=R)
        P = SOFTMAX_LANES
        m.submodules.smax = sm = Softmax(lanes=P, max_length=R, runtime=True)
        m.submodules.ma_t = ma_t = memory.Memory(shape=signed(24), depth=R, init=[])
        m.submodules.mb_t = mb_t = memory.Memory(shape=signed(24), depth=R, init=[])
        ma_w, mb_w, ma_r, mb_r = ma_t.write_port(), mb_t.write_port(), ma_t.read_port(), \
            mb_t.read_port()

        s_ins = Signal(INSTR_BITS)
        op = s_ins[:8]
        is_add, is_ln = op == _OP["ADD"], op == _OP["LAYERNORM"]
        is_sm, is_ge = op == _OP["SOFTMAX"], op == _OP["GELU"]
        x32 = s_ins[16] & ~is_ge
        add_out32, add_b16, add_shift = s_ins[17], s_ins[18], s_ins[20:26]
        ln_out16, sm_mask, sm_half, ge_split = s_ins[17], s_ins[17], s_ins[18], s_ins[16]
        s_rows, s_cols = Signal(16), Signal(16)
        n_el = Signal(32)       # elements
        n_par = Signal(18)      # parameter words
        base_km = Signal(32)

        s_busy = Signal()
        # parameter phase
        pa = Signal(32)
        pi = Signal(18)
        pv, pidx = Signal(), Signal(18)
        # stream phase: reader
        xa, ba = Signal(32), Signal(32)
        re = Signal(32)
        rcol = Signal(16)
        r1v, r1_rowlast, r1_last = Signal(), Signal(), Signal()
        cons_ready = Signal()
        adv_r = Signal()
        # writer
        ya, y2a = Signal(32), Signal(32)
        wo = Signal(32)
        ocol = Signal(16)             # SOFTMAX: column of the next output word
        o_n = Signal(range(P + 1))    # elements in the current output (SOFTMAX: a word)

        def head_fields(h):
            hop = h[:8]
            return hop == _OP["ADD"], hop == _OP["GELU"], hop == _OP["LAYERNORM"]

        wd = xr.data[:32]  # the parameter word read last cycle
        in_param, in_stream, s_out_v = Signal(), Signal(), Signal()
        with m.FSM(name="sfsm"):
            with m.State("IDLE"):
                m.d.comb += s_idle.eq(1)
                head = sq.r_data
                with m.If(sq.r_rdy & can_start(head, _Q_S)):
                    m.d.comb += [sq.r_en.eq(1), s_busy.eq(1)]
                    take(head, _Q_S)
                    h_add, h_ge, h_ln = head_fields(head)
                    rows = Mux(h_add, head[128:144], head[96:112])
                    cols = Mux(h_add, head[144:160], head[112:128])
                    m.d.sync += [s_ins.eq(head), pa.eq(Mux(h_add | (head[:8] == _OP["SOFTMAX"]),
                                                          _w(head, 5), _w(head, 4))),
                                 s_rows.eq(Mux(h_ge, 1, rows)), s_cols.eq(Mux(h_ge, 1, cols)),
                                 n_el.eq(Mux(h_ge, _w(head, 3), rows * cols)),
                                 n_par.eq(Mux(h_add, cols << 1, Mux(h_ge, 5, Mux(
                                     h_ln, 5 + cols * 3, 2)))),
                                 base_km.eq(_w(head, 4)), pi.eq(0),
                                 xa.eq(_w(head, 1)), ba.eq(_w(head, 2)),
                                 ya.eq(Mux(h_add, _w(head, 3), _w(head, 2))), y2a.eq(_w(head, 5)),
                                 re.eq(0), rcol.eq(0), wo.eq(0), ocol.eq(0)]
                    m.next = "PARAM"
            with m.State("PARAM"):
                m.d.comb += [s_busy.eq(1), in_param.eq(1)]
                m.d.comb += xr.addr.eq(pa)
                m.d.sync += [pa.eq(pa + 4), pi.eq(pi + 1)]
                with m.If(pi == n_par - 1):
                    m.next = "PWAIT"
            with m.State("PWAIT"):
                m.d.comb += s_busy.eq(1)
                m.next = "STREAM"
            with m.State("STREAM"):
                m.d.comb += [s_busy.eq(1), in_stream.eq(1)]
                last_out = Signal()
                m.d.comb += last_out.eq(wo + o_n == n_el)
                with m.If(s_out_v & last_out):
                    finish(s_ins, _Q_S)
                    m.next = "IDLE"
        m.d.sync += [pv.eq(in_param), pidx.eq(pi)]

        # parameter words -> registers and tables
        g_prm, l_prm, s_prm = gelu.prm, ln.prm, sm.prm
        eps_lo = Signal(32)
        m.d.comb += [ma_w.addr.eq(pidx), mb_w.addr.eq(pidx - s_cols),
                     ma_w.data.eq(wd[:24]), mb_w.data.eq(wd[:24]),
                     ln.gb_wg.eq(wd[:16]), ln.gb_wb.eq(Cat(eps_lo, wd)[:48]),
                     ln.gb_waddr.eq(Mux(pidx < 5 + s_cols, pidx - 5,
                                        (pidx - 5 - s_cols) >> 1)),
                     l_prm.n.eq(s_cols)]
        with m.If(pv):
            with m.If(is_add):
                m.d.comb += [ma_w.en.eq(pidx < s_cols), mb_w.en.eq(pidx >= s_cols)]
            with m.If(is_ge):
                with m.Switch(pidx):
                    for j, fld in enumerate(("fs", "k", "b", "mult", "shift")):
                        with m.Case(j):
                            sh = getattr(g_prm, fld)
                            m.d.sync += sh.eq(wd[:len(sh)])
            with m.If(is_sm):
                with m.If(pidx == 0):
                    m.d.sync += s_prm.mult.eq(wd[:16])
                with m.If(pidx == 1):
                    m.d.sync += s_prm.shift.eq(wd[:6])
            with m.If(is_ln):
                with m.If(pidx == 1):
                    m.d.sync += l_prm.in_shift.eq(wd[:6])
                with m.If(pidx == 2):
                    m.d.sync += l_prm.g_shift.eq(wd[:6])
                with m.If(pidx == 4):
                    m.d.sync += l_prm.eps.eq(Cat(eps_lo, wd)[:62])
                with m.If((pidx >= 5) & (pidx < 5 + s_cols)):
                    m.d.comb += ln.gb_we_g.eq(1)
                with m.If((pidx >= 5 + s_cols) & (pidx - 5 - s_cols)[0]):
                    m.d.comb += ln.gb_we_b.eq(1)
                m.d.sync += eps_lo.eq(wd)

        # reader: element re at x + re*esz (and b, km + column), one a cycle; a stalled element
        # waits in the port registers (enable low)
        m.d.comb += adv_r.eq(~r1v | cons_ready)
        issue = Signal()
        m.d.comb += issue.eq(in_stream & adv_r & (re != n_el))
        with m.If(in_stream):
            m.d.comb += [xr.addr.eq(xa), xr.en.eq(adv_r)]
        m.d.comb += [br.addr.eq(ba), br.en.eq(adv_r), kr.en.eq(adv_r), ma_r.en.eq(adv_r),
                     mb_r.en.eq(adv_r)]
        m.d.comb += [kr.addr.eq(base_km + rcol), ma_r.addr.eq(rcol), mb_r.addr.eq(rcol)]
        with m.If(adv_r):
            m.d.sync += r1v.eq(issue)
        # SOFTMAX reads a word of up to P logits (never past the row's end) a cycle
        step, left = Signal(range(P + 1)), Signal(16)
        r1_nl = Signal(range(P + 1))
        m.d.comb += [left.eq(s_cols - rcol), step.eq(Mux(is_sm, Mux(left < P, left, P), 1))]
        with m.If(issue):
            m.d.sync += [re.eq(re + step), xa.eq(xa + Mux(x32, step << 2, step)),
                         ba.eq(ba + Mux(add_b16, 2, 1)),
                         rcol.eq(Mux(step == left, 0, rcol + step)),
                         r1_rowlast.eq(step == left), r1_last.eq(re + step == n_el),
                         r1_nl.eq(step)]
        xval = Signal(signed(32))
        bval = Signal(signed(16))
        m.d.comb += [xval.eq(Mux(x32, xr.data[:32].as_signed(), xr.data[:8].as_signed())),
                     bval.eq(Mux(add_b16, br.data[:16].as_signed(), br.data[:8].as_signed()))]
        take_el = Signal()
        m.d.comb += take_el.eq(r1v & cons_ready)
        # the units: one element a cycle in, outputs always taken
        m.d.comb += [gelu.i_data.valid.eq(r1v & is_ge), gelu.i_data.payload.data[0].eq(xr.data[:8]),
                     gelu.i_data.payload.last.eq(r1_last), gelu.o_data.ready.eq(1),
                     ln.i_data.valid.eq(r1v & is_ln), ln.i_data.payload.data[0].eq(xval),
                     ln.i_data.payload.last.eq(r1_rowlast), ln.o_data.ready.eq(1),
                     sm.i_data.valid.eq(r1v & is_sm),
                     sm.i_data.payload.last.eq(r1_rowlast), sm.o_data.ready.eq(1)]
        for lane in range(P):
            m.d.comb += [
                sm.i_data.payload.data[lane].eq(Mux(x32, xr.data[32 * lane:32 * lane + 32],
                                                    xr.data[8 * lane:8 * lane + 8].as_signed())),
                sm.i_data.payload.keep[lane].eq(
                    (r1_nl > lane) & (~sm_mask | (kr.data[8 * lane:8 * lane + 8] != 0)))]
        m.d.comb += cons_ready.eq(Mux(is_ge, gelu.i_data.ready, Mux(
            is_ln, ln.i_data.ready, Mux(is_sm, sm.i_data.ready, 1))))

        # ADD: a*ma + b*mb, round_shift_right by shift, saturate (int8 or int32): 4 stages
        av = [Signal(name=f"addv{t}") for t in range(5)]
        pa1, pb1 = Signal(signed(56)), Signal(signed(40))
        sum2 = Signal(signed(57))
        t3 = Signal(signed(58))
        y4 = Signal(signed(32))
        u3 = Signal(signed(59))
        m.d.comb += [av[0].eq(take_el & is_add), u3.eq(t3 + 1)]
        m.d.sync += [av[t + 1].eq(av[t]) for t in range(4)]
        m.d.sync += [pa1.eq(xval * ma_r.data), pb1.eq(bval * mb_r.data), sum2.eq(pa1 + pb1),
                     t3.eq(Cat(Const(0, 1), sum2).as_signed() >> add_shift),
                     y4.eq(Mux(add_out32, saturate_bits(u3[1:], 32), saturate_bits(u3[1:], 8)))]

        # writer: one output element a cycle, bytes in order from y (and y16 / y_lo)
        o8 = Signal(8)
        o16 = Signal(16)
        sm8 = Signal(8 * P)
        for lane in range(P):
            p8 = sm.o_data.payload.data[lane]
            m.d.comb += sm8[8 * lane:8 * lane + 8].eq(
                Mux(sm_half, Mux(p8 >= 253, 127, (p8 + 1) >> 1), p8))
        oleft = Signal(16)
        m.d.comb += [oleft.eq(s_cols - ocol), o_n.eq(Mux(is_sm, Mux(oleft < P, oleft, P), 1))]
        with m.If(is_add):
            m.d.comb += [s_out_v.eq(av[4]), o8.eq(y4[:8])]
        with m.Elif(is_ge):
            m.d.comb += [s_out_v.eq(gelu.o_data.valid)]
            w16 = gelu.o_data.payload.wide[0]
            lo = w16[:8]
            # hi = (v - lo) / 256 with lo the signed low byte: v[8:16] plus the low byte's sign
            m.d.comb += [o8.eq(Mux(ge_split, w16[8:16] + w16[7], gelu.o_data.payload.data[0])),
                         o16.eq(lo)]
        with m.Elif(is_ln):
            m.d.comb += [s_out_v.eq(ln.o_data.valid), o8.eq(ln.o_data.payload.data[0]),
                         o16.eq(ln.o_data.payload.wide[0])]
        with m.Else():
            m.d.comb += s_out_v.eq(sm.o_data.valid)
        wide32 = is_add & add_out32
        m.d.comb += [yw.addr.eq(ya),
                     yw.data.eq(Mux(wide32, y4.as_unsigned(), Mux(is_sm, sm8, o8))),
                     yw.mask.eq(Mux(wide32, 0xF, Cat(*(o_n > j for j in range(P))))),
                     y2w.addr.eq(y2a), y2w.data.eq(o16),
                     y2w.mask.eq(Cat((is_ge & ge_split) | (is_ln & ln_out16), is_ln & ln_out16))]
        with m.If(s_out_v & in_stream):
            m.d.comb += [yw.en.eq(1), y2w.en.eq(1)]
            m.d.sync += [wo.eq(wo + o_n), ya.eq(ya + Mux(wide32, 4, o_n)),
                         y2a.eq(y2a + Mux(is_ln, 2, 1)), ocol.eq(Mux(o_n == oleft, 0, ocol + o_n))]
        with m.If(running & s_busy):
            m.d.sync += cnt_bs.eq(cnt_bs + 1)
        return m

