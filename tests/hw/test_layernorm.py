"""hw.layernorm: construction and errors, the cycle model, Amaranth-simulator runs vs golden."""

from __future__ import annotations

import pytest

from golden.layernorm import layernorm_params
from hw.layernorm import LayerNorm, layernorm_cycles, layernorm_edges, layernorm_row_overhead
from sim.nonlinear_bench import Job, LayerNormConfig, result_problems, run_pysim
from sim.streams import STALL_MODES

LP = layernorm_params(8, 0.05, 1.0, 0.0, 0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lanes": 0, "params": LP}, "lanes must be a positive integer, not 0"),
        ({"lanes": 3, "params": LP}, r"lanes=3 must divide the row length \(n=8\)"),
        ({"lanes": 65, "params": LP}, "lanes must be at most 64, not 65"),
        ({"lanes": 2, "params": None}, "params must be golden.layernorm.layernorm_params"),
    ],
)
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LayerNorm(**kwargs)


def test_properties_read_only():
    u = LayerNorm(lanes=4, params=LP)
    assert (u.lanes, u.words, u.params) == (4, 2, LP)
    with pytest.raises(AttributeError):
        u.lanes = 2


def test_cycle_model():
    assert [layernorm_row_overhead(p) for p in (1, 2, 4, 8, 64)] == [90, 91, 92, 93, 96]
    assert layernorm_cycles(3, 64, 4) == 3 * (2 * 16 + 92)
    assert layernorm_edges(3, 64, 4, 9) == 3 * (2 * 16 + 92) + 9
    with pytest.raises(ValueError, match=r"lanes=4 must divide the row length \(length=6\)"):
        layernorm_cycles(1, 6, 4)
    with pytest.raises(ValueError, match="length must be a positive integer, not 0"):
        layernorm_cycles(1, 0, 1)
    with pytest.raises(ValueError, match="length must be at most 4096"):
        layernorm_cycles(1, 4097, 1)


CASES = [LayerNormConfig(lanes=2, length=6), LayerNormConfig(lanes=1, length=1),
         LayerNormConfig(lanes=2, length=4, in_bits=24)]


@pytest.mark.parametrize("stall", STALL_MODES)
@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"n{c.length}p{c.lanes}b{c.in_bits}")
def test_pysim_bit_exact_and_cycle_exact(cfg, stall):
    jobs = [Job(2, "random", 1), Job(1, "max", 2), Job(1, "min", 3), Job(1, "equal", 4), Job(1, "minmax", 5)]
    if cfg.in_bits > 8:
        jobs.append(Job(2, "wide", 6))
    for r in run_pysim(cfg, jobs, stall=stall, seed=5):
        assert r["match"], f"{r['job']} ({stall}): {r['mismatches']}"
        assert r["cycles"] == r["predicted_cycles"], r["job"]
        assert not result_problems(r, stall), result_problems(r, stall)  # + testbench edges
        assert not r["error"]


# near-constant rows: the variance term is tiny, so eps decides the reciprocal square root (an
# implementation that drops eps fails); constant rows with eps = 0 take the D = 0 path
EDGE_CASES = [LayerNormConfig(lanes=2, length=6), LayerNormConfig(lanes=4, length=64),
              LayerNormConfig(lanes=2, length=6, eps=1e-2), LayerNormConfig(lanes=2, length=6, eps=0.0)]
EDGE_JOBS = [Job(4, "rowconst", 1), Job(4, "nearconst", 2), Job(4, "twovalues", 3), Job(2, "equal", 4)]


@pytest.mark.parametrize("stall", ["none", "both"])
@pytest.mark.parametrize("cfg", EDGE_CASES, ids=lambda c: f"n{c.length}p{c.lanes}eps{c.eps:g}")
def test_pysim_constant_and_near_constant_rows(cfg, stall):
    for r in run_pysim(cfg, EDGE_JOBS, stall=stall, seed=8):
        assert not result_problems(r, stall), result_problems(r, stall)
        if cfg.eps > 0:  # (with eps = 0 the float twin of a constant row is 0/0)
            assert r["max_abs_err_lsb"] <= 1.0  # documented: within 1 LSB of the float layer norm
