"""SpAtten pruning unit (hw.sparse_spatten) vs its golden step: bit- and cycle-exact.

One Verilator build (cached by a hash of the Verilog) and one simulator launch per stall mode,
each running random sequences (ties, pruned rows, top-k sizes from 0 to beyond the survivors)
and the six layers of two real MiniLM sentences; the testbench counts each job's edges at the
ports itself. Small extra configurations and the error flag run on the Amaranth simulator.
"""

from __future__ import annotations

import pytest

from hw.sparse_spatten import SpattenSpec, spatten_cycles, spatten_edges
from hw.spec import UnitParamError
from sim.sparse_spatten_bench import (
    SpattenJob,
    data_words,
    minilm_jobs,
    pack_prm,
    random_jobs,
    result_problems,
    run_pysim,
    run_verilator,
)
from sim.streams import STALL_MODES

SPEC = SpattenSpec(lanes=4, max_tokens=32, max_heads=12, token_bits=20, head_bits=16)
SALT = {"none": 0, "idle": 1, "backpressure": 2, "both": 3}


@pytest.fixture(scope="module")
def minilm():
    return minilm_jobs(SPEC, 2)


def _check_all(results, jobs, stall):
    assert len(results) == len(jobs)
    problems = [p for r in results for p in result_problems(r, stall)]
    assert not problems, problems[:5]


@pytest.mark.parametrize("stall", STALL_MODES)
def test_spatten_cosim(stall, minilm, tmp_path):
    jobs = random_jobs(SPEC, 100 + SALT[stall]) + minilm
    results = run_verilator(SPEC, jobs, stall=stall, seed=7 + SALT[stall], monitor=stall == "both",
                            test_dir=tmp_path)
    _check_all(results, jobs, stall)
    # the radix select's pass counts vary with the data: both ends are exercised
    passes = [r["token_passes"] for r in results] + [r["head_passes"] for r in results]
    assert 0 in passes and max(passes) >= 10
    if stall != "none":
        assert sum(r["tb_sink_stalls"] + r["tb_source_stalls"] for r in results) > 0


def test_minilm_jobs_prune_and_match_the_cycle_model(minilm):
    assert len(minilm) == 12                                    # 6 layers x 2 sentences
    kept = [bin(w & 0xF).count("1") for w in minilm[-1].expected]
    assert 0 < sum(kept) < 16                                   # tokens and heads were pruned
    j = minilm[0]
    rows = len(j.data) // 5                                     # 17 tokens: 5 words per row
    assert SPEC.cycles(rows=rows, n_tokens=17, n_heads=12, token_passes=j.token_passes,
                       head_passes=j.head_passes) == j.predicted_cycles


def test_a_job_ending_mid_row_is_flagged(tmp_path):
    jobs = random_jobs(SPEC, 5, sequences=1, layers=2)
    good = jobs[1].data
    cut = good[:2]
    cut[-1] |= 1 << (8 * 4 + 4)      # `last` on the second word of a 32-token row
    results = run_verilator(SPEC, jobs, data_override=[jobs[0].data, cut], test_dir=tmp_path)
    assert not results[0]["error"] and results[0]["match"]
    assert results[1]["error"], "a job ending inside a row must raise the unit's error flag"


@pytest.mark.parametrize("cfg", [(1, 5, 3, 12, 10), (8, 16, 9, 14, 16), (2, 2, 1, 12, 10)])
def test_other_configurations_on_the_amaranth_simulator(cfg):
    spec = SpattenSpec(*cfg)
    for stall in ("none", "both"):
        jobs = random_jobs(spec, cfg[0] + SALT[stall], sequences=3, layers=3)
        _check_all(run_pysim(spec, jobs, stall=stall, seed=3), jobs, stall)


def _raw_job(spec, rows, n_out, n_data, **prm):
    """A hand-made job (``rows`` as ``(head, codes)`` over ``n_data`` tokens); only the error
    flag is checked, so the expected words are placeholders of the right count."""
    fields = {"first": 1, "k_tokens": 1, "k_heads": 1, "key_mask": (1 << spec.max_tokens) - 1, **prm}
    return SpattenJob("hand-made", pack_prm(spec, **fields), data_words(spec, rows, n_data),
                      [0] * n_out, 0, 0, 0)


def test_error_flag_on_bad_parameters_heads_and_overflow():
    spec = SpattenSpec(2, 4, 4, 8, 8)
    good = _raw_job(spec, [(1, [1, 2, 3, 4])], 3, 4, n_tokens=4, n_heads=2)
    assert not run_pysim(spec, [good])[0]["error"]
    # a row of head 3 while n_heads is 2
    assert run_pysim(spec, [_raw_job(spec, [(3, [1, 2, 3, 4])], 3, 4, n_tokens=4, n_heads=2)])[0]["error"]
    # n_tokens = 0 and n_heads above the maximum: the maxima are used, the flag is raised
    assert run_pysim(spec, [_raw_job(spec, [(0, [1, 2, 3, 4])], 3, 4, n_tokens=0, n_heads=2)])[0]["error"]
    assert run_pysim(spec, [_raw_job(spec, [(0, [1, 2, 3, 4])], 4, 4, n_tokens=4, n_heads=5)])[0]["error"]
    # 8-bit token accumulators overflow on two rows of 255: saturate and flag
    over = _raw_job(spec, [(0, [255, 255]), (0, [255, 255])], 2, 2, n_tokens=2, n_heads=1)
    assert run_pysim(spec, [over])[0]["error"]


def test_spec_validation_names_the_field_and_verilog_is_deterministic():
    for kw, field in [({"lanes": 3}, "lanes"), ({"max_tokens": 30}, "max_tokens"),
                      ({"max_heads": 0}, "max_heads"), ({"token_bits": 7}, "token_bits"),
                      ({"head_bits": 41}, "head_bits")]:
        args = {"lanes": 4, "max_tokens": 32, "max_heads": 12, "token_bits": 20, "head_bits": 16, **kw}
        with pytest.raises(UnitParamError, match=field):
            SpattenSpec(**args)
    assert SpattenSpec.from_json(SPEC.to_json()) == SPEC
    assert SPEC.kind == "sparse_spatten" and SPEC.ops == ("sparse_filter",)
    v1 = SPEC.verilog()
    assert v1 == SPEC.verilog() and "module sparse_spatten" in v1
    r = SPEC.resources("ecp5")
    assert r["estimated"] and r["buffer_bits"] == 32 * 21 and r["dsps"] == 0
    with pytest.raises(UnitParamError, match="family"):
        SPEC.resources("virtex")
    # the model: words + W + HW + 7 + passes x (words per pass + 1)
    assert spatten_cycles(words=10, n_tokens=17, n_heads=12, lanes=4, token_passes=2,
                          head_passes=1) == 10 + 5 + 3 + 7 + 2 * 6 + 4
    assert spatten_edges(3, words=1, n_tokens=1, n_heads=1, lanes=1, token_passes=0,
                         head_passes=0) == 1 + 1 + 1 + 7 + 3
    with pytest.raises(UnitParamError, match="token_passes"):
        SPEC.cycles(rows=1, n_tokens=4, n_heads=2, token_passes=21, head_passes=0)
