"""The fmforge core's exact timing model: cycles of a program, instruction by instruction.

The core (docs/isa.md, :mod:`golden.core`) dispatches instructions from its instruction memory
in program order, one per cycle, into three queues (D: DMA, M: matrix, S: special functions) of
``queue_depth`` entries; each queue runs its instructions in order, one at a time, and the queues
run concurrently, ordered only by dependency tokens. The model (:func:`program_timing`):

* dispatch: instruction ``i`` is dispatched in cycle
  ``disp[i] = max(disp[i-1] + 1, start[j] + 1)`` where ``j`` is the instruction ``queue_depth``
  places earlier in the same queue (its FIFO slot frees when ``j`` starts); ``disp[0] = 0``;
* start: ``start[i] = max(disp[i] + 1, end[prev in queue], avail of each waited token)``; the
  ``n``-th token on a channel (source queue -> destination queue) is available from the ``end``
  cycle of the ``n``-th instruction that signals it;
* end: ``end[i] = start[i] + instr_cycles(i)``; the program's cycle count is the largest ``end``
  (the ``done`` flag rises then), counted from the ``start`` command.

Instruction durations (:func:`instr_cycles`): the RTL of :class:`hw.core.Core` (its docstring
has the cycle account), with memory latency ``L`` (cycles from a burst request's transfer to its
first data beat; ``L' = max(L, 1)``), a banked scratchpad whose ports move
:func:`sp_width` bytes a cycle at any address, and ``P`` = :func:`dma_pieces` data cycles per DMA
row (``ceil(cols*esz/B)`` for contiguous rows, ``sp_cs == esz``; one per element and beat it
touches for strided ones):

* ``LOAD``: ``DMA_SETUP + L' + P*(1 + (rows-1) % O) + (rows-1)//O * max(P + L', O*P)`` with
  ``O`` = :data:`DMA_OUTSTANDING` (row requests run ahead of the data while fewer than ``O``
  requested rows are incomplete; with ``L' <= (O-1)*P`` this is ``1 + L' + rows*P``);
* ``STORE``: ``DMA_SETUP + 1 + rows * P`` (pieces read one a cycle, each beat sent the cycle
  after its last piece); both are ``DMA_SETUP`` alone when ``rows * cols == 0``;
* ``GEMM``: ``X + hw.gemm.gemm_cycles + GEMM_SETUP`` where ``X`` = :func:`gemm_stream_cycles`
  (the operand streams at the engine's word rate, one scratchpad read per word) and each
  result row is written to the scratchpad in the cycle the engine sends it; with ``acc`` the
  engine runs raw and, after its final row, one row chunk (``C`` columns) a cycle is
  accumulated and written: ``X + gemm_cycles + M*ceil(N/C) + tail``, ``tail``
  :data:`GEMM_ACC_TAIL_INT32` (6) or :data:`GEMM_ACC_TAIL_INT8` (12, requant);
* ``ADD``/``GELU``/``LAYERNORM``/``SOFTMAX``: ``SFU_SETUP + W + U`` where ``W`` =
  :func:`sfu_param_words` (the parameter block read a 32-bit word a cycle: ADD ``2 * cols``,
  GELU 5, SOFTMAX 2, LAYERNORM ``5 + 3 * cols``) and ``U`` = :func:`sfu_unit_cycles`, the unit's
  cycle model fed one element a cycle (SOFTMAX: a word of :data:`SOFTMAX_LANES` logits): ADD
  ``rows * cols + ADD_PIPE``, ``hw.gelu.gelu_cycles(1, count, 1)``,
  ``hw.layernorm.layernorm_cycles(rows, cols, 1)``,
  ``hw.softmax.softmax_cycles(rows, cols, SOFTMAX_LANES)``.

All figures and the token/dispatch model are the RTL's (``tests/hw/test_core.py`` asserts them
exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import gcd
from typing import Any

from golden.core import QUEUES, CoreError, Instr, schedule
from hw.gelu import gelu_cycles
from hw.gemm import gemm_cycles
from hw.layernorm import layernorm_cycles
from hw.softmax import softmax_cycles

__all__ = ["ADD_PIPE", "CoreConfig", "DMA_OUTSTANDING", "DMA_SETUP", "GEMM_ACC_TAIL_INT32",
           "GEMM_ACC_TAIL_INT8", "GEMM_SETUP", "SFU_OPS", "SFU_SETUP", "SOFTMAX_LANES", "Timing", "dma_pieces",
           "gemm_stream_cycles", "instr_cycles", "program_timing", "sfu_param_words",
           "sfu_unit_cycles", "sp_width"]

#: the executor's start cycle (it takes the queue head and its tokens)
DMA_SETUP = 1
#: DMA rows requested and not yet complete, at most (the read requests that run ahead)
DMA_OUTSTANDING = 8
#: non-acc GEMM: the start cycle, the engine command cycle, the first operand read, the engine's
#: load-to-compute cycle (the last written row is the final row's own cycle)
GEMM_SETUP = 3
#: accumulate-on-top write-back: cycles past the ``U`` row-chunk cycles until the last write,
#: int32 out (the start cycle, the first read, sum, saturation) and int8 out (plus the
#: requantizer's six stages)
GEMM_ACC_TAIL_INT32 = 6
GEMM_ACC_TAIL_INT8 = 12
#: lanes of the S queue's softmax unit (logits a cycle)
SOFTMAX_LANES = 4
#: S executor: the start cycle, the parameter read's last-word cycle, the first element read
SFU_SETUP = 3
#: ADD's pipeline: products, sum, shift, round and saturate (the output register)
ADD_PIPE = 4
SFU_OPS = ("ADD", "GELU", "LAYERNORM", "SOFTMAX")


@dataclass(frozen=True)
class CoreConfig:
    """Parameters of one core: array ``rows`` x ``cols``, ``dataflow``, memory ``latency``
    (cycles) and ``bytes_per_cycle``, ``queue_depth``, scratchpad and instruction-memory sizes,
    and the largest GEMM the engine's buffers take (``max_m`` x ``max_k`` x ``max_n``)."""

    rows: int = 8
    cols: int = 8
    dataflow: str = "os"
    latency: int = 8
    bytes_per_cycle: int = 4
    queue_depth: int = 4
    sp_bytes: int = 256 * 1024
    imem_instrs: int = 4096
    max_m: int = 128
    max_k: int = 1536
    max_n: int = 128

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "latency", "bytes_per_cycle", "queue_depth", "sp_bytes",
                     "imem_instrs", "max_m", "max_k", "max_n"):
            v = getattr(self, name)
            lo = 0 if name == "latency" else 1
            if not (isinstance(v, int) and v >= lo):
                raise CoreError(f"core {name} must be an integer >= {lo}, not {v!r}")
        if self.dataflow not in ("os", "ws"):
            raise CoreError(f"core dataflow must be os or ws, not {self.dataflow!r}")

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def sp_width(rows: int, cols: int, bytes_per_cycle: int) -> int:
    """Banks of the scratchpad (bytes one logical port moves a cycle): the smallest power of two
    that holds a memory beat, an A word (``rows`` bytes) and an int32 result row (``4 * cols``)."""
    need = max(bytes_per_cycle, rows, 4 * cols, 4 * SOFTMAX_LANES)
    return 1 << (need - 1).bit_length()


