"""Partitioner: place every op on a device, minimizing single-inference latency or energy.

Model. Ops run one at a time in topological order (one inference of a transformer is a
dependency chain; no overlap between devices is assumed). An op placed on device ``d`` costs
``cost[op][d]`` (seconds, joules). A value lives on a set of devices; before an op runs, each of
its inputs that is not on ``d`` is copied there from the cheapest holder, through the host
(device -> host -> device, paying both links; the host keeps a copy). Values travel as int8 to and
from integer (accelerator) devices and at their own dtype otherwise. Graph inputs start on the
host; graph outputs must end on it. Resources (weight bytes, crossbars) of the ops placed on a
device must fit its capacity.

Exact algorithm (:func:`partition_dp`): dynamic programming over the ops (in
:mod:`compiler.partition_exact`). The state is where every live value is held (a location set per
value still needed later) plus the resource usage on capacity-limited devices. It visits the ops
in an order that keeps few values live (any order that keeps every value's readers in order
prices every placement the same), merges holder sets that cost the same in every future, and
drops a state when another one is provably at least as good in every completion (its cost plus
the largest extra future transfers its holder sets can cause is no higher, with no more resource
usage). That is exact, and small: a 12-layer GPT-2 or Llama on four devices keeps a few hundred
states per op. Only when a step still has more than ``max_states`` states, or the search runs past
``time_limit_s``, does it keep the most promising ones, and then it reports ``exact: False``, the
reason and a proven lower bound on the optimum (so the gap is known).
:func:`partition_dp_classic` is the previous DP (every reachable holder configuration, Pareto
sets of (cost, usage) per configuration, a beam past ``max_states``), kept as a reference.
:func:`partition_greedy` is the baseline (each op on the device cheapest for it given what has
been placed), :func:`partition_brute` enumerates every placement (small graphs, for tests), and
:func:`evaluate` prices a given placement with the same model.

Accuracy budget. A problem may carry, per op and device, the accuracy *group* the op joins when
placed there (``acc_group``; integer devices only, see :mod:`compiler.accuracy`), each group's
measured cosine drop (``acc_drop``) and a floor ``min_cosine``. A placement's estimated cosine
is ``1 - sum(drop)`` over the groups it uses (:func:`expected_cosine`); placements below the
floor are not allowed. :func:`partition_dp` stays exact under the budget: a placement is allowed
exactly when the set of groups it uses fits, so it runs the DP once per *maximal* set of groups
that fits (the other groups' integer placements removed) and keeps the best result; every allowed
placement is a candidate of one of those runs. Groups are op kinds, a handful, so there are few
such sets (one or two on MiniLM).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from compiler.ir import Graph
from compiler.partition_exact import DeadEnd, _tracked, search
from compiler.targets.base import LinkSpec, Target
from golden.errors import UserValueError

__all__ = ["Problem", "Result", "build_problem", "evaluate", "expected_cosine", "groups_used",
           "partition_brute", "partition_dp", "partition_dp_classic", "partition_greedy",
           "NoDeviceError"]


class NoDeviceError(UserValueError):
    """Some op can run on none of the devices."""


@dataclass
class Problem:
    """A placement problem (see the module docstring); build it with :func:`build_problem`."""

    ops: list[str]
    reads: dict[str, list[str]]
    graph_inputs: list[str]
    outputs: list[str]
    devices: list[str]
    #: op -> per device (seconds, joules) or None when the device cannot run it
    cost: dict[str, list[tuple[float, float] | None]]
    #: op -> per device resource use
    use: dict[str, list[dict[str, int]]] = field(default_factory=dict)
    capacity: list[dict[str, int]] = field(default_factory=list)
    links: list[LinkSpec] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    #: value -> (bytes at its dtype, elements)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    host: int = -1  # index of the host location (== len(devices) when no host device is listed)
    objective: str = "latency"
    #: op -> per device the accuracy group the op joins there (None: no accuracy cost)
    acc_group: dict[str, list[str | None]] = field(default_factory=dict)
    #: accuracy group -> its estimated output cosine drop (0 or more)
    acc_drop: dict[str, float] = field(default_factory=dict)
    #: the lowest estimated cosine a placement may have (None: no budget)
    min_cosine: float | None = None

    @property
    def nloc(self) -> int:
        """Number of locations (devices plus a virtual host when none is listed)."""
        return len(self.devices) + (1 if self.host == len(self.devices) else 0)

    def link(self, loc: int) -> LinkSpec:
        """The host link of a location."""
        if loc == self.host:
            return LinkSpec("host", float("inf"), 0.0)
        return self.links[loc]

    def nbytes(self, value: str, a: int, b: int) -> int:
        """Bytes moved for ``value`` between locations ``a`` and ``b``."""
        full, numel = self.sizes.get(value, (0, 0))
        integer = [*self.integer, False]
        return numel if (integer[a] or integer[b]) else full

    def transfer(self, value: str, a: int, b: int) -> tuple[float, float]:
        """(seconds, joules) to copy ``value`` from location ``a`` to ``b`` via the host."""
        if a == b:
            return 0.0, 0.0
        n = self.nbytes(value, a, b)
        t = e = 0.0
        for loc in (a, b):
            if loc != self.host:
                lk = self.link(loc)
                t += lk.seconds(n)
                e += lk.energy(n)
        return t, e

    def score(self, te: tuple[float, float]) -> float:
        """The objective's component of a (seconds, joules) pair."""
        return te[0] if self.objective == "latency" else te[1]


