"""The Sanger and ELSA sparse-attention filters on cocotb + Verilator vs ``mask_int``: bit- and
cycle-exact under every stall mode, on random heads and on real MiniLM heads; their unit specs.

One Verilator build per filter (cached by a hash of the Verilog) and one simulator launch per
filter and stall mode, each running the random corner jobs of ``random_jobs`` and three MiniLM
heads (a different three per stall mode: layers 0-5, both sentences, one with a padding key).
"""

from __future__ import annotations

import os

import pytest
import torch

from hw.sparse_elsa import SparseElsaSpec, elsa_cycles
from hw.sparse_sanger import SparseSangerSpec, sanger_cycles
from hw.spec import UnitParamError
from sim.nonlinear_bench import result_problems
from sim.sparse_sanger_elsa_bench import (
    ElsaBench,
    FilterJob,
    SangerBench,
    minilm_jobs,
    random_jobs,
    run_pysim,
    run_verilator,
)
from sim.streams import STALL_MODES

SANGER = SangerBench(dim=32, max_keys=32, lanes=4, bits=4)
ELSA = ElsaBench(dim=32, max_keys=32, lanes=4)
SALT = {"none": 0, "idle": 1, "backpressure": 2, "both": 3}


@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from compiler.models import capture_qk

    return capture_qk(2)


def _picks(stall: str) -> list[tuple[int, int, int]]:
    s = SALT[stall]
    return [(s, 0, 3 * s), (5 - s, 1, 3 * s + 1), ((2 * s + 4) % 6, 1, 11 - s)]


def _overflow_job(cfg) -> FilterJob:
    """More keys than the buffer holds: the unit drops the extra keys and raises ``error``."""
    g = torch.Generator().manual_seed(99)
    n = cfg.max_keys + 3
    k = torch.randint(-127, 128, (n, cfg.dim), generator=g)
    q = torch.randint(-127, 128, (2, cfg.dim), generator=g)
    prm = {"keep_all": 0, "thr": 1000, "mult": 40000, "shift": 20} if isinstance(cfg, SangerBench) \
        else {"keep_all": 0, "thr": 2 ** 22}
    return FilterJob("overflow", q, k, torch.ones(n, dtype=torch.bool), prm)


@pytest.mark.parametrize("stall", STALL_MODES)
@pytest.mark.parametrize("cfg", [SANGER, ELSA], ids=["sanger", "elsa"])
def test_filter_cosim(cfg, stall, minilm, tmp_path):
    jobs = random_jobs(cfg, 10 + SALT[stall]) + minilm_jobs(cfg, minilm, _picks(stall))
    if stall == "none":
        jobs.append(_overflow_job(cfg))           # last: the error flag is sticky
    results = run_verilator(cfg, jobs, stall=stall, seed=7 + SALT[stall], test_dir=tmp_path)
    assert len(results) == len(jobs)
    for r in results:
        overflow = r["job"] == "overflow"
        assert not result_problems(r, stall, error_ok=overflow), result_problems(r, stall, error_ok=overflow)
        assert r["error"] == overflow, r["job"]
    stalls = sum(r["tb_sink_stalls"] + r["tb_source_stalls"] for r in results)
    assert (stalls > 0) == (stall != "none")
    real = [r for r in results if r["job"].startswith("minilm")]
    assert len(real) == 3 and all(0.0 < r["keep_ratio"] < 1.0 for r in real)


@pytest.mark.parametrize("cfg,stall", [
    (SangerBench(dim=8, max_keys=8, lanes=2, bits=2), "both"),
    (SangerBench(dim=8, max_keys=8, lanes=1, bits=8), "idle"),
    (SangerBench(dim=8, max_keys=8, lanes=8, bits=6), "backpressure"),   # one key word
    (ElsaBench(dim=8, max_keys=8, lanes=2, hash_bits=4, seed=3), "both"),
    (ElsaBench(dim=16, max_keys=8, lanes=8, hash_bits=16, seed=1), "none"),
], ids=["sanger-b2-p2", "sanger-b8-p1", "sanger-b6-p8", "elsa-k4-p2", "elsa-d16-p8"])
def test_other_widths_on_the_amaranth_simulator(cfg, stall):
    """Prediction widths, lane counts and hash widths besides the Verilated ones, same checks."""
    results = run_pysim(cfg, random_jobs(cfg, 20), stall=stall, seed=2)
    assert len(results) == len(random_jobs(cfg, 20))
    for r in results:
        assert not result_problems(r, stall), result_problems(r, stall)
        assert not r["error"]