def dma_pieces(cols: int, esz: int, bytes_per_cycle: int, contiguous: bool) -> int:
    """Cycles of one DMA row's data: one piece a cycle, a piece being the bytes of the row that
    share one memory beat and, when the scratchpad side is strided, one element. Contiguous:
    ``ceil(cols*esz/B)``; strided: ``cols`` plus the beat boundaries that fall inside an
    element."""
    n = cols * esz
    beats = _ceil(n, bytes_per_cycle)
    if contiguous:
        return beats
    step = esz // gcd(esz, bytes_per_cycle)  # beat boundaries every step-th one is on an element's
    return cols + (beats - 1) - (beats - 1) // step


def gemm_stream_cycles(cfg: CoreConfig, m: int, k: int, n: int) -> int:
    """Cycles from the first operand read to the last operand word offered to the engine,
    minus one (``X``): the longest of the streams, which run in parallel, one engine word a
    cycle from one scratchpad read each: B ``ceil(N/C)*K``; A (WS) ``ceil(K/R)*M``; A (OS), whose
    words are columns of a row block, ``ceil(M/R)*ceil(K/R)*R + K_last`` (R rows of an R-byte
    chunk read per chunk, the chunk's columns sent after its last row, ``K_last`` the columns of
    the last chunk). The channel stream (one word per column block) is never the longest."""
    r, c = cfg.rows, cfg.cols
    b = _ceil(n, c) * k
    if cfg.dataflow == "ws":
        a = _ceil(k, r) * m
    else:
        a = _ceil(m, r) * _ceil(k, r) * r + (k - (_ceil(k, r) - 1) * r)
    return max(a, b)