@dataclass
class Result:
    """A placement with its predicted totals."""

    placement: dict[str, str]
    objective_value: float
    latency_s: float
    energy_j: float
    exact: bool = True
    states: int = 0
    #: estimated output cosine (None when the problem has no accuracy data)
    expected_cosine: float | None = None
    #: a proven lower bound on the optimum (equal to ``objective_value`` when exact; None when
    #: the algorithm gives none, as the greedy baseline)
    lower_bound: float | None = None
    #: how the placement was found (the plan's ``partition.algorithm``)
    algorithm: str = "dp"
    #: why the search was not exhaustive ("" when exact)
    reason: str = ""

    @property
    def gap(self) -> float | None:
        """Relative optimality gap ``(objective - lower bound) / objective`` (0 when exact)."""
        if self.lower_bound is None:
            return None
        if self.objective_value <= 0:
            return 0.0
        return max(0.0, (self.objective_value - self.lower_bound) / self.objective_value)


def build_problem(graph: Graph, devices: list[Target], objective: str = "latency") -> Problem:
    """Cost every op on every device that supports it; NoDeviceError names an op with none."""
    if objective not in ("latency", "energy"):
        raise UserValueError(f"objective must be latency or energy, not {objective!r}")
    for d in devices:
        d.configure(graph)
    names = [d.name for d in devices]
    hosts = [i for i, d in enumerate(devices) if d.is_host]
    host = hosts[0] if hosts else len(devices)
    cost: dict[str, list[tuple[float, float] | None]] = {}
    use: dict[str, list[dict[str, int]]] = {}
    for n in graph.nodes:
        row: list[tuple[float, float] | None] = []
        urow: list[dict[str, int]] = []
        reasons = []
        for d in devices:
            s = d.supports(n)
            if s.ok:
                c = d.cost(n, graph)
                row.append((c.seconds, c.energy_j))
                urow.append(dict(c.resources))
            else:
                row.append(None)
                urow.append({})
                reasons.append(f"{d.name}: {s.reason}")
        if all(r is None for r in row):
            at = f", at {n.attrs['source']}" if n.attrs.get("source") else ""
            raise NoDeviceError(f"op {n.name} ({n.op}, {n.target}, from {n.module or 'the model'}"
                                f"{at}) has nowhere to run: {'; '.join(reasons)}; add cpu or gpu")
        cost[n.name] = row
        use[n.name] = urow
    for d in devices:
        save = getattr(d, "save_cache", None)
        if save:
            save()
    sizes = {name: (t.nbytes, t.numel) for name, t in graph.inputs}
    for n in graph.nodes:
        sizes[n.name] = (n.out_bytes, sum(t.numel for t in n.out))
    for n in graph.nodes:  # 16-bit inputs travel as 2 bytes, int32 results as 4
        q = n.attrs.get("quant") or {}
        if q.get("in_bits") == 16 and n.inputs:
            full, numel = sizes[n.inputs[0]]
            sizes[n.inputs[0]] = (full, max(numel, 2 * sum(t.numel for t in graph.value_type(
                n.inputs[0]))))
        if q.get("out_bits") == 32:
            sizes[n.name] = (n.out_bytes, 4 * sum(t.numel for t in n.out))
    return Problem(ops=[n.name for n in graph.nodes], reads={n.name: list(n.inputs) for n in graph.nodes},
                   graph_inputs=[n for n, _ in graph.inputs], outputs=[r.name for r in graph.outputs],
                   devices=names, cost=cost, use=use, capacity=[dict(d.capacity) for d in devices],
                   links=[d.link for d in devices], integer=[d.integer for d in devices],
                   sizes=sizes, host=host, objective=objective)


