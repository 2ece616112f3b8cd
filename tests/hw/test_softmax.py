"""hw.softmax: construction and errors, the cycle model, Amaranth-simulator runs vs golden."""

from __future__ import annotations

import pytest

from golden.softmax import softmax_params
from hw.softmax import Softmax, softmax_cycles, softmax_edges, softmax_row_overhead, softmax_words
from sim.nonlinear_bench import Job, SoftmaxConfig, result_problems, run_pysim
from sim.streams import STALL_MODES

SP = softmax_params(1 / 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lanes": 0, "max_length": 8, "params": SP}, "lanes must be a positive integer, not 0"),
        ({"lanes": 2, "max_length": 0, "params": SP}, "max_length must be a positive integer, not 0"),
        ({"lanes": 3, "max_length": 8, "params": SP}, r"lanes=3 must divide the row length \(max_length=8\)"),
        ({"lanes": 1, "max_length": 2**16 + 1, "params": SP}, "max_length must be at most 65536"),
        ({"lanes": 1, "max_length": 8, "params": 0.1}, "params must be golden.softmax.softmax_params"),
        ({"lanes": 1, "max_length": 8, "params": softmax_params(0.1, 6)}, "frac_bits=8"),
    ],
)
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Softmax(**kwargs)


def test_properties_and_row_length_check():
    s = Softmax(lanes=4, max_length=64, params=SP)
    assert (s.lanes, s.max_length, s.depth, s.params) == (4, 64, 16, SP)
    with pytest.raises(AttributeError):
        s.lanes = 2
    s.check_length(64)
    with pytest.raises(ValueError, match=r"row length 65 exceeds this unit's buffer \(max_length=64\)"):
        s.check_length(65)
    with pytest.raises(ValueError, match="length must be a positive integer, not 0"):
        s.check_length(0)
    assert s.i_data.payload.shape().size == 4 * 33 + 1


def test_cycle_model():
    assert [softmax_row_overhead(p) for p in (1, 2, 3, 4, 8, 64)] == [56, 56, 57, 57, 58, 61]
    assert softmax_words(61, 4) == 16
    assert softmax_cycles(3, 61, 4) == 3 * (3 * 16 + 57)
    assert softmax_edges(3, 61, 4, 2) == 3 * (3 * 16 + 57) + 2
    with pytest.raises(ValueError, match="length must be at most 65536"):
        softmax_cycles(1, 2**16 + 1, 1)
    with pytest.raises(ValueError, match="rows must be a positive integer, not 0"):
        softmax_cycles(0, 8, 1)


@pytest.mark.parametrize("stall", STALL_MODES)
def test_pysim_bit_exact_and_cycle_exact(stall):
    cfg = SoftmaxConfig(lanes=2, max_length=8)
    jobs = [Job(2, "random", 1), Job(1, "max", 2), Job(1, "masked", 3), Job(1, "allmasked", 4),
            Job(1, "wide", 5)]
    for r in run_pysim(cfg, jobs, length=5, stall=stall, seed=5):
        assert r["match"], f"{r['job']} ({stall}): {r['mismatches']}"
        assert r["cycles"] == r["predicted_cycles"], r["job"]
        assert not result_problems(r, stall), result_problems(r, stall)  # + testbench edges
        assert not r["error"]


EDGE_JOBS = [Job(3, "ties", 1), Job(3, "onehot", 2), Job(3, "rowconst", 3), Job(1, "equal", 4),
             Job(2, "maskedties", 5), Job(2, "maskedonehot", 6), Job(1, "allmasked", 7), Job(2, "masked", 8)]


@pytest.mark.parametrize("stall", STALL_MODES)
@pytest.mark.parametrize("length", [5, 8, 1])
def test_pysim_ties_onehot_equal_masked_rows(length, stall):
    cfg = SoftmaxConfig(lanes=2, max_length=8)
    for r in run_pysim(cfg, EDGE_JOBS, length=length, stall=stall, seed=10 + length):
        assert not result_problems(r, stall), result_problems(r, stall)
        assert r["max_abs_err_lsb"] <= 1.0


@pytest.mark.parametrize(("stall", "rows"), [("none", 256), ("both", 64)])
def test_pysim_every_distance_to_the_maximum(stall, rows):
    # rows [m, m-d, m-d] for every d in 0..255 (d = 0: all equal): every exp table index and
    # shift the int8 logits reach, with few elements per row so that an exp or normalization
    # rounding change moves an output
    cfg = SoftmaxConfig(lanes=2, max_length=4)
    for r in run_pysim(cfg, [Job(rows, "gap", 0)], length=3, stall=stall, seed=12):
        assert not result_problems(r, stall), result_problems(r, stall)
