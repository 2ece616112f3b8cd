"""The exact placement search behind :func:`compiler.partition.partition_dp`, built to scale.

It optimizes exactly the model of :mod:`compiler.partition` (op costs, copies of values through
the host at their int8 or own size from the cheapest holder, outputs back on the host, resource
capacities) by dynamic programming over the ops, like the DP it replaced, with three changes that
keep the number of states small without losing the optimum:

1. **Search order.** The objective is a sum, so the ops may be visited in any topological order
   in which every value's readers keep their relative order: a value's copies, and so its
   transfer costs, depend only on the devices of its producer and of its readers *in reader
   order*. :func:`search_order` picks such an order greedily (among the ops ready to run, the
   one that frees the most values net of the one it creates), which shortens the lists of live
   values.

2. **Regret of a holder set.** For a live value ``v`` with its remaining readers (each with the
   devices it may run on) the *regret* ``R_v(a, b)`` is the largest amount by which holding ``v``
   on location set ``a`` can cost more in future transfers than holding it on ``b``, over every
   device sequence of those readers (a max-plus recursion over pairs of holder sets; a maximum of
   differences, so ``R_v(a, c) <= R_v(a, b) + R_v(b, c)``). Two sets with ``R(a, b) <= 0`` and
   ``R(b, a) <= 0`` cost the same in every future, so each set is replaced by the smallest set
   equivalent to it.

3. **Dominance.** All future costs are a sum of op costs and per-value transfer costs, so for
   every completion ``w`` of the placement ``cost(A, w) - cost(B, w) <= obj(A) - obj(B) +
   sum_v R_v(A_v, B_v)``. A state ``A`` therefore dominates ``B`` when that bound is <= 0 and
   ``A`` uses no more of any capacity-limited resource than ``B``: every completion of ``B`` is
   feasible from ``A`` and no cheaper from ``B``. Dominated states are dropped (pairwise, in
   numpy); dominance is transitive, so every dropped state has a kept one at least as good.

The search is exact when no state is dropped for any other reason. With more than
``max_states`` undominated states at one step, or after ``time_limit_s``, it keeps the most
promising states (a beam) and reports ``exact=False`` with a proven lower bound on the optimum:
the smallest ``obj + h`` over the dropped states, where ``h`` (the cheapest device of every
remaining op plus each live value's cheapest possible future transfers) never exceeds the true
cost of completing a state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from compiler.partition import Problem

__all__ = ["DeadEnd", "SearchOutcome", "search", "search_order"]

#: states above which the pairwise dominance check is preceded by a cheaper per-coordinate one
_PAIRWISE_MAX = 6000
#: states above which only the per-coordinate check runs (the pairwise one is quadratic)
_PAIRWISE_LIMIT = 10000
#: once past the time limit, each step keeps max_states // _LATE_SHRINK states
_LATE_SHRINK = 50
#: numpy elements per block of the pairwise check
_BLOCK = 1 << 22


@dataclass
class SearchOutcome:
    """What :func:`search` found: a placement (device index per op), its objective as the
    search summed it, whether it is provably optimal, and a lower bound on the optimum."""

    placement: list[int]
    objective: float
    exact: bool
    states: int
    lower_bound: float
    reason: str = ""
    #: the most states kept after one op
    peak: int = 0


class DeadEnd(Exception):
    """A bounded search kept only states that cannot be completed within the capacities."""

    def __init__(self, lower_bound: float, reason: str) -> None:
        super().__init__(reason)
        self.lower_bound = lower_bound
        self.reason = reason


def _readers(p: Problem, order: list[int]) -> dict[str, list[int]]:
    """value -> the positions (in ``order``) of the ops reading it, each op once."""
    out: dict[str, list[int]] = {}
    for pos, i in enumerate(order):
        for v in dict.fromkeys(p.reads[p.ops[i]]):
            out.setdefault(v, []).append(pos)
    return out


def search_order(p: Problem) -> list[int]:
    """A visiting order of ``p.ops`` (indices) for the search: topological, every value's readers
    in their original relative order (so the objective of every placement is unchanged), chosen
    greedily to keep few values live: among the ops ready to run, the one that frees the most
    values and creates the fewest, ties to the earliest in the original order."""
    n = len(p.ops)
    idx = {op: i for i, op in enumerate(p.ops)}
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    prev_reader: dict[str, int] = {}
    remaining: dict[str, int] = {}
    for i, op in enumerate(p.ops):
        before = set()
        for v in dict.fromkeys(p.reads[op]):
            if v in idx:
                before.add(idx[v])
            if v in prev_reader:
                before.add(prev_reader[v])
            prev_reader[v] = i
            remaining[v] = remaining.get(v, 0) + 1
        for j in before:
            succ[j].append(i)
        indeg[i] = len(before)
    outs = set(p.outputs)
    keeps = [op in remaining or op in outs for op in p.ops]
    ready = [i for i in range(n) if indeg[i] == 0]
    order: list[int] = []
    while ready:
        best = None
        for k, i in enumerate(ready):
            reads = dict.fromkeys(p.reads[p.ops[i]])
            freed = sum(1 for v in reads if remaining[v] == 1 and v not in outs)
            score = (int(keeps[i]) - freed, i)
            if best is None or score < best[0]:
                best = (score, k)
        assert best is not None
        i = ready.pop(best[1])
        order.append(i)
        for v in dict.fromkeys(p.reads[p.ops[i]]):
            remaining[v] -= 1
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    if len(order) != n:
        raise ValueError("the op list of the problem is not in topological order")
    return order


class _Regret:
    """Transfer costs, regrets and lower bounds of holder sets, memoized by signature.

    A signature (an int) stands for (size class of a value, the device masks its remaining
    readers may run on, whether it must end on the host); identical layers share signatures.
    """

    def __init__(self, p: Problem) -> None:
        self.p = p
        self.nloc = p.nloc
        self.ndev = len(p.devices)
        self.host = p.host
        self._tables: dict[tuple[int, int], list[list[float]]] = {}
        self._sig_ids: dict[tuple, int] = {}
        #: per signature: (cost table, first reader's device mask or 0, next signature, output)
        self.sigs: list[tuple[list[list[float]], int, int, bool]] = []
        self._v: dict[tuple[int, int, int], float] = {}
        self._low: dict[tuple[int, int], float] = {}
        self._canon: dict[tuple[int, int], int] = {}
        self.upd = [[self._update(m, d) for d in range(self.nloc)] for m in range(1 << self.nloc)]

    def _update(self, m: int, d: int) -> int:
        if m >> d & 1:
            return m
        return m | 1 << d | (1 << self.host if d != self.host and not m >> self.host & 1 else 0)

    def table(self, value: str) -> list[list[float]]:
        """``t[mask][d]``: objective cost of copying ``value`` from the cheapest holder in
        ``mask`` to location ``d`` (0 when ``d`` holds it), as :func:`compiler.partition.evaluate`
        charges it."""
        key = self.p.sizes.get(value, (0, 0))
        t = self._tables.get(key)
        if t is None:
            p, nl = self.p, self.nloc
            pair = [[p.score(p.transfer(value, s, d)) for d in range(nl)] for s in range(nl)]
            t = [[0.0] * nl]
            for m in range(1, 1 << nl):
                t.append([0.0 if m >> d & 1 else min(pair[s][d] for s in range(nl) if m >> s & 1)
                          for d in range(nl)])
            self._tables[key] = t
        return t

    def signature(self, value: str, masks: tuple[int, ...], output: bool) -> int:
        """The id of the signature of ``value`` with readers allowed on ``masks`` still to come."""
        key = (self.p.sizes.get(value, (0, 0)), masks, output)
        sid = self._sig_ids.get(key)
        if sid is None:
            nxt = self.signature(value, masks[1:], output) if masks else -1
            sid = self._sig_ids[key] = len(self.sigs)
            self.sigs.append((self.table(value), masks[0] if masks else 0, nxt, output))
        return sid

    def regret(self, sid: int, a: int, b: int) -> float:
        """Max over the remaining readers' device choices of (transfers from ``a``) - (from ``b``)."""
        if a == b:
            return 0.0
        key = (sid, a, b)
        r = self._v.get(key)
        if r is not None:
            return r
        t, allowed, nxt, out = self.sigs[sid]
        if not allowed:
            r = t[a][self.host] - t[b][self.host] if out else 0.0
        else:
            ua, ub = self.upd[a], self.upd[b]
            r = max(t[a][d] - t[b][d] + self.regret(nxt, ua[d], ub[d])
                    for d in range(self.ndev) if allowed >> d & 1)
        self._v[key] = r
        return r

    def lower(self, sid: int, a: int) -> float:
        """The least the value can still cost in transfers from holder set ``a``."""
        key = (sid, a)
        r = self._low.get(key)
        if r is not None:
            return r
        t, allowed, nxt, out = self.sigs[sid]
        if not allowed:
            r = t[a][self.host] if out else 0.0
        else:
            r = min(t[a][d] + self.lower(nxt, self.upd[a][d])
                    for d in range(self.ndev) if allowed >> d & 1)
        self._low[key] = r
        return r

    def canon(self, sid: int, a: int) -> int:
        """The smallest holder set that costs exactly what ``a`` costs in every future."""
        key = (sid, a)
        r = self._canon.get(key)
        if r is None:
            r = a
            for b in range(1, a):
                if self.regret(sid, a, b) <= 0.0 and self.regret(sid, b, a) <= 0.0:
                    r = b
                    break
            self._canon[key] = r
        return r


