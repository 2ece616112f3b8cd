"""sim.core_sim: whole programs on the Verilated core (memory model in the simulation), bit-exact
with golden.core and cycle-exact with hw.core_model."""

from __future__ import annotations

import random

import pytest

from golden.core import encode_program
from hw.core_model import CoreConfig, program_timing
from sim.core_sim import run_core_sim
from tests.hw.test_core import _golden, random_program

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.slow  # ~62 s with a cold build cache (the 8x8 build), ~2 s cached
def test_8x8_core_runs_a_mixed_program_bit_and_cycle_exact():
    """An 8x8 core (every queue: GEMM tiles with acc, strided DMA, ADD/GELU/LAYERNORM/SOFTMAX):
    the output range equals the golden core's external memory, the testbench's cycle count and
    the core's counters equal program_timing."""
    cfg = CoreConfig(rows=8, cols=8, latency=6, bytes_per_cycle=4, queue_depth=4,
                     sp_bytes=16384, imem_instrs=128, max_m=16, max_k=16, max_n=16)
    prog, ext = random_program(random.Random(5), cfg, tiles=8, max_dim=12, ext_bytes=16384,
                               sfu_prob=0.5)
    g_ext, _ = _golden(prog, ext, cfg.sp_bytes)
    (out,), cycles, cnt = run_core_sim(encode_program(prog), ext[:8192], {8192: ext[8192:]},
                                       [(8192, 8192)], cfg, max_row=32)
    t = program_timing(prog, cfg)
    assert out == g_ext[8192:]
    assert cycles == cnt["cnt_cycles"] == t.cycles
    assert (cnt["cnt_busy_d"], cnt["cnt_busy_m"], cnt["cnt_busy_s"]) == \
        (t.busy["D"], t.busy["M"], t.busy["S"])
    assert cnt["error"] == 0
