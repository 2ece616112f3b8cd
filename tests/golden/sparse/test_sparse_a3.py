"""A^3 golden model against a direct (loop and priority-queue) implementation of the paper."""

from __future__ import annotations

import heapq
import math

import pytest
import torch

from golden.sparse.a3 import A3Filter, a3_candidates


def _direct_candidates(q: list[float], keys: list[list[float]], m_iter: int) -> set[int]:
    """The paper's Fig. 7 loop with explicit sorted columns and heaps (our tie rules)."""
    n, d = len(keys), len(q)
    cols = [sorted(range(n), key=lambda r, j=j: (keys[r][j], r)) for j in range(d)]

    def entry(j: int, step: int, top: bool) -> tuple[float, int]:
        if step >= n:
            return (-math.inf if top else math.inf), -1
        pos = n - 1 - step if top else step
        r = cols[j][pos]
        return q[j] * keys[r][j], r

    pmax, pmin = [0] * d, [0] * d
    maxq = [(-entry(j, 0, q[j] > 0)[0], j) for j in range(d)]
    minq = [(entry(j, 0, not q[j] > 0)[0], j) for j in range(d)]
    heapq.heapify(maxq)
    heapq.heapify(minq)
    greedy = [0.0] * n
    cum = 0.0
    first = None
    for _ in range(m_iter):
        _, j = heapq.heappop(maxq)            # (-value, column): ties -> lowest column
        s, r = entry(j, pmax[j], q[j] > 0)
        first = r if first is None else first
        if s > 0:
            greedy[r] += s
            cum += s
        pmax[j] += 1
        heapq.heappush(maxq, (-entry(j, pmax[j], q[j] > 0)[0], j))
        if cum >= 0:
            _, j = heapq.heappop(minq)
            s, r = entry(j, pmin[j], not q[j] > 0)
            if s < 0:
                greedy[r] += s
                cum += s
            pmin[j] += 1
            heapq.heappush(minq, (entry(j, pmin[j], not q[j] > 0)[0], j))
    cand = {r for r in range(n) if greedy[r] > 0}
    return cand or {first}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("m", [0.25, 0.5, 1.0])
def test_candidate_search_matches_direct_loop(seed, m):
    g = torch.Generator().manual_seed(seed)
    n, d, pad = 7, 6, 2
    # on the 1/16 grid so that products are exact in both paths, with many ties
    q = torch.randint(-24, 25, (1, 2, n, d), generator=g).double() / 16
    k = torch.randint(-24, 25, (1, 2, n, d), generator=g).double() / 16
    km = torch.ones(1, n, dtype=torch.bool)
    km[0, n - pad:] = False
    got = a3_candidates(q, k, km, m)
    got_int = a3_candidates((q * 16).long(), (k * 16).long(), km, m)
    assert torch.equal(got, got_int)
    n_real = n - pad
    for h in range(2):
        keys = k[0, h, :n_real].tolist()
        for i in range(n_real):
            want = _direct_candidates(q[0, h, i].tolist(), keys, math.ceil(m * n_real))
            assert set(got[0, h, i].nonzero().flatten().tolist()) == want, (h, i)


def test_one_dominant_key_is_the_only_survivor():
    d, n = 8, 6
    q = torch.zeros(1, 1, n, d)
    q[..., 0] = 2.0
    k = torch.full((1, 1, n, d), 0.25)
    k[0, 0, 3, 0] = 8.0                      # q.k_3 = 16, others 0.5: 15.5/sqrt(8) > ln 20
    f = A3Filter(m=0.5, T=5.0)
    m = f.mask(q, k)
    assert m[0, 0].sum(-1).tolist() == [1] * n
    assert bool(m[0, 0, :, 3].all())


@pytest.mark.parametrize("T", [1.0, 5.0, 20.0])
def test_post_scoring_integer_and_float_agree_on_grid(T):
    g = torch.Generator().manual_seed(7)
    q = torch.randint(-100, 100, (2, 2, 9, 16), generator=g).double() / 16
    k = torch.randint(-100, 100, (2, 2, 9, 16), generator=g).double() / 16
    q[0, 0, 0, 0] = k[0, 0, 0, 0] = 127 / 16       # per-tensor int8 scale exactly 1/16
    km = torch.ones(2, 9, dtype=torch.bool)
    km[1, 6:] = False
    mi = A3Filter(m=0.5, T=T, integer=True).mask(q, k, km)
    mf = A3Filter(m=0.5, T=T, integer=False).mask(q, k, km)
    # inputs on the int8 grid of scale 1/16 (codes exact): the integer threshold
    # floor(t*sqrt(d)*256) is exact, so the masks differ only where s_max - s is within one
    # LSB (2^-8) of t*sqrt(d)
    dots = q @ k.transpose(-1, -2)
    t = math.log(100 / T) * 4
    near = ((dots.amax(-1, keepdim=True) - dots - t).abs() < 2 ** -8)
    assert torch.equal(mi & ~near, mf & ~near)
    # and the post-scoring rule holds on the float path: survivors within t of the best
    sm = dots.masked_fill(~mf, -math.inf).amax(-1, keepdim=True)
    assert bool(((sm - dots)[mf] <= t + 1e-9).all())



def _direct_side_inf(q: list[float], keys: list[list[float]], m_iter: int) -> set[int]:
    """Fig. 7 loop with heaps where an exhausted column offers -inf to the max queue and +inf
    to the min queue (whatever its walking direction), as the golden model documents."""
    n, d = len(keys), len(q)
    cols = [sorted(range(n), key=lambda r, j=j: (keys[r][j], r)) for j in range(d)]

    def entry(j: int, step: int, max_side: bool) -> tuple[float, int]:
        if step >= n:
            return (-math.inf if max_side else math.inf), -1
        top = (q[j] > 0) == max_side
        r = cols[j][n - 1 - step if top else step]
        return q[j] * keys[r][j], r

    ptr = {True: [0] * d, False: [0] * d}
    heaps = {True: [(-entry(j, 0, True)[0], j) for j in range(d)],
             False: [(entry(j, 0, False)[0], j) for j in range(d)]}
    for hp in heaps.values():
        heapq.heapify(hp)
    greedy, cum, first = [0.0] * n, 0.0, None
    for _ in range(m_iter):
        for side in (True, False):
            if not side and cum < 0:
                continue
            _, j = heapq.heappop(heaps[side])
            s, r = entry(j, ptr[side][j], side)
            first = r if first is None else first
            if (s > 0) if side else (s < 0):
                greedy[r] += s
                cum += s
            ptr[side][j] += 1
            v = entry(j, ptr[side][j], side)[0]
            heapq.heappush(heaps[side], (-v if side else v, j))
    return {r for r in range(n) if greedy[r] > 0} or {first}


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("m", [0.3, 1.0, 3.0])
def test_candidate_search_off_grid_and_exhausted_columns(seed, m):
    """Off-grid float64 inputs (no exact ties) and M > n*d (columns run off the end)."""
    g = torch.Generator().manual_seed(seed)
    n, d = 6, 2
    q = torch.randn(2, 2, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, n, d, generator=g, dtype=torch.float64)
    km = torch.ones(2, n, dtype=torch.bool)
    km[1, 4:] = False
    got = a3_candidates(q, k, km, m)
    for b in range(2):
        n_real = int(km[b].sum())
        for h in range(2):
            keys = k[b, h, :n_real].tolist()
            for i in range(n_real):
                want = _direct_side_inf(q[b, h, i].tolist(), keys, math.ceil(m * n_real))
                assert set(got[b, h, i].nonzero().flatten().tolist()) == want, (b, h, i)