def _last_use(p: Problem) -> dict[str, int]:
    last: dict[str, int] = {}
    for i, op in enumerate(p.ops):
        for v in p.reads[op]:
            last[v] = i
    for v in p.outputs:
        last[v] = len(p.ops)
    return last


def _best_source(p: Problem, value: str, mask: int, dst: int) -> tuple[float, float]:
    best: tuple[float, float] | None = None
    for s in range(p.nloc):
        if mask >> s & 1:
            te = p.transfer(value, s, dst)
            if best is None or p.score(te) < p.score(best):
                best = te
    assert best is not None
    return best


def evaluate(p: Problem, placement: dict[str, str]) -> tuple[float, float, list[dict[str, Any]]] | None:
    """Price a placement: ``(latency_s, energy_j, schedule)``, or None if it is infeasible."""
    idx = {d: i for i, d in enumerate(p.devices)}
    where: dict[str, int] = {v: 1 << p.host for v in p.graph_inputs}
    usage: list[dict[str, int]] = [dict() for _ in p.devices]
    t_now = e_tot = 0.0
    sched: list[dict[str, Any]] = []
    for op in p.ops:
        d = idx[placement[op]]
        c = p.cost[op][d]
        if c is None:
            return None
        for r, u in p.use[op][d].items():
            usage[d][r] = usage[d].get(r, 0) + u
            cap = p.capacity[d].get(r)
            if cap is not None and usage[d][r] > cap:
                return None
        t_in = e_in = 0.0
        for v in p.reads[op]:
            m = where[v]
            if not m >> d & 1:
                te = _best_source(p, v, m, d)
                t_in += te[0]
                e_in += te[1]
                where[v] = m | 1 << d | (1 << p.host if d != p.host and not m >> p.host & 1
                                         and _via_host(m, p.host) else 0)
        start = t_now + t_in
        sched.append({"op": op, "device": p.devices[d], "transfer_in_s": t_in, "start_s": start,
                      "end_s": start + c[0], "energy_j": c[1] + e_in})
        t_now = start + c[0]
        e_tot += c[1] + e_in
        where[op] = 1 << d
    for v in p.outputs:
        m = where[v]
        if not m >> p.host & 1:
            te = _best_source(p, v, m, p.host)
            t_now += te[0]
            e_tot += te[1]
            where[v] = m | 1 << p.host
    return t_now, e_tot, sched


def groups_used(p: Problem, placement: dict[str, str]) -> set[str]:
    """The accuracy groups a placement puts at least one op into."""
    idx = {d: i for i, d in enumerate(p.devices)}
    out = set()
    for op, dev in placement.items():
        row = p.acc_group.get(op)
        if row and row[idx[dev]] is not None:
            out.add(row[idx[dev]])
    return out


def _cosine_of(p: Problem, groups: set[str] | frozenset[str]) -> float:
    return max(-1.0, 1.0 - sum(p.acc_drop.get(g, 0.0) for g in groups))


def expected_cosine(p: Problem, placement: dict[str, str]) -> float | None:
    """Estimated output cosine of a placement: ``1 - sum(drop)`` over the groups it uses
    (floored at -1); None when the problem carries no accuracy data."""
    if not p.acc_group:
        return None
    return _cosine_of(p, groups_used(p, placement))


def _fits(p: Problem, groups: set[str] | frozenset[str]) -> bool:
    return p.min_cosine is None or _cosine_of(p, groups) >= p.min_cosine - 1e-12


def _budgeted(p: Problem) -> bool:
    return p.min_cosine is not None and bool(p.acc_group)


def _via_host(mask: int, host: int) -> bool:
    """A copy between two non-host devices passes through the host (which keeps it)."""
    return not mask >> host & 1


