"""The scalable exact partitioner (compiler.partition_exact behind partition_dp): equal to brute
force on random small problems, honest about exactness when bounded, and exact on a 12-layer
GPT-2-small on four devices."""

import random
import re

import pytest

from compiler.partition import (
    Problem,
    evaluate,
    partition_brute,
    partition_dp,
    partition_dp_classic,
    partition_greedy,
)
from compiler.partition_exact import search_order
from compiler.targets.base import LinkSpec


def random_problem(seed: int) -> Problem:
    """A random op DAG on 2-4 devices: ops reading up to three earlier values (repeats
    included), missing device support, int8/own-size transfers with sizes in either order,
    links with and without latency, a host device or a virtual host, capacities, 1-2 outputs."""
    rng = random.Random(seed)
    ndev = rng.choice([2, 3, 3, 4])
    n = {2: 9, 3: 6, 4: 5}[ndev] - rng.randint(0, 2)
    ops = [f"n{i}" for i in range(n)]
    inputs = ["x", "y"][:rng.randint(1, 2)]
    reads = {}
    for i, op in enumerate(ops):
        cands = [*inputs, *ops[:i]]
        picked = [rng.choice(cands) for _ in range(rng.randint(0 if i else 1, 3))]
        reads[op] = picked
    virtual = rng.random() < 0.3
    devs = [f"d{j}" for j in range(ndev)]
    host = ndev if virtual else rng.randrange(ndev)
    integer = [rng.random() < 0.6 and j != host for j in range(ndev)]
    cost = {}
    use = {}
    for op in ops:
        row = [None if rng.random() < 0.3 else (rng.uniform(1e-6, 1e-3), rng.uniform(1e-6, 1e-2))
               for _ in range(ndev)]
        if all(c is None for c in row):
            row[rng.randrange(ndev)] = (rng.uniform(1e-6, 1e-3), rng.uniform(1e-6, 1e-2))
        cost[op] = row
        use[op] = [{"w": rng.randint(0, 4)} if j == 0 else {} for j in range(ndev)]
    capacity = [{"w": rng.randint(3, 10)} if j == 0 and rng.random() < 0.5 else {}
                for j in range(ndev)]
    links = [LinkSpec("l", rng.choice([1e5, 1e6, 1e8]), rng.choice([0.0, 1e-5, 1e-4]),
                      rng.choice([0.0, 0.5, 5.0])) for _ in range(ndev)]
    sizes = {v: (rng.randint(0, 400) * 4, rng.randint(0, 600)) for v in [*inputs, *ops]}
    outputs = list(dict.fromkeys(rng.choice([*inputs, *ops]) if rng.random() < 0.2
                                 else rng.choice(ops) for _ in range(rng.randint(1, 2))))
    return Problem(ops=ops, reads=reads, graph_inputs=inputs, outputs=outputs, devices=devs,
                   cost=cost, use=use, capacity=capacity, links=links, integer=integer,
                   sizes=sizes, host=host, objective=rng.choice(["latency", "energy"]))


def value_of(p, placement):
    ev = evaluate(p, placement)
    assert ev is not None
    return ev[0] if p.objective == "latency" else ev[1]


def brute_or_none(p):
    try:
        return partition_brute(p)
    except Exception:  # no feasible placement: the search must say so too
        return None


@pytest.mark.parametrize("block", range(8))
def test_equals_brute_force_on_random_problems(block):
    """300 random problems: the same optimum as enumerating every placement, a placement whose
    price (evaluate) is that optimum, exact, and never worse than greedy."""
    for seed in range(block * 40, block * 40 + 40 if block < 7 else block * 40 + 20):
        p = random_problem(seed)
        bf = brute_or_none(p)
        if bf is None:
            with pytest.raises(Exception, match="no placement"):
                partition_dp(p)
            continue
        r = partition_dp(p)
        assert r.exact and r.algorithm == "dp", seed
        assert r.objective_value == pytest.approx(bf.objective_value, rel=1e-9, abs=1e-15), seed
        assert value_of(p, r.placement) == pytest.approx(r.objective_value, rel=1e-12), seed
        assert r.lower_bound == r.objective_value and r.gap == 0.0
        try:
            gr = partition_greedy(p)
        except Exception:
            continue
        assert r.objective_value <= gr.objective_value * (1 + 1e-12) + 1e-15, seed


