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
from hw.gelu import Gelu
from hw.gemm import GemmEngine, _check_dataflow
from hw.layernorm import LayerNorm
from hw.lib import check_positive, saturate_bits
from hw.requant import requant_stages
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
      is blocked by the memory: a request offered and not accepted, a LOAD waiting for a data
      beat that is not offered (the ``max(L, 1) - 1`` cycles of latency of every row included), a
      STORE data beat offered and refused).
    External memory (little-endian bytes):
      ``o_req`` (Out stream of :func:`mem_request_layout`): one request per DMA row: ``addr`` (the
      row's first byte), ``length`` (``cols * esz`` bytes), ``write``.
      ``i_rsp`` (In stream of ``8*B`` bits): the data beats of read requests, in request order,
      ``ceil(length / B)`` beats per request, the row's first byte in the low byte of the first
      beat; bytes past ``length`` are ignored. The memory model offers the first beat ``L``
      cycles after the request's transfer cycle (``L >= 1``; the timing model uses ``max(L, 1)``).
      ``o_wdata`` (Out stream of ``8*B`` bits): the data beats of write requests, after the
      request, same packing; bytes past ``length`` are zero. Writes are posted (no response).

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
    * Scratchpad: ``sp_bytes`` bytes, one byte wide, with a read and a write port for D, three
      read ports (A, B, channel parameters) and a write port for M, so the queues never
      contend; any byte address and stride works.
    * LOAD: per row a request cycle (accepted at once), ``max(L, 1)`` cycles until the first beat,
      then one byte per cycle into the scratchpad (a beat is taken with its last used byte):
      ``1 + rows * (max(L, 1) + cols * esz)`` cycles (just 1 when ``rows * cols == 0``).
    * STORE: per row a request cycle, ``cols * esz`` scratchpad reads (one a cycle), one more
      cycle for the last byte: ``1 + rows * (cols * esz + 2)`` cycles (1 when empty).
    * GEMM: the command goes to the engine the cycle after the start; three address generators
      then read A and B (engine word order, :func:`hw.gemm.pack_operands`, padding lanes included)
      and the channel words (per lane 4 bias, 4 multiplier and 1 shift byte) one byte a cycle
      each, in parallel; the engine computes (:func:`hw.gemm.gemm_cycles`); its result rows go
      into a result buffer; then ``M * N * esz_out`` bytes are written back, one a cycle:
      ``6 + X + gemm_cycles + M * N * esz_out`` with ``X`` the largest of the A, B, channel
      byte counts (:func:`hw.core_model.gemm_stream_bytes`). With ``acc`` the engine runs raw
      and the write-back reads C_old, bias and multiplier bytes in parallel, four cycles per
      element: ``... + 4 * M * N + 6`` (int32) or ``+ 9`` (requant).
    * S queue: a start cycle, the parameter block read one 32-bit word a cycle (four byte ports)
      into registers, the ADD multiplier tables or the layer norm's gamma/beta RAMs, one cycle
      for the last word, then the elements stream from the scratchpad one a cycle (x/a through
      four byte ports, b through two, the key mask through one) into the unit, which holds
      them back while it works on a row (layer norm, softmax); every output element is written
      in its cycle through four byte write ports (int8, int16 twin, split-int16 planes or
      int32): ``3 + W + U`` (:func:`hw.core_model.sfu_param_words`,
      :func:`hw.core_model.sfu_unit_cycles`).
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
    def result_depth(self) -> int:
        """Words (of ``cols`` int32) in the GEMM result buffer: ``max_m * ceil(max_n / cols)``."""
        return self._max_m * -(-self._max_n // self._cols)

    # ------------------------------------------------------------------------------------------

    def elaborate(self, platform):  # noqa: C901 - the core's control, written out in order
        m = Module()
        B, R, C = self._bpc, self._rows, self._cols
        spa = max(ceil_log2(self._sp), 1)

        # ---- memories
        m.submodules.imem = imem = memory.Memory(shape=unsigned(INSTR_BITS), depth=self._imem,
                                                 init=[])
        iw = imem.write_port()
        ir = imem.read_port()
        m.d.comb += [iw.en.eq(self.imem_w_en), iw.addr.eq(self.imem_w_addr),
                     iw.data.eq(self.imem_w_data)]
        m.submodules.sp = sp = memory.Memory(shape=unsigned(8), depth=self._sp, init=[])
        self.scratchpad = sp  # the last elaboration's scratchpad, for testbenches to read
        d_wr, m_wr = sp.write_port(), sp.write_port()
        d_rd, a_rd, b_rd, c_rd, q_rd = (sp.read_port() for _ in range(5))

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
        d_ins = Signal(INSTR_BITS)
        d_rows = d_ins[96:112]
        d_ext_rs, d_sp_rs, d_sp_cs = _w(d_ins, 4), _w(d_ins, 5), _w(d_ins, 6)
        d_code = d_ins[16:18]
        d_nbytes = Signal(18)
        d_row = Signal(16)
        d_ext, d_sprow, d_col, d_addr = (Signal(32, name=n) for n in
                                          ("d_ext", "d_sprow", "d_col", "d_addr"))
        d_eb = Signal(2)      # byte within the element
        d_rb = Signal(18)     # bytes of the row done (LOAD) / issued (STORE)
        d_bi = Signal(range(max(B, 2)))  # byte within the beat
        d_last_eb = Signal()
        d_last_rb = Signal()
        m.d.comb += [d_last_eb.eq(d_eb == ((Const(1, 4) << d_code) - 1)),
                     d_last_rb.eq(d_rb == d_nbytes - 1)]
        d_busy = Signal()
        d_stall = Signal()

        def d_step():
            """Advance the scratchpad byte address and the row/beat byte counters."""
            with m.If(d_last_eb):
                m.d.sync += [d_eb.eq(0), d_col.eq(d_col + d_sp_cs), d_addr.eq(d_col + d_sp_cs)]
            with m.Else():
                m.d.sync += [d_eb.eq(d_eb + 1), d_addr.eq(d_addr + 1)]
            m.d.sync += d_rb.eq(d_rb + 1)
            with m.If((d_bi == B - 1) | d_last_rb):
                m.d.sync += d_bi.eq(0)
            with m.Else():
                m.d.sync += d_bi.eq(d_bi + 1)

        def d_row_end(next_state):
            with m.If(d_row == d_rows - 1):
                finish(d_ins, _Q_D)
                m.next = "IDLE"
            with m.Else():
                m.d.sync += [d_row.eq(d_row + 1), d_ext.eq(d_ext + d_ext_rs),
                             d_sprow.eq(d_sprow + d_sp_rs)]
                m.next = next_state

        # STORE read pipeline (data of the address presented last cycle)
        s_v, s_bi, s_lastbeat, s_lastrow = Signal(), Signal(range(max(B, 2))), Signal(), Signal()
        wbuf = Signal(8 * B)
        hold = Signal()
        m.d.comb += [
            self.o_wdata.payload.eq(Cat(*(Mux(s_bi == j, d_rd.data, wbuf[8 * j:8 * j + 8])
                                          for j in range(B)))),
            hold.eq(self.o_wdata.valid & ~self.o_wdata.ready),
            d_rd.addr.eq(d_addr[:spa]), d_rd.en.eq(~hold),
            d_wr.addr.eq(d_addr[:spa]), d_wr.data.eq(self.i_rsp.payload.word_select(d_bi, 8)),
            self.o_req.payload.addr.eq(d_ext), self.o_req.payload.length.eq(d_nbytes),
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
                    m.d.sync += [d_ins.eq(head), d_nbytes.eq(nb), d_row.eq(0),
                                 d_ext.eq(_w(head, 1)), d_sprow.eq(_w(head, 2))]
                    with m.If((head[96:112] == 0) | (cols == 0)):
                        finish(head, _Q_D)
                    with m.Elif(head[:8] == _OP["LOAD"]):
                        m.next = "LREQ"
                    with m.Else():
                        m.next = "SREQ"
            with m.State("LREQ"):
                m.d.comb += [d_busy.eq(1), self.o_req.valid.eq(1)]
                m.d.comb += d_stall.eq(~self.o_req.ready)
                with m.If(self.o_req.ready):
                    m.d.sync += [d_col.eq(d_sprow), d_addr.eq(d_sprow), d_eb.eq(0), d_rb.eq(0),
                                 d_bi.eq(0)]
                    m.next = "LDATA"
            with m.State("LDATA"):
                m.d.comb += [d_busy.eq(1), d_stall.eq(~self.i_rsp.valid)]
                with m.If(self.i_rsp.valid):
                    m.d.comb += [d_wr.en.eq(1),
                                 self.i_rsp.ready.eq((d_bi == B - 1) | d_last_rb)]
                    d_step()
                    with m.If(d_last_rb):
                        d_row_end("LREQ")
            with m.State("SREQ"):
                m.d.comb += [d_busy.eq(1), self.o_req.valid.eq(1),
                             self.o_req.payload.write.eq(1)]
                m.d.comb += d_stall.eq(~self.o_req.ready)
                with m.If(self.o_req.ready):
                    m.d.sync += [d_col.eq(d_sprow), d_addr.eq(d_sprow), d_eb.eq(0), d_rb.eq(0),
                                 d_bi.eq(0), s_v.eq(0), wbuf.eq(0)]
                    m.next = "SDATA"
            with m.State("SDATA"):
                m.d.comb += [d_busy.eq(1), d_stall.eq(hold),
                             self.o_wdata.valid.eq(s_v & s_lastbeat)]
                with m.If(~hold):
                    with m.If(s_v):
                        m.d.sync += wbuf.word_select(s_bi, 8).eq(d_rd.data)
                    with m.If(d_rb != d_nbytes):
                        m.d.sync += [s_v.eq(1), s_bi.eq(d_bi),
                                     s_lastbeat.eq((d_bi == B - 1) | d_last_rb),
                                     s_lastrow.eq(d_last_rb)]
                        d_step()
                    with m.Else():
                        m.d.sync += s_v.eq(0)
                with m.If(self.o_wdata.valid & self.o_wdata.ready):
                    m.d.sync += wbuf.eq(0)
                    with m.If(s_lastrow):
                        d_row_end("SREQ")
        with m.If(running & d_busy):
            m.d.sync += cnt_bd.eq(cnt_bd + 1)
        with m.If(running & d_stall):
            m.d.sync += cnt_stall.eq(cnt_stall + 1)

        # ---- M executor: GEMM
        g_ins = Signal(INSTR_BITS)
        ga, gb, gc = _w(g_ins, 1), _w(g_ins, 2), _w(g_ins, 3)
        gm, gk, gn = g_ins[128:144], g_ins[144:160], _w(g_ins, 5)[:17]
        gbias, grq, gacc, gsh = g_ins[16], g_ins[17], g_ins[18], g_ins[20:25]
        g_bias_addr, g_qp = _w(g_ins, 6), _w(g_ins, 7)
        m_busy = Signal()
        gen_go = Signal()
        # with acc the engine runs raw (A @ B, exact int32): bias, C_old << acc_shift,
        # saturation and requant are done in the write-back path
        m.d.comb += [eng.i_cmd.payload.m.eq(gm), eng.i_cmd.payload.k.eq(gk),
                     eng.i_cmd.payload.n.eq(gn), eng.i_cmd.payload.bias.eq(gbias & ~gacc),
                     eng.i_cmd.payload.requant.eq(grq & ~gacc)]

        def operand_gen(name, port, strm, nl, base, so, si, sl, n_i, limit):
            """Words of ``nl`` byte lanes: for each outer block (``obase`` += nl while below
            ``limit``), for each of ``n_i`` inner steps, lane ``l`` at
            ``base + o*so + i*si + l*sl``; lanes at ``obase + l >= limit`` are zero."""
            act = Signal(name=f"{name}_act")
            lane = Signal(range(max(nl, 2)), name=f"{name}_l")
            inner = Signal(17, name=f"{name}_i")
            obase = Signal(18, name=f"{name}_ob")
            a_o, a_i, a_c = (Signal(32, name=f"{name}_{s}") for s in ("ao", "ai", "ac"))
            dv, dmask, dlast = (Signal(name=f"{name}_{s}") for s in ("dv", "dm", "dlast"))
            dl = Signal.like(lane, name=f"{name}_dl")
            buf = Signal(8 * nl, name=f"{name}_buf")
            outv = Signal(name=f"{name}_ov")
            m.d.comb += [port.addr.eq(a_c[:spa]), strm.valid.eq(outv),
                         Value.cast(strm.payload).eq(buf)]
            m.d.sync += [dv.eq(act), dl.eq(lane), dmask.eq(obase + lane < limit),
                         dlast.eq(lane == nl - 1), outv.eq(dv & dlast)]
            with m.If(gen_go):
                m.d.sync += [act.eq(1), lane.eq(0), inner.eq(0), obase.eq(0), a_o.eq(base),
                             a_i.eq(base), a_c.eq(base)]
            with m.Elif(act):
                with m.If(lane == nl - 1):
                    m.d.sync += lane.eq(0)
                    with m.If(inner == n_i - 1):
                        m.d.sync += [inner.eq(0), obase.eq(obase + nl), a_o.eq(a_o + so),
                                     a_i.eq(a_o + so), a_c.eq(a_o + so)]
                        with m.If(obase + nl >= limit):
                            m.d.sync += act.eq(0)
                    with m.Else():
                        m.d.sync += [inner.eq(inner + 1), a_i.eq(a_i + si), a_c.eq(a_i + si)]
                with m.Else():
                    m.d.sync += [lane.eq(lane + 1), a_c.eq(a_c + sl)]
            with m.If(dv):
                m.d.sync += buf.word_select(dl, 8).eq(Mux(dmask, port.data, 0))
            return act

        if self._dataflow == "os":
            operand_gen("ga", a_rd, eng.i_a, R, ga, gk * R, 1, gk, gk, gm)
        else:
            operand_gen("ga", a_rd, eng.i_a, R, ga, R, gk, 1, gm, gk)
        operand_gen("gb", b_rd, eng.i_b, C, gb, C, gn, 1, gk, gn)

        # channel words: per lane bias (4 bytes), mult (4), shift (1 byte of its int32)
        ch_act, ch_l, ch_q = Signal(), Signal(range(max(C, 2))), Signal(4)
        ch_nb = Signal(18)
        ch_n4 = Signal(32)
        ch_dv, ch_dlast, ch_dmask = Signal(), Signal(), Signal()
        ch_di = Signal(range(9 * C))
        ch_idx = Signal(range(9 * C))
        ch_buf = Signal(72 * C)
        ch_ov = Signal()
        n4 = Signal(32)
        m.d.comb += n4.eq(gn << 2)
        m.d.comb += c_rd.addr.eq(Mux(ch_q < 4, g_bias_addr + ch_n4 + ch_q,
                                     Mux(ch_q < 8, g_qp + ch_n4 + ch_q - 4, g_qp + n4 + ch_n4))[:spa])
        m.d.sync += [ch_dv.eq(ch_act), ch_di.eq(ch_idx),
                     ch_dmask.eq((ch_nb + ch_l < gn) & ((ch_q >= 4) | gbias)),
                     ch_dlast.eq((ch_l == C - 1) & (ch_q == 8)), ch_ov.eq(ch_dv & ch_dlast)]
        with m.If(gen_go):
            m.d.sync += [ch_act.eq((gbias | grq) & ~gacc), ch_l.eq(0), ch_q.eq(0), ch_nb.eq(0),
                         ch_n4.eq(0), ch_idx.eq(0)]
        with m.Elif(ch_act):
            with m.If(ch_q == 8):
                m.d.sync += [ch_q.eq(0), ch_n4.eq(ch_n4 + 4)]
                with m.If(ch_l == C - 1):
                    m.d.sync += [ch_l.eq(0), ch_nb.eq(ch_nb + C), ch_idx.eq(0)]
                    with m.If(ch_nb + C >= gn):
                        m.d.sync += ch_act.eq(0)
                with m.Else():
                    m.d.sync += [ch_l.eq(ch_l + 1), ch_idx.eq(ch_idx + 1)]
            with m.Else():
                m.d.sync += [ch_q.eq(ch_q + 1), ch_idx.eq(ch_idx + 1)]
        with m.If(ch_dv):
            m.d.sync += ch_buf.word_select(ch_di, 8).eq(Mux(ch_dmask, c_rd.data, 0))
        m.d.comb += eng.i_chan.valid.eq(ch_ov)
        for c in range(C):
            lane = eng.i_chan.payload[c]
            m.d.comb += [lane.bias.eq(ch_buf[72 * c:72 * c + 32]),
                         lane.mult.eq(ch_buf[72 * c + 32:72 * c + 64]),
                         lane.shift.eq(ch_buf[72 * c + 64:72 * c + 70])]

        # result rows -> result buffer, column-block-major: word jb * max_m + row
        mm = self._max_m
        rx_r = Signal(17)       # row within the tile (OS) / row (WS)
        rx_mb = Signal(18)      # OS: first row of the row block
        rx_nb = Signal(18)      # first column of the column block
        rx_jb = Signal(range(self.result_depth + mm + 1))  # jb * max_m
        rx_idx = Signal(range(self.result_depth + mm + R + 1))
        m.d.comb += [eng.o_c.ready.eq(1), r_wr.en.eq(eng.o_c.valid), r_wr.addr.eq(rx_idx),
                     r_wr.data.eq(Value.cast(eng.o_c.payload.data))]
        with m.If(gen_go):
            m.d.sync += [rx_r.eq(0), rx_mb.eq(0), rx_nb.eq(0), rx_jb.eq(0), rx_idx.eq(0)]
        with m.Elif(eng.o_c.valid):
            if self._dataflow == "os":
                with m.If((rx_r == R - 1) | (rx_mb + rx_r == gm - 1)):
                    m.d.sync += rx_r.eq(0)
                    with m.If(rx_nb + C >= gn):
                        m.d.sync += [rx_nb.eq(0), rx_jb.eq(0), rx_mb.eq(rx_mb + R),
                                     rx_idx.eq(rx_mb + R)]
                    with m.Else():
                        m.d.sync += [rx_nb.eq(rx_nb + C), rx_jb.eq(rx_jb + mm),
                                     rx_idx.eq(rx_jb + mm + rx_mb)]
                with m.Else():
                    m.d.sync += [rx_r.eq(rx_r + 1), rx_idx.eq(rx_idx + 1)]
            else:
                with m.If(rx_r == gm - 1):
                    m.d.sync += [rx_r.eq(0), rx_jb.eq(rx_jb + mm), rx_idx.eq(rx_jb + mm)]
                with m.Else():
                    m.d.sync += [rx_r.eq(rx_r + 1), rx_idx.eq(rx_idx + 1)]

        # write-back: for each row, column, byte (1 for int8, 4 for int32) -> c, c+1, ...
        wb_mi, wb_ni = Signal(17), Signal(17)
        wb_l = Signal(range(max(C, 2)))
        wb_b = Signal(2)
        wb_jb = Signal(range(self.result_depth + mm + 1))
        wb_act = Signal()
        wb_dv, wb_dlast = Signal(), Signal()
        wb_sel = Signal(range(4 * C))
        wb_addr = Signal(32)
        m.d.comb += [r_rd.addr.eq(wb_jb + wb_mi), m_wr.addr.eq(wb_addr[:spa]),
                     m_wr.data.eq(r_rd.data.word_select(wb_sel, 8)), m_wr.en.eq(wb_dv)]
        last_b = Signal()
        m.d.comb += last_b.eq((grq & ~gacc) | (wb_b == 3))
        m.d.sync += [wb_dv.eq(wb_act), wb_sel.eq(Cat(wb_b, wb_l)),
                     wb_dlast.eq(last_b & (wb_ni == gn - 1) & (wb_mi == gm - 1))]
        with m.If(wb_dv):
            m.d.sync += wb_addr.eq(wb_addr + 1)
        with m.If(wb_act):
            with m.If(last_b):
                m.d.sync += wb_b.eq(0)
                with m.If(wb_ni == gn - 1):
                    m.d.sync += [wb_ni.eq(0), wb_l.eq(0), wb_jb.eq(0), wb_mi.eq(wb_mi + 1)]
                    with m.If(wb_mi == gm - 1):
                        m.d.sync += wb_act.eq(0)
                with m.Elif(wb_l == C - 1):
                    m.d.sync += [wb_l.eq(0), wb_jb.eq(wb_jb + mm), wb_ni.eq(wb_ni + 1)]
                with m.Else():
                    m.d.sync += [wb_l.eq(wb_l + 1), wb_ni.eq(wb_ni + 1)]
            with m.Else():
                m.d.sync += wb_b.eq(wb_b + 1)

        # accumulate-on-top write-back (acc): element e = mi*n + ni takes four slot cycles
        # p = wb_b; in slot p the ports read byte p of C_old (at c + 4e + p), of bias[ni] and of
        # mult[ni] (and, in slot 0, the shift byte); one cycle later the bytes shift into
        # registers, then sum = A@B + bias + (C_old << acc_shift) (one stage), sat32 (one stage)
        # and, with requant, hw.requant.requant_stages (six stages). Bytes are written in order
        # from c: int32 byte p seven cycles after its slot, the int8 result 13 cycles after
        # slot 0; an element's C_old bytes are always read before anything overlapping them
        # is written.
        ac_on = Signal()
        m.d.comb += ac_on.eq(wb_act & gacc)
        ac_ca = Signal(32)  # c + 4e + p
        with m.If(ac_on):
            m.d.comb += [a_rd.addr.eq(ac_ca[:spa]),
                         b_rd.addr.eq((g_bias_addr + Cat(wb_b, wb_ni))[:spa]),
                         c_rd.addr.eq((g_qp + Cat(wb_b, wb_ni))[:spa])]
        m.d.comb += q_rd.addr.eq((g_qp + n4 + Cat(Const(0, 2), wb_ni))[:spa])
        with m.If(gen_go):
            m.d.sync += ac_ca.eq(gc)
        with m.Elif(ac_on):
            m.d.sync += ac_ca.eq(ac_ca + 1)
        ac_dv, ac_dp, ac_dl, ac_dlast = Signal(), Signal(2), Signal.like(wb_l), Signal()
        m.d.sync += [ac_dv.eq(ac_on), ac_dp.eq(wb_b), ac_dl.eq(wb_l),
                     ac_dlast.eq((wb_ni == gn - 1) & (wb_mi == gm - 1))]
        cold, cbias, cmult = Signal(32), Signal(32), Signal(32)
        cab, csh = Signal(signed(32)), Signal(6)
        with m.If(ac_dv):
            m.d.sync += [cold.eq(Cat(cold[8:], a_rd.data)), cbias.eq(Cat(cbias[8:], b_rd.data)),
                         cmult.eq(Cat(cmult[8:], c_rd.data))]
            with m.If(ac_dp == 0):
                m.d.sync += [cab.eq(r_rd.data.word_select(ac_dl, 32)), csh.eq(q_rd.data[:6])]
        s0v = Signal()
        m.d.sync += s0v.eq(ac_dv & (ac_dp == 3))
        sum1 = Signal(signed(66))
        y32 = Signal(signed(32))
        m1, m2 = Signal(signed(32)), Signal(signed(32))
        sh1, sh2 = Signal(6), Signal(6)
        with m.If(s0v):
            m.d.sync += [sum1.eq(cab + Mux(gbias, cbias.as_signed(), 0)
                                 + (cold.as_signed() << gsh)),
                         m1.eq(cmult), sh1.eq(csh)]
        m.d.sync += [y32.eq(saturate_bits(sum1, 32)), m2.eq(m1), sh2.eq(sh1)]
        (y8,) = requant_stages(m, Const(1), [y32], [m2], [sh2], "acrq", platform=platform)
        # delay line of the slots: (valid, p, last element)
        chain = [(Signal(name=f"acv{t}"), Signal(2, name=f"acp{t}"), Signal(name=f"acl{t}"))
                 for t in range(14)]
        m.d.comb += [chain[0][0].eq(ac_on), chain[0][1].eq(wb_b),
                     chain[0][2].eq((wb_ni == gn - 1) & (wb_mi == gm - 1))]
        for t in range(1, 14):
            m.d.sync += [chain[t][0].eq(chain[t - 1][0]), chain[t][1].eq(chain[t - 1][1]),
                         chain[t][2].eq(chain[t - 1][2])]
        ac_we, ac_wd, ac_done = Signal(), Signal(8), Signal()
        v7, p7, l7 = chain[7]
        v13, p13, l13 = chain[13]
        with m.If(grq):
            m.d.comb += [ac_we.eq(v13 & (p13 == 0)), ac_wd.eq(y8.as_unsigned()),
                         ac_done.eq(v13 & (p13 == 0) & l13)]
        with m.Else():
            m.d.comb += [ac_we.eq(v7), ac_wd.eq(y32.as_unsigned().word_select(p7, 8)),
                         ac_done.eq(v7 & (p7 == 3) & l7)]
        ac_wa = Signal(32)
        with m.If(gen_go):
            m.d.sync += ac_wa.eq(gc)
        with m.Elif(ac_we):
            m.d.sync += ac_wa.eq(ac_wa + 1)
        with m.If(gacc):
            m.d.comb += [m_wr.addr.eq(ac_wa[:spa]), m_wr.data.eq(ac_wd), m_wr.en.eq(ac_we)]

        with m.FSM(name="mfsm"):
            with m.State("IDLE"):
                m.d.comb += m_idle.eq(1)
                head = mq.r_data
                with m.If(mq.r_rdy & can_start(head, _Q_M)):
                    m.d.comb += [mq.r_en.eq(1), m_busy.eq(1)]
                    take(head, _Q_M)
                    m.d.sync += g_ins.eq(head)
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [m_busy.eq(1), eng.i_cmd.valid.eq(1)]
                with m.If(eng.i_cmd.ready):
                    m.d.comb += gen_go.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += m_busy.eq(1)
                with m.If(eng.o_c.valid & eng.o_c.payload.last):
                    m.d.sync += [wb_act.eq(1), wb_mi.eq(0), wb_ni.eq(0), wb_l.eq(0), wb_b.eq(0),
                                 wb_jb.eq(0), wb_addr.eq(gc)]
                    m.next = "WB"
            with m.State("WB"):
                m.d.comb += m_busy.eq(1)
                with m.If(Mux(gacc, ac_done, wb_dv & wb_dlast)):
                    finish(g_ins, _Q_M)
                    m.next = "IDLE"
        with m.If(running & m_busy):
            m.d.sync += cnt_bm.eq(cnt_bm + 1)

        self._elab_sfu(m, sp, sq, s_idle, cnt_bs, running, can_start, take, finish, spa)
        return m

    def _elab_sfu(self, m, sp, sq, s_idle, cnt_bs, running, can_start, take, finish, spa):
        """The S executor: ADD, GELU, LAYERNORM, SOFTMAX (see the class docstring)."""
        R = self._max_row
        xr = [sp.read_port() for _ in range(4)]    # x / a elements and parameter words
        br = [sp.read_port() for _ in range(2)]    # b elements (ADD)
        kr = sp.read_port()                        # key-mask bytes (SOFTMAX)
        wp = [sp.write_port() for _ in range(4)]   # one output element a cycle
        m.submodules.gelu = gelu = Gelu(lanes=1, runtime=True)
        m.submodules.lnorm = ln = LayerNorm(lanes=1, runtime=True, max_n=R)
        m.submodules.smax = sm = Softmax(lanes=1, max_length=R, runtime=True)
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

        def head_fields(h):
            hop = h[:8]
            return hop == _OP["ADD"], hop == _OP["GELU"], hop == _OP["LAYERNORM"]

        wd = Cat(*(p.data for p in xr))  # the parameter word read last cycle
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
                                 re.eq(0), rcol.eq(0), wo.eq(0)]
                    m.next = "PARAM"
            with m.State("PARAM"):
                m.d.comb += [s_busy.eq(1), in_param.eq(1)]
                m.d.comb += [p.addr.eq((pa + j)[:spa]) for j, p in enumerate(xr)]
                m.d.sync += [pa.eq(pa + 4), pi.eq(pi + 1)]
                with m.If(pi == n_par - 1):
                    m.next = "PWAIT"
            with m.State("PWAIT"):
                m.d.comb += s_busy.eq(1)
                m.next = "STREAM"
            with m.State("STREAM"):
                m.d.comb += [s_busy.eq(1), in_stream.eq(1)]
                last_out = Signal()
                m.d.comb += last_out.eq(wo == n_el - 1)
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
            m.d.comb += [p.addr.eq((xa + j)[:spa]) for j, p in enumerate(xr)]
            m.d.comb += [p.en.eq(adv_r) for p in xr]
        m.d.comb += [br[j].addr.eq((ba + j)[:spa]) for j in range(2)]
        m.d.comb += [p.en.eq(adv_r) for p in br] + [kr.en.eq(adv_r), ma_r.en.eq(adv_r),
                                                     mb_r.en.eq(adv_r)]
        m.d.comb += [kr.addr.eq((base_km + rcol)[:spa]), ma_r.addr.eq(rcol), mb_r.addr.eq(rcol)]
        with m.If(adv_r):
            m.d.sync += r1v.eq(issue)
        with m.If(issue):
            m.d.sync += [re.eq(re + 1), xa.eq(xa + Mux(x32, 4, 1)), ba.eq(ba + Mux(add_b16, 2, 1)),
                         rcol.eq(Mux(rcol == s_cols - 1, 0, rcol + 1)),
                         r1_rowlast.eq(rcol == s_cols - 1), r1_last.eq(re == n_el - 1)]
        xval = Signal(signed(32))
        bval = Signal(signed(16))
        m.d.comb += [xval.eq(Mux(x32, Cat(*(p.data for p in xr)).as_signed(),
                                 xr[0].data.as_signed())),
                     bval.eq(Mux(add_b16, Cat(br[0].data, br[1].data).as_signed(),
                                 br[0].data.as_signed()))]
        take_el = Signal()
        m.d.comb += take_el.eq(r1v & cons_ready)
        # the units: one element a cycle in, outputs always taken
        m.d.comb += [gelu.i_data.valid.eq(r1v & is_ge), gelu.i_data.payload.data[0].eq(xr[0].data),
                     gelu.i_data.payload.last.eq(r1_last), gelu.o_data.ready.eq(1),
                     ln.i_data.valid.eq(r1v & is_ln), ln.i_data.payload.data[0].eq(xval),
                     ln.i_data.payload.last.eq(r1_rowlast), ln.o_data.ready.eq(1),
                     sm.i_data.valid.eq(r1v & is_sm), sm.i_data.payload.data[0].eq(xval),
                     sm.i_data.payload.keep[0].eq(~sm_mask | (kr.data != 0)),
                     sm.i_data.payload.last.eq(r1_rowlast), sm.o_data.ready.eq(1)]
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
        half = Signal(8)
        p8 = sm.o_data.payload.data[0]
        m.d.comb += half.eq(Mux(p8 >= 253, 127, (p8 + 1) >> 1))
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
            m.d.comb += [s_out_v.eq(sm.o_data.valid), o8.eq(Mux(sm_half, half, p8))]
        wide32 = is_add & add_out32
        m.d.comb += [wp[0].addr.eq(ya[:spa]), wp[0].data.eq(o8),
                     wp[1].addr.eq(Mux(wide32, ya + 1, y2a)[:spa]),
                     wp[1].data.eq(Mux(wide32, y4[8:16], o16[:8])),
                     wp[2].addr.eq(Mux(wide32, ya + 2, y2a + 1)[:spa]),
                     wp[2].data.eq(Mux(wide32, y4[16:24], o16[8:16])),
                     wp[3].addr.eq((ya + 3)[:spa]), wp[3].data.eq(y4[24:32])]
        with m.If(s_out_v & in_stream):
            m.d.comb += [wp[0].en.eq(1), wp[1].en.eq(wide32 | (is_ge & ge_split) | (is_ln & ln_out16)),
                         wp[2].en.eq(wide32 | (is_ln & ln_out16)), wp[3].en.eq(wide32)]
            m.d.sync += [wo.eq(wo + 1), ya.eq(ya + Mux(wide32, 4, 1)),
                         y2a.eq(y2a + Mux(is_ln, 2, 1))]
        with m.If(running & s_busy):
            m.d.sync += cnt_bs.eq(cnt_bs + 1)
        return m