# ------------------------------------------------------------------------------ specs
def test_specs_describe_the_units():
    s = SparseSangerSpec(dim=32, max_keys=128, lanes=4, bits=4)
    e = SparseElsaSpec(dim=32, max_keys=128, lanes=4)
    assert (s.kind, e.kind) == ("sparse_sanger", "sparse_elsa")
    assert s.ops == e.ops == ("sparse_filter",)
    assert s.golden == "golden.sparse.sanger.SangerFilter.mask_int"
    assert e.golden == "golden.sparse.elsa.ElsaFilter.mask_int"
    for spec in (s, e):
        assert type(spec).from_json(spec.to_json()) == spec
        res = spec.resources("ecp5")
        assert res["estimated"] and res["luts"] > 0 and res["buffer_bits"] > 0 and "estimated" in res["basis"]
        with pytest.raises(UnitParamError, match="family"):
            spec.resources("virtex")
    # the cycle models: n + rows (3W + 16) and n + rows (W + 6), W = ceil(n / P)
    assert s.cycles(keys=17, rows=17) == sanger_cycles(17, 17, 4) == 17 + 17 * (3 * 5 + 16)
    assert e.cycles(keys=17, rows=17) == elsa_cycles(17, 17, 4) == 17 + 17 * (5 + 6)
    assert e.bits == 32 and SparseElsaSpec(dim=32, max_keys=8, lanes=2, hash_bits=8).bits == 8
    with pytest.raises(UnitParamError, match="keys must be at most 128"):
        s.cycles(keys=129, rows=1)


@pytest.mark.parametrize("cls,kw,needle", [
    (SparseSangerSpec, {"lanes": 3, "max_keys": 12}, "lanes must be a power of two"),
    (SparseSangerSpec, {"lanes": 8, "max_keys": 12}, "lanes=8 must divide max_keys=12"),
    (SparseSangerSpec, {"bits": 3}, "bits must be one of"),
    (SparseSangerSpec, {"dim": 0}, "dim must be at least 1"),
    (SparseSangerSpec, {"max_keys": 5000}, "max_keys must be at most 4096"),
    (SparseElsaSpec, {"dim": 24}, "dim must be a power of two"),
    (SparseElsaSpec, {"hash_bits": 12}, "hash_bits must be a power of two in"),
    (SparseElsaSpec, {"hash_bits": 64}, "hash_bits must be at most 32"),
    (SparseElsaSpec, {"seed": -1}, "seed must be at least 0"),
])
def test_spec_errors_name_the_field(cls, kw, needle):
    with pytest.raises(UnitParamError, match=needle):
        cls(**kw)


def test_spec_reference_and_verilog_of_a_small_unit():
    s = SparseSangerSpec(dim=8, max_keys=8, lanes=2, bits=4)
    e = SparseElsaSpec(dim=8, max_keys=8, lanes=2, hash_bits=4, seed=3)
    g = torch.Generator().manual_seed(5)
    q, k = torch.randint(-127, 128, (1, 1, 3, 8), generator=g), torch.randint(-127, 128, (1, 1, 5, 8), generator=g)
    km = torch.ones(1, 5, dtype=torch.bool)
    m = s.reference(q, k, km, {"keep_all": 0, "thr": 3000, "mult": 50000, "shift": 24})
    assert m.shape == (1, 1, 3, 5) and bool(m.any(-1).all())
    assert e.reference(q, k, km, {"keep_all": 1, "thr": 0}).all()
    for spec in (s, e):
        v = spec.verilog()
        assert f"module {spec.kind}" in v and "o_mask__payload" in v and "prm" in v
