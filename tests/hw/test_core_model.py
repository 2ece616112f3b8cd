"""The core's timing model on hand-worked programs."""

from __future__ import annotations

import pytest

from golden.core import CoreError, Instr
from hw.core_model import CoreConfig, instr_cycles, program_timing
from hw.gemm import gemm_total_cycles

HALT = Instr("HALT")


def _load(sig=(), wait=(), rows=2, cols=8, sp_cs=1):
    return Instr("LOAD", frozenset(wait), frozenset(sig),
                 {"ext": 0, "sp": 0, "rows": rows, "cols": cols, "ext_rs": cols,
                  "sp_rs": cols, "sp_cs": sp_cs})


def test_dma_cycles_burst_and_scatter():
    cfg = CoreConfig(latency=8, bytes_per_cycle=4)
    assert instr_cycles(_load(), cfg) == 2 + 2 * (8 + 2)
    assert instr_cycles(_load(sp_cs=2), cfg) == 2 + 2 * (8 + 8)  # one element a cycle


def test_program_timing_tokens_and_overlap():
    cfg = CoreConfig(rows=4, cols=4, latency=8, bytes_per_cycle=4)
    gemm = Instr("GEMM", frozenset("D"), frozenset(),
                 {"a": 0, "b": 0, "c": 64, "m": 2, "k": 8, "n": 4})
    prog = [_load(sig="M"), gemm, _load(), HALT]
    t = program_timing(prog, cfg)
    g = 2 + gemm_total_cycles(4, 4, "os", 2, 8, 4, False)
    assert t.dispatch == [0, 1, 2]
    assert t.start == [1, 23, 23]  # the second load overlaps the GEMM
    assert t.end == [23, 23 + g, 45]
    assert t.cycles == max(23 + g, 45)
    assert t.busy == {"D": 44, "M": g, "S": 0}


def test_queue_depth_stalls_dispatch():
    cfg = CoreConfig(latency=0, bytes_per_cycle=8, queue_depth=1)
    prog = [_load(rows=1), _load(rows=1), _load(rows=1), HALT]
    t = program_timing(prog, cfg)
    d = 2 + 1  # one row, one beat
    assert t.start == [1, 1 + d, 1 + 2 * d]
    assert t.dispatch == [0, 2, 2 + d]  # a slot frees when the previous one starts


def test_wait_on_later_token_is_refused():
    gemm = Instr("GEMM", frozenset("D"), frozenset(), {"a": 0, "b": 0, "c": 8, "m": 1, "k": 1,
                                                       "n": 1})
    with pytest.raises(CoreError, match="signalled before it in program order"):
        program_timing([gemm, _load(sig="M"), HALT], CoreConfig())
