"""Bench for the A^3 and Energon sparse-attention filters: jobs, stream words, golden checks.

A job is one (sequence, head): real key rows and query rows as int8 codes, and the filter's
run-time constants (``int_params``). :class:`A3Config` / :class:`EnergonConfig` turn a job
into the unit's stream words (keys, for A^3 the host-sorted per-column key orders, queries),
its ``prm`` word, the expected mask words (from ``mask_int``) and the cycle model's count
(from the golden model's candidate / survivor counts).

Runners: :func:`run_verilator` (cocotb + Verilator, one build per configuration through the
hash-keyed cache of :mod:`sim.verilator`, all jobs of a stall mode in one simulator launch,
test module :mod:`sim.cocotb_sparse_a3_energon`) and :func:`run_pysim` (the Amaranth
simulator, for small configurations). Checking happens here, in the parent process: mask
words bit for bit, the unit's ``cycles`` against the model, and the testbench's own edge
count from the job's first input transfer to its last output transfer against the model plus
the stall edges it observed (an input stream ready and not valid, the output valid and not
ready); under stall mode ``none`` there must be no stall edges.

Stimulus: :func:`random_jobs` (random codes in narrow and full ranges, so ties and extremes
occur, random key counts, query counts and constants) and :func:`minilm_jobs` (real MiniLM
Q/K from ``compiler.models.capture_qk``, quantized per layer as the golden ``mask()`` does,
a few heads).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from golden.errors import UserValueError
from golden.sparse.a3 import A3Filter, a3_search_int
from golden.sparse.base import quantize_qk_int8
from golden.sparse.energon import EnergonFilter, energon_rounds_int
from hw.sparse_a3 import SparseA3Spec, a3_cycles, a3_param_layout, a3_widths, sorted_key_orders
from hw.sparse_energon import SparseEnergonSpec, energon_cycles, energon_param_layout
from sim.streams import pack_lanes, stall_pattern

__all__ = ["FilterJob", "Stimulus", "A3Config", "EnergonConfig", "random_jobs", "minilm_jobs",
           "run_verilator", "run_pysim", "result_problems"]


@dataclass(frozen=True)
class FilterJob:
    """One (sequence, head): ``k`` (n x d codes), ``q`` (the query rows streamed, each d codes),
    ``params`` (``int_params``). ``corrupt``: ``"order"`` swaps two entries of one column of
    the A^3 order stream, ``"overflow"`` sends ``max_keys`` keys without ``last`` (the unit
    must raise ``error``; the overflowing job's keys are cut at ``max_keys``)."""

    label: str
    k: tuple[tuple[int, ...], ...]
    q: tuple[tuple[int, ...], ...]
    params: tuple[tuple[str, int], ...]
    corrupt: str | None = None

    @property
    def param_dict(self) -> dict[str, int]:
        return dict(self.params)


@dataclass
class Stimulus:
    """The words of one job and what must come back."""

    prm: int
    streams: dict[str, list[int]]
    expected: list[int]
    predicted_cycles: int
    expect_error: bool = False
    extra: dict = field(default_factory=dict)


def _rows_words(rows: Sequence[Sequence[int]], width: int, last: bool = True) -> list[int]:
    words = [pack_lanes(r, width) for r in rows]
    if last:
        words[-1] |= 1 << (width * len(rows[0]))
    return words


def _tensors(job: FilterJob) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``q`` padded to n rows (self-attention golden), ``k``, the key mask, the query count."""
    k = torch.tensor(job.k, dtype=torch.int64)
    n, d = k.shape
    lq = len(job.q)
    if not 1 <= lq <= n:
        raise UserValueError(f"{job.label}: 1..n query rows, not {lq}")
    q = torch.zeros(n, d, dtype=torch.int64)
    q[:lq] = torch.tensor(job.q, dtype=torch.int64)
    return q[None, None], k[None, None], torch.ones(1, n, dtype=torch.bool), lq


def _mask_words(mask: torch.Tensor, lq: int, max_keys: int) -> list[int]:
    out = []
    for i in range(lq):
        w = sum(1 << j for j in mask[i].nonzero().flatten().tolist())
        out.append(w | ((1 << max_keys) if i == lq - 1 else 0))
    return out


@dataclass(frozen=True)
class A3Config:
    """A :class:`hw.sparse_a3.SparseA3` configuration and its stimulus."""

    dim: int = 32
    max_keys: int = 32
    name: str = "sparse_a3"
    inputs: tuple[str, ...] = ("i_key", "i_order", "i_query")

    @property
    def spec(self) -> SparseA3Spec:
        return SparseA3Spec(dim=self.dim, max_keys=self.max_keys)

    def unit(self):
        return self.spec.build()

    def stimulus(self, job: FilterJob) -> Stimulus:
        q, k, km, lq = _tensors(job)
        n = k.shape[2]
        p = job.param_dict
        search = a3_search_int(q, k, km, p)
        mask = A3Filter().mask_int(q, k, km, p).mask[0, 0]
        cands = search.cand[0, 0].sum(-1).tolist()[:lq]
        m_iter = int(search.m_iter[0])
        iw = a3_widths(self.dim, self.max_keys)["idx"]
        orders = sorted_key_orders(job.k)
        if job.corrupt == "order":
            col = 0
            orders[0][col], orders[-1][col] = orders[-1][col], orders[0][col]
        elif job.corrupt is not None:
            raise UserValueError(f"A^3 jobs corrupt only 'order', not {job.corrupt!r}")
        prm = a3_param_layout().const({"m_q8": p["m_q8"], "t_int": p["t_int"]}).as_value().value
        d = self.dim
        return Stimulus(
            prm=prm,
            streams={"i_key": _rows_words(job.k, 8), "i_order": _rows_words(orders, iw),
                     "i_query": _rows_words(job.q, 8)},
            expected=_mask_words(mask, lq, self.max_keys),
            predicted_cycles=a3_cycles(n, m_iter, cands),
            expect_error=job.corrupt is not None,
            extra={"keys": n, "m_iter": m_iter, "candidates": cands,
                   "search_products": [2 * d + m_iter + int(g) for g in search.min_pops[0, 0, :lq]],
                   "post_products": [d * c for c in cands], "dense_products": d * n * lq},
        )


@dataclass(frozen=True)
class EnergonConfig:
    """A :class:`hw.sparse_energon.SparseEnergon` configuration and its stimulus."""

    dim: int = 32
    max_keys: int = 32
    rounds: int = 2
    name: str = "sparse_energon"
    inputs: tuple[str, ...] = ("i_key", "i_query")

    @property
    def spec(self) -> SparseEnergonSpec:
        return SparseEnergonSpec(dim=self.dim, max_keys=self.max_keys, rounds=self.rounds)

    def unit(self):
        return self.spec.build()

    def stimulus(self, job: FilterJob) -> Stimulus:
        q, k, km, lq = _tensors(job)
        n = k.shape[2]
        p = job.param_dict
        rounds = energon_rounds_int(q, k, km, p)
        if len(rounds) != self.rounds:
            raise UserValueError(f"{job.label}: params for {len(rounds)} rounds, unit has {self.rounds}")
        surv = [[int(rounds[r][0, 0, i].sum()) for r in range(self.rounds)] for i in range(lq)]
        prm = energon_param_layout(self.rounds).const({
            "alpha_q8": p["alpha_q8"],
            "q_shift": [p[f"q_shift{r}"] for r in range(self.rounds)],
            "k_shift": [p[f"k_shift{r}"] for r in range(self.rounds)]}).as_value().value
        keys = _rows_words(job.k, 8)
        if job.corrupt == "overflow":
            if n != self.max_keys:
                raise UserValueError(f"{job.label}: an overflow job needs max_keys={self.max_keys} keys")
            keys[-1] &= ~(1 << (8 * self.dim))       # no `last`: the unit cuts at max_keys
        elif job.corrupt is not None:
            raise UserValueError(f"Energon jobs corrupt only 'overflow', not {job.corrupt!r}")
        d = self.dim
        return Stimulus(
            prm=prm, streams={"i_key": keys, "i_query": _rows_words(job.q, 8)},
            expected=_mask_words(rounds[-1][0, 0], lq, self.max_keys),
            predicted_cycles=energon_cycles(n, surv),
            expect_error=job.corrupt is not None,
            extra={"keys": n, "survivors": surv,
                   "products": [d * (n + sum(s[:-1])) for s in surv], "dense_products": d * n * lq},
        )


def random_jobs(cfg: A3Config | EnergonConfig, count: int, seed: int) -> list[FilterJob]:
    """``count`` random jobs: code ranges 1, 3, 20 and 127 (narrow ranges make ties), key
    counts 1..max_keys (the first job uses max_keys, the second one key), random constants."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    jobs = []
    for j in range(count):
        n = cfg.max_keys if j == 0 else 1 if j == 1 else rng.randint(2, cfg.max_keys)
        lq = rng.randint(1, min(n, 6))
        lim = (1, 3, 20, 127)[j % 4]
        k = torch.randint(-lim, lim + 1, (n, cfg.dim), generator=g)
        q = torch.randint(-lim, lim + 1, (lq, cfg.dim), generator=g)
        if isinstance(cfg, A3Config):
            params = {"m_q8": rng.choice([0, 1, 64, 128, 256, 512, 1024, 4095]),
                      "t_int": rng.choice([0, 1, 50, 3000, 200000, 2 ** 24 - 1])}
        else:
            params = {"alpha_q8": rng.choice([-256, -230, -128, -1, 0, 1, 64, 200, 256])}
            for r in range(cfg.rounds):
                params[f"q_shift{r}"] = rng.randint(0, 7)
                params[f"k_shift{r}"] = rng.randint(0, 7)
        jobs.append(FilterJob(f"random{j}(n={n},lq={lq},lim={lim},{params})",
                              tuple(map(tuple, k.tolist())), tuple(map(tuple, q.tolist())),
                              tuple(params.items())))
    return jobs


def minilm_jobs(cfg: A3Config | EnergonConfig, picks: Sequence[tuple[int, int, int]],
                n_sentences: int = 2, knobs: dict | None = None,
                captured: list | None = None) -> list[FilterJob]:
    """Jobs from real MiniLM Q/K: ``picks`` are (layer, sentence, head); every real query row
    of the pick is streamed. Codes and constants as the golden ``mask()`` makes them
    (``quantize_qk_int8`` per layer tensor, ``int_params``); ``knobs`` default to the
    filter's default setting. ``captured`` reuses a ``capture_qk`` result."""
    if captured is None:
        from compiler.models import capture_qk

        captured = capture_qk(n_sentences)
    filt = (A3Filter(**(knobs or A3Filter.default)) if isinstance(cfg, A3Config)
            else EnergonFilter(**(knobs or EnergonFilter.default)))
    jobs = []
    for layer, b, h in picks:
        qf, kf, km = captured[layer]
        qq, sq = quantize_qk_int8(qf, km)
        kk, sk = quantize_qk_int8(kf, km)
        params = filt.int_params(sq, sk, qf.shape[-1], layer=layer)
        n = int(km[b].sum())
        if n > cfg.max_keys:
            raise UserValueError(f"sentence {b} has {n} tokens, more than max_keys={cfg.max_keys}")
        k = kk[b, h, :n].tolist()
        q = qq[b, h, :n].tolist()
        jobs.append(FilterJob(f"minilm(layer={layer},sentence={b},head={h},n={n},{filt.setting()})",
                              tuple(map(tuple, k)), tuple(map(tuple, q)), tuple(params.items())))
    return jobs


def result_problems(r: dict, stall: str) -> list[str]:
    """Everything wrong with one job's result (empty when bit- and cycle-exact)."""
    where = f"{r['job']} (stall={stall})"
    out = []
    if r.get("timeout"):
        out.append(f"{where}: {r['timeout']}")
    if r["expect_error"]:
        if not r["error"]:
            out.append(f"{where}: the unit did not flag the malformed job")
        return out
    if r["words"] != r["expected"]:
        bad = [i for i, (a, b) in enumerate(zip(r["words"], r["expected"], strict=False)) if a != b]
        out.append(f"{where}: mask words differ at rows {bad[:5]} (got {len(r['words'])} words, "
                   f"expected {len(r['expected'])})")
    if r["cycles"] != r["predicted_cycles"]:
        out.append(f"{where}: design cycles {r['cycles']} != model {r['predicted_cycles']}")
    if r.get("tb_cycles") is None or r["tb_cycles"] != r["tb_predicted_cycles"]:
        out.append(f"{where}: testbench edges {r.get('tb_cycles')} != model {r.get('tb_predicted_cycles')} "
                   f"(sink stalls {r.get('tb_sink_stalls')}, source stalls {r.get('tb_source_stalls')})")
    if stall == "none" and (r.get("tb_sink_stalls") or r.get("tb_source_stalls")):
        out.append(f"{where}: stall edges without stalls")
    if r["error"]:
        out.append(f"{where}: the unit flagged an error")
    return out


def _results(jobs: Sequence[FilterJob], stims: Sequence[Stimulus], raw: Sequence[dict]) -> list[dict]:
    out = []
    for job, st, r in zip(jobs, stims, raw, strict=False):
        e = r.get("edges")
        res = {"job": job.label, "words": r["words"], "expected": st.expected,
               "cycles": r["cycles"], "predicted_cycles": st.predicted_cycles,
               "error": bool(r["error"]), "expect_error": st.expect_error,
               "sim_seconds": r["sim_seconds"], "timeout": r.get("timeout"), **st.extra}
        if e is None:
            res.update({"tb_cycles": None, "tb_predicted_cycles": None, "tb_sink_stalls": None,
                        "tb_source_stalls": None})
        else:
            res.update({**e, "tb_predicted_cycles": st.predicted_cycles + e["tb_sink_stalls"]
                        + e["tb_source_stalls"]})
        out.append(res)
    if len(raw) < len(jobs):
        raise AssertionError(f"the simulation returned {len(raw)} of {len(jobs)} jobs")
    return out


def _job_spec(st: Stimulus, inputs: Sequence[str]) -> dict:
    words = sum(len(st.streams[s]) for s in inputs)
    return {"prm": st.prm, "streams": {s: st.streams[s] for s in inputs}, "n_out": len(st.expected),
            "timeout_cycles": 20 * (st.predicted_cycles + words) + 500}


def run_verilator(cfg: A3Config | EnergonConfig, jobs: Sequence[FilterJob], *, stall: str = "none",
                  seed: int = 0, test_dir: Path | None = None, progress=None) -> list[dict]:
    """Run ``jobs`` in order on ``cfg``'s unit in one cocotb + Verilator launch; one result
    dict per job (:func:`result_problems` lists what is wrong with it)."""
    from sim.verilator import build, run_cocotb, to_verilog

    stall_pattern(stall, seed)                          # validates the mode
    b = build(to_verilog(cfg.unit(), cfg.name), cfg.name, progress=progress)
    stims = [cfg.stimulus(j) for j in jobs]
    own = test_dir is None
    tdir = Path(tempfile.mkdtemp(prefix="fmforge-sparse-")) if own else Path(test_dir)
    tdir.mkdir(parents=True, exist_ok=True)
    spec = {"stall": stall, "seed": seed, "out": str(tdir / "out.json"), "inputs": list(cfg.inputs),
            "output": "o_mask", "jobs": [_job_spec(s, cfg.inputs) for s in stims]}
    (tdir / "spec.json").write_text(json.dumps(spec))
    try:
        res = run_cocotb(b, "sim.cocotb_sparse_a3_energon",
                         extra_env={"FMFORGE_BENCH_SPEC": str(tdir / "spec.json")},
                         test_dir=tdir, seed=seed)
    except KeyboardInterrupt:
        if own:
            shutil.rmtree(tdir, ignore_errors=True)
        raise
    if res["failed"] or not (tdir / "out.json").exists():
        raise AssertionError(f"cocotb run failed ({'; '.join(res['failures']) or 'no results'}); "
                             f"logs in {tdir}")
    raw = json.loads((tdir / "out.json").read_text())["results"]
    if own:
        shutil.rmtree(tdir, ignore_errors=True)
    return _results(jobs, stims, raw)


def run_pysim(cfg: A3Config | EnergonConfig, jobs: Sequence[FilterJob], *, stall: str = "none",
              seed: int = 0) -> list[dict]:
    """The same jobs on the Amaranth simulator (small configurations); same result dicts and
    the same edge counting (sampled at every clock edge)."""
    from amaranth.sim import Simulator

    from sim.pysim import stream_sink, stream_source

    dut = cfg.unit()
    stims = [cfg.stimulus(j) for j in jobs]
    pattern = stall_pattern(stall, seed)
    ins = [getattr(dut, s) for s in cfg.inputs]
    raw: list[dict] = []
    go = [False] * len(stims)
    done = [False] * len(stims)
    log: list[tuple] = []

    async def watch(ctx):
        sigs = [x for s in ins for x in (s.valid, s.ready)] + [dut.o_mask.valid, dut.o_mask.ready]
        async for _clk, _rst, *v in ctx.tick().sample(*sigs):
            log.append(tuple(v))

    def source(idx: int):
        async def tb(ctx):
            p = pattern.fork(idx + 1)
            for j, st in enumerate(stims):
                while not go[j]:
                    await ctx.tick()
                await stream_source(ctx, ins[idx], st.streams[cfg.inputs[idx]], p)
                while not done[j]:
                    await ctx.tick()
        return tb

    async def bench(ctx):
        sink_p = pattern.fork(99)
        for j, st in enumerate(stims):
            ctx.set(dut.prm.as_value(), st.prm)
            start = len(log)
            go[j] = True
            t0 = time.perf_counter()
            got: list[int] = []
            await stream_sink(ctx, dut.o_mask, len(st.expected), sink_p, got,
                              _job_spec(st, cfg.inputs)["timeout_cycles"])
            cycles, error = ctx.get(dut.cycles), ctx.get(dut.error)
            await ctx.tick()                            # the watcher has logged the final edge
            done[j] = True
            raw.append({"words": got, "cycles": cycles, "error": error,
                        "sim_seconds": time.perf_counter() - t0,
                        "edges": _count(log[start:], len(ins), len(st.expected))})

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(watch, background=True)
    for i in range(len(ins)):
        sim.add_testbench(source(i), background=True)
    sim.add_testbench(bench)
    sim.run()
    return _results(jobs, stims, raw)


def _count(samples: Sequence[tuple], n_in: int, n_out: int) -> dict | None:
    """Edge counts of one job from per-edge samples (input valid/ready pairs, output valid,
    ready): the same rule as the cocotb counter."""
    edges = sink = source = outs = 0
    started = False
    for v in samples:
        pairs = [(v[2 * i], v[2 * i + 1]) for i in range(n_in)]
        if not started:
            if not any(a and b for a, b in pairs):
                continue
            started = True
        edges += 1
        ov, ordy = v[-2], v[-1]
        if ov and ordy:
            outs += 1
        elif ov:
            sink += 1
        source += sum(1 for a, b in pairs if b and not a)
        if outs == n_out:
            return {"tb_cycles": edges, "tb_sink_stalls": sink, "tb_source_stalls": source}
    return None