def partition_brute(p: Problem) -> Result:
    """Try every placement (exponential: small problems only)."""
    if len(p.ops) > 14:
        raise UserValueError(f"brute force over {len(p.ops)} ops is too large")
    best: Result | None = None
    choices = [[p.devices[d] for d in range(len(p.devices)) if p.cost[op][d] is not None]
               for op in p.ops]
    for combo in itertools.product(*choices):
        pl = dict(zip(p.ops, combo, strict=True))
        r = evaluate(p, pl)
        if r is None:
            continue
        if _budgeted(p) and not _fits(p, groups_used(p, pl)):
            continue
        val = r[0] if p.objective == "latency" else r[1]
        if best is None or val < best.objective_value - 1e-15:
            best = Result(pl, val, r[0], r[1], expected_cosine=expected_cosine(p, pl),
                          lower_bound=val, algorithm="brute force")
    if best is None:
        raise NoDeviceError("no placement satisfies the device capacities"
                            + (" and the accuracy budget" if _budgeted(p) else ""))
    return best


def _maximal_sets(p: Problem) -> list[frozenset[str]]:
    """Every set of accuracy groups that fits the budget and to which no further group can be
    added (a depth-first search; when all remaining groups fit, they are taken at once)."""
    names = sorted(p.acc_drop, key=lambda g: (p.acc_drop[g], g))
    found: list[frozenset[str]] = []

    def walk(i: int, chosen: frozenset[str]) -> None:
        if i == len(names):
            if all(g in chosen or not _fits(p, chosen | {g}) for g in names):
                found.append(chosen)
            return
        rest = frozenset(names[i:])
        if _fits(p, chosen | rest):
            walk(len(names), chosen | rest)
            return
        if _fits(p, chosen | {names[i]}):
            walk(i + 1, chosen | {names[i]})
        walk(i + 1, chosen)

    walk(0, frozenset())
    return found


def _restrict(p: Problem, allowed: frozenset[str]) -> Problem:
    """The problem without the integer placements of groups outside ``allowed`` (no budget)."""
    cost = {}
    for op, row in p.cost.items():
        groups = p.acc_group.get(op) or [None] * len(row)
        cost[op] = [c if g is None or g in allowed else None
                    for c, g in zip(row, groups, strict=True)]
    return replace(p, cost=cost, min_cosine=None)


def _budget_error(p: Problem, why: str) -> NoDeviceError:
    costs = ", ".join(f"{g} {1 - d:.4f}" for g, d in sorted(p.acc_drop.items(),
                                                             key=lambda kv: -kv[1]))
    return NoDeviceError(f"no placement keeps the estimated output cosine >= {p.min_cosine:g} "
                         f"({why}); measured cosine with only that group in integer: {costs}; "
                         "add a float device (cpu) or lower --min-cosine")


def partition_dp(p: Problem, max_states: int = 50000,
                 time_limit_s: float | None = 120.0) -> Result:
    """Exact placement by dynamic programming (see the module docstring), within the accuracy
    budget when the problem has one. ``max_states`` (per op) and ``time_limit_s`` (per run of
    the search) bound the work; past them the result says ``exact=False`` and how far from the
    optimum it can be at most (``lower_bound``, ``gap``, ``algorithm``)."""
    return _over_budget(p, lambda q: _search(q, max_states, time_limit_s))


def partition_dp_classic(p: Problem, max_states: int = 50000) -> Result:
    """The previous exact DP (no dominance between holder configurations, the ops in their own
    order): exact while no op has more than ``max_states`` states, then a beam. Kept as a
    reference for tests and ``benchmarks/partition_scale.py``."""
    return _over_budget(p, lambda q: _dp(q, max_states))


def _search(p: Problem, max_states: int, time_limit_s: float | None) -> Result:
    for attempt in range(4):  # a bounded search whose kept states dead-end: keep more
        try:
            out = search(p, max_states * 8 ** attempt, time_limit_s)
            break
        except ValueError as e:
            raise NoDeviceError(str(e)) from None
        except DeadEnd as e:
            dead = e
    else:
        raise NoDeviceError(f"no placement found within the limits ({dead.reason}); the states "
                            "kept could not be completed within the device capacities")
    placement = {op: p.devices[d] for op, d in zip(p.ops, out.placement, strict=True)}
    ev = evaluate(p, placement)
    assert ev is not None, "the search returned an infeasible placement"
    value = ev[0] if p.objective == "latency" else ev[1]
    r = Result(placement, value, ev[0], ev[1], out.exact, out.states,
               lower_bound=value if out.exact else min(value, out.lower_bound),
               reason=out.reason)
    _label(r)
    return r


