"""Bench for the Sanger and ELSA sparse-attention filters (:mod:`hw.sparse_sanger`,
:mod:`hw.sparse_elsa`): jobs, stream words, golden checks, the cocotb + Verilator runner.

A job is one head of one sequence: int8 key and query codes, the key mask and the run-time
constants of the filter's ``int_params``; what must come back is
:meth:`~golden.sparse.base.SparseAttentionFilter.mask_int` of that head, one keep-mask word
per query row. Jobs come from seeded random codes (:func:`random_jobs`: full and partial key
words, padding keys and query rows, zero and small rows, tied keys, keep-all, empty rows that
fall back to the best key, extreme logit multipliers and negative ELSA thresholds) and from
real MiniLM Q/K (:func:`minilm_jobs`: ``compiler.models.capture_qk`` quantized per tensor with
``quantize_qk_int8``, as the core's Q/K GEMM outputs are).

:func:`run_verilator` builds the unit once per configuration (:func:`sim.verilator.build`,
cached by a hash of the Verilog) and runs every job of a call in one simulator launch (module
:mod:`sim.cocotb_sparse_sanger_elsa`), under one stall mode of :mod:`sim.streams`. The
testbench counts each job's clock edges from its first key transfer to its last mask transfer
and the stall edges in that window (``o_mask`` valid and not ready, an input stream ready and
not valid); the checks (:func:`sim.nonlinear_bench.result_problems`) require the masks bit for
bit, the unit's ``cycles`` equal to the cycle model and the edge count equal to the model plus
the stall edges.
"""

from __future__ import annotations

import bisect
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from golden.errors import UserValueError
from golden.sparse.base import quantize_qk_int8
from golden.sparse.elsa import ElsaFilter, elsa_thr
from golden.sparse.sanger import SangerFilter
from sim.streams import pack_lanes, stall_pattern

__all__ = ["ElsaBench", "FilterJob", "SangerBench", "expected_words", "minilm_jobs", "random_jobs",
           "run_pysim", "run_verilator"]


@dataclass
class FilterJob:
    """One head: ``q`` int64 ``[Lq, d]``, ``k`` ``[Lk, d]`` (int8 codes), ``key_mask`` bool
    ``[Lk]``, the filter's run-time constants ``params`` and a description."""

    name: str
    q: torch.Tensor
    k: torch.Tensor
    key_mask: torch.Tensor
    params: dict[str, int]

    @property
    def query_real(self) -> torch.Tensor:
        """Real query rows: the key mask in self-attention (``Lq == Lk``), else all (as
        :func:`golden.sparse.base.valid_pairs`)."""
        if self.q.shape[0] == self.k.shape[0]:
            return self.key_mask
        return torch.ones(self.q.shape[0], dtype=torch.bool)


def _row_words(x: torch.Tensor, real: torch.Tensor) -> list[int]:
    """Stream words of rows ``x`` ``[L, d]``: the codes, ``real`` above them, ``last`` on the
    final row (:func:`hw.sparse_sanger.filter_row_layout`)."""
    d = x.shape[1]
    words = [pack_lanes(row, 8) | (int(r) << (8 * d)) for row, r in zip(x.tolist(), real.tolist(), strict=True)]
    words[-1] |= 1 << (8 * d + 1)
    return words


@dataclass(frozen=True)
class SangerBench:
    """A :class:`hw.sparse_sanger.SparseSanger` configuration (one Verilator build)."""

    dim: int = 32
    max_keys: int = 32
    lanes: int = 4
    bits: int = 4
    name = "sparse_sanger"

    def spec(self):
        from hw.sparse_sanger import SparseSangerSpec

        return SparseSangerSpec(dim=self.dim, max_keys=self.max_keys, lanes=self.lanes, bits=self.bits)

    def filter(self, knob: float = 0.02) -> SangerFilter:
        return SangerFilter(threshold=knob, bits=self.bits)

    def prm_word(self, params: dict[str, int]) -> int:
        """``params`` packed as :func:`hw.sparse_sanger.sanger_param_layout`."""
        return (params["keep_all"] | params["thr"] << 1 | params["mult"] << 18 | params["shift"] << 34)

    def cycles(self, keys: int, rows: int) -> int:
        """The cycle model; a job of more than ``max_keys`` keys (the unit drops the extra keys
        and flags an error) still counts every key word taken."""
        from hw.sparse_sanger import sanger_cycles

        return sanger_cycles(min(keys, self.max_keys), rows, self.lanes) + max(0, keys - self.max_keys)


