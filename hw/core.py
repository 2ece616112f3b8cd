"""The fmforge core, first RTL slice: instruction fetch/dispatch, token-synchronised D and M
queues, a strided DMA engine on an external-memory port and GEMM on :class:`hw.gemm.GemmEngine`.

It runs programs of the ISA subset ``LOAD``, ``STORE``, ``GEMM`` (bias, requant, int32 or int8
out; not ``acc``) and ``HALT`` exactly as :func:`golden.core.run_program` does, in exactly the
cycles :func:`hw.core_model.program_timing` gives (its module docstring has the formulas; the
cycle-level account of where they come from is in :class:`Core`).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden.core import INSTR_BYTES, OPCODES
from hw.gemm import GemmEngine, _check_dataflow
from hw.lib import check_positive, saturate_bits
from hw.requant import requant_stages

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
    """The fmforge core (slice: D and M queues; ``LOAD``/``STORE``/``GEMM``/``HALT``).

    Parameters (keyword-only)
    -------------------------
    rows, cols, dataflow : the GEMM engine's array (:class:`hw.gemm.GemmEngine`).
    bytes_per_cycle : int   bytes ``B`` per external-memory data beat.
    queue_depth : int   entries of each instruction queue's FIFO.
    sp_bytes : int   scratchpad size (bytes).
    imem_instrs : int   instruction-memory entries (256-bit instructions).
    max_m, max_k, max_n : int   the largest GEMM (the engine's buffers and the result buffer).

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
      tokens on ``HALT``, a queue waiting for/signalling itself, reserved ``esz``) or one this
      slice does not run (ADD/LAYERNORM/SOFTMAX/GELU, ``GEMM`` with ``acc``, a GEMM dimension 0 or
      above ``max_*``) stops dispatch at that instruction; ``error_pc`` holds its pc.
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
      byte counts (:func:`hw.core_model.gemm_stream_bytes`).
    """

    def __init__(self, *, rows: int, cols: int, dataflow: str = "os", bytes_per_cycle: int = 4,
                 queue_depth: int = 4, sp_bytes: int = 4096, imem_instrs: int = 256,
                 max_m: int = 64, max_k: int = 64, max_n: int = 64) -> None:
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

        # ---- run state and counters
        running = Signal()
        halted = Signal()
        err = Signal()
        err_pc = Signal(16)
        done_r = Signal()
        pc = Signal(16)
        cnt_cycles, cnt_bd, cnt_bm, cnt_stall = (Signal(32, name=n) for n in
                                                 ("cnt_cyc", "cnt_bd", "cnt_bm", "cnt_stall"))
        m.d.comb += [self.error.eq(err), self.error_pc.eq(err_pc), self.cnt_cycles.eq(cnt_cycles),
                     self.cnt_busy_d.eq(cnt_bd), self.cnt_busy_m.eq(cnt_bm),
                     self.cnt_busy_s.eq(0), self.cnt_mem_stall.eq(cnt_stall)]
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
        with m.Else():
            m.d.comb += bad.eq(1)  # unknown opcode, or an S-queue one (not in this slice)
        dispatching = Signal()
        stop_now = Signal()
        m.d.comb += [dq.w_data.eq(ins), mq.w_data.eq(ins)]
        with m.If(running & ~stop):
            with m.If(bad):
                m.d.comb += stop_now.eq(1)
                m.d.sync += [err.eq(1), err_pc.eq(pc)]
            with m.Elif(opc == _OP["HALT"]):
                m.d.comb += stop_now.eq(1)
                m.d.sync += halted.eq(1)
            with m.Elif(is_dma):
                m.d.comb += [dq.w_en.eq(1), dispatching.eq(dq.w_rdy)]
            with m.Else():
                m.d.comb += [mq.w_en.eq(1), dispatching.eq(mq.w_rdy)]
        with m.If(dispatching):
            m.d.sync += pc.eq(pc + 1)
        m.d.comb += ir.addr.eq(Mux(running, Mux(dispatching, pc + 1, pc), 0))

        d_idle, m_idle = Signal(), Signal()
        done_now = Signal()
        m.d.comb += done_now.eq(running & (stop | stop_now) & ~dq.r_rdy & ~mq.r_rdy
                                & d_idle & m_idle)
        m.d.comb += self.done.eq(done_r | done_now)
        with m.If(go):
            m.d.sync += [running.eq(1), halted.eq(0), err.eq(0), err_pc.eq(0), done_r.eq(0),
                         pc.eq(0), cnt_cycles.eq(0), cnt_bd.eq(0), cnt_bm.eq(0),
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
        return m

