"""Golden model of the fmforge core: its instruction set and a bit-exact interpreter.

The core (docs/isa.md) has an external memory (bytes, little-endian), an on-chip scratchpad
(bytes, little-endian) and three instruction queues that run concurrently:

* ``D`` (DMA): ``LOAD`` external memory -> scratchpad and ``STORE`` scratchpad -> external
  memory, 2-D strided (the external side reads/writes whole rows, the scratchpad side any row and
  element stride: head split, concat, permute and the ``K^T`` operand are DMA strides);
* ``M`` (matrix): ``GEMM`` on scratchpad operands, bias, per-channel requantizer, int32 or int8
  out, accumulate-on-top for the two-pass int16 case;
* ``S`` (special functions): ``ADD`` (two tensors with their own per-channel multipliers),
  ``LAYERNORM`` (gamma/beta/eps run-time operands), ``SOFTMAX`` (scale and key mask run-time
  operands), ``GELU`` (int8 or split int16 out).

Synchronisation is by dependency tokens, one counter per ordered pair of queues: an instruction
may wait for (consume) one token from each queue in its ``wait`` mask before it starts, and
sends one token to each queue in its ``signal`` mask when it has finished. ``HALT`` ends the
program.

:func:`run_program` executes a program on a :class:`CoreMemory` in the order the hardware may
legally use when the program is race-free: repeatedly the head instruction that is earliest in
program order among the queue heads whose tokens are available. Programs are checked for races by
:func:`check_races` (every pair of conflicting memory accesses in different queues must be ordered
by tokens), so any legal hardware order gives the same memory.

Every integer format, rounding and saturation is the one of the units the instructions run on
(:mod:`golden.gemm`, :mod:`golden.requant`, :mod:`golden.softmax`, :mod:`golden.layernorm`,
:mod:`golden.gelu`); what the instructions add is stated in :data:`OPCODES` and docs/isa.md.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from golden.errors import UserValueError
from golden.gelu import GeluParams, gelu_int
from golden.layernorm import LayerNormParams, layernorm_acc
from golden.requant import INT8_MAX, INT8_MIN, INT32_MAX, INT32_MIN, round_shift_right, saturate
from golden.softmax import DEFAULT_FRAC_BITS, SoftmaxParams, exp2_table, softmax_int

__all__ = [
    "ADD_MULT_BITS",
    "CoreError",
    "CoreMemory",
    "INSTR_BYTES",
    "INT16_MAX",
    "INT16_MIN",
    "Instr",
    "OPCODES",
    "QUEUES",
    "check_races",
    "decode",
    "decode_program",
    "encode",
    "encode_program",
    "execute",
    "describe",
    "run_checked",
    "schedule",
    "gelu_block",
    "layernorm_block",
    "run_program",
    "softmax_block",
]

INSTR_BYTES = 32
"""Every instruction is 32 bytes: eight little-endian 32-bit words."""
QUEUES = ("D", "M", "S")
"""The instruction queues: DMA, matrix, special-function."""
INT16_MIN, INT16_MAX = -32640, 32639
"""Range of the split-int16 format (``256 * hi + lo`` with int8 ``hi``, ``lo``)."""
ADD_MULT_BITS = 24
"""ADD multipliers are signed 24-bit: ``|m| < 2**23``."""
_TOKEN_MAX = 255


class CoreError(UserValueError):
    """An illegal program or memory access (names the instruction and the field)."""


@dataclass(frozen=True)
class _Op:
    code: int
    queue: str | None
    flags: tuple[tuple[str, int, int], ...]  # (name, lsb, width) in word 0
    words: tuple[str, ...]  # word 1.. fields; "a|b" packs two 16-bit halves (a low)


OPCODES: dict[str, _Op] = {
    "HALT": _Op(0x00, None, (), ()),
    "LOAD": _Op(0x01, "D", (("esz", 16, 2),),
                ("ext", "sp", "rows|cols", "ext_rs", "sp_rs", "sp_cs")),
    "STORE": _Op(0x02, "D", (("esz", 16, 2),),
                 ("ext", "sp", "rows|cols", "ext_rs", "sp_rs", "sp_cs")),
    "GEMM": _Op(0x03, "M", (("bias", 16, 1), ("requant", 17, 1), ("acc", 18, 1),
                            ("acc_shift", 20, 5)),
                ("a", "b", "c", "m|k", "n", "bias_addr", "qp")),
    "ADD": _Op(0x04, "S", (("a32", 16, 1), ("out32", 17, 1), ("b16", 18, 1), ("shift", 20, 6)),
               ("a", "b", "y", "rows|cols", "mp")),
    "LAYERNORM": _Op(0x05, "S", (("x32", 16, 1), ("out16", 17, 1)),
                     ("x", "y", "rows|cols", "pp", "y16")),
    "SOFTMAX": _Op(0x06, "S", (("x32", 16, 1), ("mask", 17, 1), ("half", 18, 1)),
                   ("x", "y", "rows|cols", "km", "pp")),
    "GELU": _Op(0x07, "S", (("split16", 16, 1),), ("x", "y", "count", "pp", "y_lo")),
}
_BY_CODE = {op.code: name for name, op in OPCODES.items()}


@dataclass(frozen=True)
class Instr:
    """One instruction: ``op`` (a key of :data:`OPCODES`), ``wait`` and ``signal`` (sets of queue
    names) and its fields (missing ones are 0)."""

    op: str
    wait: frozenset[str] = frozenset()
    signal: frozenset[str] = frozenset()
    f: dict[str, int] = field(default_factory=dict)

    @property
    def queue(self) -> str | None:
        return OPCODES[self.op].queue

    def __getitem__(self, name: str) -> int:
        return int(self.f.get(name, 0))

    def text(self) -> str:
        """Assembly text: ``GEMM.w(D).s(S) a=0 b=4096 ...``."""
        w = f".w({','.join(sorted(self.wait))})" if self.wait else ""
        s = f".s({','.join(sorted(self.signal))})" if self.signal else ""
        args = " ".join(f"{k}={v}" for k, v in sorted(self.f.items()) if v)
        return f"{self.op}{w}{s} {args}".rstrip()


def _fields(op: _Op) -> list[tuple[str, int, int, int]]:
    """(name, word, lsb, width) of every field of ``op``."""
    out = [(n, 0, lsb, w) for n, lsb, w in op.flags]
    for i, spec in enumerate(op.words, start=1):
        parts = spec.split("|")
        if len(parts) == 1:
            out.append((parts[0], i, 0, 32))
        else:
            out += [(parts[0], i, 0, 16), (parts[1], i, 16, 16)]
    return out


def encode(ins: Instr) -> bytes:
    """The 32 bytes of one instruction (errors name the field that does not fit)."""
    if ins.op not in OPCODES:
        raise CoreError(f"unknown instruction {ins.op!r}")
    op = OPCODES[ins.op]
    words = [0] * 8
    qbits = {q: i for i, q in enumerate(QUEUES)}
    for q in (*ins.wait, *ins.signal):
        if q not in qbits:
            raise CoreError(f"{ins.op}: unknown queue {q!r} (queues: D, M, S)")
    if op.queue is None and (ins.wait or ins.signal):
        raise CoreError(f"{ins.op} takes no tokens")
    if op.queue in ins.wait or op.queue in ins.signal:
        raise CoreError(f"{ins.op}: a queue cannot wait for or signal itself ({op.queue})")
    words[0] = op.code | sum(1 << (8 + qbits[q]) for q in ins.wait) | \
        sum(1 << (12 + qbits[q]) for q in ins.signal)
    known = {n for n, *_ in _fields(op)}
    for k in ins.f:
        if k not in known:
            raise CoreError(f"{ins.op}: unknown field {k!r} (fields: {', '.join(sorted(known))})")
    for name, word, lsb, width in _fields(op):
        v = ins[name]
        if not 0 <= v < (1 << width):
            raise CoreError(f"{ins.op}: field {name} = {v} does not fit {width} unsigned bits")
        words[word] |= v << lsb
    return struct.pack("<8I", *words)


def decode(raw: bytes, pc: int = 0) -> Instr:
    """The instruction in 32 bytes (``CoreError`` names the pc of an illegal one)."""
    if len(raw) != INSTR_BYTES:
        raise CoreError(f"pc {pc}: an instruction is {INSTR_BYTES} bytes, not {len(raw)}")
    words = struct.unpack("<8I", raw)
    code = words[0] & 0xFF
    if code not in _BY_CODE:
        raise CoreError(f"pc {pc}: illegal opcode 0x{code:02x}")
    name = _BY_CODE[code]
    op = OPCODES[name]
    wait = frozenset(q for i, q in enumerate(QUEUES) if words[0] >> (8 + i) & 1)
    signal = frozenset(q for i, q in enumerate(QUEUES) if words[0] >> (12 + i) & 1)
    used = 0xFF | 0x7 << 8 | 0x7 << 12
    f = {}
    for fname, word, lsb, width in _fields(op):
        v = words[word] >> lsb & ((1 << width) - 1)
        if word == 0:
            used |= ((1 << width) - 1) << lsb
        if v:
            f[fname] = v
    if words[0] & ~used & 0xFFFFFFFF:
        raise CoreError(f"pc {pc}: {name} has reserved bits set in word 0")
    if op.queue is None and (wait or signal):
        raise CoreError(f"pc {pc}: {name} takes no tokens")
    if op.queue in wait or op.queue in signal:
        raise CoreError(f"pc {pc}: {name} waits for or signals its own queue")
    return Instr(name, wait, signal, f)


def encode_program(prog: Sequence[Instr]) -> bytes:
    """A program's bytes: its instructions in order; the last must be ``HALT``."""
    if not prog or prog[-1].op != "HALT":
        raise CoreError("a program must end with HALT")
    return b"".join(encode(i) for i in prog)


