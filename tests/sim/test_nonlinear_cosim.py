"""Streaming nonlinear units on cocotb + Verilator vs the golden models: bit- and cycle-exact.

One Verilator build per configuration (cached by a hash of the Verilog) and one simulator
launch per stall mode, each running a batch of jobs: random rows, int edges (all minimum, all
maximum, all equal, alternating), a single row and a long job.
"""

from __future__ import annotations

import pytest

from sim.nonlinear_bench import (
    GeluConfig,
    Job,
    LayerNormConfig,
    RequantConfig,
    RmsNormConfig,
    SiluConfig,
    SoftmaxConfig,
    result_problems,
    run_verilator,
)
from sim.streams import STALL_MODES

SALT = {"none": 0, "idle": 1, "backpressure": 2, "both": 3}


def _jobs(stall: str, long_rows: int) -> list[Job]:
    s = SALT[stall]
    return [Job(1, "random", 10 * s), Job(4, "random", 10 * s + 1), Job(2, "min", 10 * s + 2),
            Job(2, "max", 10 * s + 3), Job(1, "equal", 10 * s + 4), Job(3, "minmax", 10 * s + 5),
            Job(long_rows, "random", 10 * s + 6)]


def _exact(results: list[dict], jobs: list[Job], stall: str, where: str = "") -> list[dict]:
    """Every job bit-exact and cycle-exact (the design's count equals the model, and the
    testbench's own edge count equals the model plus the stalls it observed)."""
    assert len(results) == len(jobs)
    for r in results:
        assert r["match"], f"{where}{r['job']} ({stall}): {r['mismatches']}"
        assert r["cycles"] == r["predicted_cycles"], f"{where}{r['job']} ({stall})"
        assert not result_problems(r, stall), result_problems(r, stall)  # + testbench edges
    return results


@pytest.mark.parametrize("stall", STALL_MODES)
def test_requant_cosim(stall, tmp_path):
    cfg = RequantConfig(lanes=4, channels=16)
    jobs = _jobs(stall, 64)
    results = run_verilator(cfg, jobs, stall=stall, seed=3, monitor=stall == "both", test_dir=tmp_path)
    for r in _exact(results, jobs, stall):
        assert not r["error"]


def test_requant_short_row_is_reported(tmp_path):
    cfg = RequantConfig(lanes=4, channels=16)
    jobs = [Job(1, "random", 1)]
    good = cfg.stimulus(jobs[0]).data
    short = good[:2]
    short[-1] |= 1 << (4 * 32)  # `last` after half a row
    results = run_verilator(cfg, jobs, data_override=[short], test_dir=tmp_path)
    assert results[0]["error"], "a job ending mid-row must raise the unit's error flag"
    assert not results[0]["match"]


@pytest.mark.parametrize("stall", STALL_MODES)
def test_gelu_cosim(stall, tmp_path):
    # every int8 value in the random rows (256-long), plus the edges
    cfg = GeluConfig(lanes=4, mode="gelu")
    jobs = _jobs(stall, 32) + [Job(1, "all", 0)]
    results = run_verilator(cfg, jobs, length=256, stall=stall, seed=5, monitor=stall == "both",
                            test_dir=tmp_path)
    for r in _exact(results, jobs, stall):
        # documented bound vs the exact GELU: 0.5 + 0.0184/out_scale + 0.02 LSB
        assert r["max_abs_err_lsb"] <= 0.5 + 0.0184 / cfg.out_scale + 0.02


@pytest.mark.parametrize("stall", ["none", "both"])
def test_relu_cosim(stall, tmp_path):
    cfg = GeluConfig(lanes=4, mode="relu", in_scale=0.05, out_scale=0.02)
    jobs = _jobs(stall, 8) + [Job(1, "all", 0)]
    _exact(run_verilator(cfg, jobs, length=256, stall=stall, seed=6, test_dir=tmp_path), jobs,
           stall)


SOFTMAX = SoftmaxConfig(lanes=4, max_length=64)


