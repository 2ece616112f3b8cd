"""Bench of the crossbar macro (:class:`hw.imc.ImcMacro`) on the Amaranth simulator.

The analog array is a behavioural model in the testbench: :func:`golden.imc.crossbar_codes`
draws the ADC codes of every step (ideal, or with a seeded non-ideality draw); an ADC process
watches the macro's ``dac`` port, checks that the levels it applies are the digits the golden
schedule applies in that step (tile, step, every row), and answers with that step's codes on
``i_adc``. The output words are compared with :func:`golden.imc.crossbar_recombine` of the same
codes. Timing: the macro's ``cycles`` must equal :func:`hw.imc.imc_cycles`, and the testbench's
own edge count of each job (first i_x transfer to last o_y transfer, inclusive) must equal
:func:`hw.imc.imc_edges` with the edges it saw the macro held (o_y refused, the ADC without a
code while ``dac.active``, or an i_x word wanted while the job still had words and the source
idled).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import torch

from golden.imc import (
    CrossbarConfig,
    CrossbarNoise,
    crossbar_codes,
    crossbar_recombine,
    input_digits,
    program,
)
from golden.requant import quantize_multiplier
from hw.imc import ImcMacro, imc_cycles
from sim.streams import stall_pattern

__all__ = ["ImcBenchConfig", "imc_stimulus", "run_imc_pysim"]


@dataclasses.dataclass(frozen=True)
class ImcBenchConfig:
    """A small macro and what the testbench's array model does."""

    rows: int = 4
    cols: int = 3
    tiles: int = 2
    k: int = 7
    cell_bits: int = 2
    dac_bits: int = 1
    adc_bits: int = 4
    differential: bool = False
    requant: bool = True
    noise: CrossbarNoise = dataclasses.field(default_factory=CrossbarNoise)

    def crossbar(self) -> CrossbarConfig:
        return CrossbarConfig(rows=self.rows, cols=self.cols, cell_bits=self.cell_bits,
                              dac_bits=self.dac_bits, adc_bits=self.adc_bits,
                              differential=self.differential)

    def unit(self) -> ImcMacro:
        return ImcMacro(rows=self.rows, cols=self.cols, tiles=self.tiles, k=self.k,
                        cell_bits=self.cell_bits, dac_bits=self.dac_bits, adc_bits=self.adc_bits,
                        adc_shift=self.crossbar().adc_shift, differential=self.differential,
                        requant=self.requant)


def imc_stimulus(cfg: ImcBenchConfig, tokens: Sequence[int], seed: int) -> dict:
    """Weights, column parameters and, per job, inputs, codes and expected outputs."""
    g = torch.Generator().manual_seed(seed)
    k, n = cfg.k, cfg.cols
    w = torch.randint(-128, 128, (k, n), generator=g)
    w[:, 0] = -128
    w[:, -1] = 127
    bias = torch.randint(-5000, 5000, (n,), generator=g)
    bias[0] = 2**31 - 1  # saturates
    mults, shifts = zip(*(quantize_multiplier(float(s)) for s in
                          torch.rand(n, generator=g, dtype=torch.float64) * 0.02 + 1e-4), strict=True)
    mult, shift = torch.tensor(mults), torch.tensor(shifts)
    prog = program(w, cfg.crossbar(), cfg.noise, seed)
    jobs = []
    for j, m in enumerate(tokens):
        x = torch.randint(-128, 128, (m, k), generator=g)
        x[0, :] = 127 if j % 2 else -128
        codes = crossbar_codes(x, prog, seed * 31 + j)
        exp = crossbar_recombine(codes, x, prog, bias, mult if cfg.requant else None,
                                 shift if cfg.requant else None)
        jobs.append({"x": x, "codes": codes, "expected": exp.tolist(),
                     "digits": input_digits(x, cfg.crossbar())})
    return {"w": w, "bias": bias, "mult": mult, "shift": shift, "prog": prog, "jobs": jobs}