def _tracked(p: Problem) -> list[tuple[int, str]]:
    out = []
    for d, caps in enumerate(p.capacity):
        for r, cap in sorted(caps.items()):
            total = sum(p.use[op][d].get(r, 0) for op in p.ops if p.cost[op][d] is not None)
            if total > cap:
                out.append((d, r))
    return out


def _dominated(objs: np.ndarray, cols: list[np.ndarray], mats: list[np.ndarray],
               usage: np.ndarray | None) -> np.ndarray:
    """Which states (already sorted by objective) an earlier state dominates."""
    n = len(objs)
    dead = np.zeros(n, dtype=bool)
    step = max(1, _BLOCK // max(n, 1))
    for c0 in range(1, n, step):
        c1 = min(n, c0 + step)
        bound = np.repeat(objs[:c1, None], c1 - c0, axis=1)
        for inv, w in zip(cols, mats, strict=True):
            bound += w[inv[:c1, None], inv[None, c0:c1]]
        dom = bound <= objs[None, c0:c1]
        dom &= np.arange(c1)[:, None] < np.arange(c0, c1)[None, :]
        if usage is not None:
            for r in range(usage.shape[1]):
                dom &= usage[:c1, r][:, None] <= usage[c0:c1, r][None, :]
        dead[c0:c1] = dom.any(axis=0)
    return dead


def search(p: Problem, max_states: int = 50000, time_limit_s: float | None = None
           ) -> SearchOutcome:
    """Exact placement of ``p`` without its accuracy budget (see the module docstring).

    Raises ValueError (wrapped by the caller) when no placement fits the capacities, and
    :class:`DeadEnd` when a bounded search kept no state that can be completed.
    """
    t_start = time.perf_counter()
    order = search_order(p)
    n, ndev, host = len(p.ops), len(p.devices), p.host
    rg = _Regret(p)
    readers = _readers(p, order)
    allowed = [sum(1 << d for d in range(ndev) if p.cost[p.ops[i]][d] is not None) for i in order]
    outs = set(p.outputs)
    sig_of: dict[str, list[int]] = {}
    for v, pos in readers.items():
        masks = tuple(allowed[k] for k in pos)
        sig_of[v] = [rg.signature(v, masks[k:], v in outs) for k in range(len(masks) + 1)]
    for v in outs:
        if v not in sig_of:
            sig_of[v] = [rg.signature(v, (), True)]
    last = {v: pos[-1] for v, pos in readers.items()}
    for v in outs:
        last[v] = n
    done: dict[str, int] = {}  # readers of each value visited so far

    def sig(v: str) -> int:
        return sig_of[v][done.get(v, 0)]

    tracked = _tracked(p)
    caps = [p.capacity[d][r] for d, r in tracked]
    score = [[None if c is None else p.score(c) for c in p.cost[p.ops[i]]] for i in order]
    cheapest = [min(s for s in row if s is not None) if any(s is not None for s in row) else 0.0
                for row in score]
    rest = [0.0] * (n + 1)  # least op cost of the ops after each position
    for k in range(n - 1, -1, -1):
        rest[k] = rest[k + 1] + cheapest[k]

    live = [v for v in dict.fromkeys(p.graph_inputs) if v in last]
    zero = tuple(0 for _ in tracked)
    # per step: entry -> (parent entry, device); the frontier: key -> {usage: (obj, entry)}
    parents: list[list[tuple[int, int]]] = [[(-1, -1)]]
    frontier: dict[tuple[int, ...], dict[tuple[int, ...], tuple[float, int]]] = {
        tuple(rg.canon(sig(v), 1 << host) for v in live): {zero: (0.0, 0)}}
    exact, reason = True, ""
    lower_bound = float("inf")
    total_states = peak = 1
    for k, i in enumerate(order):
        op = p.ops[i]
        reads = list(dict.fromkeys(p.reads[op]))
        for v in reads:
            done[v] = done.get(v, 0) + 1
        keep_op = last.get(op, -1) > k
        new_live = [v for v in live if last[v] > k] + ([op] if keep_op else [])
        pos = {v: j for j, v in enumerate(live)}
        read_pos = [(pos[v], rg.table(v)) for v in reads]
        carry = [pos[v] for v in new_live if v != op]
        sigs = [sig(v) for v in new_live]
        use_rows = [[(j, p.use[op][d][r]) for j, (dd, r) in enumerate(tracked)
                     if dd == d and p.use[op][d].get(r)] for d in range(ndev)]
        entries: list[tuple[int, int]] = []
        new_front: dict[tuple[int, ...], dict[tuple[int, ...], tuple[float, int]]] = {}
        for key, group in frontier.items():
            for d in range(ndev):
                s = score[k][d]
                if s is None:
                    continue
                masks = list(key)
                step = s
                for j, t in read_pos:
                    m = masks[j]
                    if not m >> d & 1:
                        step += t[m][d]
                        masks[j] = rg.upd[m][d]
                nk = [masks[j] for j in carry]
                if keep_op:
                    nk.append(1 << d)
                nkey = tuple(rg.canon(sd, m) for sd, m in zip(sigs, nk, strict=True))
                bucket = new_front.setdefault(nkey, {})
                urow = use_rows[d]
                for usage, (obj, ent) in group.items():
                    if urow:
                        nu = list(usage)
                        for j, amount in urow:
                            nu[j] += amount
                        if any(a > c for a, c in zip(nu, caps, strict=True)):
                            continue
                        usage2 = tuple(nu)
                    else:
                        usage2 = usage
                    o = obj + step
                    old = bucket.get(usage2)
                    if old is None or o < old[0]:
                        bucket[usage2] = (o, len(entries))
                        entries.append((ent, d))
        new_front = {kk: b for kk, b in new_front.items() if b}
        if not new_front:
            if not exact:  # every placement is beyond a dropped state
                raise DeadEnd(lower_bound, reason)
            raise ValueError(f"no placement fits the device capacities (at op {op})")
        new_front = _prune(rg, new_front, sigs, bool(tracked))
        count = sum(len(b) for b in new_front.values())
        over_time = time_limit_s is not None and time.perf_counter() - t_start > time_limit_s
        if count > max_states or (over_time and count > 1):
            width = max_states if count > max_states else max(1, max_states // _LATE_SHRINK)
            ranked = []
            for kk, b in new_front.items():
                h = rest[k + 1] + sum(rg.lower(sd, m) for sd, m in zip(sigs, kk, strict=True))
                for usage, (o, ent) in b.items():
                    ranked.append((o + h, kk, usage, o, ent))
            ranked.sort(key=lambda x: x[0])
            if len(ranked) > width:
                lower_bound = min(lower_bound, ranked[width][0])
                if exact:
                    reason = (f"more than {max_states} states at op {op}" if count > max_states
                              else f"time limit {time_limit_s:g} s reached at op {op}")
                exact = False
            new_front = {}
            for _, kk, usage, o, ent in ranked[:width]:
                new_front.setdefault(kk, {})[usage] = (o, ent)
            count = min(count, width)
        total_states += count
        peak = max(peak, count)
        parents.append(entries)
        frontier = new_front
        live = new_live
    pos = {v: j for j, v in enumerate(live)}
    best: tuple[float, int] | None = None
    out_list = list(dict.fromkeys(p.outputs))
    for key, group in frontier.items():
        tail = sum(rg.table(v)[key[pos[v]]][host] for v in out_list)
        for obj, ent in group.values():
            if best is None or obj + tail < best[0]:
                best = (obj + tail, ent)
    assert best is not None
    placement = [0] * n
    ent = best[1]
    for k in range(n, 0, -1):
        ent, d = parents[k][ent]
        placement[order[k - 1]] = d
    return SearchOutcome(placement, best[0], exact, total_states,
                         best[0] if exact else min(best[0], lower_bound), reason, peak)


def _prune(rg: _Regret, front: dict[tuple[int, ...], dict[tuple[int, ...], tuple[float, int]]],
           sigs: list[int], has_usage: bool
           ) -> dict[tuple[int, ...], dict[tuple[int, ...], tuple[float, int]]]:
    """Drop the dominated states of a frontier (see the module docstring)."""
    flat = [(o, kk, u, ent) for kk, b in front.items() for u, (o, ent) in b.items()]
    if len(flat) < 2:
        return front
    if len(flat) > _PAIRWISE_MAX:  # one coordinate at a time first (states that differ in one)
        flat = _prune_coordinates(rg, flat, sigs)
        if len(flat) > _PAIRWISE_LIMIT:
            return _unflatten(flat)
    flat.sort(key=lambda x: x[0])
    objs = np.array([x[0] for x in flat])
    cols, mats = [], []
    for j, sd in enumerate(sigs):
        col = [x[1][j] for x in flat]
        uniq = sorted(set(col))
        if len(uniq) == 1:
            continue
        at = {m: x for x, m in enumerate(uniq)}
        cols.append(np.array([at[m] for m in col], dtype=np.intp))
        mats.append(np.array([[rg.regret(sd, a, b) for b in uniq] for a in uniq]))
    usage = np.array([x[2] for x in flat], dtype=np.int64) if has_usage else None
    dead = _dominated(objs, cols, mats, usage)
    return _unflatten([x for x, gone in zip(flat, dead, strict=True) if not gone])


def _unflatten(flat: list[tuple[float, tuple[int, ...], tuple[int, ...], int]]
               ) -> dict[tuple[int, ...], dict[tuple[int, ...], tuple[float, int]]]:
    out: dict[tuple[int, ...], dict[tuple[int, ...], tuple[float, int]]] = {}
    for o, kk, u, ent in flat:
        out.setdefault(kk, {})[u] = (o, ent)
    return out


def _prune_coordinates(rg: _Regret, flat: list[tuple[float, tuple[int, ...], tuple[int, ...], int]],
                       sigs: list[int]) -> list[tuple[float, tuple[int, ...], tuple[int, ...], int]]:
    """Dominance between states whose keys differ in one live value only (linear time)."""
    alive = sorted(flat, key=lambda x: x[0])
    for j, sd in enumerate(sigs):
        groups: dict[tuple, list[tuple[float, int, tuple[int, ...]]]] = {}
        keep: list[bool] = [True] * len(alive)
        for x, (o, kk, u, _) in enumerate(alive):
            g = groups.setdefault(kk[:j] + kk[j + 1:], [])
            m = kk[j]
            for o2, m2, u2 in g:
                if o2 + rg.regret(sd, m2, m) <= o and all(a <= b for a, b in zip(u2, u, strict=True)):
                    keep[x] = False
                    break
            else:
                g.append((o, m, u))
        alive = [x for x, k in zip(alive, keep, strict=True) if k]
    return alive