def decode_program(raw: bytes) -> list[Instr]:
    """Instructions up to and including the first ``HALT``."""
    out = []
    for pc in range(len(raw) // INSTR_BYTES):
        out.append(decode(raw[pc * INSTR_BYTES:(pc + 1) * INSTR_BYTES], pc))
        if out[-1].op == "HALT":
            return out
    raise CoreError("program has no HALT")


# ---------------------------------------------------------------------------------------------
# run-time parameter blocks (what the compiler writes into memory for SFU instructions)

def _i32(vals: Iterable[int]) -> bytes:
    return b"".join(struct.pack("<i", int(v)) for v in vals)


def softmax_block(p: SoftmaxParams) -> bytes:
    """SOFTMAX parameters: ``mult``, ``shift`` (int32 each). The 2^-f table is the unit's ROM
    (``frac_bits`` fixed at 8)."""
    if p.frac_bits != DEFAULT_FRAC_BITS:
        raise CoreError(f"SOFTMAX: the core's exp ROM has frac_bits {DEFAULT_FRAC_BITS}, not {p.frac_bits}")
    return _i32([p.mult, p.shift])


def layernorm_block(p: LayerNormParams) -> bytes:
    """LAYERNORM parameters: ``n``, ``in_shift``, ``g_shift``, ``eps_int`` (int32 x3, int64),
    ``gamma_int`` (int32[n]), ``beta_int`` (int64[n])."""
    return (_i32([p.n, p.in_shift, p.g_shift]) + struct.pack("<q", p.eps_int)
            + _i32(p.gamma_int.tolist()) + b"".join(struct.pack("<q", int(v)) for v in p.beta_int))


def gelu_block(p: GeluParams) -> bytes:
    """GELU parameters: ``fs``, ``k``, ``b``, ``mult``, ``shift`` (int32 each)."""
    return _i32([p.fs, p.k, p.b, p.mult, p.shift])


# ---------------------------------------------------------------------------------------------
# memory

class CoreMemory:
    """External memory and scratchpad, as uint8 tensors (little-endian)."""

    def __init__(self, ext_bytes: int, sp_bytes: int) -> None:
        if ext_bytes <= 0 or sp_bytes <= 0:
            raise CoreError("memory sizes must be positive")
        self.ext = torch.zeros(ext_bytes, dtype=torch.uint8)
        self.sp = torch.zeros(sp_bytes, dtype=torch.uint8)

    def space(self, name: str) -> torch.Tensor:
        return self.ext if name == "ext" else self.sp

    def write(self, space: str, addr: int, data: bytes | torch.Tensor) -> None:
        """Write bytes (or an int8/int32/int64-valued tensor as int8 bytes) at ``addr``."""
        t = torch.frombuffer(bytearray(data), dtype=torch.uint8) if isinstance(
            data, (bytes, bytearray)) else data.contiguous().view(torch.uint8).flatten()
        mem = self.space(space)
        if addr < 0 or addr + t.numel() > mem.numel():
            raise CoreError(f"write of {t.numel()} bytes at {space} {addr} is outside "
                            f"[0, {mem.numel()})")
        mem[addr:addr + t.numel()] = t

    def read(self, space: str, addr: int, n: int) -> bytes:
        mem = self.space(space)
        if addr < 0 or addr + n > mem.numel():
            raise CoreError(f"read of {n} bytes at {space} {addr} is outside [0, {mem.numel()})")
        return bytes(mem[addr:addr + n].tolist())

    def tensor(self, space: str, addr: int, shape: Sequence[int], esz: int = 1) -> torch.Tensor:
        """Dense signed tensor (int8 or int32 elements, or int64 for ``esz`` 8) as int64."""
        return _read(self, space, addr, shape, esz, "read")

    def _gather(self, space: str, base: int, dims: list[tuple[int, int]], esz: int,
                what: str) -> torch.Tensor:
        """Byte indices of a strided block: ``dims`` = [(count, byte stride), ...] outermost
        first; every element is ``esz`` consecutive bytes. Bounds-checked."""
        idx = torch.tensor([base], dtype=torch.int64)
        for count, stride in dims:
            idx = (idx[..., None] + torch.arange(count, dtype=torch.int64) * stride)
        idx = idx[..., None] + torch.arange(esz, dtype=torch.int64)
        mem = self.space(space)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= mem.numel()):
            raise CoreError(f"{what} of [{int(idx.min())}, {int(idx.max())}] is outside the "
                            f"{'scratchpad' if space == 'sp' else 'external memory'} "
                            f"[0, {mem.numel()})")
        return idx.reshape(-1)