def _label(r: Result) -> None:
    """Set ``r.algorithm``: its name (``dp``) when exact, else what bounded it and the gap."""
    name = r.algorithm.split(",")[0]
    if r.exact:
        r.algorithm = name
    elif r.lower_bound is None:
        r.algorithm = f"{name}, bounded ({r.reason or 'beam'}; optimality gap unknown)"
    else:
        r.algorithm = (f"{name}, bounded ({r.reason}; optimality gap <= "
                       f"{100 * (r.gap or 0):.3g}%, lower bound {r.lower_bound:.6g})")


def _over_budget(p: Problem, solve: Any) -> Result:
    """``solve`` (a problem without budget -> Result) within the accuracy budget of ``p``."""
    if not _budgeted(p):
        r = solve(p)
        r.expected_cosine = expected_cosine(p, r.placement)
        return r
    best: Result | None = None
    states = 0
    exact = True
    lowers: list[float | None] = []  # every allowed placement is a candidate of one set
    reasons: list[str] = []
    last_err: NoDeviceError | None = None
    for allowed in _maximal_sets(p):
        try:
            r = solve(_restrict(p, allowed))
        except NoDeviceError as e:
            last_err = e
            continue
        states += r.states
        exact = exact and r.exact
        if not r.exact:
            reasons.append(r.reason)
        lowers.append(r.lower_bound)
        if best is None or r.objective_value < best.objective_value:
            best = r
    if best is None:
        raise _budget_error(p, str(last_err) if last_err else "no set of groups fits")
    best.states, best.exact = states, exact
    best.lower_bound = (None if any(b is None for b in lowers)
                        else min([best.objective_value, *(b for b in lowers if b is not None)]))
    best.reason = "; ".join(dict.fromkeys(reasons))
    _label(best)
    best.expected_cosine = expected_cosine(p, best.placement)
    return best


def _dp(p: Problem, max_states: int) -> Result:
    """The classic dynamic program itself (no accuracy budget)."""
    last = _last_use(p)
    tracked = _tracked(p)
    caps = [p.capacity[d][r] for d, r in tracked]
    live: list[str] = [v for v in p.graph_inputs if v in last]
    # entry: (objective, usage tuple, parent index, device, (t, e))
    init_key = tuple(1 << p.host for _ in live)
    layers: list[list[tuple[float, tuple[int, ...], int, int]]] = []
    frontier: dict[tuple[int, ...], list[int]] = {init_key: [0]}
    entries: list[tuple[float, tuple[int, ...], int, int, float, float]] = [
        (0.0, tuple(0 for _ in tracked), -1, -1, 0.0, 0.0)]
    all_entries: list[list[tuple[float, tuple[int, ...], int, int, float, float]]] = [entries]
    exact = True
    total_states = 1
    for i, op in enumerate(p.ops):
        reads = p.reads[op]
        new_live = [v for v in live if last.get(v, -1) > i]
        if last.get(op, -1) > i:
            new_live.append(op)
        pos = {v: k for k, v in enumerate(live)}
        new_front: dict[tuple[int, ...], list[int]] = {}
        new_entries: list[tuple[float, tuple[int, ...], int, int, float, float]] = []
        for key, idxs in frontier.items():
            for d in range(len(p.devices)):
                c = p.cost[op][d]
                if c is None:
                    continue
                masks = list(key)
                t_in = e_in = 0.0
                for v in reads:
                    k = pos[v]
                    m = masks[k]
                    if not m >> d & 1:
                        te = _best_source(p, v, m, d)
                        t_in += te[0]
                        e_in += te[1]
                        masks[k] = m | 1 << d | (1 << p.host if d != p.host and _via_host(m, p.host) else 0)
                step = p.score((t_in + c[0], e_in + c[1]))
                u_op = p.use[op][d]
                nk = tuple([masks[pos[v]] for v in new_live if v != op] +
                           ([1 << d] if op in new_live else []))
                for ei in idxs:
                    obj, usage, _, _, tt, ee = all_entries[-1][ei]
                    nu = list(usage)
                    ok = True
                    for j, (dd, r) in enumerate(tracked):
                        if dd == d and r in u_op:
                            nu[j] += u_op[r]
                            if nu[j] > caps[j]:
                                ok = False
                    if not ok:
                        continue
                    cand = (obj + step, tuple(nu), ei, d, tt + t_in + c[0], ee + e_in + c[1])
                    bucket = new_front.setdefault(nk, [])
                    _insert_pareto(bucket, new_entries, cand)
        if not new_front:
            raise NoDeviceError(f"no placement fits the device capacities (at op {op})")
        count = sum(len(v) for v in new_front.values())
        if count > max_states:  # beam fallback, flagged as not exact
            exact = False
            ranked = sorted(((new_entries[j][0], k, j) for k, js in new_front.items() for j in js))
            keep = ranked[:max_states]
            new_front = {}
            for _, k, j in keep:
                new_front.setdefault(k, []).append(j)
        total_states += count
        all_entries.append(new_entries)
        frontier = new_front
        live = new_live
    # final transfers of outputs to the host
    pos = {v: k for k, v in enumerate(live)}
    best: tuple[float, int, float, float] | None = None
    for key, idxs in frontier.items():
        t_out = e_out = 0.0
        for v in p.outputs:
            m = key[pos[v]]
            if not m >> p.host & 1:
                te = _best_source(p, v, m, p.host)
                t_out += te[0]
                e_out += te[1]
        for ei in idxs:
            obj, _, _, _, tt, ee = all_entries[-1][ei]
            tot = obj + p.score((t_out, e_out))
            if best is None or tot < best[0]:
                best = (tot, ei, tt + t_out, ee + e_out)
    assert best is not None
    placement: dict[str, str] = {}
    ei = best[1]
    for step in range(len(p.ops), 0, -1):
        e = all_entries[step][ei]
        placement[p.ops[step - 1]] = p.devices[e[3]]
        ei = e[2]
    del layers
    return Result(dict(reversed(list(placement.items()))), best[0], best[2], best[3], exact,
                  total_states, lower_bound=best[0] if exact else None, algorithm="dp-classic",
                  reason="" if exact else f"more than {max_states} states at some op")