@dataclass(frozen=True)
class ElsaBench:
    """A :class:`hw.sparse_elsa.SparseElsa` configuration (one Verilator build)."""

    dim: int = 32
    max_keys: int = 32
    lanes: int = 4
    hash_bits: int = 0
    seed: int = 0
    name = "sparse_elsa"

    def spec(self):
        from hw.sparse_elsa import SparseElsaSpec

        return SparseElsaSpec(dim=self.dim, max_keys=self.max_keys, lanes=self.lanes,
                              hash_bits=self.hash_bits, seed=self.seed)

    def filter(self, knob: float = 0.25) -> ElsaFilter:
        return ElsaFilter(p=knob, hash_bits=self.hash_bits or None, seed=self.seed)

    def prm_word(self, params: dict[str, int]) -> int:
        """``params`` packed as :func:`hw.sparse_elsa.elsa_param_layout`."""
        return params["keep_all"] | (params["thr"] & 0xFFFFFFFF) << 1

    def cycles(self, keys: int, rows: int) -> int:
        """The cycle model, as :meth:`SangerBench.cycles`."""
        from hw.sparse_elsa import elsa_cycles

        return elsa_cycles(min(keys, self.max_keys), rows, self.lanes) + max(0, keys - self.max_keys)


def expected_words(cfg, job: FilterJob) -> list[int]:
    """The mask words the unit must send: per query row the keep bits, ``last`` on the final row
    (of the first ``max_keys`` keys when the job has more: the unit drops the rest)."""
    f = cfg.filter()
    n = cfg.max_keys
    mask = f.mask_int(job.q[None, None], job.k[None, None, :n], job.key_mask[None, :n], job.params).mask[0, 0]
    words = [sum(1 << j for j in range(mask.shape[1]) if mask[i, j]) for i in range(mask.shape[0])]
    words[-1] |= 1 << cfg.max_keys
    return words


def _codes(g: torch.Generator, *shape: int, hi: int = 127) -> torch.Tensor:
    return torch.randint(-hi, hi + 1, shape, generator=g, dtype=torch.int64)


def random_jobs(cfg, seed: int) -> list[FilterJob]:
    """Seeded random heads covering the unit's corners (module docstring); key counts are
    capped at the unit's ``max_keys``."""
    g = torch.Generator().manual_seed(seed)
    d, n = cfg.dim, cfg.max_keys
    sanger = isinstance(cfg, SangerBench)

    def prm(knob: float, sq: float = 0.05, sk: float = 0.04) -> dict[str, int]:
        if sanger:
            return SangerFilter(threshold=knob, bits=cfg.bits).int_params(sq, sk, d)
        return {"keep_all": int(knob == 0), "thr": 0 if knob == 0 else elsa_thr(knob)}

    def head(name: str, rows: int, keys: int, params: dict[str, int], hi: int = 127, real: bool = True
             ) -> FilterJob:
        keys = min(keys, n)
        return FilterJob(name, _codes(g, rows, d, hi=hi), _codes(g, keys, d, hi=hi),
                         torch.full((keys,), real, dtype=torch.bool), params)

    knob = 0.02 if sanger else 0.3
    # a full key buffer, rows of every magnitude (row shifts 0..8-b), a zero key
    full = head("full", 5, n, prm(knob))
    full.k[1] //= 40
    full.k[2] = 0
    full.q[1] //= 9
    jobs = [full]
    # self-attention with padding (inner and trailing), a partial final key word
    lk = n - 3 if n > 4 else n
    km = torch.ones(lk, dtype=torch.bool)
    km[-2:] = False
    km[min(3, lk - 1)] = False
    jobs.append(FilterJob("self-padding", _codes(g, lk, d), _codes(g, lk, d), km, prm(knob)))
    # tied keys (equal best estimate) and a threshold nothing passes: the first one is kept
    ties = head("ties-empty", 1, 6, prm(0.9 if sanger else 1.5))
    ties.k //= 10
    ties.k[1] = ties.q[0]
    ties.k[2] = ties.q[0]
    ties.k[-1] = ties.q[0]
    jobs += [ties, head("keep-all", 3, 7, prm(0.0)), head("one-key", 2, 1, prm(knob)),
             head("no-real-key", 2, 5, prm(knob), real=False)]
    if sanger:
        # extreme logit constants: huge differences (e = 0 from x >= 2^12) and all-zero logits
        jobs += [head("mult-max", 3, 9, {"keep_all": 0, "thr": 300, "mult": 65535, "shift": 0}),
                 head("shift-max", 2, 9, {"keep_all": 0, "thr": 2 ** 16, "mult": 1, "shift": 63}),
                 head("high-thr", 4, n, prm(0.2, 0.3, 0.3), hi=20)]
    else:
        jobs += [head("negative-t", 4, 11, prm(-0.15)), head("low-t", 3, n, prm(0.05))]
    return jobs


