"""Replay recorded integer operands through a unit's RTL: the executor checked against hardware.

The plan executor records, per accelerator op, the exact integer operands it gave the golden
model and the result it got (``compiler.execute.make_impl(..., capture=...)``). Here those
operands go through the op's unit, built from the plan's unit parameters
(:class:`hw.spec.UnitSpec`), on cocotb + Verilator or the Amaranth simulator:

* GEMM ops (``linear``, ``matmul``, the two-pass 16-bit linear): each recorded product is cut
  into engine commands of at most ``max_m x max_n`` (K whole), as the compiler prices it, and
  all commands run back to back in one simulation;
* streaming units (softmax, layer norm, GELU/ReLU): the recorded rows as one job.

A replay matches when the RTL output equals the golden model on the same operands, word for
word, and the golden model on those operands equals what the executor recorded (so the RTL
equals the executor). Cycles are the units' measured counts against their exact models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from golden.errors import UserValueError
from hw.gemm import GemmSpec
from hw.spec import UnitSpec
from sim.gemm_bench import GemmJob
from sim.nonlinear_bench import (
    Job,
    Stimulus,
    job_data_words,
    row_data_words,
    run_pysim,
    run_verilator,
    softmax_data_words,
)

__all__ = ["StreamReplay", "replay_gemm", "replay_gemm_ops", "replay_stream"]


def _sl(t: torch.Tensor | None, a: int, b: int) -> torch.Tensor | None:
    return None if t is None else t[a:b]


def replay_gemm(spec: GemmSpec, gemms: Sequence[tuple], *, stall: str = "none", seed: int = 0,
                simulator: str = "verilator") -> dict[str, Any]:
    """Run recorded GEMMs ``(a, b, bias, mult, shift, y)`` through the engine ``spec``."""
    return replay_gemm_ops(spec, [gemms], stall=stall, seed=seed, simulator=simulator)[0]


def _commands(spec: GemmSpec, gemms: Sequence[tuple]) -> tuple[list[GemmJob], bool, list[int]]:
    """The engine commands of recorded GEMMs (at most ``max_m x max_n``, K whole), whether
    the golden model on their operands equals the recorded results, and how many commands each
    recorded GEMM became."""
    jobs: list[GemmJob] = []
    golden_ok = True
    per_gemm: list[int] = []
    for a, b, bias, mult, shift, y in gemms:
        before = len(jobs)
        m, k = a.shape
        n = b.shape[1]
        if not torch.equal(spec.reference(a, b, bias, mult, shift), y):
            golden_ok = False
        for m0 in range(0, m, spec.max_m):
            mi = min(spec.max_m, m - m0)
            for n0 in range(0, n, spec.max_n):
                ni = min(spec.max_n, n - n0)
                ops = (a[m0:m0 + mi], b[:, n0:n0 + ni], _sl(bias, n0, n0 + ni),
                       _sl(mult, n0, n0 + ni), _sl(shift, n0, n0 + ni))
                jobs.append(GemmJob(mi, k, ni, bias=bias is not None, requant=mult is not None,
                                    operands=ops))
        per_gemm.append(len(jobs) - before)
    return jobs, golden_ok, per_gemm


def _load(spec: GemmSpec, j: GemmJob) -> int:
    return spec.load_cycles(m=j.m, k=j.k, n=j.n, channels=j.bias or j.requant)


def replay_gemm_ops(spec: GemmSpec, ops: Sequence[Sequence[tuple]], *, stall: str = "none",
                    seed: int = 0, simulator: str = "verilator") -> list[dict[str, Any]]:
    """:func:`replay_gemm` for several ops on one engine: all their commands run back to back
    in one simulation; one result per op."""
    per_op = [_commands(spec, gemms) for gemms in ops]
    jobs = [j for js, _, _ in per_op for j in js]
    if simulator == "verilator":
        from sim.cosim import run_gemm_verilator

        res = run_gemm_verilator(spec, jobs, stall=stall, seed=seed)
    elif simulator == "amaranth":
        from sim.pysim import run_gemm_pysim

        res = run_gemm_pysim(spec, jobs, stall=stall, seed=seed)
    else:
        raise UserValueError(f"simulator must be 'verilator' or 'amaranth', not {simulator!r}")
    outs, at = [], 0
    for (js, golden_ok, per_gemm), gemms in zip(per_op, ops, strict=True):
        rs, at = res[at:at + len(js)], at + len(js)
        out = {"match": golden_ok and all(r["match"] for r in rs),
               "golden_matches_executor": golden_ok, "commands": len(js),
               "cycles": sum(r["cycles"] for r in rs),
               "predicted_cycles": sum(r["predicted_cycles"] for r in rs),
               "load_cycles": sum(_load(spec, j) for j in js),
               "mismatches": [m for r in rs for m in r["mismatches"]][:5],
               "sim_seconds": sum(r["sim_seconds"] for r in rs),
               # the testbench's own edge counts against the end-to-end model
               "timing_ok": all(bool(r.get("timing_ok", False)) for r in rs)}
        for key in ("tb_cycles", "predicted_total_cycles"):
            if all(key in r for r in rs):
                out[key] = sum(r[key] for r in rs)
        # each recorded GEMM on its own (a grouped_linear: one per expert that got rows)
        out["gemms"], c0 = [], 0
        for g, nc in zip(gemms, per_gemm, strict=True):
            sub, sj = rs[c0:c0 + nc], js[c0:c0 + nc]
            c0 += nc
            out["gemms"].append({
                "m": int(g[0].shape[0]), "k": int(g[0].shape[1]), "n": int(g[1].shape[1]),
                "commands": nc, "match": all(r["match"] for r in sub),
                "cycles": sum(r["cycles"] for r in sub),
                "predicted_cycles": sum(r["predicted_cycles"] for r in sub),
                "load_cycles": sum(_load(spec, j) for j in sj)})
        outs.append(out)
    return outs


@dataclass(frozen=True)
class StreamReplay:
    """A streaming unit with recorded rows ``x`` (int64 ``[rows, L]``) and the executor's ``y``:
    the configuration object :func:`sim.nonlinear_bench.run_verilator` / ``run_pysim`` take."""

    spec: UnitSpec
    x: torch.Tensor
    y: torch.Tensor

    @property
    def name(self) -> str:
        return self.spec.kind

    @property
    def cumulative(self) -> bool:  # softmax and the norms count cycles since reset
        return self.spec.kind in ("softmax", "layernorm", "rmsnorm")

    def unit(self) -> Any:
        return self.spec.build()

    def stimulus(self, job: Job, length: int | None = None) -> Stimulus:
        x, y = self.x.to(torch.int64), self.y.to(torch.int64)
        rows, n = x.shape
        p = self.spec.lanes  # type: ignore[attr-defined]
        kind = self.spec.kind
        row_words = None
        if kind == "softmax":
            data, expected, row_words = softmax_data_words(x, torch.ones_like(x, dtype=torch.bool),
                                                           y, p)
        elif kind == "layernorm":
            data, expected, row_words = row_data_words(x, p), y.reshape(-1, p).tolist(), n // p
        elif kind == "rmsnorm":  # int8 rows
            data, expected, row_words = row_data_words(x, p, 8), y.reshape(-1, p).tolist(), n // p
        else:
            data, expected = job_data_words(x, p, 8), y.reshape(-1, p).tolist()
        return Stimulus(param=[], data=data, expected=expected,
                        predicted_cycles=self.spec.cycles(rows=rows, length=n),
                        max_abs_err_lsb=0.0, out_bits=8, lanes=p, row_words=row_words,
                        out_signed=kind != "softmax")


def replay_stream(spec: UnitSpec, x: torch.Tensor, y: torch.Tensor, *, stall: str = "none",
                  seed: int = 0, simulator: str = "verilator") -> dict[str, Any]:
    """Run recorded rows through a streaming unit ``spec``; the executor's ``y`` must come out."""
    golden_ok = bool(torch.equal(spec.reference(x), y.to(torch.int64)))
    cfg = StreamReplay(spec, x, y)
    jobs = [Job(int(x.shape[0]), "replay", seed)]
    if simulator == "verilator":
        r = run_verilator(cfg, jobs, stall=stall, seed=seed)[0]
    elif simulator == "amaranth":
        r = run_pysim(cfg, jobs, stall=stall, seed=seed)[0]
    else:
        raise UserValueError(f"simulator must be 'verilator' or 'amaranth', not {simulator!r}")
    r["golden_matches_executor"] = golden_ok
    r["match"] = bool(r["match"]) and golden_ok
    return r
