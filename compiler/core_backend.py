"""Core backend: lower a region of quantized IR ops to a program for the fmforge core.

A region is a set of ops (``linear`` with int8 or split-int16 input, ``attention``, ``gelu``,
``add``, ``layer_norm`` and ``layout``) that the core runs as one program (docs/isa.md). The
backend decides every number format between ops, the tiling, the scratchpad allocation, double
buffering and the synchronisation:

* **values live in external memory**, each described by an *address tensor*: a tensor of the
  value's shape holding each element's byte address. Layout ops (``view``, ``permute``,
  ``transpose``, ``clone``, ``expand``, ...) are the torch op applied to the address tensor: no
  data moves; the DMA of the consumer reads the elements where they are, with 2-D strides
  (:meth:`Program.dma`). Head split/concat, permutes and the ``K^T`` operand are thus DMA strides.
* **formats**: ``i8`` (per-tensor scale), ``i32`` (per-channel scale: the int32 result of a linear
  whose only consumer is a residual ``add``, which the ``ADD`` instruction rescales per channel),
  ``s16`` (split int16: two int8 planes, the GELU output feeding a 16-bit-input linear, run as two
  GEMM passes with accumulate-on-top). The scale of an op's int8 output is its calibrated
  ``out_scale``; an ``add`` or ``attention`` output takes the ``in_scale`` of its consumer.
* **tiling**: a linear's weight is split in column tiles that fit half the weight budget of the
  scratchpad, loaded into two alternating buffers, so the DMA loads tile ``j+1`` while the array
  computes tile ``j``; outputs go to two alternating buffers too.
* **synchronisation** (:meth:`Program.finish`): instructions are emitted in program order with
  their memory footprints; every instruction waits (one token) for the latest earlier
  instruction of each other queue whose footprint conflicts with its own (read-after-write,
  write-after-read, write-after-write), which signals it. The result is race-free by
  construction (:func:`golden.core.check_races`) and cannot deadlock.

:func:`lower_region` returns a :class:`CoreProgram`: the instructions, the weight image, the
memory map of the region's inputs and outputs, and :meth:`CoreProgram.run` runs it on the golden
core (what ``fmforge execute`` does for ops placed on the core).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from compiler.interp import float_impl
from compiler.ir import Graph, Node, Ref
from compiler.passes.quantize import linear_qparams
from golden.core import (
    ADD_MULT_BITS,
    INT16_MAX,
    INT16_MIN,
    CoreMemory,
    Instr,
    _ranges,
    encode_program,
    gelu_block,
    layernorm_block,
    run_program,
    softmax_block,
)
from golden.errors import UserValueError
from golden.gelu import gelu_params
from golden.layernorm import layernorm_params
from golden.requant import quantize_multiplier
from golden.softmax import softmax_params
from hw.core_model import CoreConfig

__all__ = ["CORE_OPS", "CoreProgram", "CoreValue", "Program", "lower_region"]

CORE_OPS = ("linear", "attention", "gelu", "add", "layer_norm", "layout")
"""IR op kinds the core runs (the backend lowers them)."""


class CoreLoweringError(UserValueError):
    """An op the core backend cannot lower (names the op and why)."""


@dataclass
class CoreValue:
    """A tensor in external memory: ``addr`` (int64 tensor of byte addresses, the value's shape),
    element size ``esz``, ``fmt`` (``i8``, ``i32``, ``s16``), ``scale`` (float, or a per-channel
    tensor for ``i32``), for ``s16`` ``addr_lo`` (the low plane), and ``wide``: an int16 twin
    (256 times finer) a layer norm writes beside its int8 output for the residual adds."""

    addr: torch.Tensor
    esz: int
    fmt: str
    scale: Any
    addr_lo: torch.Tensor | None = None
    wide: CoreValue | None = None


class Program:
    """Instruction list with automatic token insertion (module docstring)."""

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = cfg
        self.ins: list[dict[str, Any]] = []  # op, f
        self.origin: list[str] = []  # the IR op each instruction belongs to
        self.current = ""

    def emit(self, op: str, **f: int) -> None:
        self.ins.append({"op": op, "f": {k: int(v) for k, v in f.items() if v}})
        self.origin.append(self.current)

    # ---- DMA of an arbitrary address matrix ----------------------------------------------
    def dma(self, op: str, addr: torch.Tensor, sp: int, esz: int) -> None:
        """Move the [R, C] elements at external addresses ``addr`` to/from the dense [R, C]
        scratchpad block at ``sp`` with as few 2-D instructions as the layout allows."""
        addr = addr.reshape(addr.shape[0] if addr.dim() else 1, -1)
        r, c = addr.shape
        esz_code = {1: 0, 2: 1, 4: 2}[esz]
        # split the columns where some row is not contiguous: each chunk is a strided block
        step = (addr[:, 1:] - addr[:, :-1] == esz).all(0) if c > 1 else torch.ones(0, dtype=bool)
        cuts = [0, *[j + 1 for j in range(c - 1) if not bool(step[j])], c]
        if len(cuts) - 1 <= max(1, c // 4):
            for j0, j1 in zip(cuts[:-1], cuts[1:], strict=True):
                blk = addr[:, j0:j1]
                rs = int(blk[1, 0] - blk[0, 0]) if r > 1 else (j1 - j0) * esz
                starts = [0, *[i for i in range(1, r) if int(blk[i, 0] - blk[i - 1, 0]) != rs], r]
                if r > 1 and len(starts) > 2:  # rows not uniformly strided: row by row
                    starts = list(range(r + 1))
                for i0, i1 in zip(starts[:-1], starts[1:], strict=True):
                    self.emit(op, esz=esz_code, ext=int(blk[i0, 0]), sp=sp + (i0 * c + j0) * esz,
                              rows=i1 - i0, cols=j1 - j0, ext_rs=rs if i1 - i0 > 1 else 0,
                              sp_rs=c * esz, sp_cs=esz)
            return
        t = addr.t()
        if r > 1 and bool((t[:, 1:] - t[:, :-1] == esz).all()):  # columns contiguous: transpose
            cs = int(t[1, 0] - t[0, 0]) if c > 1 else r * esz
            if c == 1 or bool((t[1:, 0] - t[:-1, 0] == cs).all()):
                self.emit(op, esz=esz_code, ext=int(t[0, 0]), sp=sp, rows=c, cols=r, ext_rs=cs,
                          sp_rs=esz, sp_cs=c * esz)
                return
        for i in range(r):  # element by element (no layout in MiniLM needs it)
            for j in range(c):
                self.emit(op, esz=esz_code, ext=int(addr[i, j]), sp=sp + (i * c + j) * esz,
                          rows=1, cols=1, ext_rs=esz, sp_rs=esz, sp_cs=esz)

    # ---- tokens ------------------------------------------------------------------------------
    def finish(self) -> list[Instr]:
        """Instructions with the tokens that order every conflicting pair (module docstring)."""
        plain = [Instr(d["op"], frozenset(), frozenset(), d["f"]) for d in self.ins]
        waits: list[set[str]] = [set() for _ in plain]
        sigs: list[set[str]] = [set() for _ in plain]
        synced: dict[tuple[str, str], int] = {}  # (src, dst) -> latest src instr dst follows
        hist: dict[str, list[tuple[int, int, int, bool]]] = {"ext": [], "sp": []}
        for i, ins in enumerate(plain):
            q = ins.queue
            reads, writes = _ranges(ins)
            need: dict[str, int] = {}
            for space, lo, hi, is_w in [(*x, False) for x in reads] + [(*x, True) for x in writes]:
                for plo, phi, j, pw in reversed(hist[space]):
                    pq = plain[j].queue
                    if pq == q or not (is_w or pw) or phi <= lo or hi <= plo:
                        continue
                    if j > need.get(pq, -1):
                        need[pq] = j
            for pq, j in need.items():
                if synced.get((pq, q), -1) >= j:
                    continue
                sigs[j].add(q)
                waits[i].add(pq)
                synced[(pq, q)] = j  # (no elision through a third queue: a token too many
                # costs nothing when it is already there)
            for space, lo, hi, is_w in [(*x, False) for x in reads] + [(*x, True) for x in writes]:
                hist[space].append((lo, hi, i, is_w))
        out = [Instr(p.op, frozenset(waits[i]), frozenset(sigs[i]), p.f)
               for i, p in enumerate(plain)]
        return [*out, Instr("HALT")]


class _Alloc:
    """Bump allocator with 64-byte alignment."""

    def __init__(self, base: int = 0, limit: int | None = None, what: str = "") -> None:
        self.top = base
        self.limit = limit
        self.what = what

    def take(self, n: int, who: str = "") -> int:
        a = self.top
        self.top = (self.top + n + 63) // 64 * 64
        if self.limit is not None and self.top > self.limit:
            raise CoreLoweringError(f"{who}: {self.what} overflow: needs {self.top} bytes, has "
                                    f"{self.limit}")
        return a


@dataclass
class CoreProgram:
    """A lowered region: ``instrs``, the ``image`` (external memory from address 0: weights and
    parameters, zeros where activations go), ``inputs`` / ``outputs`` (value name -> :class:`CoreValue`), the external
    memory size ``ext_bytes`` and the core configuration."""

    cfg: CoreConfig
    instrs: list[Instr]
    image: bytes
    inputs: dict[str, CoreValue]
    outputs: dict[str, CoreValue]
    ext_bytes: int
    ops: list[str] = field(default_factory=list)
    #: per instruction (HALT excluded), the IR op it was emitted for
    origins: list[str] = field(default_factory=list)

    def program_bytes(self) -> bytes:
        return encode_program(self.instrs)

    def digest(self) -> str:
        """sha256 of program and image (what a plan references)."""
        h = hashlib.sha256(self.program_bytes())
        h.update(self.image)
        return h.hexdigest()

    def memory(self, inputs: dict[str, torch.Tensor]) -> CoreMemory:
        """External memory with the image and the quantized ``inputs`` (float tensors) written."""
        mem = CoreMemory(self.ext_bytes, self.cfg.sp_bytes)
        mem.write("ext", 0, self.image)
        for name, v in self.inputs.items():
            t = inputs[name]
            if v.fmt == "mask":
                q = t if t.dtype == torch.bool else t > -1e30
                if not bool((q == q[..., :1, :]).all()):
                    raise CoreLoweringError(f"attention mask {name!r} differs between query "
                                            "rows: the core's SOFTMAX masks keys only")
            elif v.fmt == "s16":  # split int16: the high plane at addr, the low one at addr_lo
                q16 = torch.clamp(torch.round(t.to(torch.float64) / v.scale), INT16_MIN,
                                  INT16_MAX).to(torch.int64)
                lo = torch.remainder(q16 + 128, 256) - 128
                assert v.addr_lo is not None
                _scatter(mem, v.addr_lo, lo, 1)
                q = (q16 - lo) // 256
            elif v.fmt == "i32":
                q = torch.clamp(torch.round(t.to(torch.float64) / v.scale), -32767, 32767)
            else:
                q = torch.clamp(torch.round(t.to(torch.float64) / v.scale), -128, 127)
            _scatter(mem, v.addr, q.to(torch.int64), v.esz)
            if v.wide is not None:
                w = torch.clamp(torch.round(t.to(torch.float64) / v.wide.scale), -2**15,
                                2**15 - 1)
                _scatter(mem, v.wide.addr, w.to(torch.int64), 2)
        return mem

    def read(self, mem: CoreMemory, name: str) -> torch.Tensor:
        """Real value (float32) of an output from the memory after the run."""
        v = self.outputs[name]
        v = v.wide if v.wide is not None else v  # the finer copy when there is one
        return _dequant(v, _gather(mem, v.addr, v.esz),
                        None if v.addr_lo is None else _gather(mem, v.addr_lo, 1))

    def run(self, inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], CoreMemory]:
        """Run on the golden core; returns the real outputs and the final memory."""
        mem = self.memory(inputs)
        run_program(self.instrs, mem)
        return {n: self.read(mem, n) for n in self.outputs}, mem


def _gather(mem: CoreMemory, addr: torch.Tensor, esz: int) -> torch.Tensor:
    idx = addr.reshape(-1, 1) + torch.arange(esz)
    b = mem.ext[idx.reshape(-1)].reshape(-1, esz).to(torch.int64)
    v = sum(b[:, i] << (8 * i) for i in range(esz))
    bits = 8 * esz
    v = torch.where(v >= 1 << (bits - 1), v - (1 << bits), v)
    return v.reshape(addr.shape)


def _scatter(mem: CoreMemory, addr: torch.Tensor, vals: torch.Tensor, esz: int) -> None:
    idx = addr.reshape(-1, 1) + torch.arange(esz)
    v = vals.reshape(-1, 1).to(torch.int64)
    by = (v >> (8 * torch.arange(esz))) & 0xFF
    mem.ext[idx.reshape(-1)] = by.reshape(-1).to(torch.uint8)


def _dequant(v: CoreValue, q: torch.Tensor, lo: torch.Tensor | None) -> torch.Tensor:
    if v.fmt == "s16":
        assert lo is not None
        q = 256 * q + lo
    return (q.to(torch.float64) * (v.scale if not torch.is_tensor(v.scale) else v.scale)).to(
        torch.float32)


def _mult_shift(ratios: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Integer multipliers below 2**23 and one shift for the real ``ratios``."""
    top = float(ratios.abs().max())
    limit = (1 << (ADD_MULT_BITS - 1)) - 1
    shift = 40 if top == 0 else min(62, max(0, math.floor(math.log2(limit / top))))
    m = torch.round(ratios.to(torch.float64) * 2.0 ** shift).to(torch.int64)
    while int(m.abs().max()) > limit:
        shift -= 1
        m = torch.round(ratios.to(torch.float64) * 2.0 ** shift).to(torch.int64)
    return m, shift


class _Lowering:
    def __init__(self, graph: Graph, names: Sequence[str], cfg: CoreConfig) -> None:
        self.g = graph
        self.cfg = cfg
        self.nodes = graph.node_map()
        self.region = list(names)
        self.inset = set(names)
        self.users = graph.users()
        self.p = Program(cfg)
        self.blobs: list[tuple[int, bytes]] = []
        self.vals: dict[str, CoreValue] = {}
        self.inputs: dict[str, CoreValue] = {}
        self.ext = _Alloc(0, None, "external memory")

    # ---- helpers -------------------------------------------------------------------------
    def blob(self, data: bytes) -> int:
        """Place constant bytes (weights, parameters) in the image; returns their address."""
        a = self.ext.take(len(data))
        self.blobs.append((a, data))
        return a

    def producer_scale(self, v: str) -> float | None:
        """The calibrated per-tensor scale of the op that made ``v`` (through layouts), if any."""
        while v in self.nodes and self.nodes[v].op == "layout" and self.nodes[v].inputs:
            v = self.nodes[v].inputs[0]
        q = self.nodes[v].attrs.get("quant") if v in self.nodes else None
        # a per-channel or int32 linear output arriving from the host: per tensor at its
        # calibrated largest channel scale
        return float(q["out_scale"]) if q else None

    def consumer_scale(self, v: str, who: str) -> float:
        """The in_scale the (first quantized) consumer of ``v`` reads it with, through layouts."""
        todo = [v]
        while todo:
            x = todo.pop(0)
            for u in self.users.get(x, []):
                n = self.nodes[u]
                if n.op == "layout":
                    todo.append(u)
                    continue
                q = n.attrs.get("quant")
                if q and n.op in ("linear", "layer_norm", "gelu", "softmax"):
                    if q.get("in_bits") == 16:
                        continue
                    return float(q["in_scales"][0])
        raise CoreLoweringError(f"{who}: no quantized consumer fixes the scale of its int8 "
                                "output (the core needs one)")

    def feeds(self, v: str, op: str) -> bool:
        """Whether every consumer of ``v`` (through layouts) is an ``op``."""
        us = self.users.get(v, [])
        return bool(us) and all(self.feeds(u, op) if self.nodes[u].op == "layout"
                                else self.nodes[u].op == op for u in us)

    def feeds_int16(self, v: str) -> Node | None:
        for u in self.users.get(v, []):
            n = self.nodes[u]
            if n.op == "layout":
                r = self.feeds_int16(u)
                if r is not None:
                    return r
            elif n.op == "linear" and n.attrs.get("quant", {}).get("in_bits") == 16:
                return n
        return None

    def new_value(self, shape: Sequence[int], esz: int, fmt: str, scale: Any,
                  lo: bool = False) -> CoreValue:
        n = math.prod(int(s) for s in shape)
        a = self.ext.take(n * esz)
        addr = a + esz * torch.arange(n, dtype=torch.int64).reshape(tuple(int(s) for s in shape))
        addr_lo = None
        if lo:
            b = self.ext.take(n)
            addr_lo = b + torch.arange(n, dtype=torch.int64).reshape(addr.shape)
        return CoreValue(addr, esz, fmt, scale, addr_lo)

    def value(self, r: Any, who: str, scale: float | None = None, fmt: str = "i8") -> CoreValue:
        if not isinstance(r, Ref):
            raise CoreLoweringError(f"{who}: operand {r!r} is not a tensor value")
        if r.name in self.vals:
            return self.vals[r.name]
        # a region input: written by the host, int8 with the reading op's scale
        types = self.g.value_type(r.name)
        if len(types) != 1 or (r.name in self.nodes and self.nodes[r.name].multi):
            raise CoreLoweringError(f"{who}: reads {r.name!r}, a tuple of {len(types)} tensors "
                                    "(a multi-output op on the host), not one tensor")
        t = types[0]
        s = scale if scale is not None else self.producer_scale(r.name)
        if s is None:
            s = self.consumer_scale(r.name, who)
        if fmt == "i8" and scale is None and self.feeds(r.name, "layer_norm"):
            # a layer norm's input from the host: 16 significant bits in int32, like a residual sum
            v = self.new_value(t.shape, 4, "i32", self.consumer_scale(r.name, who) * 127 / 32767)
            self.vals[r.name] = v
            self.inputs[r.name] = v
            return v
        v = self.new_value(t.shape, 1, fmt, s, lo=fmt == "s16")
        if fmt == "i8" and any(self.nodes[u].op == "add" for u in self._through_layouts(r.name)):
            v.wide = self.new_value(t.shape, 2, "i16", s / 256)  # for residual adds
        self.vals[r.name] = v
        self.inputs[r.name] = v
        return v

    # ---- ops ---------------------------------------------------------------------------------
    def lower(self, n: Node) -> None:
        who = f"op {n.name} ({n.op})"
        self.p.current = n.name
        fn = getattr(self, f"op_{n.op}", None)
        if fn is None:
            raise CoreLoweringError(f"{who}: the core has no instruction for it")
        fn(n, who)

    def op_layout(self, n: Node, who: str) -> None:
        src = n.args[0]
        if not isinstance(src, Ref) or src.name not in self.vals and src.name not in \
                {nm for nm, _ in self.g.inputs} and src.name not in self.nodes:
            raise CoreLoweringError(f"{who}: input is not a tensor")
        v = self.value(src, who)

        def apply(t: torch.Tensor) -> Any:
            try:
                if "view" in n.target:  # the addresses need no contiguity: a reshape is exact
                    return t.reshape(n.args[1])
                return float_impl(n, (t, *n.args[1:]), n.kwargs)
            except (IndexError, RuntimeError, TypeError, ValueError) as e:
                # e.g. an index op whose indices are another value: not an address permutation
                raise CoreLoweringError(f"{who}: {n.target} is not a layout of its input's "
                                        f"addresses ({type(e).__name__}: {e})") from None

        a = apply(v.addr)
        lo = None if v.addr_lo is None else apply(v.addr_lo)
        if not torch.is_tensor(a) or a.dtype != torch.int64:
            raise CoreLoweringError(f"{who}: {n.target} is not a pure layout op")
        w = None if v.wide is None else CoreValue(apply(v.wide.addr), v.wide.esz, v.wide.fmt,
                                                  v.wide.scale)
        self.vals[n.name] = CoreValue(a, v.esz, v.fmt, v.scale, lo, w)

    def op_linear(self, n: Node, who: str) -> None:
        ql = linear_qparams(self.g, n)
        q = n.attrs["quant"]
        wide = q.get("in_bits") == 16
        x = self.value(n.args[n.attrs.get("x_arg", 0)], who, ql.in_scale,
                       "s16" if wide else "i8")
        k, nn = ql.wq.shape
        xa = x.addr.reshape(-1, k)
        m = xa.shape[0]
        if wide and x.fmt != "s16":
            raise CoreLoweringError(f"{who}: a 16-bit-input linear needs its input in split int16 "
                                    "(from a GELU on the core)")
        if not wide and x.fmt != "i8":
            raise CoreLoweringError(f"{who}: input format {x.fmt} is not int8")
        out32 = wide or q.get("out_scales") is not None
        w_at = self.blob(ql.wq.to(torch.int8).numpy().tobytes())
        b_at = self.blob(ql.bias.to(torch.int32).numpy().tobytes())
        qp_at = self.blob(torch.stack([ql.mult, ql.shift]).to(torch.int32).numpy().tobytes())
        shape = n.out[0].shape
        if out32:
            scale = ql.w_scale * ql.in_scale
            out = self.new_value(shape, 4, "i32", scale)
        else:
            out = self.new_value(shape, 1, "i8", ql.out_scale)
        self.vals[n.name] = out
        oa = out.addr.reshape(m, nn)
        osz = 4 if out32 else 1
        cfg = self.cfg
        if k > cfg.max_k:
            raise CoreLoweringError(f"{who}: K = {k} exceeds the GEMM engine's max_k "
                                    f"{cfg.max_k}")
        sp = cfg.sp_bytes
        # budget: an A row tile (and A_lo) resident, two weight, output, bias and qp tiles; the
        # A tile shrinks (halving) until eight weight columns fit beside it
        mt = min(m, cfg.max_m)
        while True:
            a_bytes = mt * k * (2 if wide else 1)
            per_col = 2 * (k + mt * osz + 12)
            avail = sp - a_bytes - 256
            nt = min(nn, cfg.max_n, avail // per_col if avail > 0 else 0)
            if nt >= min(nn, 8) or mt == 1:
                break
            mt = (mt + 1) // 2
        if nt >= 8:
            nt -= nt % 8
        if nt <= 0:
            raise CoreLoweringError(f"{who}: scratchpad overflow: A is {mt}x{k} ({a_bytes} B), "
                                    f"a weight column needs {per_col} B, scratchpad "
                                    f"{sp} B (enlarge sp_bytes)")
        sa = _Alloc(0, sp, "scratchpad")
        a_sp = sa.take(mt * k, who)
        lo_sp = sa.take(mt * k, who) if wide else None
        wbuf = [sa.take(k * nt, who) for _ in range(2)]
        obuf = [sa.take(mt * nt * osz, who) for _ in range(2)]
        bbuf = [sa.take(nt * 4, who) for _ in range(2)]
        qbuf = [sa.take(nt * 8, who) for _ in range(2)]
        # software pipelined: tile j's STORE is emitted after tile j+1's loads, so the in-order
        # DMA queue fetches the next weights while the array computes
        j = 0
        pending: list[Any] = []
        for m0 in range(0, m, mt):
            mr = min(mt, m - m0)
            self.p.dma("LOAD", xa[m0:m0 + mr], a_sp, 1)
            if wide:
                assert x.addr_lo is not None
                self.p.dma("LOAD", x.addr_lo.reshape(-1, k)[m0:m0 + mr], lo_sp, 1)
            for n0 in range(0, nn, nt):
                w = min(nt, nn - n0)
                s = j % 2
                j += 1
                self.p.emit("LOAD", ext=w_at + n0, sp=wbuf[s], rows=k, cols=w, ext_rs=nn,
                            sp_rs=w, sp_cs=1)
                self.p.emit("LOAD", esz=2, ext=b_at + 4 * n0, sp=bbuf[s], rows=1, cols=w,
                            ext_rs=4 * w, sp_rs=4 * w, sp_cs=4)
                if not out32:
                    self.p.emit("LOAD", esz=2, ext=qp_at + 4 * n0, sp=qbuf[s], rows=2, cols=w,
                                ext_rs=4 * nn, sp_rs=4 * w, sp_cs=4)
                while pending:
                    self.p.dma(*pending.pop(0))
                if wide:
                    self.p.emit("GEMM", a=a_sp, b=wbuf[s], c=obuf[s], m=mr, k=k, n=w)
                    self.p.emit("GEMM", a=lo_sp, b=wbuf[s], c=obuf[s], m=mr, k=k, n=w, acc=1,
                                acc_shift=8, bias=1, bias_addr=bbuf[s])
                else:
                    self.p.emit("GEMM", a=a_sp, b=wbuf[s], c=obuf[s], m=mr, k=k, n=w, bias=1,
                                bias_addr=bbuf[s], requant=0 if out32 else 1, qp=qbuf[s])
                pending.append(("STORE", oa[m0:m0 + mr, n0:n0 + w], obuf[s], osz))
        while pending:
            self.p.dma(*pending.pop(0))

    def op_attention(self, n: Node, who: str) -> None:
        qn, kn, vn = n.args[0], n.args[1], n.args[2]
        mask = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
        extra = {k: v for k, v in n.kwargs.items()
                 if k not in ("attn_mask", "scale") and v not in (None, 0.0, False)}
        if len(n.args) > 4 or extra:
            raise CoreLoweringError(f"{who}: dropout or causal options are not lowered "
                                    f"({sorted(extra)})")
        q, k, v = (self.value(r, who) for r in (qn, kn, vn))
        if q.fmt != "i8" or k.fmt != "i8" or v.fmt != "i8":
            raise CoreLoweringError(f"{who}: q, k, v must be int8")
        *batch, s_q, d = q.addr.shape
        s_k = k.addr.shape[-2]
        qa = q.addr.reshape(-1, s_q, d)
        ka = k.addr.expand(*batch, s_k, d).reshape(-1, s_k, d)
        va = v.addr.expand(*batch, s_k, d).reshape(-1, s_k, d)
        s_out = self.consumer_scale(n.name, who)
        out = self.new_value(n.out[0].shape, 1, "i8", s_out)
        self.vals[n.name] = out
        oa = out.addr.reshape(-1, s_q, d)
        km_at = None
        if mask is not None:
            mv = self.value(mask, who, 1.0)
            mv.fmt = "mask"
            mv.scale = 1.0
            # one key mask per batch row: the core's SOFTMAX masks keys (rows all alike)
            km_addr = mv.addr.expand(*batch, s_q, s_k).reshape(-1, s_q, s_k)
            if n.attrs.get("causal"):
                # a causal mask (compiler.passes.canonicalize.mark_causal_masks) is refused
                # here, at compile time; other per-query masks only when their values arrive
                raise CoreLoweringError(f"{who}: its mask {mask.name!r} is causal (a row per "
                                        "query); the core's SOFTMAX masks keys only")
            km_at = km_addr
        for what, v_, lim in (("queries", s_q, self.cfg.max_m), ("keys", s_k, self.cfg.max_n),
                              ("keys", s_k, self.cfg.max_k), ("head dim", d, self.cfg.max_k),
                              ("head dim", d, self.cfg.max_n)):
            if v_ > lim:
                raise CoreLoweringError(f"{who}: {v_} {what} exceed the GEMM engine's limit "
                                        f"{lim} (max_m/max_k/max_n)")
        att_scale = n.kwargs.get("scale")
        att_scale = 1 / math.sqrt(d) if att_scale is None else float(att_scale)
        sm = softmax_params(q.scale * k.scale * att_scale)
        pp_at = self.blob(softmax_block(sm))
        m2, sh2 = quantize_multiplier(v.scale / 128.0 / s_out)
        qp2_at = self.blob(struct.pack("<" + "i" * (2 * d), *([m2] * d + [sh2] * d)))
        sa = _Alloc(0, self.cfg.sp_bytes, "scratchpad")
        pp_sp = sa.take(8, who)
        qp_sp = sa.take(8 * d, who)
        self.p.emit("LOAD", esz=2, ext=pp_at, sp=pp_sp, rows=1, cols=2, ext_rs=8, sp_rs=8, sp_cs=4)
        self.p.emit("LOAD", esz=2, ext=qp2_at, sp=qp_sp, rows=1, cols=2 * d, ext_rs=8 * d,
                    sp_rs=8 * d, sp_cs=4)
        per_set = (s_q * d + d * s_k + s_k * d + 4 * s_q * s_k + s_q * s_k + s_q * d + s_k
                   + 7 * 63)
        nbuf = 3 if 3 * per_set <= self.cfg.sp_bytes - sa.top else 2
        bufs = []
        for _ in range(nbuf):
            bufs.append({"q": sa.take(s_q * d, who), "kt": sa.take(d * s_k, who),
                         "v": sa.take(s_k * d, who), "l": sa.take(4 * s_q * s_k, who),
                         "p": sa.take(s_q * s_k, who), "o": sa.take(s_q * d, who),
                         "km": sa.take(s_k, who)})

        def finish(h: int) -> None:  # AV and the context store of head h
            b = bufs[h % nbuf]
            self.p.emit("GEMM", a=b["p"], b=b["v"], c=b["o"], m=s_q, k=s_k, n=d, requant=1,
                        qp=qp_sp)
            self.p.dma("STORE", oa[h], b["o"], 1)

        # heads pipelined: QK^T of head h is issued before AV of head h-1, so the array works
        # while the special-function queue runs head h-1's softmax
        for h in range(qa.shape[0]):
            b = bufs[h % nbuf]
            self.p.dma("LOAD", qa[h], b["q"], 1)
            self.p.dma("LOAD", ka[h].t(), b["kt"], 1)  # K^T: a transposing DMA
            self.p.dma("LOAD", va[h], b["v"], 1)
            if km_at is not None:  # row 0 of the mask: the host checks all rows are alike
                self.p.dma("LOAD", km_at[h][:1], b["km"], 1)
            self.p.emit("GEMM", a=b["q"], b=b["kt"], c=b["l"], m=s_q, k=d, n=s_k)
            self.p.emit("SOFTMAX", x=b["l"], y=b["p"], rows=s_q, cols=s_k, km=b["km"], pp=pp_sp,
                        x32=1, mask=1 if km_at is not None else 0, half=1)
            if h:
                finish(h - 1)
        finish(qa.shape[0] - 1)

    def op_add(self, n: Node, who: str) -> None:
        if len(n.args) != 2 or n.kwargs.get("alpha", 1) != 1:
            raise CoreLoweringError(f"{who}: only a + b of two tensors is lowered")
        a, b = self.value(n.args[0], who), self.value(n.args[1], who)
        if b.fmt == "i32":
            a, b = b, a
        if b.fmt != "i8" or a.fmt not in ("i8", "i32"):
            raise CoreLoweringError(f"{who}: operands {a.fmt} + {b.fmt} are not lowered")
        if b.wide is None and a.wide is not None:
            a, b = b, a
        if b.wide is not None:  # the residual stream at 16 bits
            b = b.wide
        if tuple(a.addr.shape) != tuple(b.addr.shape):
            raise CoreLoweringError(f"{who}: broadcasting add is not lowered")
        s_out = self.consumer_scale(n.name, who)
        wide = self.feeds(n.name, "layer_norm")
        if wide:  # int32 sum on a 16-bit grid: the layer norm reads it whole (no int8 rounding)
            s_out = s_out * 127 / 32767
        cols = a.addr.shape[-1]
        sa_ = a.scale if torch.is_tensor(a.scale) else torch.full((cols,), float(a.scale))
        ratios = torch.stack([sa_.to(torch.float64) / s_out,
                              torch.full((cols,), float(b.scale) / s_out, dtype=torch.float64)])
        mults, shift = _mult_shift(ratios)
        mp_at = self.blob(mults.to(torch.int32).numpy().tobytes())
        out = self.new_value(n.out[0].shape, 4 if wide else 1, "i32" if wide else "i8", s_out)
        self.vals[n.name] = out
        self._rowwise(n, who, [a, b], [out], lambda sp_in, y, rows, mp: self.p.emit(
            "ADD", a=sp_in[0], b=sp_in[1], y=y[0], rows=rows, cols=cols, mp=mp,
            a32=1 if a.esz == 4 else 0, b16=1 if b.esz == 2 else 0, out32=1 if wide else 0,
            shift=shift), mp_at, 8 * cols)

    def op_layer_norm(self, n: Node, who: str) -> None:
        x = self.value(n.args[0], who)
        q = n.attrs["quant"]
        nd = len(n.args[1]) if len(n.args) > 1 else 1
        if nd != 1 or x.fmt not in ("i8", "i32"):
            raise CoreLoweringError(f"{who}: layer norm over the last dim of int8/int32 only")
        cols = x.addr.shape[-1]
        gamma = self._param(n.args[2]) if len(n.args) > 2 else 1.0
        beta = self._param(n.args[3]) if len(n.args) > 3 else 0.0
        eps = float(n.args[4]) if len(n.args) > 4 else 1e-5
        p = layernorm_params(cols, float(x.scale), gamma, beta, float(q["out_scale"]), eps,
                             in_bits=16 if x.fmt == "i32" else 8)
        blk = layernorm_block(p)
        pp_at = self.blob(blk)
        out = self.new_value(n.out[0].shape, 1, "i8", float(q["out_scale"]))
        outs = [out]
        if self.feeds(n.name, "add") or any(
                self.nodes[u].op == "add" for u in self._through_layouts(n.name)):
            out.wide = self.new_value(n.out[0].shape, 2, "i16", float(q["out_scale"]) / 256)
            outs.append(out.wide)
        self.vals[n.name] = out
        self._rowwise(n, who, [x], outs, lambda sp_in, y, rows, pp: self.p.emit(
            "LAYERNORM", x=sp_in[0], y=y[0], rows=rows, cols=cols, pp=pp,
            x32=1 if x.esz == 4 else 0, out16=1 if len(y) > 1 else 0,
            y16=y[1] if len(y) > 1 else 0), pp_at, len(blk))

    def op_gelu(self, n: Node, who: str) -> None:
        x = self.value(n.args[0], who)
        if x.fmt != "i8":
            raise CoreLoweringError(f"{who}: GELU input must be int8")
        wide = self.feeds_int16(n.name)
        if wide is not None:
            s16 = float(wide.attrs["quant"]["in_scales"][0])
            p = gelu_params(float(x.scale), s16)
            out = self.new_value(n.out[0].shape, 1, "s16", s16, lo=True)
            assert out.addr_lo is not None
            outs = [out, CoreValue(out.addr_lo, 1, "i8", s16)]
        else:
            p = gelu_params(float(x.scale), float(n.attrs["quant"]["out_scale"]))
            out = self.new_value(n.out[0].shape, 1, "i8", float(n.attrs["quant"]["out_scale"]))
            outs = [out]
        self.vals[n.name] = out
        cols = x.addr.shape[-1]
        pp_at = self.blob(gelu_block(p))
        self._rowwise(n, who, [x], outs, lambda sp_in, y, rows, pp: self.p.emit(
            "GELU", x=sp_in[0], y=y[0], count=rows * cols, pp=pp, split16=1 if wide else 0,
            y_lo=y[1] if wide else 0), pp_at, 20)

    # ---- shared row-tiled element-wise lowering ------------------------------------------------
    def _rowwise(self, n: Node, who: str, ins: list[CoreValue], outs: list[CoreValue],
                 emit: Any, pp_at: int, pp_len: int) -> None:
        """Row tiles of an element-wise/row-wise op: parameters loaded once, input and output
        tiles in two alternating buffer sets; ``emit(sp_ins, sp_outs, rows, sp_params)``."""
        cols = outs[0].addr.shape[-1]
        rows_all = outs[0].addr.numel() // cols
        per_row = cols * (sum(v.esz for v in ins) + sum(o.esz for o in outs))
        budget = self.cfg.sp_bytes - pp_len - 1024
        rt = min(rows_all, max(0, budget // (2 * per_row)))
        if rt <= 0:
            raise CoreLoweringError(f"{who}: scratchpad overflow: a row needs {per_row} B twice "
                                    f"plus {pp_len} B of parameters, scratchpad "
                                    f"{self.cfg.sp_bytes} B")
        sa = _Alloc(0, self.cfg.sp_bytes, "scratchpad")
        pp_sp = sa.take(pp_len, who)
        self.p.emit("LOAD", ext=pp_at, sp=pp_sp, rows=1, cols=pp_len, ext_rs=pp_len,
                    sp_rs=pp_len, sp_cs=1)
        bufs = [([sa.take(rt * cols * v.esz, who) for v in ins],
                 [sa.take(rt * cols * o.esz, who) for o in outs]) for _ in range(2)]
        pending: list[Any] = []  # stores deferred past the next tile's loads (as op_linear)
        for j, r0 in enumerate(range(0, rows_all, rt)):
            r = min(rt, rows_all - r0)
            sp_in, ys = bufs[j % 2]
            for v, a in zip(ins, sp_in, strict=True):
                self.p.dma("LOAD", v.addr.reshape(rows_all, cols)[r0:r0 + r], a, v.esz)
            while pending:
                self.p.dma(*pending.pop(0))
            emit(sp_in, ys, r, pp_sp)
            for o, y in zip(outs, ys, strict=True):
                pending.append(("STORE", o.addr.reshape(rows_all, cols)[r0:r0 + r], y, o.esz))
        while pending:
            self.p.dma(*pending.pop(0))

    def _through_layouts(self, v: str) -> list[str]:
        """Consumers of ``v``, looking through layout ops."""
        out = []
        for u in self.users.get(v, []):
            out += self._through_layouts(u) if self.nodes[u].op == "layout" else [u]
        return out

    def _param(self, r: Any) -> Any:
        if r is None:
            return None
        if isinstance(r, Ref) and r.name in self.g.params:
            return self.g.params[r.name]
        if hasattr(r, "name") and r.name in self.g.params:
            return self.g.params[r.name]
        raise CoreLoweringError(f"layer norm gamma/beta {r!r} must be parameters")


def lower_region(graph: Graph, names: Sequence[str], cfg: CoreConfig | None = None,
                 outputs: Sequence[str] | None = None) -> CoreProgram:
    """Lower the ops ``names`` (in graph order) to one program. ``outputs``: the values the host
    reads back (default: every region value used outside the region or a graph output)."""
    cfg = cfg or CoreConfig()
    low = _Lowering(graph, names, cfg)
    for nm in names:
        low.lower(low.nodes[nm])
    if outputs is None:
        gouts = {r.name for r in graph.outputs}
        outputs = [nm for nm in names if nm in gouts or any(
            u not in low.inset for u in low.users.get(nm, []))]
    image = bytearray(low.ext.top)
    for addr, data in low.blobs:
        image[addr:addr + len(data)] = data
    instrs = low.p.finish()
    outs = {nm: low.vals[nm] for nm in outputs}
    for nm, v in outs.items():
        if v.fmt not in ("i8", "i32", "s16"):
            raise CoreLoweringError(f"op {nm}: output format {v.fmt} cannot be read back")
    prog = CoreProgram(cfg, instrs, bytes(image), dict(low.inputs), outs, low.ext.top + 64,
                       list(names), list(low.p.origin))
    if len(instrs) > cfg.imem_instrs:
        raise CoreLoweringError(f"program of {len(instrs)} instructions exceeds the instruction "
                                f"memory ({cfg.imem_instrs}); raise imem_instrs")
    return prog
