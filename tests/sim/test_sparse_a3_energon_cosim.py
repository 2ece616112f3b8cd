"""A^3 and Energon filters on cocotb + Verilator vs their integer contracts: bit- and cycle-exact.

One Verilator build per unit (dim 32, 32 keys; cached by a hash of the Verilog) and one
simulator launch per stall mode, each running random jobs (narrow code ranges for ties,
full ranges, one key, a full buffer, random constants) and real MiniLM heads (two sentences,
a different (layer, sentence, head) pair per stall mode, the default filter settings). The
mask words must equal ``mask_int``, the unit's ``cycles`` its cycle model, and the
testbench's own edge count the model plus the stall edges it saw. The ``none`` launch ends
with a malformed job (sticky error flag). Smaller configurations (other round counts, a
4-wide A^3) run on the Amaranth simulator; the spec classes' parameter checks close the file.
"""

from __future__ import annotations

import os

import pytest
import torch

from golden.sparse.a3 import A3Filter
from golden.sparse.energon import EnergonFilter
from hw.sparse_a3 import SparseA3Spec, a3_cycles, sorted_key_orders
from hw.sparse_energon import SparseEnergonSpec, energon_cycles
from hw.spec import UnitParamError
from sim.sparse_a3_energon_bench import (
    A3Config,
    EnergonConfig,
    FilterJob,
    minilm_jobs,
    random_jobs,
    result_problems,
    run_pysim,
    run_verilator,
)
from sim.streams import STALL_MODES

A3 = A3Config(dim=32, max_keys=32)
ENERGON = EnergonConfig(dim=32, max_keys=32, rounds=2)
SALT = {"none": 0, "idle": 1, "backpressure": 2, "both": 3}
#: (layer, sentence, head) of the MiniLM jobs per stall mode
PICKS = {"none": [(0, 0, 0), (5, 1, 7)], "idle": [(2, 0, 3), (3, 1, 11)],
         "backpressure": [(1, 1, 4), (4, 0, 9)], "both": [(5, 0, 1), (0, 1, 2)]}


@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from compiler.models import capture_qk

    return capture_qk(2)


def _check(results: list[dict], stall: str) -> None:
    for r in results:
        problems = result_problems(r, stall)
        assert not problems, problems


@pytest.mark.parametrize("stall", STALL_MODES)
def test_a3_cosim(stall, minilm, tmp_path):
    s = SALT[stall]
    jobs = random_jobs(A3, 4, seed=10 + s) + minilm_jobs(A3, PICKS[stall], captured=minilm)
    if stall == "none":                       # last: the error flag is sticky
        j = jobs[0]
        jobs.append(FilterJob("swapped order entries", j.k, j.q, j.params, corrupt="order"))
    results = run_verilator(A3, jobs, stall=stall, seed=20 + s, test_dir=tmp_path)
    _check(results, stall)
    # the search prunes work on the real heads: products evaluated vs dense scores
    for r in results[4:6]:
        search, post = sum(r["search_products"]), sum(r["post_products"])
        print(f"{r['job']}: search {search} + post-scoring {post} products vs dense "
              f"{r['dense_products']} ({(search + post) / r['dense_products']:.2f})")
        assert search < r["dense_products"]


@pytest.mark.parametrize("stall", STALL_MODES)
def test_energon_cosim(stall, minilm, tmp_path):
    s = SALT[stall]
    jobs = random_jobs(ENERGON, 5, seed=30 + s) + minilm_jobs(ENERGON, PICKS[stall], captured=minilm)
    if stall == "none":                       # last: the error flag is sticky
        j = jobs[0]                           # max_keys keys: sent without `last`
        jobs.append(FilterJob("keys past the buffer", j.k, j.q, j.params, corrupt="overflow"))
    results = run_verilator(ENERGON, jobs, stall=stall, seed=40 + s, test_dir=tmp_path)
    _check(results, stall)
    if stall == "none":                       # the unit cut the keys at max_keys: same masks
        assert results[-1]["words"] == results[-1]["expected"]


