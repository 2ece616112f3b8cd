"""hw.core on the Amaranth simulator: random LOAD/STORE/GEMM programs against golden.core,
bit for bit (external memory and scratchpad), and cycle for cycle against hw.core_model."""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass

import pytest
import torch
from amaranth.sim import Simulator

from golden.core import (
    CoreMemory,
    Instr,
    check_races,
    encode,
    gelu_block,
    layernorm_block,
    run_program,
    softmax_block,
)
from golden.gelu import gelu_params
from golden.layernorm import layernorm_params
from golden.softmax import softmax_params
from hw.core import Core
from hw.core_model import CoreConfig, dma_pieces, instr_cycles, program_timing

HALT = Instr("HALT")
MAX_ROW = 32  # the SFU row buffers of the small test cores


def _core(cfg: CoreConfig, max_dim: int, max_row: int = MAX_ROW) -> Core:
    return Core(rows=cfg.rows, cols=cfg.cols, dataflow=cfg.dataflow,
                bytes_per_cycle=cfg.bytes_per_cycle, queue_depth=cfg.queue_depth,
                sp_bytes=cfg.sp_bytes, imem_instrs=cfg.imem_instrs, max_m=max_dim,
                max_k=max_dim, max_n=max_dim, max_row=max_row)


@dataclass
class Run:
    cycles: int
    ext: bytes
    sp: bytes
    error: int
    error_pc: int
    busy: dict[str, int]
    mem_stall: int
    cnt_cycles: int