@pytest.mark.parametrize("pairwise_max, pairwise_limit", [(0, 10 ** 9), (0, 0)])
def test_wide_step_pruning_stays_exact(monkeypatch, pairwise_max, pairwise_limit):
    """Steps too wide for the pairwise check: the per-coordinate check first, or alone."""
    import compiler.partition_exact as pe

    monkeypatch.setattr(pe, "_PAIRWISE_MAX", pairwise_max)
    monkeypatch.setattr(pe, "_PAIRWISE_LIMIT", pairwise_limit)
    for seed in range(60):
        p = random_problem(seed)
        bf = brute_or_none(p)
        if bf is None:
            continue
        r = partition_dp(p)
        assert r.exact
        assert r.objective_value == pytest.approx(bf.objective_value, rel=1e-9, abs=1e-15), seed
    big = chain_of_layers(4)
    ref = partition_dp_classic(big, max_states=10 ** 7)
    assert partition_dp(big).objective_value == pytest.approx(ref.objective_value, rel=1e-12)


def test_search_order_keeps_dependencies_and_reader_order():
    for seed in range(60):
        p = random_problem(seed)
        order = search_order(p)
        assert sorted(order) == list(range(len(p.ops)))
        at = {p.ops[i]: k for k, i in enumerate(order)}
        readers: dict[str, list[int]] = {}
        for i, op in enumerate(p.ops):
            for v in p.reads[op]:
                if v in at:
                    assert at[v] < at[op]  # producers first
                if i not in readers.setdefault(v, []):
                    readers[v].append(i)
        for v, rs in readers.items():
            assert [at[p.ops[i]] for i in rs] == sorted(at[p.ops[i]] for i in rs), v


def chain_of_layers(layers: int, seed: int = 0) -> Problem:
    """A transformer-like chain: a residual stream, two long-lived side values (a mask and a
    position table read by every layer) and per layer a few cheap view-like ops that only some
    devices run; 4 devices, an integer accelerator with a weight capacity."""
    rng = random.Random(seed)
    devs = ["acc", "imc", "cpu", "gpu"]
    ops, reads, cost, use = [], {}, {}, {}

    def add(name, rd, row, u=0):
        ops.append(name)
        reads[name] = rd
        cost[name] = row
        use[name] = [{"w": u}, {}, {}, {}]

    add("mask", ["x"], [None, None, (2e-6, 1e-6), (5e-6, 1e-5)])
    add("pos", ["x"], [None, (1e-9, 0), (2e-6, 1e-6), (5e-6, 1e-5)])
    h = "x"
    for i in range(layers):
        j = rng.uniform(0.5, 1.5)
        add(f"ln{i}", [h], [None, None, (4e-6 * j, 1e-6), (5e-6, 1e-5)])
        add(f"q{i}", [f"ln{i}"], [(1e-6 * j, 1e-7), (3e-5, 1e-8), (9e-6, 1e-5), (5e-6, 1e-4)], 4)
        add(f"v{i}", [f"q{i}"], [None, (1e-9, 0), (1.6e-6, 1e-7), (5e-6, 1e-5)])
        add(f"k{i}", [f"ln{i}"], [(1e-6, 1e-7), (3e-5, 1e-8), (9e-6 * j, 1e-5), (5e-6, 1e-4)], 4)
        add(f"r{i}", [f"k{i}", "pos"], [None, None, (1.7e-6, 1e-7), (5e-6, 1e-5)])
        add(f"a{i}", [f"v{i}", f"r{i}", "mask"], [None, None, (3e-6, 1e-6), (5e-6, 1e-5)])
        add(f"o{i}", [f"a{i}"], [(1e-6, 1e-7), (3e-5, 1e-8), (9e-6, 1e-5), (5e-6, 1e-4)], 4)
        add(f"h{i}", [h, f"o{i}"], [None, None, (1.7e-6, 1e-7), (5e-6, 1e-5)])
        h = f"h{i}"
    links = [LinkSpec("pcie", 8e9, 5e-6, 0.5), LinkSpec("pkg", 8e9, 2e-6, 0.5),
             LinkSpec("host", float("inf"), 0.0), LinkSpec("gpu", 25e9, 1e-5, 5.0)]
    sizes = {v: (4096, 1024) for v in ["x", *ops]}
    return Problem(ops=ops, reads=reads, graph_inputs=["x"], outputs=[h], devices=devs,
                   cost=cost, use=use, capacity=[{"w": 4 * layers}, {}, {}, {}], links=links,
                   integer=[True, True, False, False], sizes=sizes, host=2)


