"""The core's timing model on hand-worked programs."""

from __future__ import annotations

import pytest

from golden.core import CoreError, Instr
from hw.core_model import CoreConfig, gemm_stream_bytes, instr_cycles, program_timing
from hw.gemm import gemm_cycles

HALT = Instr("HALT")


def _load(sig=(), wait=(), rows=2, cols=8, sp_cs=1):
    return Instr("LOAD", frozenset(wait), frozenset(sig),
                 {"ext": 0, "sp": 0, "rows": rows, "cols": cols, "ext_rs": cols,
                  "sp_rs": cols, "sp_cs": sp_cs})


def test_dma_cycles_one_byte_a_cycle_at_any_stride():
    cfg = CoreConfig(latency=8, bytes_per_cycle=4)
    assert instr_cycles(_load(), cfg) == 1 + 2 * (8 + 8)
    assert instr_cycles(_load(sp_cs=2), cfg) == 1 + 2 * (8 + 8)  # the stride costs nothing
    store = Instr("STORE", f={"rows": 3, "cols": 5, "esz": 2, "sp_cs": 4})
    assert instr_cycles(store, cfg) == 1 + 3 * (5 * 4 + 2)
    assert instr_cycles(_load(rows=0), cfg) == 1
    assert instr_cycles(_load(), CoreConfig(latency=0)) == 1 + 2 * (1 + 8)  # L' = max(L, 1)


def test_gemm_cycles_stream_compute_writeback():
    cfg = CoreConfig(rows=4, cols=4)
    g = Instr("GEMM", f={"m": 5, "k": 3, "n": 6, "requant": 1})
    # A: 2 row blocks * K * R = 24 bytes, B: 2 column blocks * K * C = 24, channels 2 * 4 * 9
    assert gemm_stream_bytes(cfg, 5, 3, 6, True) == 72
    assert gemm_stream_bytes(cfg, 5, 3, 6, False) == 24
    assert instr_cycles(g, cfg) == 6 + 72 + gemm_cycles(4, 4, "os", 5, 3, 6) + 5 * 6
    g32 = Instr("GEMM", f={"m": 5, "k": 3, "n": 6})
    assert instr_cycles(g32, cfg) == 6 + 24 + gemm_cycles(4, 4, "os", 5, 3, 6) + 5 * 6 * 4


def test_program_timing_tokens_and_overlap():
    cfg = CoreConfig(rows=4, cols=4, latency=8, bytes_per_cycle=4)
    gemm = Instr("GEMM", frozenset("D"), frozenset(),
                 {"a": 0, "b": 0, "c": 64, "m": 2, "k": 8, "n": 4})
    prog = [_load(sig="M"), gemm, _load(), HALT]
    t = program_timing(prog, cfg)
    g = 6 + 32 + gemm_cycles(4, 4, "os", 2, 8, 4) + 2 * 4 * 4
    ld = 1 + 2 * (8 + 8)
    assert t.dispatch == [0, 1, 2]
    assert t.start == [1, 1 + ld, 1 + ld]  # the second load overlaps the GEMM
    assert t.end == [1 + ld, 1 + ld + g, 1 + 2 * ld]
    assert t.cycles == max(1 + ld + g, 1 + 2 * ld)
    assert t.busy == {"D": 2 * ld, "M": g, "S": 0}


def test_queue_depth_stalls_dispatch():
    cfg = CoreConfig(latency=0, bytes_per_cycle=8, queue_depth=1)
    prog = [_load(rows=1), _load(rows=1), _load(rows=1), HALT]
    t = program_timing(prog, cfg)
    d = 1 + 1 + 8  # start, first beat (L' = 1), eight bytes
    assert t.start == [1, 1 + d, 1 + 2 * d]
    assert t.dispatch == [0, 2, 2 + d]  # a slot frees when the previous one starts


def test_wait_on_later_token_is_refused():
    gemm = Instr("GEMM", frozenset("D"), frozenset(), {"a": 0, "b": 0, "c": 8, "m": 1, "k": 1,
                                                       "n": 1})
    with pytest.raises(CoreError, match="signalled before it in program order"):
        program_timing([gemm, _load(sig="M"), HALT], CoreConfig())


def test_gemm_acc_cycles_raw_engine_and_four_cycle_write_back():
    cfg = CoreConfig(rows=4, cols=4)
    base = 6 + gemm_cycles(4, 4, "os", 5, 3, 6)
    acc32 = Instr("GEMM", f={"m": 5, "k": 3, "n": 6, "acc": 1, "acc_shift": 8, "bias": 1})
    # the engine runs raw: no channel stream, whatever bias/requant say
    assert instr_cycles(acc32, cfg) == base + 24 + 4 * 30 + 6
    acc8 = Instr("GEMM", f={"m": 5, "k": 3, "n": 6, "acc": 1, "requant": 1})
    assert instr_cycles(acc8, cfg) == base + 24 + 4 * 30 + 9


def test_sfu_cycles_parameter_words_then_the_unit():
    from hw.gelu import gelu_cycles
    from hw.layernorm import layernorm_cycles
    from hw.softmax import softmax_cycles
    cfg = CoreConfig()
    add = Instr("ADD", f={"rows": 3, "cols": 5})
    assert instr_cycles(add, cfg) == 3 + 10 + 15 + 4
    assert instr_cycles(Instr("GELU", f={"count": 7}), cfg) == 3 + 5 + gelu_cycles(1, 7, 1)
    ln = Instr("LAYERNORM", f={"rows": 2, "cols": 6})
    assert instr_cycles(ln, cfg) == 3 + 5 + 18 + layernorm_cycles(2, 6, 1)
    sm = Instr("SOFTMAX", f={"rows": 2, "cols": 6, "mask": 1})
    assert instr_cycles(sm, cfg) == 3 + 2 + softmax_cycles(2, 6, 1)