def minilm_jobs(cfg, captured, picks: Sequence[tuple[int, int, int]], knob: float | None = None
                ) -> list[FilterJob]:
    """Real heads: ``captured`` is ``compiler.models.capture_qk(...)`` (one ``(q, k, key_mask)``
    per layer); ``picks`` are ``(layer, sentence, head)``. Q and K are quantized per tensor over
    the whole layer (``quantize_qk_int8``); the constants come from ``int_params`` (ELSA's
    threshold calibrated on ``captured`` itself at relevance ``knob``)."""
    f = cfg.filter() if knob is None else cfg.filter(knob)
    if isinstance(f, ElsaFilter):
        f.calibrate([[layer] for layer in captured])
    jobs = []
    for layer, b, h in picks:
        q, k, km = captured[layer]
        if k.shape[2] > cfg.max_keys:
            raise UserValueError(f"sentence of {k.shape[2]} tokens exceeds max_keys={cfg.max_keys}")
        q8, sq = quantize_qk_int8(q, km)
        k8, sk = quantize_qk_int8(k, km)
        prm = f.int_params(sq, sk, q.shape[-1], layer=layer)
        jobs.append(FilterJob(f"minilm L{layer} s{b} h{h}", q8[b, h], k8[b, h], km[b].bool(), prm))
    return jobs


@lru_cache(maxsize=8)
def _verilog(cfg) -> str:
    from sim.verilator import to_verilog

    return to_verilog(cfg.spec().build(), cfg.name)


def _stimuli(cfg, jobs: Sequence[FilterJob]) -> list[dict]:
    stims = []
    for j in jobs:
        lk, lq = j.k.shape[0], j.q.shape[0]
        stims.append({"prm": cfg.prm_word(j.params), "keys": _row_words(j.k, j.key_mask),
                      "queries": _row_words(j.q, j.query_real), "n_out": lq,
                      "expected": expected_words(cfg, j), "predicted": cfg.cycles(lk, lq)})
    return stims


def _results(cfg, jobs: Sequence[FilterJob], stims: list[dict], raw: list[dict]) -> list[dict]:
    """Check each job's raw result (``words``, ``cycles``, ``error``, ``edges``, ``sim_seconds``,
    optional ``timeout``) against its stimulus; the result dicts of :func:`run_verilator`."""
    out = []
    for j, s, r in zip(jobs, stims, raw, strict=False):
        mism = [r["timeout"]] if r.get("timeout") else []
        if len(r["words"]) != len(s["expected"]):
            mism.append(f"expected {len(s['expected'])} mask words, got {len(r['words'])}")
        for i, (got, want) in enumerate(zip(r["words"], s["expected"], strict=False)):
            if got != want:
                mism.append(f"row {i}: expected {want:#x}, got {got:#x}")
        valid = int((j.query_real[:, None] & j.key_mask[None, :]).sum())
        kept = sum(bin(wd & ((1 << cfg.max_keys) - 1)).count("1") for wd in s["expected"])
        e = r.get("edges")
        stalls = None if e is None else e["tb_sink_stalls"] + e["tb_source_stalls"]
        out.append({"job": j.name, "match": not mism, "mismatches": mism[:5], "cycles": r["cycles"],
                    "predicted_cycles": s["predicted"], "error": bool(r["error"]),
                    "keep_ratio": kept / valid if valid else 0.0, "sim_seconds": r["sim_seconds"],
                    "tb_cycles": None if e is None else e["tb_cycles"],
                    "tb_predicted_cycles": None if e is None else s["predicted"] + stalls,
                    "tb_sink_stalls": None if e is None else e["tb_sink_stalls"],
                    "tb_source_stalls": None if e is None else e["tb_source_stalls"]})
    return out


