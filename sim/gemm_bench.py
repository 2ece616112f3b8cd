"""GEMM bench: stimulus, stream words and expected results for the GEMM engine.

Simulator-independent: both runners (cocotb + Verilator in :mod:`sim.cocotb_gemm`, the Amaranth
simulator in :mod:`sim.pysim`) take the words built here, drive them into ``hw.gemm.GemmEngine``
and hand the received rows back to :func:`check_result`.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from golden.errors import UserValueError
from golden.gemm import gemm_int
from golden.requant import quantize_multiplier
from hw.gemm import (
    LOAD_COMPUTE_GAP,
    GemmSpec,
    gemm_cycles,
    gemm_total_cycles,
    load_words,
    pack_operands,
    unpack_result,
)
from sim.streams import pack_lanes, unpack_lanes

__all__ = [
    "GemmJob", "GemmStimulus", "make_stimulus", "check_result", "EXTREMES",
    "job_timings", "check_timing",
]

#: operand value patterns: random int8, or every value at an int8 edge
EXTREMES = ("random", "min", "max", "minmax")


@dataclass(frozen=True)
class GemmJob:
    """One GEMM to run: shape, operand pattern, epilogue options, seed."""

    m: int
    k: int
    n: int
    seed: int = 0
    bias: bool = False
    requant: bool = False
    values: str = "random"
    #: explicit operands ``(a[M,K], b[K,N], bias[N] | None, mult[N] | None, shift[N] | None)``
    #: (int64 tensors) instead of seeded ones: a replay of real data (``seed``/``values`` unused)
    operands: tuple | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.values not in EXTREMES:
            raise UserValueError(f"values must be one of {', '.join(EXTREMES)}, not {self.values!r}")

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n

    def describe(self) -> str:
        extra = "".join(f"+{f}" for f in ("bias", "requant") if getattr(self, f))
        return f"{self.m}x{self.k}x{self.n}/{self.values}{extra}/seed{self.seed}"


@dataclass
class GemmStimulus:
    """Everything a runner needs: stream words, expected output rows, predicted cycles."""

    cmd: int
    a: list[int]
    b: list[int]
    chan: list[int]
    expected_rows: list[list[int]]
    expected: torch.Tensor
    predicted_cycles: int


def _operands(job: GemmJob) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(job.seed)
    shape_a, shape_b = (job.m, job.k), (job.k, job.n)
    if job.values == "random":
        a = torch.randint(-128, 128, shape_a, generator=g)
        b = torch.randint(-128, 128, shape_b, generator=g)
        # sprinkle the int8 edges into random data too
        a[torch.rand(shape_a, generator=g) < 0.05] = -128
        b[torch.rand(shape_b, generator=g) < 0.05] = 127
    elif job.values == "min":
        a = torch.full(shape_a, -128)
        b = torch.full(shape_b, -128)
    elif job.values == "max":
        a = torch.full(shape_a, 127)
        b = torch.full(shape_b, 127)
    else:
        a = torch.where(torch.rand(shape_a, generator=g) < 0.5, -128, 127)
        b = torch.where(torch.rand(shape_b, generator=g) < 0.5, -128, 127)
    return a.to(torch.int64), b.to(torch.int64)


def _channels(job: GemmJob) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(job.seed + 7919)
    bias = torch.randint(-(2**20), 2**20, (job.n,), generator=g)
    if job.values != "random":
        # push acc + bias against the int32 limits to exercise saturation
        bias[::2] = 2**31 - 1
        bias[1::2] = -(2**31)
    mult = torch.zeros(job.n, dtype=torch.int64)
    shift = torch.zeros(job.n, dtype=torch.int64)
    for i in range(job.n):
        # scales that map the accumulator range onto int8, plus a few edge encodings
        scale = float(2.0 ** torch.empty(1).uniform_(-22, -8, generator=g))
        mult[i], shift[i] = quantize_multiplier(scale)
    if job.n > 1:
        mult[0], shift[0] = -(2**31), 63
    if job.n > 2:
        mult[1], shift[1] = 2**31 - 1, 0
    return bias, mult, shift


def make_stimulus(cfg: GemmSpec, job: GemmJob) -> GemmStimulus:
    """Operands, stream words and the golden result for ``job`` on engine ``cfg``."""
    for dim, lim in (("m", cfg.max_m), ("k", cfg.max_k), ("n", cfg.max_n)):
        v = getattr(job, dim)
        if not 1 <= v <= lim:
            raise UserValueError(f"{dim}={v} does not fit this engine (max_{dim}={lim})")
    if job.operands is not None:
        a, b, bias, mult, shift = job.operands
        zeros = torch.zeros(job.n, dtype=torch.int64)
        bias = zeros if bias is None else bias
        mult = zeros if mult is None else mult
        shift = zeros if shift is None else shift
        if tuple(a.shape) != (job.m, job.k) or tuple(b.shape) != (job.k, job.n):
            raise UserValueError(f"operands {tuple(a.shape)} @ {tuple(b.shape)} do not match the job "
                             f"{job.m}x{job.k}x{job.n}")
    else:
        a, b = _operands(job)
        bias, mult, shift = _channels(job)
    use_rq = job.requant and cfg.requant
    expected = gemm_int(
        a, b,
        bias if job.bias else None,
        mult if use_rq else None,
        shift if use_rq else None,
    )
    aw, bw = pack_operands(cfg.rows, cfg.cols, cfg.dataflow, a, b)
    words_a = [pack_lanes(row.tolist(), 8) for row in aw]
    words_b = [pack_lanes(row.tolist(), 8) for row in bw]
    chan: list[int] = []
    if job.bias or job.requant:
        nb = -(-job.n // cfg.cols)
        for j in range(nb):
            word = 0
            for c in range(cfg.cols):
                col = j * cfg.cols + c
                if col < job.n:
                    field = (int(bias[col]) & 0xFFFFFFFF) | ((int(mult[col]) & 0xFFFFFFFF) << 32) | (int(shift[col]) << 64)
                else:
                    field = 0
                word |= field << (70 * c)
            chan.append(word)
    counts = load_words(cfg.rows, cfg.cols, cfg.dataflow, job.m, job.k, job.n, job.bias or job.requant)
    assert counts == {"a": len(words_a), "b": len(words_b), "chan": len(chan)}
    mb = max(cfg.max_m, 1).bit_length()
    kb = max(cfg.max_k, 1).bit_length()
    nbits = max(cfg.max_n, 1).bit_length()
    cmd = job.m | (job.k << mb) | (job.n << (mb + kb)) | (int(job.bias) << (mb + kb + nbits)) | (
        int(job.requant) << (mb + kb + nbits + 1)
    )
    # expected output rows in the engine's order (lanes beyond N are don't-care: masked out)
    rows = _expected_rows(cfg, job, expected)
    return GemmStimulus(
        cmd=cmd, a=words_a, b=words_b, chan=chan, expected_rows=rows, expected=expected,
        predicted_cycles=gemm_cycles(cfg.rows, cfg.cols, cfg.dataflow, job.m, job.k, job.n),
    )


def _expected_rows(cfg: GemmSpec, job: GemmJob, res: torch.Tensor) -> list[list[int]]:
    R, C = cfg.rows, cfg.cols
    nb = -(-job.n // C)
    padded = torch.zeros(job.m, nb * C, dtype=torch.int64)
    padded[:, : job.n] = res
    rows: list[list[int]] = []
    if cfg.dataflow == "os":
        for i0 in range(0, job.m, R):
            for j in range(nb):
                for r in range(i0, min(i0 + R, job.m)):
                    rows.append(padded[r, j * C : (j + 1) * C].tolist())
    else:
        for j in range(nb):
            for r in range(job.m):
                rows.append(padded[r, j * C : (j + 1) * C].tolist())
    return rows


def decode_row(cfg: GemmSpec, word: int) -> tuple[list[int], bool]:
    """Split an ``o_c`` payload word into its C int32 lanes and the ``last`` flag."""
    return unpack_lanes(word, 32, cfg.cols), bool((word >> (32 * cfg.cols)) & 1)


def check_result(cfg: GemmSpec, job: GemmJob, stim: GemmStimulus, words: list[int]) -> dict:
    """Compare received ``o_c`` words with the golden result.

    Returns ``{"match", "mismatches", "last_ok", "result"}``; lanes beyond N are ignored.
    """
    rows, lasts = [], []
    for w in words:
        lanes, last = decode_row(cfg, w)
        rows.append(lanes)
        lasts.append(last)
    mismatches = []
    if len(rows) != len(stim.expected_rows):
        mismatches.append(f"expected {len(stim.expected_rows)} rows, got {len(rows)}")
    result = None
    if not mismatches:
        result = unpack_result(cfg.rows, cfg.cols, cfg.dataflow, job.m, job.n, torch.tensor(rows, dtype=torch.int64))
        diff = (result != stim.expected).nonzero()
        if len(diff):
            mm, nn = (int(x) for x in diff[0])
            mismatches.append(
                f"{len(diff)} elements differ, first C[{mm},{nn}]: got {int(result[mm, nn])}, "
                f"expected {int(stim.expected[mm, nn])}"
            )
    last_ok = bool(lasts) and lasts[-1] and not any(lasts[:-1])
    if not last_ok:
        mismatches.append("the 'last' flag is not set on exactly the final row")
    return {"match": not mismatches, "mismatches": mismatches, "last_ok": last_ok, "result": result}


def job_timings(load_edges: Sequence[int], stall_edges: Sequence[int],
                final_edges: Sequence[int]) -> list[dict[str, int]]:
    """The testbench's own cycle counts per job, from the clock edges at which handshakes happened.

    ``load_edges``: the edge index of every operand word's transfer (valid & ready on ``i_a``,
    ``i_b`` or ``i_chan``); ``stall_edges``: every edge at which ``o_c`` was valid and not
    ready; ``final_edges``: the edge of each job's final ``o_c`` transfer, in job order. Job
    ``j`` owns the edges after job ``j-1``'s final transfer up to its own (the engine takes a
    job's operands only after the previous job has finished). Per job:

    ``tb_cycles``             first operand transfer to the final row's transfer, inclusive
    ``tb_load_cycles``        first to last operand transfer, inclusive
    ``tb_stall_cycles``       refused ``o_c`` edges within ``tb_cycles``
    ``tb_after_load_cycles``  edges after the last operand transfer up to the final row's,
                              inclusive, less the refused ones
    """
    loads, stalls = sorted(load_edges), sorted(stall_edges)
    out: list[dict[str, int]] = []
    prev = None
    for fin in final_edges:
        lo = 0 if prev is None else bisect.bisect_right(loads, prev)
        hi = bisect.bisect_right(loads, fin)
        if hi <= lo:
            raise ValueError(f"no operand transfer before the final row at edge {fin}")
        first, last = loads[lo], loads[hi - 1]
        n_stall = bisect.bisect_right(stalls, fin) - bisect.bisect_left(stalls, first)
        n_after = bisect.bisect_right(stalls, fin) - bisect.bisect_right(stalls, last)
        out.append({"tb_cycles": fin - first + 1, "tb_load_cycles": last - first + 1,
                    "tb_stall_cycles": n_stall, "tb_after_load_cycles": fin - last - n_after})
        prev = fin
    return out


def check_timing(cfg: GemmSpec, job: GemmJob, stim: GemmStimulus, timing: dict[str, int],
                 stall: str) -> dict:
    """Compare the testbench's edge counts (:func:`job_timings`) with the exact models.

    Always: ``tb_after_load_cycles == LOAD_COMPUTE_GAP + gemm_cycles`` (a cycle added or removed
    between LOAD and COMPUTE, or anywhere in compute, breaks it). When no source idles (stall
    ``none`` or ``backpressure``) also ``tb_cycles - tb_stall_cycles ==``
    :func:`hw.gemm.gemm_total_cycles`; with ``none`` that is ``tb_cycles`` itself. Returns
    ``{"predicted_total_cycles", "predicted_after_load_cycles", "timing_ok",
    "timing_mismatches"}``.
    """
    total = gemm_total_cycles(cfg.rows, cfg.cols, cfg.dataflow, job.m, job.k, job.n, bool(stim.chan))
    after = LOAD_COMPUTE_GAP + stim.predicted_cycles
    bad = []
    if timing["tb_after_load_cycles"] != after:
        bad.append(f"testbench counted {timing['tb_after_load_cycles']} unrefused cycles after the last "
                   f"load word, model {after}")
    if stall in ("none", "backpressure") and timing["tb_cycles"] - timing["tb_stall_cycles"] != total:
        bad.append(f"testbench counted {timing['tb_cycles']} cycles end to end "
                   f"({timing['tb_stall_cycles']} refused), model {total}")
    if stall == "none" and timing["tb_stall_cycles"]:
        bad.append(f"{timing['tb_stall_cycles']} refused cycles with stall=none")
    return {"predicted_total_cycles": total, "predicted_after_load_cycles": after,
            "timing_ok": not bad, "timing_mismatches": bad}
