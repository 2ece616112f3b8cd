"""GEMM engine on cocotb + Verilator vs golden.gemm: bit-exact and cycle-exact.

One Verilator build per configuration (4x4 and 8x8, OS and WS; cached by a hash of the
Verilog), one simulator launch per stall mode running a batch of shapes drawn from
{1, R-1, R, R+1, 37, 128}, operands at -128/127 and random, with and without bias/requant.
"""

from __future__ import annotations

import pytest

from sim.cosim import run_gemm_verilator
from sim.gemm_bench import GemmConfig, GemmJob
from sim.streams import STALL_MODES

CONFIGS = [GemmConfig(rows=r, cols=r, dataflow=df) for r in (4, 8) for df in ("os", "ws")]


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
