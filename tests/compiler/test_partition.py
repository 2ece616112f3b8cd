"""Partitioner: exact DP equals brute force on small instances, never worse than greedy,
exact placements on hand-made cases."""

import random

import pytest

from compiler.partition import (
    NoDeviceError,
    Problem,
    evaluate,
    partition_brute,
    partition_dp,
    partition_greedy,
)
from compiler.targets.base import LinkSpec

FAST = LinkSpec("fast", 1e9, 1e-6, 0.1)
SLOW = LinkSpec("slow", 1e3, 1e-3, 0.1)


def chain(costs, link=FAST, sizes=1000, objective="latency", capacity=None, use=None):
    ops = [f"o{i}" for i in range(len(costs))]
    reads = {op: ([ops[i - 1]] if i else ["x"]) for i, op in enumerate(ops)}
    return Problem(ops=ops, reads=reads, graph_inputs=["x"], outputs=[ops[-1]],
                   devices=["acc", "cpu"], cost={op: c for op, c in zip(ops, costs, strict=True)},
                   use=use or {op: [{}, {}] for op in ops},
                   capacity=capacity or [{}, {}], links=[link, LinkSpec("h", float("inf"), 0)],
                   integer=[True, False], sizes={v: (sizes * 4, sizes) for v in ["x", *ops]},
                   host=1, objective=objective)


def test_hand_made_fast_link_puts_heavy_ops_on_accelerator():
    p = chain([[(1e-6, 0), (1e-2, 0)], [(1e-6, 0), (1e-2, 0)], [None, (1e-5, 0)]])
    r = partition_dp(p)
    assert r.placement == {"o0": "acc", "o1": "acc", "o2": "cpu"}


def test_hand_made_slow_link_keeps_everything_on_cpu():
    p = chain([[(1e-6, 0), (1e-3, 0)], [(1e-6, 0), (1e-3, 0)]], link=SLOW)
    assert partition_dp(p).placement == {"o0": "cpu", "o1": "cpu"}


def test_capacity_forces_split():
    costs = [[(1e-6, 0), (1e-2, 0)]] * 3
    use = {f"o{i}": [{"w": 10}, {}] for i in range(3)}
    p = chain(costs, capacity=[{"w": 20}, {}], use=use)
    r = partition_dp(p)
    assert sum(d == "acc" for d in r.placement.values()) == 2
    assert evaluate(p, {f"o{i}": "acc" for i in range(3)}) is None


def test_nowhere_to_run_names_op():
    p = chain([[None, (1e-3, 0)]], capacity=[{}, {}])
    p.cost["o0"] = [None, None]
    with pytest.raises(NoDeviceError, match="no placement"):
        partition_dp(p)


def random_dag(seed, n, ndev=3, objective="latency"):
    rng = random.Random(seed)
    ops = [f"n{i}" for i in range(n)]
    reads = {}
    for i, op in enumerate(ops):
        cands = ["x", *ops[:i]]
        k = rng.randint(1, min(2, len(cands)))
        reads[op] = sorted(set(rng.sample(cands[-4:], k)))
    devs = [f"d{j}" for j in range(ndev - 1)] + ["cpu"]
    cost = {}
    use = {}
    for op in ops:
        row = []
        for j in range(ndev):
            if j < ndev - 1 and rng.random() < 0.3:
                row.append(None)
            else:
                row.append((rng.uniform(1e-6, 1e-3), rng.uniform(1e-6, 1e-2)))
        cost[op] = row
        use[op] = [{"w": rng.randint(0, 5)} if j == 0 else {} for j in range(ndev)]
    links = [LinkSpec("l", rng.choice([1e5, 1e6, 1e8]), rng.choice([0, 1e-5, 1e-4]), 0.5)
             for _ in range(ndev - 1)] + [LinkSpec("h", float("inf"), 0)]
    sizes = {v: (rng.randint(1, 400) * 4, rng.randint(1, 400)) for v in ["x", *ops]}
    return Problem(ops=ops, reads=reads, graph_inputs=["x"], outputs=[ops[-1]], devices=devs,
                   cost=cost, use=use, capacity=[{"w": 8}] + [{}] * (ndev - 1), links=links,
                   integer=[True] * (ndev - 1) + [False], sizes=sizes, host=ndev - 1,
                   objective=objective)


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("objective", ["latency", "energy"])
def test_dp_equals_brute_force_and_beats_greedy(seed, objective):
    p = random_dag(seed, n=6 + seed % 3, objective=objective)
    dp, bf, gr = partition_dp(p), partition_brute(p), partition_greedy(p)
    assert dp.objective_value == pytest.approx(bf.objective_value, rel=1e-9, abs=1e-15)
    ev = evaluate(p, dp.placement)
    assert ev is not None
    assert (ev[0] if objective == "latency" else ev[1]) == pytest.approx(dp.objective_value, rel=1e-9)
    assert dp.objective_value <= gr.objective_value * (1 + 1e-12)


def with_budget(p, seed, min_cosine):
    """Give every integer placement of ``p`` one of three accuracy groups (by op) and drops."""
    rng = random.Random(1000 + seed)
    kinds = {op: rng.choice(["k0", "k1", "k2"]) for op in p.ops}
    p.acc_group = {op: [kinds[op] if p.integer[d] and p.cost[op][d] is not None else None
                        for d in range(len(p.devices))] for op in p.ops}
    p.acc_drop = {"k0": rng.uniform(0, 0.02), "k1": rng.uniform(0, 0.02), "k2": 0.3}
    p.min_cosine = min_cosine
    return p


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("objective", ["latency", "energy"])
def test_dp_exact_under_accuracy_budget(seed, objective):
    from compiler.partition import expected_cosine, groups_used

    p = with_budget(random_dag(seed, n=6 + seed % 3, objective=objective), seed, 0.985)
    dp, bf = partition_dp(p), partition_brute(p)
    assert dp.objective_value == pytest.approx(bf.objective_value, rel=1e-9, abs=1e-15)
    for r in (dp, bf):
        assert r.expected_cosine == expected_cosine(p, r.placement) >= 0.985 - 1e-12
        assert "k2" not in groups_used(p, r.placement)  # its drop alone breaks the budget
    try:
        gr = partition_greedy(p)
    except NoDeviceError:
        return
    assert gr.expected_cosine >= 0.985 - 1e-12
    assert dp.objective_value <= gr.objective_value * (1 + 1e-12)


def test_budget_keeps_costly_kind_off_the_accelerator():
    # three ops the accelerator runs 1000x faster; o1 is a "layer norm" that costs 0.25 cosine
    p = chain([[(1e-6, 0), (1e-3, 0)]] * 3)
    p.acc_group = {"o0": ["lin", None], "o1": ["ln", None], "o2": ["lin", None]}
    p.acc_drop = {"lin": 0.008, "ln": 0.25}
    assert partition_dp(p).placement == {"o0": "acc", "o1": "acc", "o2": "acc"}  # no budget
    assert partition_dp(p).expected_cosine == pytest.approx(1 - 0.258)
    p.min_cosine = 0.99
    r = partition_dp(p)
    assert r.placement == {"o0": "acc", "o1": "cpu", "o2": "acc"}
    assert r.expected_cosine == pytest.approx(0.992)
    p.min_cosine = 0.995  # not even the linears fit
    assert set(partition_dp(p).placement.values()) == {"cpu"}
    assert partition_dp(p).expected_cosine == 1.0
    p.cost["o1"] = [(1e-6, 0), None]  # the layer norm runs only on the accelerator
    with pytest.raises(NoDeviceError, match="cosine >= 0.995"):
        partition_dp(p)