def test_matches_the_classic_dp_where_that_is_exact():
    for layers in (1, 2, 4):
        p = chain_of_layers(layers, seed=layers)
        new, old = partition_dp(p), partition_dp_classic(p, max_states=10 ** 7)
        assert new.exact and old.exact
        assert new.objective_value == pytest.approx(old.objective_value, rel=1e-12)
        assert new.states <= old.states


def test_bounded_search_is_flagged_with_a_valid_lower_bound():
    """Too few states: exact is False, the algorithm names why, and the lower bound is at or
    below the true optimum, which is at or below the placement returned."""
    seen = 0
    for seed in range(80):
        p = random_problem(seed)
        bf = brute_or_none(p)
        if bf is None:
            continue
        r = partition_dp(p, max_states=1)
        assert value_of(p, r.placement) == pytest.approx(r.objective_value, rel=1e-12)
        assert r.lower_bound is not None
        assert r.lower_bound <= bf.objective_value * (1 + 1e-12) + 1e-15, seed
        assert bf.objective_value <= r.objective_value * (1 + 1e-12) + 1e-15, seed
        if not r.exact:
            seen += 1
            assert re.match(r"dp, bounded \(more than \d+ states at op", r.algorithm)
            assert "optimality gap <=" in r.algorithm and r.gap is not None and r.gap >= 0
        else:  # nothing was dropped: then it must be the optimum
            assert r.objective_value == pytest.approx(bf.objective_value, rel=1e-9, abs=1e-15)
    assert seen > 20
    big = chain_of_layers(12)
    r = partition_dp(big, max_states=3)
    assert not r.exact and 0 < r.gap < 1 and r.lower_bound < r.objective_value
    assert r.lower_bound <= partition_dp(big).objective_value * (1 + 1e-12)


def test_time_limit_flags_inexact_only_when_states_were_dropped():
    p = chain_of_layers(6)
    exact = partition_dp(p)
    assert exact.exact
    r = partition_dp(p, max_states=60, time_limit_s=0.0)  # past the limit: keep 60 // 50 = 1
    assert not r.exact and "time limit 0 s reached" in r.algorithm
    assert r.lower_bound <= exact.objective_value * (1 + 1e-12) <= r.objective_value * (1 + 1e-12)
    r = partition_dp(p, time_limit_s=0.0)  # past the limit but nothing had to be dropped
    assert r.exact and r.objective_value == pytest.approx(exact.objective_value, rel=1e-12)


def test_budget_runs_keep_the_bound_over_all_group_sets():
    from compiler.partition import expected_cosine

    for seed in range(40):
        p = random_problem(seed)
        rng = random.Random(seed)
        p.acc_group = {op: [rng.choice(["g0", "g1", "g2"]) if p.integer[d] and c is not None
                            else None for d, c in enumerate(p.cost[op])] for op in p.ops}
        p.acc_drop = {"g0": 0.004, "g1": 0.007, "g2": 0.3}
        p.min_cosine = 0.99
        bf = brute_or_none(p)
        if bf is None:
            continue
        r = partition_dp(p)
        assert r.exact and r.objective_value == pytest.approx(bf.objective_value, rel=1e-9,
                                                              abs=1e-15)
        assert r.expected_cosine == expected_cosine(p, r.placement) >= 0.99 - 1e-12


def test_gpt2_small_on_four_devices_partitions_exactly():
    """The 12-layer GPT-2-small (GPT2Config defaults, random weights) on asic,imc,cpu,gpu-a100:
    an exact plan, the same optimum as the classic DP (exact on this model, and 30x slower)."""
    from compiler.driver import compile_model

    c = compile_model("gpt2-small", "asic,imc,cpu:mode=roofline,gpu-a100", calib=4,
                      min_cosine=None, smooth="off")
    part = c.plan["partition"]
    assert len(c.graph.nodes) > 500
    assert part["exact"] is True and part["algorithm"] == "dp"
    assert part["objective_value"] <= part["greedy_objective"]
    assert c.timings["partition_s"] < 10
    old = partition_dp_classic(c.problem)
    assert old.exact
    assert part["objective_value"] == pytest.approx(old.objective_value, rel=1e-12)
    assert len({op["device"] for op in c.plan["ops"]}) >= 2  # a real split, not one device