def _insert_pareto(bucket: list[int], entries: list[Any], cand: Any) -> None:
    """Add ``cand`` to a bucket unless dominated; drop the entries it dominates."""
    obj, usage = cand[0], cand[1]
    keep = []
    for j in bucket:
        o2, u2 = entries[j][0], entries[j][1]
        if o2 <= obj and all(a <= b for a, b in zip(u2, usage, strict=True)):
            return
        if not (obj <= o2 and all(a <= b for a, b in zip(usage, u2, strict=True))):
            keep.append(j)
    entries.append(cand)
    keep.append(len(entries) - 1)
    bucket[:] = keep


def partition_greedy(p: Problem) -> Result:
    """Baseline: each op, in order, on the device cheapest for it now (op + input transfers)."""
    where: dict[str, int] = {v: 1 << p.host for v in p.graph_inputs}
    usage: list[dict[str, int]] = [dict() for _ in p.devices]
    placement: dict[str, str] = {}
    used: set[str] = set()  # accuracy groups spent so far (a group breaking the budget is skipped)
    for op in p.ops:
        best: tuple[float, int] | None = None
        for d in range(len(p.devices)):
            c = p.cost[op][d]
            if c is None:
                continue
            grp = (p.acc_group.get(op) or [None] * len(p.devices))[d]
            if _budgeted(p) and grp is not None and not _fits(p, used | {grp}):
                continue
            if any(usage[d].get(r, 0) + u > p.capacity[d].get(r, float("inf"))
                   for r, u in p.use[op][d].items()):
                continue
            t = e = 0.0
            for v in p.reads[op]:
                if not where[v] >> d & 1:
                    te = _best_source(p, v, where[v], d)
                    t += te[0]
                    e += te[1]
            val = p.score((t + c[0], e + c[1]))
            if best is None or val < best[0]:
                best = (val, d)
        if best is None:
            raise NoDeviceError(f"greedy: no device has room for op {op}"
                                + (" within the accuracy budget" if _budgeted(p) else ""))
        d = best[1]
        grp = (p.acc_group.get(op) or [None] * len(p.devices))[d]
        if grp is not None:
            used.add(grp)
        for r, u in p.use[op][d].items():
            usage[d][r] = usage[d].get(r, 0) + u
        for v in p.reads[op]:
            m = where[v]
            if not m >> d & 1:
                where[v] = m | 1 << d | (1 << p.host if d != p.host and _via_host(m, p.host) else 0)
        where[op] = 1 << d
        placement[op] = p.devices[d]
    r = evaluate(p, placement)
    assert r is not None
    return Result(placement, r[0] if p.objective == "latency" else r[1], r[0], r[1],
                  exact=False, expected_cosine=expected_cosine(p, placement), algorithm="greedy")
