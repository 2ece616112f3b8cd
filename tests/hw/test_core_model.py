"""The core's timing model on hand-worked programs."""

from __future__ import annotations

import pytest

from golden.core import CoreError, Instr
from hw.core_model import (
    DMA_OUTSTANDING,
    CoreConfig,
    dma_pieces,
    gemm_stream_cycles,
    instr_cycles,
    program_timing,
)
from hw.gemm import gemm_cycles

HALT = Instr("HALT")


def _load(sig=(), wait=(), rows=2, cols=8, sp_cs=1):
    return Instr("LOAD", frozenset(wait), frozenset(sig),
                 {"ext": 0, "sp": 0, "rows": rows, "cols": cols, "ext_rs": cols,
                  "sp_rs": cols, "sp_cs": sp_cs})


def test_dma_cycles_a_beat_a_cycle_when_contiguous_an_element_when_strided():
    cfg = CoreConfig(latency=8, bytes_per_cycle=4)
    assert instr_cycles(_load(), cfg) == 1 + 8 + 2 * 2  # two beats a row, rows pipelined
    assert instr_cycles(_load(sp_cs=2), cfg) == 1 + 8 + 2 * 8  # strided: an element a cycle
    store = Instr("STORE", f={"rows": 3, "cols": 5, "esz": 2, "sp_cs": 4})
    assert instr_cycles(store, cfg) == 1 + 1 + 3 * 5
    assert instr_cycles(_load(rows=0), cfg) == 1
    assert instr_cycles(_load(), CoreConfig(latency=0)) == 1 + 1 + 2 * 2  # L' = max(L, 1)


def test_dma_pieces_split_elements_at_beat_boundaries():
    assert dma_pieces(8, 1, 4, True) == 2
    assert dma_pieces(9, 1, 4, True) == 3
    assert dma_pieces(8, 1, 4, False) == 8
    assert dma_pieces(3, 4, 2, False) == 6   # every int32 element spans two beats
    assert dma_pieces(3, 4, 3, False) == 6   # bytes 0-2 | 3-5 | 6-8 | 9-11
    assert dma_pieces(4, 2, 3, False) == 5   # one boundary (byte 3) inside element 1
    assert dma_pieces(5, 4, 8, False) == 5   # boundaries on elements: none split


def test_load_request_limit_gaps_when_latency_exceeds_outstanding_rows():
    # one-beat rows: DMA_OUTSTANDING rows are requested, then each further request waits for a
    # row to complete, so every group of 8 rows takes max(P + L', 8 P) cycles
    lat = 12
    cfg = CoreConfig(latency=lat, bytes_per_cycle=4)
    ld = _load(rows=20, cols=4)
    assert DMA_OUTSTANDING == 8
    assert instr_cycles(ld, cfg) == 1 + lat + (1 + 19 % 8) + (19 // 8) * (1 + lat)
    # long rows: no gap
    assert instr_cycles(_load(rows=20, cols=16), cfg) == 1 + lat + 20 * 4


def test_gemm_cycles_stream_compute_writeback():
    cfg = CoreConfig(rows=4, cols=4)
    g = Instr("GEMM", f={"m": 5, "k": 3, "n": 6, "requant": 1})
    # B: 2 column blocks * K words; A (OS): 2 row blocks of one 3-column chunk, 4 rows read per
    # chunk, the last chunk's 3 columns sent after its rows
    assert gemm_stream_cycles(cfg, 5, 3, 6) == 2 * 1 * 4 + 3
    assert gemm_stream_cycles(cfg, 5, 30, 6) == 2 * 8 * 4 + 2  # B: 60
    assert gemm_stream_cycles(cfg, 2, 8, 40) == 10 * 8  # B is longer
    ws = CoreConfig(rows=4, cols=4, dataflow="ws")
    assert gemm_stream_cycles(ws, 5, 9, 6) == max(3 * 5, 2 * 9)
    g_os = gemm_cycles(4, 4, "os", 5, 3, 6)
    assert instr_cycles(g, cfg) == 11 + g_os + 3  # rows written as the engine sends them
    g32 = Instr("GEMM", f={"m": 5, "k": 3, "n": 6})
    assert instr_cycles(g32, cfg) == 11 + g_os + 3


def test_program_timing_tokens_and_overlap():
    cfg = CoreConfig(rows=4, cols=4, latency=8, bytes_per_cycle=4)
    gemm = Instr("GEMM", frozenset("D"), frozenset(),
                 {"a": 0, "b": 0, "c": 64, "m": 2, "k": 8, "n": 4})
    prog = [_load(sig="M"), gemm, _load(), HALT]
    t = program_timing(prog, cfg)
    g = 2 * 4 + 4 + gemm_cycles(4, 4, "os", 2, 8, 4) + 3  # A: 2 chunks of 4 rows read, 4 columns
    ld = 1 + 8 + 2 * 2
    assert t.dispatch == [0, 1, 2]
    assert t.start == [1, 1 + ld, 1 + ld]  # the second load overlaps the GEMM
    assert t.end == [1 + ld, 1 + ld + g, 1 + 2 * ld]
    assert t.cycles == max(1 + ld + g, 1 + 2 * ld)
    assert t.busy == {"D": 2 * ld, "M": g, "S": 0}


def test_queue_depth_stalls_dispatch():
    cfg = CoreConfig(latency=0, bytes_per_cycle=8, queue_depth=1)
    prog = [_load(rows=1), _load(rows=1), _load(rows=1), HALT]
    t = program_timing(prog, cfg)
    d = 1 + 1 + 1  # start, first beat (L' = 1), one eight-byte beat
    assert t.start == [1, 1 + d, 1 + 2 * d]
    assert t.dispatch == [0, 2, 2 + d]  # a slot frees when the previous one starts


def test_wait_on_later_token_is_refused():
    gemm = Instr("GEMM", frozenset("D"), frozenset(), {"a": 0, "b": 0, "c": 8, "m": 1, "k": 1,
                                                       "n": 1})
    with pytest.raises(CoreError, match="signalled before it in program order"):
        program_timing([gemm, _load(sig="M"), HALT], CoreConfig())


def test_gemm_acc_cycles_raw_engine_and_row_chunk_write_back():
    cfg = CoreConfig(rows=4, cols=4)
    base = 11 + gemm_cycles(4, 4, "os", 5, 3, 6)
    acc32 = Instr("GEMM", f={"m": 5, "k": 3, "n": 6, "acc": 1, "acc_shift": 8, "bias": 1})
    # the engine runs raw; after its final row, one row chunk (C columns) a cycle: 5 rows * 2
    assert instr_cycles(acc32, cfg) == base + 5 * 2 + 6
    acc8 = Instr("GEMM", f={"m": 5, "k": 3, "n": 6, "acc": 1, "requant": 1})
    assert instr_cycles(acc8, cfg) == base + 5 * 2 + 12


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
    assert instr_cycles(sm, cfg) == 3 + 2 + softmax_cycles(2, 6, 4)  # four lanes
