"""SpAtten pruning unit (``hw.sparse_spatten``) against its golden step, on cocotb + Verilator.

A *job* is one attention layer of one sequence: the ``prm`` word (packed
:func:`hw.sparse_spatten.spatten_param_layout`), the probability rows as ``i_data`` words,
and what the golden model says: the keep bit words the unit must emit (the survivors of
:func:`golden.sparse.spatten.spatten_step_int`) and its cycle count
(:func:`hw.sparse_spatten.spatten_cycles` with the radix pass counts of
:func:`golden.sparse.spatten.spatten_radix_select`, which must select the same survivors).
Jobs of one sequence follow each other in order (the unit keeps the importances between
them); a sequence starts with a ``first`` job.

Stimuli: :func:`random_jobs` (random sequence lengths, key masks, head counts, rows of any
head, rows of pruned heads and pruned tokens that must add nothing, probability values from
small alphabets so that importances tie, and top-k sizes from 0 to beyond the survivors) and
:func:`minilm_jobs` (the probability codes the softmax unit gives for real MiniLM Q/K, layer
by layer, under ``SpattenFilter.mask_int``: the rows of the surviving heads and real queries).

:func:`run_verilator` runs a list of jobs in one simulator launch under a stall mode of
:mod:`sim.streams` and returns one result dict per job (the format of
:func:`sim.nonlinear_bench.result_problems`); :func:`run_pysim` runs them on the Amaranth
simulator (small checks).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from golden.sparse.spatten import (
    SpattenFilter,
    SpattenIntState,
    spatten_initial_state,
    spatten_keep_count,
    spatten_probs_int,
    spatten_radix_select,
    spatten_step_int,
)
from hw.sparse_spatten import SpattenSpec, spatten_cycles
from sim.nonlinear_bench import EdgeLog, result_problems
from sim.streams import stall_pattern

__all__ = ["SpattenJob", "SequenceBuilder", "random_jobs", "minilm_jobs", "run_verilator", "run_pysim",
           "result_problems", "pack_prm", "data_words", "keep_words"]


@dataclass
class SpattenJob:
    """One layer job: stimulus words, expected output words, the model's cycles."""

    name: str
    prm: int
    data: list[int]
    expected: list[int]
    predicted_cycles: int
    token_passes: int
    head_passes: int

    def predicted_edges(self, stalls: int) -> int:
        return self.predicted_cycles + stalls


def _fields(spec: SpattenSpec) -> list[tuple[str, int]]:
    tw, hw = spec.max_tokens.bit_length(), spec.max_heads.bit_length()
    return [("first", 1), ("n_tokens", tw), ("n_heads", hw), ("k_tokens", tw), ("k_heads", hw),
            ("key_mask", spec.max_tokens)]


def pack_prm(spec: SpattenSpec, **values: int) -> int:
    """The ``prm`` port value (fields from the low bit up, as the struct layout)."""
    word, pos = 0, 0
    for name, width in _fields(spec):
        v = int(values[name])
        if not 0 <= v < 1 << width:
            raise ValueError(f"prm field {name}={v} does not fit {width} bits")
        word |= v << pos
        pos += width
    return word


def _head_bits(spec: SpattenSpec) -> int:
    return max(1, (spec.max_heads - 1).bit_length())