def run_core(cfg: CoreConfig, raw_prog: list[bytes], ext: bytes, *, stall: float = 0.0,
             seed: int = 0, max_dim: int = 16, timeout: int = 100_000,
             max_row: int = MAX_ROW, dut: Core | None = None) -> Run:
    """Write the program, pulse ``start``, count clock edges until ``done``; the memory model
    offers a read's first beat ``latency`` cycles after the request's transfer and idles/refuses
    with probability ``stall`` per cycle."""
    dut = dut or _core(cfg, max_dim, max_row)
    B, L = cfg.bytes_per_cycle, max(cfg.latency, 1)
    mem = bytearray(ext)
    rng = random.Random(seed)
    out: dict = {}

    async def memory(ctx):
        reads: deque = deque()   # [avail cycle, addr, length, beat]
        writes: deque = deque()  # [addr, length, beat]
        offering = False
        cyc = 0
        while True:
            if not offering and reads and reads[0][0] <= cyc and not (stall and rng.random() < stall):
                addr, length, beat = reads[0][1:]
                lo = beat * B
                chunk = bytes(mem[addr + lo:addr + min(lo + B, length)])
                ctx.set(dut.i_rsp.payload, int.from_bytes(chunk.ljust(B, b"\0"), "little"))
                offering = True
            ctx.set(dut.i_rsp.valid, offering)
            ctx.set(dut.o_req.ready, not (stall and rng.random() < stall))
            ctx.set(dut.o_wdata.ready, not (stall and rng.random() < stall))
            _, _, qv, qr, qp, rv, rr, wv, wr, wd = await ctx.tick().sample(
                dut.o_req.valid, dut.o_req.ready, dut.o_req.payload.as_value(),
                dut.i_rsp.valid, dut.i_rsp.ready, dut.o_wdata.valid, dut.o_wdata.ready,
                dut.o_wdata.payload)
            if rv and rr:
                offering = False
                reads[0][3] += 1
                if reads[0][3] * B >= reads[0][2]:
                    reads.popleft()
                else:
                    reads[0][0] = cyc + 1
            if wv and wr:
                addr, length, beat = writes[0]
                lo = beat * B
                n = min(B, length - lo)
                mem[addr + lo:addr + lo + n] = wd.to_bytes(B, "little")[:n]
                writes[0][2] += 1
                if writes[0][2] * B >= length:
                    writes.popleft()
            if qv and qr:
                addr, length, write = qp & 0xFFFFFFFF, (qp >> 32) & 0x3FFFF, qp >> 50 & 1
                assert length > 0
                if write:
                    writes.append([addr, length, 0])
                else:
                    reads.append([cyc + L, addr, length, 0])
            cyc += 1

    async def bench(ctx):
        for i, word in enumerate(raw_prog):
            ctx.set(dut.imem_w_en, 1)
            ctx.set(dut.imem_w_addr, i)
            ctx.set(dut.imem_w_data, int.from_bytes(word, "little"))
            await ctx.tick()
        ctx.set(dut.imem_w_en, 0)
        await ctx.tick()
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        n = 0
        while not ctx.get(dut.done):
            await ctx.tick()
            n += 1
            assert n < timeout, "core did not finish"
        await ctx.tick()  # done stays high; the counters have stopped
        assert ctx.get(dut.done)
        out["sp"] = bytes(dut.scratchpad.peek(ctx, i) for i in range(cfg.sp_bytes))
        out.update(cycles=n, error=ctx.get(dut.error), error_pc=ctx.get(dut.error_pc),
                   busy={"D": ctx.get(dut.cnt_busy_d), "M": ctx.get(dut.cnt_busy_m),
                         "S": ctx.get(dut.cnt_busy_s)},
                   mem_stall=ctx.get(dut.cnt_mem_stall), cnt_cycles=ctx.get(dut.cnt_cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(memory, background=True)
    sim.add_testbench(bench)
    sim.run()
    return Run(ext=bytes(mem), **out)


# --------------------------------------------------------------------------- programs


def _dma(op, ext, sp, rows, cols, ext_rs, sp_rs, sp_cs, esz=0, wait=(), sig=()):
    return Instr(op, frozenset(wait), frozenset(sig),
                 {"ext": ext, "sp": sp, "rows": rows, "cols": cols, "ext_rs": ext_rs,
                  "sp_rs": sp_rs, "sp_cs": sp_cs, "esz": esz})


def _golden(prog, ext, sp_bytes):
    mem = CoreMemory(len(ext), sp_bytes)
    mem.write("ext", 0, ext)
    run_program(prog, mem)
    return bytes(mem.ext.tolist()), bytes(mem.sp.tolist())


def _check(cfg, prog, ext, **kw):
    check_races(prog)
    run = run_core(cfg, [encode(i) for i in prog], ext, **kw)
    g_ext, g_sp = _golden(prog, ext, cfg.sp_bytes)
    assert run.error == 0
    assert run.ext == g_ext
    assert run.sp == g_sp
    t = program_timing(prog, cfg)
    return run, t


def test_dma_only_program_cycle_exact():
    cfg = CoreConfig(rows=2, cols=2, latency=3, bytes_per_cycle=4, queue_depth=2, sp_bytes=512,
                     imem_instrs=16)
    rnd = random.Random(1)
    ext = bytes(rnd.randrange(256) for _ in range(1024))
    prog = [
        _dma("LOAD", 10, 0, 3, 5, 7, 5, 1),                # dense rows
        _dma("LOAD", 40, 100, 4, 3, 3, 1, 4),              # transpose into sp
        _dma("LOAD", 80, 200, 2, 3, 16, 24, 8, esz=2),     # int32 elements, scattered
        _dma("STORE", 600, 0, 3, 5, 5, 5, 1),
        _dma("STORE", 700, 100, 3, 4, 4, 4, 1),
        _dma("STORE", 800, 200, 2, 3, 12, 24, 8, esz=2),
        _dma("STORE", 900, 1, 2, 2, 9, 3, 2, esz=1),       # 16-bit elements
        HALT,
    ]
    run, t = _check(cfg, prog, ext)
    assert run.cycles == t.cycles


@pytest.mark.parametrize(("latency", "bpc"), [(12, 4), (1, 3), (20, 16)])
def test_dma_request_limit_and_split_elements_cycle_exact(latency, bpc):
    """Long thin rows (one beat each: the read requests that run ahead hit DMA_OUTSTANDING when
    the latency exceeds it), int32 elements split across beats (B = 3), transposes."""
    cfg = CoreConfig(rows=2, cols=2, latency=latency, bytes_per_cycle=bpc, queue_depth=2,
                     sp_bytes=2048, imem_instrs=16)
    rnd = random.Random(latency)
    ext = bytes(rnd.randrange(256) for _ in range(2048))
    prog = [
        _dma("LOAD", 3, 0, 20, 3, 5, 3, 1),                 # 20 one-beat rows
        _dma("LOAD", 200, 100, 9, 3, 12, 30, 8, esz=2),     # int32 scattered, 9 rows
        _dma("LOAD", 400, 400, 17, 2, 2, 1, 17),            # transposing, 17 rows
        _dma("STORE", 1000, 0, 20, 3, 4, 3, 1),
        _dma("STORE", 1100, 100, 9, 3, 12, 30, 8, esz=2),   # gathered int32
        _dma("STORE", 1300, 400, 17, 2, 2, 1, 17),
        HALT,
    ]
    run, t = _check(cfg, prog, ext)
    assert run.cycles == t.cycles
    assert run.busy == t.busy
    assert run.mem_stall == _load_stall_cycles(prog, cfg)
    stalled, _ = _check(cfg, prog, ext, stall=0.3, seed=latency)
    assert stalled.busy["D"] - run.busy["D"] == stalled.mem_stall - run.mem_stall > 0


def _i32(vals):
    return b"".join(struct.pack("<i", v) for v in vals)


def random_program(rng: random.Random, cfg: CoreConfig, tiles: int, max_dim: int,
                   ext_bytes: int = 8192, acc_prob: float = 0.3, sfu_prob: float = 0.0,
                   max_row: int = MAX_ROW,
                   kinds: tuple[str, ...] = ("ADD", "GELU", "LAYERNORM", "SOFTMAX")):
    """Tiles of GEMM (random shape, bias/requant, int8/int32 out) fed by LOADs (dense or
    transposed A, column-slice B), results STOREd (dense or transposed), plus independent
    strided DMA traffic; loads of tile t+1 overlap GEMM t (tokens D->M and M->D)."""
    ext = bytearray(rng.randrange(256) for _ in range(ext_bytes))
    sp_next = [0]
    ext_next = [ext_bytes // 2]  # outputs in the upper half

    def sp_alloc(n):
        a = sp_next[0]
        sp_next[0] += n + rng.randrange(3)
        assert sp_next[0] <= cfg.sp_bytes
        return a

    def ext_out(n):
        a = ext_next[0]
        ext_next[0] += n + rng.randrange(5)
        assert ext_next[0] <= ext_bytes
        return a

    ext_in = [16]

    def ext_put(data: bytes):
        a = ext_in[0]
        ext[a:a + len(data)] = data
        ext_in[0] += len(data) + rng.randrange(4)
        assert ext_in[0] <= ext_bytes // 2
        return a

    def edge_i8(n):
        return bytes(rng.choice([0x80, 0x7F, rng.randrange(256)]) for _ in range(n))

    def loads(t):
        mm, kk, nn = (rng.randint(1, max_dim) for _ in range(3))
        bias, rq = rng.random() < 0.6, rng.random() < 0.6
        out = []
        sa = sp_alloc(mm * kk)
        if rng.random() < 0.5:  # A dense [M, K] rows at a padded ext row stride
            rs = kk + rng.randrange(3)
            a = ext_put(edge_i8(rs * mm))
            out.append(_dma("LOAD", a, sa, mm, kk, rs, kk, 1))
        else:  # ext holds A^T [K, M]: a transposing load
            a = ext_put(edge_i8(kk * mm))
            out.append(_dma("LOAD", a, sa, kk, mm, mm, 1, kk))
        sb = sp_alloc(kk * nn)
        wide = nn + rng.randrange(4)  # B is a column slice of a wider matrix
        b = ext_put(edge_i8(kk * wide))
        out.append(_dma("LOAD", b, sb, kk, nn, wide, nn, 1))
        sbias = sqp = 0
        if bias:
            sbias = sp_alloc(4 * nn)
            v = [rng.choice([-2**31, 2**31 - 1]) if rng.random() < 0.15 else rng.randrange(-5000, 5000)
                 for _ in range(nn)]
            out.append(_dma("LOAD", ext_put(_i32(v)), sbias, 1, nn, 4 * nn, 4 * nn, 4, esz=2))
        if rq:
            sqp = sp_alloc(8 * nn)
            if rng.random() < 0.3:  # anything, mostly saturating
                mult = [rng.randrange(-2**31, 2**31) for _ in range(nn)]
                shift = [rng.randrange(0, 64) for _ in range(nn)]
            else:  # realistic scales
                mult = [rng.randrange(2**14, 2**15) for _ in range(nn)]
                shift = [rng.randrange(16, 28) for _ in range(nn)]
            out.append(_dma("LOAD", ext_put(_i32(mult + shift)), sqp, 2, nn, 4 * nn, 4 * nn, 4,
                            esz=2))
        acc = rng.random() < acc_prob
        sc = sp_alloc(mm * nn * (4 if acc or not rq else 1))
        shift = 0
        if acc:  # accumulate on top of an int32 C_old loaded into c (extremes included)
            old = [rng.choice([-2**31, 2**31 - 1, 0]) if rng.random() < 0.15
                   else rng.randrange(-2**20, 2**20) for _ in range(mm * nn)]
            out.append(_dma("LOAD", ext_put(_i32(old)), sc, mm, nn, 4 * nn, 4 * nn, 4, esz=2))
            shift = rng.choice([0, 8, 8, rng.randrange(32)])
        last = out[-1]
        out[-1] = Instr(last.op, last.wait, frozenset("M"), last.f)
        f = {"a": sa, "b": sb, "c": sc, "m": mm, "k": kk, "n": nn, "bias": int(bias),
             "requant": int(rq), "bias_addr": sbias, "qp": sqp, "acc": int(acc),
             "acc_shift": shift}
        gemm = Instr("GEMM", frozenset("D"), frozenset("D"), f)
        return out, gemm, (sc, mm, nn, 1 if rq else 4)

    def store(c):
        sc, mm, nn, esz = c
        code = 0 if esz == 1 else 2
        if rng.random() < 0.5:
            return _dma("STORE", ext_out(mm * nn * esz), sc, mm, nn, nn * esz, nn * esz, esz,
                        esz=code, wait="M")
        return _dma("STORE", ext_out(mm * nn * esz), sc, nn, mm, mm * esz, esz, nn * esz,
                    esz=code, wait="M")

    def extra():  # independent D traffic: random element size and strides
        code = rng.randrange(3)
        esz = 1 << code
        rows, cols = rng.randint(1, 3), rng.randint(1, 4)
        cs = esz * rng.randint(1, 3)
        rs = cols * cs + rng.randrange(3)
        s = sp_alloc(rows * rs + cols * cs)
        e = ext_put(bytes(rng.randrange(256) for _ in range(rows * cols * esz)))
        ld = _dma("LOAD", e, s, rows, cols, cols * esz, rs, cs, esz=code)
        st = _dma("STORE", ext_out(rows * cols * esz), s, rows, cols, cols * esz, rs, cs,
                  esz=code)
        return [ld, st]

    def put_sp(data: bytes, sig=()):  # one LOAD of a byte block into a fresh scratchpad area
        sa = sp_alloc(len(data))
        return sa, _dma("LOAD", ext_put(data), sa, 1, len(data), len(data), len(data), 1,
                        sig=sig)

    def sfu():
        """One S instruction on random operands: its LOADs (the last signals S), the
        instruction (waits D, signals D) and the STOREs of its outputs (wait S)."""
        kind = rng.choice(kinds)
        lds, outs = [], []
        rows, cols = rng.randint(1, 3), rng.choice([1, 2, rng.randint(1, max_row), max_row])
        n = rows * cols
        if kind == "ADD":
            a32, b16, out32 = (rng.random() < 0.5 for _ in range(3))
            a = [rng.choice([-2**31, 2**31 - 1, rng.randrange(-2**24, 2**24)]) if a32
                 else rng.randrange(-128, 128) for _ in range(n)]
            b = [rng.choice([-2**15, 2**15 - 1, rng.randrange(-2**15, 2**15)]) if b16
                 else rng.choice([-128, 127, rng.randrange(-128, 128)]) for _ in range(n)]
            mp = [rng.choice([-(2**23) + 1, 2**23 - 1, rng.randrange(-2**23 + 1, 2**23)])
                  for _ in range(2 * cols)]
            sa, ld_a = put_sp(_i32(a) if a32 else bytes(v & 255 for v in a))
            sb, ld_b = put_sp(b"".join(struct.pack("<h", v) for v in b) if b16
                              else bytes(v & 255 for v in b))
            smp, ld_mp = put_sp(_i32(mp))
            lds = [ld_a, ld_b, ld_mp]
            sy = sp_alloc(n * (4 if out32 else 1))
            outs = [(sy, n * (4 if out32 else 1))]
            f = {"a": sa, "b": sb, "y": sy, "rows": rows, "cols": cols, "mp": smp,
                 "a32": int(a32), "b16": int(b16), "out32": int(out32),
                 "shift": rng.choice([0, 1, 63, rng.randrange(8, 40)])}
        elif kind == "GELU":
            cnt = rng.choice([1, rng.randint(1, 40)])
            p = gelu_params(rng.uniform(0.01, 0.2), rng.uniform(0.01, 0.1))
            x = [rng.choice([-128, 127, 0, rng.randrange(-128, 128)]) for _ in range(cnt)]
            sx, ld_x = put_sp(bytes(v & 255 for v in x))
            spp, ld_p = put_sp(gelu_block(p))
            lds = [ld_x, ld_p]
            split = rng.random() < 0.5
            sy = sp_alloc(cnt)
            outs = [(sy, cnt)]
            f = {"x": sx, "y": sy, "count": cnt, "pp": spp, "split16": int(split)}
            if split:
                f["y_lo"] = sp_alloc(cnt)
                outs.append((f["y_lo"], cnt))
        elif kind == "LAYERNORM":
            x32 = rng.random() < 0.5
            bits = rng.choice([16, 20, 24]) if x32 else 8
            x = [rng.randrange(-2**(bits - 1), 2**(bits - 1)) for _ in range(n)]
            if rng.random() < 0.2:
                x = [x[0]] * n  # a constant row (variance 0)
            gamma = torch.tensor([rng.uniform(-2, 2) for _ in range(cols)])
            beta = torch.tensor([rng.uniform(-1, 1) for _ in range(cols)])
            p = layernorm_params(cols, rng.uniform(0.01, 0.1), gamma, beta,
                                 rng.uniform(0.02, 0.1), rng.choice([1e-5, 1e-12, 0.5]), bits)
            sx, ld_x = put_sp(_i32(x) if x32 else bytes(v & 255 for v in x))
            spp, ld_p = put_sp(layernorm_block(p))
            lds = [ld_x, ld_p]
            out16 = rng.random() < 0.5
            sy = sp_alloc(n)
            outs = [(sy, n)]
            f = {"x": sx, "y": sy, "rows": rows, "cols": cols, "pp": spp, "x32": int(x32),
                 "out16": int(out16)}
            if out16:
                f["y16"] = sp_alloc(2 * n)
                outs.append((f["y16"], 2 * n))
        else:
            x32, mask, half = (rng.random() < 0.5 for _ in range(3))
            x = [rng.randrange(-2**20, 2**20) if x32 else rng.randrange(-128, 128)
                 for _ in range(n)]
            p = softmax_params(rng.choice([1 / 8, 1 / 64, 2**-14]) if x32
                               else rng.uniform(0.01, 0.3))
            sx, ld_x = put_sp(_i32(x) if x32 else bytes(v & 255 for v in x))
            spp, ld_p = put_sp(softmax_block(p))
            lds = [ld_x, ld_p]
            f = {"x": sx, "rows": rows, "cols": cols, "pp": spp, "x32": int(x32),
                 "mask": int(mask), "half": int(half)}
            if mask:
                km = bytes(rng.choice([0, 1, 0xFF]) for _ in range(cols))
                f["km"], ld_k = put_sp(km)
                lds.append(ld_k)
            f["y"] = sp_alloc(n)
            outs = [(f["y"], n)]
        last = lds[-1]
        lds[-1] = Instr(last.op, last.wait, frozenset("S"), last.f)
        ins = Instr(kind, frozenset("D"), frozenset("D"), f)
        sts = [_dma("STORE", ext_out(nb), sa, 1, nb, nb, nb, 1, wait="S" if j == 0 else ())
               for j, (sa, nb) in enumerate(outs)]
        return lds, ins, sts

    prog: list[Instr] = []
    pending = None
    s_pending: list[list[Instr]] = []
    for t in range(tiles):
        if rng.random() < sfu_prob:
            lds, ins, sts = sfu()
            prog += lds
            if s_pending:
                prog += s_pending.pop(0)
            prog.append(ins)
            s_pending.append(sts)
            continue
        ld, gemm, c = loads(t)
        prog += ld
        if rng.random() < 0.4:
            prog += extra()
        if pending is not None:
            prog.append(store(pending))
        prog.append(gemm)
        pending = c
    if pending is not None:
        prog.append(store(pending))
    for sts in s_pending:
        prog += sts
    prog.append(HALT)
    return prog, bytes(ext)


@pytest.mark.parametrize(("rows", "cols", "dataflow", "latency", "bpc", "depth", "dim", "seed"), [
    (2, 2, "os", 4, 4, 2, 6, 1),
    (2, 3, "ws", 1, 1, 1, 6, 2),
    (4, 4, "os", 6, 8, 4, 6, 3),
    (4, 4, "ws", 0, 3, 2, 9, 4),
    (3, 2, "os", 2, 2, 1, 9, 5),
    (2, 2, "ws", 8, 16, 3, 5, 6),
])
def test_random_gemm_programs_bit_and_cycle_exact(rows, cols, dataflow, latency, bpc, depth, dim,
                                                  seed):
    cfg = CoreConfig(rows=rows, cols=cols, dataflow=dataflow, latency=latency,
                     bytes_per_cycle=bpc, queue_depth=depth, sp_bytes=8192, imem_instrs=64)
    rng = random.Random(seed)
    prog, ext = random_program(rng, cfg, tiles=4, max_dim=dim)
    run, t = _check(cfg, prog, ext, max_dim=dim)
    assert run.cycles == t.cycles, (seed, run.cycles, t.cycles)
    assert run.cnt_cycles == t.cycles
    assert run.busy == t.busy


def _load_stall_cycles(prog, cfg):
    """Cycles in which LOADs wait for a beat with a memory that never stalls: everything but
    the start cycle and one cycle per piece (the first beat's latency, request-limit gaps)."""
    out = 0
    for i in prog:
        if i.op == "LOAD" and i["rows"] * i["cols"]:
            esz = 1 << i["esz"]
            p = dma_pieces(i["cols"], esz, cfg.bytes_per_cycle, i["sp_cs"] == esz)
            out += instr_cycles(i, cfg) - 1 - i["rows"] * p
    return out


@pytest.mark.parametrize("seed", [11, 12])
def test_memory_stalls_add_exactly_their_cycles_to_the_dma(seed):
    """Random idle beats and refused requests/write beats: the result is unchanged and the D
    queue's busy cycles grow by exactly the extra memory-stall cycles; M is untouched."""
    cfg = CoreConfig(rows=2, cols=2, latency=3, bytes_per_cycle=2, queue_depth=2, sp_bytes=4096,
                     imem_instrs=64)
    prog, ext = random_program(random.Random(seed), cfg, tiles=3, max_dim=5)
    base, t = _check(cfg, prog, ext, max_dim=8)
    assert base.cycles == t.cycles
    assert base.mem_stall == _load_stall_cycles(prog, cfg)
    run, _ = _check(cfg, prog, ext, max_dim=8, stall=0.3, seed=seed)
    extra = run.mem_stall - base.mem_stall
    assert extra > 0
    assert run.busy["D"] - base.busy["D"] == extra
    assert run.busy["M"] == base.busy["M"]
    assert run.cycles >= base.cycles


def test_halt_only_program_is_done_in_cycle_zero():
    cfg = CoreConfig(rows=2, cols=2, sp_bytes=64, imem_instrs=4)
    run = run_core(cfg, [encode(HALT)], bytes(64))
    assert run.cycles == 0 == program_timing([HALT], cfg).cycles
    assert run.error == 0


def _raw(word0: int, *words: int) -> bytes:
    return struct.pack("<8I", word0, *words, *([0] * (7 - len(words))))


@pytest.mark.parametrize(("bad", "why"), [
    (_raw(0x09), "unknown opcode"),
    (_raw(0x01 | 1 << 11, 0, 0, 1 | 1 << 16, 1, 1, 1), "reserved bit 11 of a LOAD"),
    (_raw(0x01 | 1 << 30, 0, 0, 1 | 1 << 16, 1, 1, 1), "reserved high bits of a LOAD"),
    (_raw(0x02 | 1 << 8, 0, 0, 1 | 1 << 16, 1, 1, 1), "a STORE waiting for its own queue"),
    (_raw(0x01 | 3 << 16, 0, 0, 1 | 1 << 16, 1, 1, 1), "reserved esz code 3"),
    (_raw(0x00 | 1 << 13), "HALT with a signal"),
    (_raw(0x03 | 1 << 19, 0, 0, 64, 1 | 1 << 16, 1), "reserved bit 19 of a GEMM"),
    (_raw(0x03 | 1 << 25, 0, 0, 64, 1 | 1 << 16, 1), "reserved bit 25 of a GEMM"),
    (_raw(0x03, 0, 0, 64, 1 | 0 << 16, 1), "GEMM with k = 0"),
    (_raw(0x04), "ADD (S queue, not in this slice)"),
])
def test_illegal_instruction_sets_sticky_error_and_pc(bad, why):
    cfg = CoreConfig(rows=2, cols=2, latency=2, bytes_per_cycle=4, sp_bytes=256, imem_instrs=8)
    ext = bytes(range(256)) * 2
    ok = [_dma("LOAD", 8, 0, 2, 4, 4, 4, 1), _dma("STORE", 300, 0, 2, 4, 4, 4, 1)]
    after = _dma("LOAD", 40, 100, 1, 4, 4, 4, 1)
    raw = [encode(i) for i in ok] + [bad, encode(after), encode(HALT)]
    run = run_core(cfg, raw, ext)
    assert (run.error, run.error_pc) == (1, 2), why
    g_ext, g_sp = _golden([*ok, HALT], ext, cfg.sp_bytes)  # nothing after the fault ran
    assert run.ext == g_ext and run.sp == g_sp
    assert run.cycles == program_timing([*ok, HALT], cfg).cycles


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rows": 0, "cols": 2}, "rows must be a positive integer, not 0"),
    ({"rows": 2, "cols": 2, "dataflow": "is"}, "dataflow must be one of os, ws"),
    ({"rows": 2, "cols": 2, "queue_depth": 0}, "queue_depth must be a positive integer, not 0"),
    ({"rows": 2, "cols": 2, "bytes_per_cycle": 65}, "bytes_per_cycle must be at most 64"),
    ({"rows": 2, "cols": 2, "max_row": 30}, "max_row must be a multiple of 4"),
])
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Core(**kwargs)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_ports_and_properties():
    core = Core(rows=2, cols=3, bytes_per_cycle=8, sp_bytes=1024, imem_instrs=32, max_m=4,
                max_n=7)
    assert (core.rows, core.cols, core.bytes_per_cycle, core.sp_bytes) == (2, 3, 8, 1024)
    assert core.result_depth == 4 * 3
    assert len(core.i_rsp.payload) == 64 and len(core.o_wdata.payload) == 64
    assert len(core.imem_w_data) == 256
    with pytest.raises(AttributeError):
        core.rows = 4


def test_8x8_projection_tile_bit_and_cycle_exact():
    """A realistic array (8x8 OS) on a 16x96x24 GEMM with bias and requant fed by four LOADs and
    drained by a STORE: the slice of a MiniLM projection the Amaranth simulator affords."""
    cfg = CoreConfig(rows=8, cols=8, latency=8, bytes_per_cycle=4, queue_depth=4,
                     sp_bytes=16384, imem_instrs=16)
    rng = random.Random(7)
    m, k, n = 16, 96, 24
    ext = bytearray(rng.randrange(256) for _ in range(16384))
    ext[8192:8192 + 12 * n] = _i32([rng.randrange(-3000, 3000) for _ in range(n)]
                                   + [rng.randrange(2**14, 2**15) for _ in range(n)]
                                   + [rng.randrange(16, 24) for _ in range(n)])
    sa, sb = 0, m * k
    sbias = sb + k * n
    sqp, sc = sbias + 4 * n, sbias + 12 * n
    prog = [
        _dma("LOAD", 0, sa, m, k, k, k, 1),
        _dma("LOAD", 4096, sb, k, n, n, n, 1),
        _dma("LOAD", 8192, sbias, 1, n, 4 * n, 4 * n, 4, esz=2),
        _dma("LOAD", 8192 + 4 * n, sqp, 2, n, 4 * n, 4 * n, 4, esz=2, sig="M"),
        Instr("GEMM", frozenset("D"), frozenset("D"),
              {"a": sa, "b": sb, "c": sc, "m": m, "k": k, "n": n, "bias": 1, "requant": 1,
               "bias_addr": sbias, "qp": sqp}),
        _dma("STORE", 12288, sc, m, n, n, n, 1, wait="M"),
        HALT,
    ]
    run, t = _check(cfg, prog, bytes(ext), max_dim=96)
    assert run.cycles == t.cycles == 2066  # 8772 with the byte-wide scratchpad
    assert run.busy == t.busy
    assert run.mem_stall == _load_stall_cycles(prog, cfg)


@pytest.mark.parametrize(("rows", "cols", "dataflow", "latency", "depth", "seed"), [
    (2, 2, "os", 3, 2, 21),
    (2, 3, "ws", 1, 1, 22),
    (3, 2, "os", 0, 3, 23),
    (2, 2, "ws", 5, 2, 24),
])
def test_random_programs_all_queues_bit_and_cycle_exact(rows, cols, dataflow, latency, depth,
                                                       seed):
    """GEMM tiles (acc included), strided DMA and every S instruction (ADD a32/b16/out32,
    GELU int8/split16, LAYERNORM int8/int32 in, out16, SOFTMAX int8/int32, mask, half) mixed,
    loads overlapping the other queues."""
    cfg = CoreConfig(rows=rows, cols=cols, dataflow=dataflow, latency=latency,
                     bytes_per_cycle=4, queue_depth=depth, sp_bytes=8192, imem_instrs=128)
    rng = random.Random(seed)
    prog, ext = random_program(rng, cfg, tiles=7, max_dim=5, ext_bytes=16384, sfu_prob=0.6)
    assert any(i.queue == "S" for i in prog)
    run, t = _check(cfg, prog, ext, max_dim=5)
    assert run.cycles == t.cycles, (seed, run.cycles, t.cycles)
    assert run.busy == t.busy


@pytest.mark.parametrize("kind", ["ADD", "GELU", "LAYERNORM", "SOFTMAX"])
@pytest.mark.parametrize("seed", [31, 32])
def test_each_sfu_instruction_bit_and_cycle_exact(kind, seed):
    """Five random instances of one S instruction (flags, shapes up to the row buffer, edge
    values) back to back with their loads and stores."""
    cfg = CoreConfig(rows=2, cols=2, latency=2, bytes_per_cycle=4, queue_depth=2,
                     sp_bytes=8192, imem_instrs=128)
    rng = random.Random(seed)
    prog, ext = random_program(rng, cfg, tiles=5, max_dim=4, ext_bytes=16384, sfu_prob=1.0,
                               kinds=(kind,))
    assert sum(i.op == kind for i in prog) == 5
    run, t = _check(cfg, prog, ext, max_dim=4)
    assert run.cycles == t.cycles, (seed, run.cycles, t.cycles)
    assert run.busy == t.busy


def test_compiled_bert_layer_bit_and_cycle_exact():
    """The compiler's program for a one-layer BERT-style encoder (linear, head split, attention
    with softmax, residual ADDs, layer norms with the int16 twin, GELU split16 and the two-pass
    FFN-down GEMM with acc) on a 4x4 core: external memory equal to CoreProgram.run's, cycles
    equal to program_timing."""
    from pathlib import Path

    from compiler.core_backend import lower_region
    from compiler.core_run import encoder_region
    from compiler.driver import compile_model
    from compiler.execute import plan_inputs, rebuild_graph

    factory = f"{Path(__file__).with_name('tiny_bert.py')}:layer"
    c = compile_model(factory, "asic:rows=4:cols=4,cpu:mode=roofline")
    graph, lm = rebuild_graph(c.plan)
    cfg = CoreConfig(rows=4, cols=4, latency=4, bytes_per_cycle=4, sp_bytes=16384,
                     imem_instrs=128, max_m=16, max_k=64, max_n=64)
    prog = lower_region(graph, encoder_region(graph), cfg)
    assert {i.op for i in prog.instrs} == {"LOAD", "STORE", "GEMM", "ADD", "LAYERNORM",
                                           "SOFTMAX", "GELU", "HALT"}
    assert any(i["acc"] for i in prog.instrs if i.op == "GEMM")
    x = plan_inputs(lm, 1)
    inputs = {"x": x[0] if isinstance(x, (tuple, list)) else x}
    mem = prog.memory(inputs)
    ext0 = bytes(mem.ext.tolist())
    _, gold = prog.run(inputs)
    dut = Core(rows=4, cols=4, bytes_per_cycle=4, queue_depth=cfg.queue_depth,
               sp_bytes=cfg.sp_bytes, imem_instrs=cfg.imem_instrs, max_m=16, max_k=64,
               max_n=64, max_row=64)
    run = run_core(cfg, [encode(i) for i in prog.instrs], ext0, dut=dut, timeout=200_000)
    assert run.error == 0
    assert run.ext == bytes(gold.ext.tolist())
    t = program_timing(prog.instrs, cfg)
    assert run.cycles == t.cycles
    assert run.busy == t.busy