def _load(mem: CoreMemory, space: str, idx: torch.Tensor, esz: int) -> torch.Tensor:
    b = mem.space(space)[idx].reshape(-1, esz).to(torch.int64)
    v = torch.zeros(b.shape[0], dtype=torch.int64)
    for i in range(esz):
        v |= b[:, i] << (8 * i)
    if esz == 8:  # the shifts above wrapped into int64's own sign: already signed
        return v
    bits = 8 * esz
    return torch.where(v >= 1 << (bits - 1), v - (1 << bits), v)


def _store(mem: CoreMemory, space: str, idx: torch.Tensor, vals: torch.Tensor, esz: int) -> None:
    v = vals.to(torch.int64).reshape(-1)
    by = torch.stack([(v >> (8 * i)) & 0xFF for i in range(esz)], dim=1).reshape(-1)
    mem.space(space)[idx] = by.to(torch.uint8)


def _read(mem: CoreMemory, space: str, addr: int, shape: Sequence[int], esz: int,
          what: str, strides: Sequence[int] | None = None) -> torch.Tensor:
    shape = [int(s) for s in shape]
    if strides is None:
        strides, acc = [], esz
        for d in reversed(shape):
            strides.insert(0, acc)
            acc *= d
    idx = mem._gather(space, addr, list(zip(shape, strides, strict=True)), esz, what)
    return _load(mem, space, idx, esz).reshape(shape)


