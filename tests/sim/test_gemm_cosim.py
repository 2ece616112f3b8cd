"""GEMM engine on cocotb + Verilator vs golden.gemm: bit-exact and cycle-exact.

One Verilator build per configuration (4x4 and 8x8, OS and WS; cached by a hash of the
Verilog), one simulator launch per stall mode running a batch of shapes drawn from
{1, R-1, R, R+1, 37, 128}, operands at -128/127 and random, with and without bias/requant.
"""

from __future__ import annotations

import pytest

from hw.gemm import LOAD_COMPUTE_GAP, GemmSpec
from sim.cosim import run_gemm_verilator
from sim.gemm_bench import GemmJob, check_timing, job_timings, make_stimulus
from sim.streams import STALL_MODES

CONFIGS = [GemmSpec(rows=r, cols=r, dataflow=df) for r in (4, 8) for df in ("os", "ws")]


def _jobs(r: int, stall: str) -> list[GemmJob]:
    s = {"none": 0, "idle": 1, "backpressure": 2, "both": 3}[stall]
    shapes = [
        (1, 1, 1),
        (r - 1, r + 1, r),
        (r + 1, r - 1, 37),
        (37, r, r + 1),
        (r, 37, 1),
        (1, 128, r - 1),
        (128, 37, r + 1) if stall != "none" else (128, 128, 128),
    ]
    vals = ["random", "min", "max", "minmax"]
    return [
        GemmJob(m, k, n, seed=100 * s + i, bias=(i + s) % 2 == 1, requant=(i + s) % 3 == 2,
                values=vals[(i + s) % 4])
        for i, (m, k, n) in enumerate(shapes)
    ]


@pytest.mark.parametrize("stall", STALL_MODES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.rows}x{c.cols}-{c.dataflow}")
def test_gemm_cosim(cfg, stall, tmp_path):
    jobs = _jobs(cfg.rows, stall)
    results = run_gemm_verilator(cfg, jobs, stall=stall, seed=cfg.rows, monitor=stall == "both",
                                 test_dir=tmp_path)
    for job, r in zip(jobs, results, strict=True):
        assert r["match"], f"{r['job']} ({stall}): {r['mismatches']}"
        assert r["cycles"] == r["predicted_cycles"], f"{job.describe()}: {r['cycles']} != {r['predicted_cycles']}"
        # the testbench's own edge counts (independent of the engine's counter)
        assert r["timing_ok"], f"{job.describe()} ({stall}): {r['timing_mismatches']}"
        assert r["tb_after_load_cycles"] == LOAD_COMPUTE_GAP + r["predicted_cycles"]
        if stall == "none":
            assert r["tb_cycles"] == r["predicted_total_cycles"], job.describe()


def test_job_timings_splits_jobs_and_discounts_refused_edges():
    # job 0: loads at 3..7, refused at 12 and 13, final at 20; job 1: loads 25, 26, final 40
    t = job_timings([3, 4, 5, 6, 7, 25, 26], [12, 13], [20, 40])
    assert t[0] == {"tb_cycles": 18, "tb_load_cycles": 5, "tb_stall_cycles": 2, "tb_after_load_cycles": 11}
    assert t[1] == {"tb_cycles": 16, "tb_load_cycles": 2, "tb_stall_cycles": 0, "tb_after_load_cycles": 14}
    with pytest.raises(ValueError, match="no operand transfer"):
        job_timings([3], [], [20, 40])


def test_check_timing_catches_an_extra_cycle():
    cfg = GemmSpec(rows=2, cols=2, max_m=8, max_k=8, max_n=8)
    job = GemmJob(3, 4, 5)
    st = make_stimulus(cfg, job)
    load = max(len(st.a), len(st.b), len(st.chan))
    good = {"tb_cycles": load + LOAD_COMPUTE_GAP + st.predicted_cycles, "tb_load_cycles": load,
            "tb_stall_cycles": 0, "tb_after_load_cycles": LOAD_COMPUTE_GAP + st.predicted_cycles}
    assert check_timing(cfg, job, st, good, "none")["timing_ok"]
    late = {**good, "tb_cycles": good["tb_cycles"] + 1, "tb_after_load_cycles": good["tb_after_load_cycles"] + 1}
    for stall in ("none", "idle", "backpressure", "both"):
        assert not check_timing(cfg, job, st, late, stall)["timing_ok"]