@pytest.mark.parametrize("cfg,name", [(A3, "a3"), (ENERGON, "energon")])
def test_minilm_jobs_are_the_golden_filters_masks(minilm, cfg, name):
    """A job's expected words (mask_int on one head's real tokens) equal the golden filter's
    ``mask()`` on the whole layer, sliced: the per-head unit computes the layer's filter."""
    layer, b, h = PICKS["none"][1]
    (job,) = minilm_jobs(cfg, [(layer, b, h)], captured=minilm)
    q, k, km = minilm[layer]
    f = A3Filter(**A3Filter.default) if name == "a3" else EnergonFilter(**EnergonFilter.default)
    full = f.mask(q, k, km, layer=layer)
    n = int(km[b].sum())
    words = cfg.stimulus(job).expected
    got = torch.tensor([[(w >> j) & 1 for j in range(n)] for w in words], dtype=torch.bool)
    assert torch.equal(got, full[b, h, :n, :n])
    assert all(w >> cfg.max_keys == (i == n - 1) for i, w in enumerate(words))


@pytest.mark.parametrize("cfg", [A3Config(dim=4, max_keys=8), EnergonConfig(dim=5, max_keys=8, rounds=1),
                                 EnergonConfig(dim=3, max_keys=8, rounds=3)],
                         ids=["a3-d4", "energon-r1", "energon-r3"])
def test_small_configs_on_amaranth_simulator(cfg):
    jobs = random_jobs(cfg, 8, seed=5)
    for stall in ("none", "both"):
        _check(run_pysim(cfg, jobs, stall=stall, seed=6), stall)


def test_specs_parameters_and_models():
    a3, en = SparseA3Spec(dim=32, max_keys=32), SparseEnergonSpec(dim=32, max_keys=32, rounds=2)
    for spec in (a3, en):
        assert spec.ops == ("sparse_filter",)
        assert type(spec).from_json(spec.to_json()) == spec
        res = spec.resources("ecp5")
        assert res["estimated"] and res["dsps"] >= 32 and res["buffer_bits"] > 0
    assert a3.kind == "sparse_a3" and en.kind == "sparse_energon"
    assert a3.golden == "golden.sparse.a3.A3Filter.mask_int"
    assert en.golden == "golden.sparse.energon.EnergonFilter.mask_int"
    assert a3.cycles(keys=10, m_iter=20, candidates=[3, 4]) == 2 * 10 + (40 + 6 + 9) + (40 + 8 + 9)
    assert a3_cycles(5, 0, [5]) == 10 + 19
    assert en.cycles(keys=10, survivors=[[5, 2], [10, 10]]) == 10 + (20 + 14 + 5) + (20 + 14 + 10)
    assert energon_cycles(4, [[2]]) == 4 + 8 + 8
    assert sorted_key_orders([[3, -1], [3, 5], [-2, 5]]) == [[2, 0], [0, 1], [1, 2]]
    for bad, field in [(lambda: SparseA3Spec(dim=0), "dim"), (lambda: SparseA3Spec(max_keys=1), "max_keys"),
                       (lambda: SparseEnergonSpec(rounds=5), "rounds"),
                       (lambda: SparseEnergonSpec(dim=32, max_keys="8"), "max_keys"),
                       (lambda: SparseA3Spec.from_json({"dim": 4, "lanes": 2}), "lanes"),
                       (lambda: a3.resources("gowin"), "family"),
                       (lambda: a3.cycles(keys=33, m_iter=1, candidates=[1]), "keys")]:
        with pytest.raises(UnitParamError, match=field):
            bad()
    for bad, needle in [(lambda: a3.cycles(keys=4, m_iter=1, candidates=[5]), "candidates"),
                        (lambda: en.cycles(keys=4, survivors=[[2]]), "2 counts"),
                        (lambda: en.cycles(keys=4, survivors=[[2, 3]]), "cannot grow")]:
        with pytest.raises(ValueError, match=needle):
            bad()