def _write(mem: CoreMemory, space: str, addr: int, vals: torch.Tensor, esz: int, what: str,
           strides: Sequence[int] | None = None) -> None:
    shape = list(vals.shape)
    if strides is None:
        strides, acc = [], esz
        for d in reversed(shape):
            strides.insert(0, acc)
            acc *= d
    idx = mem._gather(space, addr, list(zip(shape, strides, strict=True)), esz, what)
    _store(mem, space, idx, vals, esz)


# ---------------------------------------------------------------------------------------------
# instruction semantics

_ESZ = {0: 1, 1: 2, 2: 4}


def _esz(ins: Instr) -> int:
    if ins["esz"] not in _ESZ:
        raise CoreError(f"{ins.op}: esz code {ins['esz']} is reserved (0: 1 byte, 1: 2, 2: 4)")
    return _ESZ[ins["esz"]]


def _exec_dma(mem: CoreMemory, ins: Instr) -> None:
    esz = _esz(ins)
    rows, cols = ins["rows"], ins["cols"]
    ext = ("ext", ins["ext"], [(rows, ins["ext_rs"]), (cols, esz)])
    sp = ("sp", ins["sp"], [(rows, ins["sp_rs"]), (cols, ins["sp_cs"])])
    src, dst = (ext, sp) if ins.op == "LOAD" else (sp, ext)
    si = mem._gather(src[0], src[1], src[2], esz, f"{ins.op} source")
    di = mem._gather(dst[0], dst[1], dst[2], esz, f"{ins.op} destination")
    mem.space(dst[0])[di] = mem.space(src[0])[si]


