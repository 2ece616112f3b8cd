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
from golden.gemm import gemm_int
from hw.gemm import GemmSpec
from hw.spec import UnitSpec
from sim.gemm_bench import GemmJob
from sim.nonlinear_bench import Job, Stimulus, run_pysim, run_verilator
from sim.streams import pack_lanes

__all__ = ["StreamReplay", "replay_gemm", "replay_stream"]


def _sl(t: torch.Tensor | None, a: int, b: int) -> torch.Tensor | None:
    return None if t is None else t[a:b]


def replay_gemm(spec: GemmSpec, gemms: Sequence[tuple], *, stall: str = "none", seed: int = 0,
                simulator: str = "verilator") -> dict[str, Any]:
    """Run recorded GEMMs ``(a, b, bias, mult, shift, y)`` through the engine ``spec``."""
    cfg = spec
    jobs: list[GemmJob] = []
    golden_ok = True
    for a, b, bias, mult, shift, y in gemms:
        m, k = a.shape
        n = b.shape[1]
        if not torch.equal(gemm_int(a, b, bias, mult, shift), y):
            golden_ok = False
        for m0 in range(0, m, spec.max_m):
            mi = min(spec.max_m, m - m0)
            for n0 in range(0, n, spec.max_n):
                ni = min(spec.max_n, n - n0)
                ops = (a[m0:m0 + mi], b[:, n0:n0 + ni], _sl(bias, n0, n0 + ni),
                       _sl(mult, n0, n0 + ni), _sl(shift, n0, n0 + ni))
                jobs.append(GemmJob(mi, k, ni, bias=bias is not None, requant=mult is not None,
                                    operands=ops))
    if simulator == "verilator":
        from sim.cosim import run_gemm_verilator

        res = run_gemm_verilator(cfg, jobs, stall=stall, seed=seed)
    elif simulator == "amaranth":
        from sim.pysim import run_gemm_pysim

        res = run_gemm_pysim(cfg, jobs, stall=stall, seed=seed)
    else:
        raise UserValueError(f"simulator must be 'verilator' or 'amaranth', not {simulator!r}")
    out = {"match": golden_ok and all(r["match"] for r in res), "golden_matches_executor": golden_ok,
           "commands": len(jobs), "cycles": sum(r["cycles"] for r in res),
           "predicted_cycles": sum(r["predicted_cycles"] for r in res),
           "load_cycles": sum(spec.load_cycles(m=j.m, k=j.k, n=j.n, channels=j.bias or j.requant)
                              for j in jobs),
           "mismatches": [m for r in res for m in r["mismatches"]][:5],
           "sim_seconds": sum(r["sim_seconds"] for r in res)}
    # the testbench's own edge counts against the end-to-end model (hw.gemm.gemm_total_cycles)
    out["timing_ok"] = all(bool(r.get("timing_ok", False)) for r in res)
    for key in ("tb_cycles", "predicted_total_cycles"):
        if all(key in r for r in res):
            out[key] = sum(r[key] for r in res)
    return out


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
    def cumulative(self) -> bool:  # softmax and layer norm count cycles since reset
        return self.spec.kind in ("softmax", "layernorm")

    def unit(self) -> Any:
        return self.spec.build()

    def stimulus(self, job: Job, length: int | None = None) -> Stimulus:
        x, y = self.x.to(torch.int64), self.y.to(torch.int64)
        rows, n = x.shape
        p = self.spec.lanes  # type: ignore[attr-defined]
        w = -(-n // p)
        kind = self.spec.kind
        width = {"gelu": 8, "softmax": 32, "layernorm": 32}[kind]
        xp = torch.zeros(rows, w * p, dtype=torch.int64)
        yp = torch.zeros(rows, w * p, dtype=torch.int64)
        xp[:, :n], yp[:, :n] = x, y
        keep = torch.zeros(rows, w * p, dtype=torch.int64)
        keep[:, :n] = 1
        words = []
        for r in range(rows):
            for j in range(w):
                sl = slice(j * p, j * p + p)
                wd = pack_lanes(xp[r, sl].tolist(), width)
                end = j == w - 1 and (kind != "gelu" or r == rows - 1)
                if kind == "softmax":
                    wd |= pack_lanes(keep[r, sl].tolist(), 1) << (32 * p)
                    wd |= int(end) << (33 * p)
                else:
                    wd |= int(end) << (width * p)
                words.append(wd)
        return Stimulus(param=[], data=words, expected=yp.reshape(-1, p).tolist(),
                        predicted_cycles=self.spec.cycles(rows=rows, length=n),
                        max_abs_err_lsb=0.0, out_bits=8, lanes=p,
                        row_words=None if kind == "gelu" else w, out_signed=kind != "softmax")


def replay_stream(spec: UnitSpec, x: torch.Tensor, y: torch.Tensor, *, stall: str = "none",
                  seed: int = 0, simulator: str = "verilator") -> dict[str, Any]:
    """Run recorded rows through a streaming unit ``spec``; the executor's ``y`` must come out."""
    golden_ok = _golden_matches(spec, x, y)
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


def _golden_matches(spec: UnitSpec, x: torch.Tensor, y: torch.Tensor) -> bool:
    """The unit's golden function on ``x`` with the spec's own constants equals ``y``."""
    kind = spec.kind
    if kind == "softmax":
        from golden.softmax import softmax_int

        g = softmax_int(x, spec.params())  # type: ignore[attr-defined]
    elif kind == "layernorm":
        from golden.layernorm import layernorm_int

        g = layernorm_int(x, spec.params())  # type: ignore[attr-defined]
    elif kind == "gelu":
        from golden.gelu import gelu_int, gelu_params, relu_int, relu_params

        if spec.mode == "gelu":  # type: ignore[attr-defined]
            g = gelu_int(x, gelu_params(spec.in_scale, spec.out_scale))  # type: ignore[attr-defined]
        else:
            g = relu_int(x, *relu_params(spec.in_scale, spec.out_scale))  # type: ignore[attr-defined]
    else:
        raise UserValueError(f"no stream replay for unit {kind!r}")
    return bool(torch.equal(g, y.to(g.dtype)))