@pytest.mark.parametrize("stall", STALL_MODES)
def test_softmax_cosim(stall, tmp_path):
    s = SALT[stall]
    runs = [
        (64, _jobs(stall, 6) + [Job(2, "masked", s), Job(1, "allmasked", s), Job(2, "wide", s)]),  # longest row
        (61, [Job(3, "random", 50 + s), Job(2, "masked", 60 + s), Job(1, "max", 0)]),  # padded final word
        (1, [Job(2, "random", 70 + s), Job(1, "min", 0), Job(1, "allmasked", 0)]),  # length 1
    ]
    for length, jobs in runs:
        results = run_verilator(SOFTMAX, jobs, length=length, stall=stall, seed=9 + s,
                                monitor=stall == "both", test_dir=tmp_path / f"L{length}")
        for r in _exact(results, jobs, stall, f"L={length} "):
            assert not r["error"]
            assert r["max_abs_err_lsb"] <= 1.0  # documented: within 1/256 of the float softmax


def test_softmax_row_past_the_buffer_is_reported(tmp_path):
    job = Job(2, "random", 1)
    words = SOFTMAX.stimulus(job, 64).data
    words[15] &= ~(1 << (33 * 4))  # drop the first row's `last`: it runs past max_length
    (r,) = run_verilator(SOFTMAX, [job], length=64, data_override=[words], test_dir=tmp_path)
    assert r["error"], "a row longer than the buffer must raise the unit's error flag"


LAYERNORM = LayerNormConfig(lanes=4, length=64)


@pytest.mark.parametrize("stall", STALL_MODES)
def test_layernorm_cosim(stall, tmp_path):
    jobs = _jobs(stall, 8)
    results = run_verilator(LAYERNORM, jobs, stall=stall, seed=11, monitor=stall == "both", test_dir=tmp_path)
    for r in _exact(results, jobs, stall):
        assert not r["error"]
        assert r["max_abs_err_lsb"] <= 1.0  # documented: within 1 LSB of the float layer norm


def test_layernorm_short_row_is_reported(tmp_path):
    job = Job(1, "random", 1)
    words = LAYERNORM.stimulus(job).data
    words[3] |= 1 << (32 * 4)  # `last` on the 4th of 16 words
    (r,) = run_verilator(LAYERNORM, [job], data_override=[words], test_dir=tmp_path)
    assert r["error"], "a row shorter than N must raise the unit's error flag"


RMSNORM = RmsNormConfig(lanes=4, length=64)


@pytest.mark.parametrize("stall", STALL_MODES)
def test_rmsnorm_cosim(stall, tmp_path):
    s = SALT[stall]
    jobs = _jobs(stall, 8) + [Job(3, "rowconst", 70 + s), Job(2, "nearconst", 80 + s),
                              Job(2, "onehot", 90 + s)]
    results = run_verilator(RMSNORM, jobs, stall=stall, seed=13, monitor=stall == "both",
                            test_dir=tmp_path)
    for r in _exact(results, jobs, stall):
        assert r["max_abs_err_lsb"] <= 0.51  # documented: within 0.51 LSB of the float RMSNorm


def test_rmsnorm_short_row_is_reported(tmp_path):
    job = Job(1, "random", 1)
    words = RMSNORM.stimulus(job).data
    words[3] |= 1 << (8 * 4)  # `last` on the 4th of 16 words
    (r,) = run_verilator(RMSNORM, [job], data_override=[words], test_dir=tmp_path)
    assert r["error"], "a row shorter than N must raise the unit's error flag"


@pytest.mark.parametrize("stall", STALL_MODES)
def test_silu_cosim(stall, tmp_path):
    # every int8 value ("all", 256-long rows; lane c reads the values = c mod 4), random rows
    # and the edges
    cfg = SiluConfig(lanes=4)
    jobs = _jobs(stall, 16) + [Job(4, "all", 0)]
    results = run_verilator(cfg, jobs, length=256, stall=stall, seed=7, monitor=stall == "both",
                            test_dir=tmp_path)
    for r in _exact(results, jobs, stall):
        assert r["max_abs_err_lsb"] <= 0.5 + 1e-9  # documented: the float SiLU rounded