def _exec_gemm(mem: CoreMemory, ins: Instr) -> None:
    m, k, n = ins["m"], ins["k"], ins["n"]
    if min(m, k, n) <= 0:
        raise CoreError(f"GEMM: m, k, n must be positive, not {m}, {k}, {n}")
    a = _read(mem, "sp", ins["a"], (m, k), 1, "GEMM a")
    b = _read(mem, "sp", ins["b"], (k, n), 1, "GEMM b")
    acc = a @ b
    if ins["bias"]:
        acc = acc + _read(mem, "sp", ins["bias_addr"], (n,), 4, "GEMM bias")
    if ins["acc"]:
        acc = acc + (_read(mem, "sp", ins["c"], (m, n), 4, "GEMM c") << ins["acc_shift"])
    y = saturate(acc, INT32_MIN, INT32_MAX)
    if ins["requant"]:
        qp = _read(mem, "sp", ins["qp"], (2, n), 4, "GEMM qp")
        mult, shift = qp[0], qp[1]
        if int(shift.min()) < 0 or int(shift.max()) > 63:
            raise CoreError("GEMM: requant shift must be in [0, 63]")
        y = saturate(round_shift_right(y * mult, shift), INT8_MIN, INT8_MAX)
        _write(mem, "sp", ins["c"], y, 1, "GEMM c")
    else:
        _write(mem, "sp", ins["c"], y, 4, "GEMM c")


def _exec_add(mem: CoreMemory, ins: Instr) -> None:
    rows, cols = ins["rows"], ins["cols"]
    a = _read(mem, "sp", ins["a"], (rows, cols), 4 if ins["a32"] else 1, "ADD a")
    b = _read(mem, "sp", ins["b"], (rows, cols), 2 if ins["b16"] else 1, "ADD b")
    mp = _read(mem, "sp", ins["mp"], (2, cols), 4, "ADD mp")
    if int(mp.abs().max()) >= 1 << (ADD_MULT_BITS - 1):
        raise CoreError(f"ADD: multipliers must be below 2**{ADD_MULT_BITS - 1} in magnitude")
    y = round_shift_right(a * mp[0] + b * mp[1], ins["shift"])
    if ins["out32"]:  # a wide sum for a consumer that reads int32 (layer norm)
        _write(mem, "sp", ins["y"], saturate(y, INT32_MIN, INT32_MAX), 4, "ADD y")
    else:
        _write(mem, "sp", ins["y"], saturate(y, INT8_MIN, INT8_MAX), 1, "ADD y")