def run_imc_pysim(cfg: ImcBenchConfig, tokens: Sequence[int], *, stall: str = "none",
                  seed: int = 0) -> list[dict]:
    """Run jobs of ``tokens`` rows back to back; one result dict per job (module docstring):
    ``match``, ``mismatches``, ``dac_errors``, ``cycles``, ``predicted_cycles``, ``tb_edges``,
    ``tb_stalls``, ``tb_predicted_edges``."""
    from amaranth.sim import Simulator

    dut = cfg.unit()
    st = imc_stimulus(cfg, tokens, seed)
    pat = stall_pattern(stall, seed)
    T, NS, R = cfg.tiles, dut.steps, cfg.rows
    playout = dut.i_param.payload.shape()
    xlayout = dut.i_x.payload.shape()
    alayout = dut.i_adc.payload.shape()
    params = [playout.const({"bias": int(st["bias"][c]), "wsum": int(st["prog"].wsum[c]),
                             "mult": int(st["mult"][c]), "shift": int(st["shift"][c])})
              for c in range(cfg.cols)]
    xwords, adcwords, steps_expected = [], [], []
    for j, job in enumerate(st["jobs"]):
        x, codes, dig = job["x"], job["codes"], job["digits"]
        m = x.shape[0]
        xp = torch.full((m, T * R), -128, dtype=torch.int64)
        xp[:, :cfg.k] = x
        words = []
        for mi in range(m):
            for t in range(T):
                last = int(mi == m - 1 and t == T - 1)
                words.append(xlayout.const({"data": xp[mi, t * R:(t + 1) * R].tolist(),
                                            "last": last}))
                for i in range(NS):
                    adcwords.append(alayout.const(codes[t, i, :, mi, :].tolist()))
                    steps_expected.append((j, t, i, dig[i, mi, t * R:(t + 1) * R].tolist()))
        xwords.append(words)
    results: list[dict] = []
    dac_errors: list[str] = []
    log: list[tuple] = []  # per edge: x transfer, o_y last transfer, held

    async def param_src(ctx):
        for w in params:
            ctx.set(dut.i_param.valid, 1)
            ctx.set(dut.i_param.payload, w)
            await ctx.tick()
        ctx.set(dut.i_param.valid, 0)

    async def x_src(ctx):
        sp = pat.fork(1)
        await ctx.tick().repeat(cfg.cols + 1)
        for words in xwords:
            for w in words:
                for _ in range(sp.idle_run()):
                    await ctx.tick()
                ctx.set(dut.i_x.valid, 1)
                ctx.set(dut.i_x.payload, w)
                await ctx.tick().until(dut.i_x.ready)
                ctx.set(dut.i_x.valid, 0)

    async def adc(ctx):
        sp = pat.fork(2)
        n, idle, fresh = 0, 0, True
        while n < len(adcwords):
            if fresh:
                idle, fresh = sp.idle_run(), False
            if ctx.get(dut.dac.active) and idle == 0:
                j, t, i, lv = steps_expected[n]
                got = (int(ctx.get(dut.dac.tile)), int(ctx.get(dut.dac.step)),
                       [int(ctx.get(dut.dac.level[r])) for r in range(R)])
                if got != (t, i, lv) and len(dac_errors) < 5:
                    dac_errors.append(f"step {n}: dac {got}, expected {(t, i, lv)}")
                ctx.set(dut.i_adc.valid, 1)
                ctx.set(dut.i_adc.payload, adcwords[n])
            else:
                ctx.set(dut.i_adc.valid, 0)
            active = ctx.get(dut.dac.active)
            _, _, v, r = await ctx.tick().sample(dut.i_adc.valid, dut.i_adc.ready)
            if v and r:
                n, fresh = n + 1, True
            elif active and idle > 0:
                idle -= 1
        ctx.set(dut.i_adc.valid, 0)

    async def monitor(ctx):
        d, ox, ix, ia = dut.dac, dut.o_y, dut.i_x, dut.i_adc
        async for _c, _r, act, stp, iv, ir, av, ov, ordy, ol in ctx.tick().sample(
                d.active, d.step, ix.valid, ix.ready, ia.valid, ox.valid, ox.ready,
                ox.payload.last):
            need_x = (not act) or stp == NS - 1
            log.append((bool(iv and ir), bool(ov and ordy and ol),
                        bool(ov and not ordy), bool(act and not av), bool(need_x and not iv)))

    async def bench(ctx):
        sink = pat.fork(99)
        for j, job in enumerate(st["jobs"]):
            t0 = time.perf_counter()
            got = []
            limit = 50 * (len(job["expected"]) * T * NS + 50) + 500
            while len(got) < len(job["expected"]):
                rdy = sink.sink_ready()
                ctx.set(dut.o_y.ready, rdy)
                _, _, v, pl = await ctx.tick().sample(dut.o_y.valid, dut.o_y.payload)
                if v and rdy:
                    got.append([int(pl.data[c]) for c in range(cfg.cols)])
                limit -= 1
                if limit < 0:
                    raise TimeoutError(f"job {j}: {len(got)}/{len(job['expected'])} outputs")
            ctx.set(dut.o_y.ready, 0)
            mism = [(i, e, g) for i, (e, g) in enumerate(zip(job["expected"], got, strict=True))
                    if e != g]
            results.append({"job": j, "tokens": len(job["expected"]), "match": not mism,
                            "mismatches": mism[:3], "cycles": int(ctx.get(dut.cycles)),
                            "predicted_cycles": imc_cycles(len(job["expected"]), T, NS,
                                                           cfg.requant),
                            "error": bool(ctx.get(dut.error)),
                            "sim_seconds": time.perf_counter() - t0})
        await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in (param_src, x_src, adc, monitor):
        sim.add_testbench(tb, background=True)
    sim.add_testbench(bench)
    sim.run()
    # testbench timing: windows from the log (x transfers per job, final outputs)
    words_per_job = [len(w) for w in xwords]
    xs = [e for e, rec in enumerate(log) if rec[0]]
    finals = [e for e, rec in enumerate(log) if rec[1]]
    pos = 0
    for j, r in enumerate(results):
        first, lastx = xs[pos], xs[pos + words_per_job[j] - 1]
        end = finals[j]
        held = 0
        for e in range(first, end + 1):
            _, _, o_held, adc_held, x_wanted = log[e]
            words_left = e < lastx  # the job's last word not yet taken
            held += bool(o_held or adc_held or (x_wanted and words_left))
        r["tb_edges"] = end - first + 1
        r["tb_stalls"] = held
        r["tb_predicted_edges"] = r["predicted_cycles"] + held
        r["dac_errors"] = list(dac_errors)
        pos += words_per_job[j]
    return results