def instr_cycles(ins: Instr, cfg: CoreConfig) -> int:
    """Cycles one instruction occupies its queue (module docstring)."""
    op = ins.op
    if op in ("LOAD", "STORE"):
        esz = {0: 1, 1: 2, 2: 4}[ins["esz"]]
        rows = ins["rows"]
        if rows == 0 or ins["cols"] == 0:
            return DMA_SETUP
        p = dma_pieces(ins["cols"], esz, cfg.bytes_per_cycle, ins["sp_cs"] == esz)
        if op == "STORE":
            return DMA_SETUP + 1 + rows * p
        lat = max(cfg.latency, 1)
        n_out = DMA_OUTSTANDING
        return (DMA_SETUP + lat + p * (1 + (rows - 1) % n_out)
                + (rows - 1) // n_out * max(p + lat, n_out * p))
    if op == "GEMM":
        m, k, n = ins["m"], ins["k"], ins["n"]
        core = gemm_stream_cycles(cfg, m, k, n) + gemm_cycles(cfg.rows, cfg.cols, cfg.dataflow,
                                                              m, k, n)
        if ins["acc"]:  # raw engine; bias, C_old, saturation, requant in the write-back
            tail = GEMM_ACC_TAIL_INT8 if ins["requant"] else GEMM_ACC_TAIL_INT32
            return core + m * _ceil(n, cfg.cols) + tail
        return core + GEMM_SETUP
    if op in SFU_OPS:
        return SFU_SETUP + sfu_param_words(ins) + sfu_unit_cycles(ins)
    return 0


def sfu_param_words(ins: Instr) -> int:
    """Parameter words (int32) the S executor reads before streaming: ADD ``2 * cols``
    (multipliers), GELU 5, SOFTMAX 2, LAYERNORM ``5 + 3 * cols`` (header, eps, gamma, beta)."""
    return {"ADD": 2 * ins["cols"], "GELU": 5, "SOFTMAX": 2,
            "LAYERNORM": 5 + 3 * ins["cols"]}[ins.op]


def sfu_unit_cycles(ins: Instr) -> int:
    """Cycles from the first element's transfer into the unit to the last output's write:
    the unit's own cycle model, fed one element a cycle (ADD: ``elements + ADD_PIPE``), the
    softmax a word of :data:`SOFTMAX_LANES` logits a cycle."""
    op = ins.op
    if op == "ADD":
        return ins["rows"] * ins["cols"] + ADD_PIPE
    if op == "GELU":
        return gelu_cycles(1, ins["count"], 1)
    if op == "LAYERNORM":
        return layernorm_cycles(ins["rows"], ins["cols"], 1)
    return softmax_cycles(ins["rows"], ins["cols"], SOFTMAX_LANES)


@dataclass
class Timing:
    """Per-instruction ``dispatch``, ``start``, ``end`` cycles, the total ``cycles`` and the
    busy cycles per queue and per opcode."""

    dispatch: list[int]
    start: list[int]
    end: list[int]
    cycles: int
    busy: dict[str, int] = field(default_factory=dict)
    busy_by_op: dict[str, int] = field(default_factory=dict)


def program_timing(prog: Sequence[Instr], cfg: CoreConfig) -> Timing:
    """Exact cycles of ``prog`` (module docstring). ``CoreError`` on a deadlock."""
    schedule(prog)  # rejects deadlocking programs with the stuck heads named
    n = next(i for i, ins in enumerate(prog) if ins.op == "HALT")
    disp = [0] * n
    start = [0] * n
    end = [0] * n
    last: dict[str, int] = {}
    inq: dict[str, list[int]] = {q: [] for q in QUEUES}
    sent: dict[tuple[str, str], list[int]] = {}
    used: dict[tuple[str, str], int] = {}
    # processed in program order: a waited token must be signalled by an instruction earlier in
    # program order (the compiler emits producers first; docs/isa.md)
    for i in range(n):
        ins = prog[i]
        q = ins.queue
        assert q is not None
        d = 0 if i == 0 else disp[i - 1] + 1
        qlist = inq[q]
        if len(qlist) >= cfg.queue_depth:
            d = max(d, start[qlist[-cfg.queue_depth]] + 1)
        disp[i] = d
        s = max(d + 1, end[last[q]] if q in last else 0)
        for w in ins.wait:
            ch = (w, q)
            k = used.get(ch, 0)
            avail = sent.get(ch, [])
            if k >= len(avail):
                raise CoreError(f"pc {i}: waits for token {k + 1} from {w} but only "
                                f"{len(avail)} are signalled before it in program order")
            s = max(s, avail[k])
            used[ch] = k + 1
        start[i] = s
        end[i] = s + instr_cycles(ins, cfg)
        for t in ins.signal:
            sent.setdefault((q, t), []).append(end[i])
        last[q] = i
        qlist.append(i)
    busy = dict.fromkeys(QUEUES, 0)
    by_op: dict[str, int] = {}
    for i in range(n):
        c = end[i] - start[i]
        busy[prog[i].queue] += c  # type: ignore[index]
        by_op[prog[i].op] = by_op.get(prog[i].op, 0) + c
    return Timing(disp, start, end, max(end, default=0), busy, by_op)