def _exec_layernorm(mem: CoreMemory, ins: Instr) -> None:
    rows, n = ins["rows"], ins["cols"]
    head = _read(mem, "sp", ins["pp"], (3,), 4, "LAYERNORM pp")
    if int(head[0]) != n:
        raise CoreError(f"LAYERNORM: parameter block is for rows of {int(head[0])}, not {n}")
    eps = _read(mem, "sp", ins["pp"] + 12, (1,), 8, "LAYERNORM pp")
    gamma = _read(mem, "sp", ins["pp"] + 20, (n,), 4, "LAYERNORM pp")
    beta = _read(mem, "sp", ins["pp"] + 20 + 4 * n, (n,), 8, "LAYERNORM pp")
    p = LayerNormParams(n, int(head[1]), int(eps[0]), int(head[2]), gamma, beta)
    x = _read(mem, "sp", ins["x"], (rows, n), 4 if ins["x32"] else 1, "LAYERNORM x")
    acc = layernorm_acc(x, p)
    _write(mem, "sp", ins["y"], saturate(round_shift_right(acc, p.out_shift), INT8_MIN, INT8_MAX),
           1, "LAYERNORM y")
    if ins["out16"]:  # the same rows 256 times finer, int16: the residual stream
        y16 = saturate(round_shift_right(acc, p.out_shift - 8), -(1 << 15), (1 << 15) - 1)
        _write(mem, "sp", ins["y16"], y16, 2, "LAYERNORM y16")


_TABLE = exp2_table(DEFAULT_FRAC_BITS)


def _exec_softmax(mem: CoreMemory, ins: Instr) -> None:
    rows, n = ins["rows"], ins["cols"]
    pp = _read(mem, "sp", ins["pp"], (2,), 4, "SOFTMAX pp")
    p = SoftmaxParams(int(pp[0]), int(pp[1]), DEFAULT_FRAC_BITS, _TABLE, 0, 0.0)
    x = _read(mem, "sp", ins["x"], (rows, n), 4 if ins["x32"] else 1, "SOFTMAX x")
    mask = None
    if ins["mask"]:
        km = _read(mem, "sp", ins["km"], (n,), 1, "SOFTMAX km")
        mask = (km != 0).expand(rows, n)
    y = softmax_int(x, p, mask)
    if ins["half"]:  # 7-bit probabilities (scale 1/128) for an int8 GEMM operand
        y = torch.clamp(round_shift_right(y, 1), max=INT8_MAX)
    _write(mem, "sp", ins["y"], y, 1, "SOFTMAX y")