def run_verilator(cfg, jobs: Sequence[FilterJob], *, stall: str = "none", seed: int = 0,
                  test_dir: Path | None = None, progress=None) -> list[dict]:
    """Run ``jobs`` in order on unit ``cfg`` in cocotb + Verilator (one launch) and check each.

    Returns one dict per job: ``job``, ``match``, ``mismatches``, ``cycles`` (the unit's counter),
    ``predicted_cycles``, ``error``, ``keep_ratio`` (kept / valid pairs), ``sim_seconds`` and the
    testbench's ``tb_cycles``, ``tb_predicted_cycles``, ``tb_sink_stalls``, ``tb_source_stalls``.
    """
    from sim.verilator import build, run_cocotb

    b = build(_verilog(cfg), cfg.name, progress=progress)
    own = test_dir is None
    tdir = Path(tempfile.mkdtemp(prefix="fmforge-sparse-")) if own else Path(test_dir)
    tdir.mkdir(parents=True, exist_ok=True)
    stims = _stimuli(cfg, jobs)
    spec = {"stall": stall, "seed": seed, "out": str(tdir / "out.json"),
            "jobs": [{k: s[k] for k in ("prm", "keys", "queries", "n_out")}
                     | {"timeout_cycles": 20 * (s["predicted"] + s["n_out"]) + 200} for s in stims]}
    (tdir / "spec.json").write_text(json.dumps(spec))
    try:
        res = run_cocotb(b, "sim.cocotb_sparse_sanger_elsa",
                         extra_env={"FMFORGE_BENCH_SPEC": str(tdir / "spec.json")}, test_dir=tdir, seed=seed)
    except KeyboardInterrupt:
        if own:
            shutil.rmtree(tdir, ignore_errors=True)
        raise
    if res["failed"] or not (tdir / "out.json").exists():
        raise AssertionError(f"cocotb run failed ({'; '.join(res['failures']) or 'no results'}); logs in {tdir}")
    out = _results(cfg, jobs, stims, json.loads((tdir / "out.json").read_text())["results"])
    if own:
        shutil.rmtree(tdir, ignore_errors=True)
    return out


def run_pysim(cfg, jobs: Sequence[FilterJob], *, stall: str = "none", seed: int = 0) -> list[dict]:
    """The same jobs on the Amaranth simulator (small configurations: other widths and lane
    counts without a Verilator build); same result dicts. A background process samples the
    three streams' valid and ready at every edge for the testbench's own edge counts."""
    from amaranth.sim import Simulator

    from sim.pysim import stream_sink, stream_source

    dut = cfg.spec().build()
    stims = _stimuli(cfg, jobs)
    pattern = stall_pattern(stall, seed)
    log: dict[str, list[int]] = {"keys": [], "outs": [], "sink": [], "source": []}
    go = [False] * len(stims)
    raw: list[dict] = []

    async def watch(ctx):
        edge = 0
        async for _clk, _rst, kv, kr, qv, qr, ov, ordy in ctx.tick().sample(
                dut.i_key.valid, dut.i_key.ready, dut.i_query.valid, dut.i_query.ready,
                dut.o_mask.valid, dut.o_mask.ready):
            if kv and kr:
                log["keys"].append(edge)
            if ov and ordy:
                log["outs"].append(edge)
            elif ov:
                log["sink"].append(edge)
            if (kr and not kv) or (qr and not qv):
                log["source"].append(edge)
            edge += 1

    def source(strm, field: str, salt: int):
        async def run(ctx):
            pat = pattern.fork(salt)
            for j, s in enumerate(stims):
                while not go[j]:
                    await ctx.tick()
                await stream_source(ctx, strm, s[field], pat)
        return run

    async def bench(ctx):
        sink_p = pattern.fork(99)
        for j, s in enumerate(stims):
            t0 = time.perf_counter()
            ctx.set(dut.prm.as_value(), s["prm"])
            go[j] = True
            got: list[int] = []
            try:
                await stream_sink(ctx, dut.o_mask, s["n_out"], sink_p, got, 20 * (s["predicted"] + s["n_out"]) + 200)
            except TimeoutError as e:
                raw.append({"words": got, "cycles": 0, "error": ctx.get(dut.error), "timeout": str(e),
                            "sim_seconds": time.perf_counter() - t0})
                return
            raw.append({"words": got, "cycles": ctx.get(dut.cycles), "error": ctx.get(dut.error),
                        "sim_seconds": time.perf_counter() - t0})
        await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(watch, background=True)
    sim.add_testbench(source(dut.i_key, "keys", 1), background=True)
    sim.add_testbench(source(dut.i_query, "queries", 3), background=True)
    sim.add_testbench(bench)
    sim.run()
    n_in = n_out = 0
    for s, r in zip(stims, raw, strict=False):
        if r.get("timeout"):
            break
        t0, t1 = log["keys"][n_in], log["outs"][n_out + s["n_out"] - 1]
        n_in, n_out = n_in + len(s["keys"]), n_out + s["n_out"]

        def count(edges: list[int], t0: int = t0, t1: int = t1) -> int:
            return bisect.bisect_right(edges, t1) - bisect.bisect_left(edges, t0)

        r["edges"] = {"tb_cycles": t1 - t0 + 1, "tb_sink_stalls": count(log["sink"]),
                      "tb_source_stalls": count(log["source"])}
    return _results(cfg, jobs, stims, raw)