def data_words(spec: SpattenSpec, rows: Sequence[tuple[int, Sequence[int]]], n_tokens: int) -> list[int]:
    """``i_data`` words of ``rows`` = ``(head, codes[n_tokens])``; ``last`` on the final word."""
    P = spec.lanes
    w = -(-n_tokens // P)
    out = []
    for r, (head, codes) in enumerate(rows):
        for k in range(w):
            word = 0
            for c in range(P):
                j = k * P + c
                word |= (int(codes[j]) if j < n_tokens else 0) << (8 * c)
            word |= head << (8 * P)
            word |= int(r == len(rows) - 1 and k == w - 1) << (8 * P + _head_bits(spec))
            out.append(word)
    return out


def keep_words(spec: SpattenSpec, tokens: Sequence[bool], heads: Sequence[bool]) -> list[int]:
    """Expected ``o_data`` words: token keep bits, then head keep bits (``heads``, ``last``)."""
    P = spec.lanes
    out = []
    for is_head, bits in ((0, list(tokens)), (1, list(heads))):
        w = -(-len(bits) // P)
        for k in range(w):
            word = sum(int(bits[k * P + c]) << c for c in range(P) if k * P + c < len(bits))
            word |= is_head << P
            word |= int(is_head and k == w - 1) << (P + 1)
            out.append(word)
    return out


class SequenceBuilder:
    """Builds the jobs of one sequence layer by layer from the golden step (and keeps the
    golden state, so a caller can compare it with ``mask_int``'s)."""

    def __init__(self, spec: SpattenSpec, key_mask: Sequence[bool], n_heads: int, name: str) -> None:
        self.spec = spec
        self.key_mask = torch.tensor([bool(x) for x in key_mask])
        self.n = len(self.key_mask)
        self.h = n_heads
        if not 1 <= self.n <= spec.max_tokens or not 1 <= n_heads <= spec.max_heads:
            raise ValueError(f"sequence of {self.n} tokens and {n_heads} heads does not fit {spec}")
        self.name = name
        self.state: SpattenIntState = spatten_initial_state(self.key_mask[None], n_heads)
        self.layer = 0

    def layer_job(self, rows: Sequence[tuple[int, Sequence[int]]], k_tokens: int, k_heads: int) -> SpattenJob:
        """The job of the next layer: ``rows`` ``(head, codes)`` streamed in this order."""
        spec = self.spec
        if not rows:
            raise ValueError("a job needs at least one row")
        per_head: dict[int, list[Sequence[int]]] = {}
        for hd, codes in rows:
            per_head.setdefault(hd, []).append(codes)
        r = max(len(v) for v in per_head.values())
        probs = torch.zeros(1, self.h, r, self.n, dtype=torch.int64)
        for hd, lst in per_head.items():
            for i, codes in enumerate(lst):
                probs[0, hd, i] = torch.tensor([int(x) for x in codes])
        st = self.state
        nxt = spatten_step_int(st, probs, k_tokens, k_heads)
        if int(nxt.s_t.max()) >= 1 << spec.token_bits or int(nxt.s_h.max()) >= 1 << spec.head_bits:
            raise ValueError("importances exceed the unit's accumulator widths")
        keep_t, pt = spatten_radix_select(nxt.s_t[0], st.tokens[0], k_tokens, spec.token_bits)
        keep_h, ph = spatten_radix_select(nxt.s_h[0], st.heads[0], k_heads, spec.head_bits)
        if not (torch.equal(keep_t, nxt.tokens[0]) and torch.equal(keep_h, nxt.heads[0])):
            raise AssertionError("radix select and stable top-k disagree")
        prm = pack_prm(spec, first=int(self.layer == 0), n_tokens=self.n, n_heads=self.h,
                       k_tokens=k_tokens, k_heads=k_heads,
                       key_mask=sum(int(b) << j for j, b in enumerate(self.key_mask.tolist())))
        words = data_words(spec, rows, self.n)
        job = SpattenJob(
            name=f"{self.name} layer {self.layer} ({len(rows)} rows, k={k_tokens}/{k_heads}, "
                 f"passes {pt}/{ph})",
            prm=prm, data=words, expected=keep_words(spec, nxt.tokens[0].tolist(), nxt.heads[0].tolist()),
            predicted_cycles=spatten_cycles(words=len(words), n_tokens=self.n, n_heads=self.h,
                                            lanes=spec.lanes, token_passes=pt, head_passes=ph),
            token_passes=pt, head_passes=ph)
        self.state = nxt
        self.layer += 1
        return job


_ALPHABETS = {
    "ties": (0, 1, 2),
    "binary": (0, 255),
    "sparse": (0, 0, 0, 0, 7, 255),
    "const": (3,),
    "uniform": tuple(range(256)),
}


def random_jobs(spec: SpattenSpec, seed: int, sequences: int = 3, layers: int = 4) -> list[SpattenJob]:
    """Random sequences (module docstring); every importance fits the unit's widths."""
    rng = random.Random(seed)
    jobs: list[SpattenJob] = []
    max_rows = max(1, min(24, (1 << spec.head_bits) // (255 * layers) - 1,
                          (1 << spec.token_bits) // (255 * layers) - 1))
    for s in range(sequences):
        n = rng.randint(1, spec.max_tokens)
        km = [rng.random() < 0.8 for _ in range(n)]
        if s == 0:
            km = [True] * n
        if not any(km):
            km[rng.randrange(n)] = True
        h = rng.randint(1, spec.max_heads)
        seq = SequenceBuilder(spec, km, h, f"random seq {s} (n={n}, heads={h})")
        for _ in range(layers):
            alpha = _ALPHABETS[rng.choice(sorted(_ALPHABETS))]
            rows = [(rng.randrange(h), [rng.choice(alpha) for _ in range(n)])
                    for _ in range(rng.randint(1, max_rows))]
            alive_t, alive_h = int(seq.state.tokens.sum()), int(seq.state.heads.sum())
            kt = rng.choice([rng.randint(0, alive_t + 1), max(1, alive_t // 2), alive_t])
            kh = rng.choice([rng.randint(0, alive_h + 1), max(1, alive_h // 2), alive_h])
            kt = min(kt, (1 << spec.max_tokens.bit_length()) - 1)   # what the prm field holds
            kh = min(kh, (1 << spec.max_heads.bit_length()) - 1)
            jobs.append(seq.layer_job(rows, kt, kh))
    return jobs


def minilm_jobs(spec: SpattenSpec, n_sentences: int = 2, token_keep: float = 0.5,
                head_keep: float = 0.5, start: int = 0) -> list[SpattenJob]:
    """Jobs of real MiniLM layers: ``SpattenFilter.mask_int`` on the int8 Q/K of
    ``compiler.models.capture_qk``; each sequence's rows are the softmax unit's codes of the
    surviving heads and real queries. The bench's golden state is checked against
    ``mask_int``'s after every layer."""
    from compiler.models import capture_qk
    from golden.sparse.base import quantize_qk_int8

    layers = capture_qk(n_sentences, start=start)
    f = SpattenFilter(token_keep=token_keep, head_keep=head_keep, num_layers=len(layers))
    key_mask = layers[0][2]
    b, n = key_mask.shape
    h = layers[0][0].shape[1]
    seqs = [SequenceBuilder(spec, key_mask[i].tolist(), h, f"MiniLM sentence {start + i}")
            for i in range(b)]
    per_seq: list[list[SpattenJob]] = [[] for _ in range(b)]
    state = None
    for layer, (q, k, km) in enumerate(layers):
        q8, sq = quantize_qk_int8(q, km)
        k8, sk = quantize_qk_int8(k, km)
        prm = f.int_params(sq, sk, q.shape[-1], layer=layer)
        res = f.mask_int(q8, k8, km, prm, state)
        p = spatten_probs_int(q8, k8, res.mask, prm["sm_mult"], prm["sm_shift"])
        k_t = spatten_keep_count(km.sum(-1), prm["token_keep_q16"])
        k_h = int(spatten_keep_count(h, prm["head_keep_q16"]))
        for i, seq in enumerate(seqs):
            heads = seq.state.heads[0].nonzero().flatten().tolist()
            qrows = km[i].nonzero().flatten().tolist()
            rows = [(hd, p[i, hd, r].tolist()) for hd in heads for r in qrows]
            per_seq[i].append(seq.layer_job(rows, int(k_t[i]), k_h))
            if not (torch.equal(seq.state.s_t[0], res.state.s_t[i])
                    and torch.equal(seq.state.s_h[0], res.state.s_h[i])
                    and torch.equal(seq.state.tokens[0], res.state.tokens[i])
                    and torch.equal(seq.state.heads[0], res.state.heads[i])):
                raise AssertionError(f"bench golden and mask_int disagree at layer {layer}")
        state = res.state
    return [j for jobs in per_seq for j in jobs]


def check(job: SpattenJob, words: Sequence[int]) -> list[str]:
    """Mismatches of the received ``o_data`` words against the expected ones."""
    mism = []
    if len(words) != len(job.expected):
        mism.append(f"expected {len(job.expected)} words, got {len(words)}")
    for k, (got, exp) in enumerate(zip(words, job.expected, strict=False)):
        if got != exp:
            mism.append(f"word {k}: expected {exp:#x}, got {got:#x}")
        if len(mism) >= 5:
            break
    return mism


def _result(job: SpattenJob, words: list[int], cycles: int, error: int, counts: dict | None,
            extra: str | None = None, sim_seconds: float = 0.0) -> dict:
    mism = check(job, words)
    if extra:
        mism.insert(0, extra)
    if counts is None:
        timing = {"tb_cycles": None, "tb_predicted_cycles": None, "tb_sink_stalls": None,
                  "tb_source_stalls": None}
    else:
        stalls = counts["tb_sink_stalls"] + counts["tb_source_stalls"]
        timing = {**counts, "tb_predicted_cycles": job.predicted_edges(stalls)}
    return {"job": job.name, "match": not mism, "mismatches": mism, "cycles": cycles,
            "predicted_cycles": job.predicted_cycles, "error": bool(error),
            "token_passes": job.token_passes, "head_passes": job.head_passes,
            "sim_seconds": sim_seconds, **timing}


def _progress(msg: str) -> None:
    import sys
    print(f"[fmforge] {msg}", file=sys.stderr, flush=True)


def run_verilator(spec: SpattenSpec, jobs: Sequence[SpattenJob], *, stall: str = "none",
                  seed: int = 0, monitor: bool = False, test_dir: Path | None = None,
                  data_override: list[list[int]] | None = None, progress=_progress) -> list[dict]:
    """Run ``jobs`` in order in one cocotb + Verilator launch; one result dict per job."""
    from sim.verilator import build, run_cocotb, to_verilog

    b = build(to_verilog(spec.build(), "sparse_spatten"), "sparse_spatten", progress=progress)
    datas = data_override or [j.data for j in jobs]
    own = test_dir is None
    tdir = Path(tempfile.mkdtemp(prefix="fmforge-spatten-")) if own else Path(test_dir)
    tdir.mkdir(parents=True, exist_ok=True)
    bench = {
        "stall": stall, "seed": seed, "monitor": monitor, "out": str(tdir / "out.json"),
        "jobs": [{"prm": j.prm, "data": d, "n_out": len(j.expected),
                  "timeout_cycles": 20 * (j.predicted_cycles + len(d)) + 200}
                 for j, d in zip(jobs, datas, strict=True)],
    }
    (tdir / "spec.json").write_text(json.dumps(bench))
    try:
        res = run_cocotb(b, "sim.cocotb_sparse_spatten",
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
    out = [_result(j, r["words"], r["cycles"], r["error"], r.get("edges"), r.get("timeout"),
                   r.get("sim_seconds", 0.0)) for j, r in zip(jobs, raw, strict=False)]
    if own:
        shutil.rmtree(tdir, ignore_errors=True)
    return out


def run_pysim(spec: SpattenSpec, jobs: Sequence[SpattenJob], *, stall: str = "none",
              seed: int = 0) -> list[dict]:
    """The same jobs on the Amaranth simulator (small configurations); same result dicts.
    A background process samples both streams' valid and ready at every edge (:class:`EdgeLog`)
    for the testbench's own edge counts."""
    from amaranth.sim import Simulator

    dut = spec.build()
    pattern = stall_pattern(stall, seed)
    log = EdgeLog()
    results: list[dict] = []

    async def watch(ctx):
        i, o = dut.i_data, dut.o_data
        edge = 0
        async for _clk, _rst, iv, ir, ov, ordy in ctx.tick().sample(i.valid, i.ready, o.valid, o.ready):
            log.record(edge, iv, ir, ov, ordy)
            edge += 1

    async def bench(ctx):
        src_p, sink_p = pattern.fork(1), pattern.fork(99)
        n_out = 0
        for job in jobs:
            ctx.set(dut.prm.as_value(), job.prm)
            first_in = len(log.inputs)
            got: list[int] = []
            await _drive(ctx, dut, job, src_p, sink_p, got)
            n_out += len(job.expected)
            await ctx.tick()
            results.append(_result(job, got, ctx.get(dut.cycles), ctx.get(dut.error),
                                   log.window(first_in, n_out - 1)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(watch)
    sim.add_testbench(bench)
    sim.run()
    return results


async def _drive(ctx, dut, job: SpattenJob, src_p, sink_p, got: list[int]) -> None:
    """Offer the job's words (idling as ``src_p`` says) and collect its outputs (refusing as
    ``sink_p`` says), cycle by cycle."""
    payload_i = dut.i_data.payload.as_value()
    payload_o = dut.o_data.payload.as_value()
    words = list(job.data)
    k = 0
    idle = src_p.idle_run()
    timeout = 20 * (job.predicted_cycles + len(words)) + 200
    cycles = 0
    while len(got) < len(job.expected):
        offer = k < len(words) and idle == 0
        ctx.set(dut.i_data.valid, int(offer))
        if offer:
            ctx.set(payload_i, words[k])
        ready = sink_p.sink_ready()
        ctx.set(dut.o_data.ready, int(ready))
        _, _, iready, ovalid, oval = await ctx.tick().sample(dut.i_data.ready, dut.o_data.valid,
                                                              payload_o)
        if offer and iready:
            k += 1
            idle = src_p.idle_run()
        elif not offer and idle:
            idle -= 1
        if ovalid and ready:
            got.append(oval)
        cycles += 1
        if cycles > timeout:
            raise TimeoutError(f"{job.name}: timed out with {len(got)}/{len(job.expected)} words")
    ctx.set(dut.i_data.valid, 0)
    ctx.set(dut.o_data.ready, 0)