def _exec_gelu(mem: CoreMemory, ins: Instr) -> None:
    cnt = ins["count"]
    pp = _read(mem, "sp", ins["pp"], (5,), 4, "GELU pp")
    p = GeluParams(*(int(v) for v in pp), 0.0, 0.0)
    x = _read(mem, "sp", ins["x"], (cnt,), 1, "GELU x")
    if not ins["split16"]:
        _write(mem, "sp", ins["y"], gelu_int(x, p), 1, "GELU y")
        return
    # same polynomial as gelu_int; the requantizer saturates to the split-int16 range instead
    v = x.abs() << p.fs
    t = p.b - torch.clamp(v, max=p.b)
    h = torch.where(x >= 0, 2 * p.k - t * t, t * t)
    y16 = saturate(round_shift_right(x * h * p.mult, p.shift), INT16_MIN, INT16_MAX)
    lo = torch.remainder(y16 + 128, 256) - 128
    _write(mem, "sp", ins["y"], (y16 - lo) // 256, 1, "GELU y")
    _write(mem, "sp", ins["y_lo"], lo, 1, "GELU y_lo")


_EXEC = {"LOAD": _exec_dma, "STORE": _exec_dma, "GEMM": _exec_gemm, "ADD": _exec_add,
         "LAYERNORM": _exec_layernorm, "SOFTMAX": _exec_softmax, "GELU": _exec_gelu}


def execute(mem: CoreMemory, ins: Instr) -> None:
    """Execute one instruction on ``mem`` (no tokens)."""
    if ins.op != "HALT":
        _EXEC[ins.op](mem, ins)


def schedule(prog: Sequence[Instr]) -> list[int]:
    """The order :func:`run_program` executes ``prog`` in (indices; ``HALT`` excluded).

    Queue heads start when their tokens are there; among those, the earliest in program order.
    ``CoreError`` on a deadlock (names the stuck heads) or a token counter over 255.
    """
    end = next((i for i, ins in enumerate(prog) if ins.op == "HALT"), None)
    if end is None:
        raise CoreError("program has no HALT")
    queues: dict[str, list[int]] = {q: [] for q in QUEUES}
    for i in range(end):
        queues[prog[i].queue].append(i)  # type: ignore[index]
    heads = dict.fromkeys(QUEUES, 0)
    tok = {(s, d): 0 for s in QUEUES for d in QUEUES if s != d}
    order: list[int] = []
    while len(order) < end:
        ready = []
        for q in QUEUES:
            if heads[q] < len(queues[q]):
                i = queues[q][heads[q]]
                if all(tok[(w, q)] > 0 for w in prog[i].wait):
                    ready.append(i)
        if not ready:
            stuck = [f"pc {queues[q][heads[q]]} ({prog[queues[q][heads[q]]].text()})"
                     for q in QUEUES if heads[q] < len(queues[q])]
            raise CoreError("program deadlocks: every queue head waits for a token: " +
                            "; ".join(stuck))
        i = min(ready)
        ins = prog[i]
        q = ins.queue
        for w in ins.wait:
            tok[(w, q)] -= 1
        for s in ins.signal:
            tok[(q, s)] += 1
            if tok[(q, s)] > _TOKEN_MAX:
                raise CoreError(f"pc {i}: more than {_TOKEN_MAX} tokens from {q} to {s}")
        heads[q] += 1  # type: ignore[index]
        order.append(i)
    return order


def run_program(prog: Sequence[Instr], mem: CoreMemory) -> list[int]:
    """Execute ``prog`` on ``mem`` (in place) in :func:`schedule` order; returns that order."""
    order = schedule(prog)
    for i in order:
        try:
            execute(mem, prog[i])
        except CoreError as e:
            raise CoreError(f"pc {i} ({prog[i].op}): {e}") from None
    return order


# ---------------------------------------------------------------------------------------------
# race check: conflicting accesses in different queues must be ordered by tokens

def _ranges(ins: Instr) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """(reads, writes) of ``ins`` as (space, first byte, last byte + 1) hulls."""
    def span(space: str, base: int, dims: list[tuple[int, int]], esz: int) -> tuple[str, int, int]:
        lo = hi = base
        for count, stride in dims:
            if count > 0:
                ext = (count - 1) * stride
                lo, hi = (lo + min(ext, 0), hi + max(ext, 0))
        return (space, lo, hi + esz)

    op = ins.op
    if op in ("LOAD", "STORE"):
        esz = _ESZ.get(ins["esz"], 1)
        e = span("ext", ins["ext"], [(ins["rows"], ins["ext_rs"]), (ins["cols"], esz)], esz)
        s = span("sp", ins["sp"], [(ins["rows"], ins["sp_rs"]), (ins["cols"], ins["sp_cs"])], esz)
        return ([e], [s]) if op == "LOAD" else ([s], [e])
    if op == "GEMM":
        m, k, n = ins["m"], ins["k"], ins["n"]
        r = [("sp", ins["a"], ins["a"] + m * k), ("sp", ins["b"], ins["b"] + k * n)]
        if ins["bias"]:
            r.append(("sp", ins["bias_addr"], ins["bias_addr"] + 4 * n))
        if ins["requant"]:
            r.append(("sp", ins["qp"], ins["qp"] + 8 * n))
        csz = m * n * (1 if ins["requant"] else 4)
        if ins["acc"]:
            r.append(("sp", ins["c"], ins["c"] + 4 * m * n))
        return r, [("sp", ins["c"], ins["c"] + csz)]
    if op == "ADD":
        rc = ins["rows"] * ins["cols"]
        return ([("sp", ins["a"], ins["a"] + rc * (4 if ins["a32"] else 1)),
                 ("sp", ins["b"], ins["b"] + rc * (2 if ins["b16"] else 1)),
                 ("sp", ins["mp"], ins["mp"] + 8 * ins["cols"])],
                [("sp", ins["y"], ins["y"] + rc * (4 if ins["out32"] else 1))])
    if op == "LAYERNORM":
        rc, n = ins["rows"] * ins["cols"], ins["cols"]
        w = [("sp", ins["y"], ins["y"] + rc)]
        if ins["out16"]:
            w.append(("sp", ins["y16"], ins["y16"] + 2 * rc))
        return ([("sp", ins["x"], ins["x"] + rc * (4 if ins["x32"] else 1)),
                 ("sp", ins["pp"], ins["pp"] + 20 + 12 * n)], w)
    if op == "SOFTMAX":
        rc, n = ins["rows"] * ins["cols"], ins["cols"]
        r = [("sp", ins["x"], ins["x"] + rc * (4 if ins["x32"] else 1)),
             ("sp", ins["pp"], ins["pp"] + 8)]
        if ins["mask"]:
            r.append(("sp", ins["km"], ins["km"] + n))
        return r, [("sp", ins["y"], ins["y"] + rc)]
    if op == "GELU":
        c = ins["count"]
        w = [("sp", ins["y"], ins["y"] + c)]
        if ins["split16"]:
            w.append(("sp", ins["y_lo"], ins["y_lo"] + c))
        return [("sp", ins["x"], ins["x"] + c), ("sp", ins["pp"], ins["pp"] + 20)], w
    return [], []


def check_races(prog: Sequence[Instr]) -> None:
    """``CoreError`` if two instructions of different queues touch overlapping memory (at least
    one writing) without a token path ordering them (vector clocks over the :func:`schedule`).

    Accesses are compared as address hulls (first to last byte), so a strided access that
    interleaves with another without touching its bytes still counts as a conflict: the
    compiler keeps such regions apart.
    """
    order = schedule(prog)
    qi = {q: i for i, q in enumerate(QUEUES)}
    clock = {q: [0, 0, 0] for q in QUEUES}  # each queue's knowledge of every queue's progress
    chan: dict[tuple[str, str], list[list[int]]] = {}
    seq = dict.fromkeys(QUEUES, 0)
    stamp: dict[int, tuple[str, int, list[int]]] = {}
    # per space, the accesses so far: (lo, hi, pc, write)
    hist: dict[str, list[tuple[int, int, int, bool]]] = {"ext": [], "sp": []}
    for i in order:
        ins = prog[i]
        q = ins.queue
        assert q is not None
        vc = clock[q]
        for w in ins.wait:
            other = chan[(w, q)].pop(0)
            vc = [max(a, b) for a, b in zip(vc, other, strict=True)]
        seq[q] += 1
        vc = list(vc)
        vc[qi[q]] = seq[q]
        clock[q] = vc
        stamp[i] = (q, seq[q], vc)
        reads, writes = _ranges(ins)
        for space, lo, hi, is_w in [(*r, False) for r in reads] + [(*w, True) for w in writes]:
            for plo, phi, pj, pw in hist[space]:
                if not (is_w or pw) or phi <= lo or hi <= plo:
                    continue
                pq, pseq, _ = stamp[pj]
                if pq != q and vc[qi[pq]] < pseq:
                    raise CoreError(
                        f"race: pc {i} ({ins.op}, queue {q}) and pc {pj} ({prog[pj].op}, queue "
                        f"{pq}) both touch {space} [{max(lo, plo)}, {min(hi, phi)}) and no token "
                        "orders them")
            hist[space].append((lo, hi, i, is_w))
        for s in ins.signal:
            chan.setdefault((q, s), []).append(list(vc))
    return None


def run_checked(prog: Sequence[Instr], mem: CoreMemory) -> list[int]:
    """:func:`check_races` then :func:`run_program`."""
    check_races(prog)
    return run_program(prog, mem)


def describe(prog: Sequence[Instr]) -> dict[str, Any]:
    """Instruction counts per opcode and queue."""
    by_op: dict[str, int] = {}
    for ins in prog:
        by_op[ins.op] = by_op.get(ins.op, 0) + 1
    return {"instructions": len(prog), "by_op": by_op}
