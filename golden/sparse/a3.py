"""A^3 (Ham et al., HPCA 2020): greedy candidate search over sorted key columns, then
post-scoring selection.

Integer model (``integer=True``): Q and K are 9-bit fixed point (1 sign + 4 integer + 4
fraction bits, round half even, saturate); products and dot products are exact int64 with
8 fraction bits and *without* ``1/sqrt(d)``.

1. Candidate search (``m`` = M/n; ``None`` skips it). Every column of K is sorted ascending
   by (value, row) over the real keys (stable: lower row first on equal values). Per query,
   a max queue holds, per column j, the product ``q_j * K[ptr_j, j]`` at the column's max
   pointer (starting at the largest value when ``q_j > 0``, else at the smallest, then
   walking inward); a min queue likewise from the other end. ``M = ceil(m * n)`` iterations
   (n = real keys): pop the max entry (ties: lowest column index), add it to the row's
   greedy score if positive, advance that pointer; then, only when the cumulative sum of the
   added entries is >= 0, pop the min entry (ties: lowest column index), add it if negative,
   advance. A pointer that has walked past the last real key offers -inf (max queue) or
   +inf (min queue). Candidates: rows with greedy score > 0. If none, the row popped first
   (the largest single product) is the candidate.
2. Post-scoring (``T`` percent; 0 skips it): the exact dot ``s`` of every candidate is
   computed; a candidate survives iff ``s_max - s <= t`` with ``t = ln(100/T)`` on the
   scaled logit. In integers the threshold applies to raw dots:
   ``t_int = floor(t * sqrt(d) * 2**8)``, exact because the dots are integers.

The float twin runs the same algorithm on float64 Q, K (no 9-bit format).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from golden.errors import UserValueError
from golden.sparse.base import (
    SparseAttentionFilter,
    _default_key_mask,
    check_range,
    ensure_nonempty,
    quantize_fixed,
    register_filter,
    valid_pairs,
)

__all__ = ["A3Filter", "a3_candidates", "a3_post_scoring"]

INT_BITS = 4
FRAC_BITS = 4


def _walk_orders(q: torch.Tensor, ks: torch.Tensor, asc: torch.Tensor, n: torch.Tensor, steps: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pop order of the max and min queues over a fixed number of ``steps`` pops.

    Along its walk every column offers monotone products (non-increasing from the max pointer,
    non-decreasing from the min pointer), so the queue pops are a merge of ``d`` sorted lists:
    the max queue pops the entries in the order (value descending, column, step) and the min
    queue in the order (value ascending, column, step), whatever the interleaving of the two
    queues. Returns the popped values and rows ``[B, H, Lq, steps]`` of both queues; entries
    past the real keys of a column are -inf (max queue) / +inf (min queue). Integer inputs
    sort one unique integer key per entry (value, then the tie order), float inputs use a
    stable sort.
    """
    b, h, lq, d = q.shape
    lk = ks.shape[2]
    w = d * lk
    is_int = not q.dtype.is_floating_point
    s_ar = torch.arange(lk)
    nb = n.view(b, 1, 1)
    top = (nb - 1 - s_ar).clamp(0, lk - 1)                                 # [B,1,Lk]
    ks_top = torch.gather(ks, 2, top[..., None].expand(b, h, lk, d))      # walking down
    past = (s_ar >= nb)[:, :, None, None, :]                              # [B,1,1,1,Lk]
    if is_int:
        bound = int(q.abs().max()) * int(ks.abs().max()) + 1
        if (bound + 1) * w >= 2 ** 62:
            raise UserValueError("a3_candidates: integer products too wide for the sort key")
        kdt = torch.int32 if (bound + 1) * w < 2 ** 31 else torch.int64
        lo, hi = torch.tensor(-bound * w, dtype=kdt), torch.tensor(bound * w, dtype=kdt)
        tie = (w - 1 - torch.arange(w)).to(kdt)                           # earlier (column, step) first
        q, ks, ks_top = q.to(kdt), ks.to(kdt), ks_top.to(kdt)
    else:
        lo = torch.tensor(float("-inf"), dtype=q.dtype)
        hi = torch.tensor(float("inf"), dtype=q.dtype)
    kk = min(steps, w)
    sn = min(kk, lk)                      # a column offers at most kk entries to the first kk pops
    top_t = ks_top[:, :, :sn].transpose(-1, -2).contiguous()[:, :, None]  # [B,H,1,d,S]
    bot_t = ks[:, :, :sn].transpose(-1, -2).contiguous()[:, :, None]
    past = past[..., :sn]
    tie = tie.view(d, lk)[:, :sn].reshape(-1) if is_int else None
    if is_int:                            # fold the key scale into the (small) key columns
        top_t, bot_t = top_t * w, bot_t * w
    ws = d * sn
    asc_flat = asc.reshape(b, h, 1, lk * d)                               # pos * d + column
    hc = max(1, (1 << 23) // max(1, b * lq * ws))                         # heads per chunk (memory)
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    for h0 in range(0, h, hc):
        sl = slice(h0, h0 + hc)
        qh = q[:, sl]
        hn = qh.shape[1]
        qpos = (qh > 0)[..., None]                                        # [B,h,Lq,d,1]
        prod_top = qh[..., None] * top_t[:, sl]
        prod_bot = qh[..., None] * bot_t[:, sl]
        for side in (0, 1):
            walk_top = qpos if side == 0 else ~qpos
            v = torch.where(walk_top, prod_top, prod_bot).masked_fill_(past, lo if side == 0 else hi)
            v = v.view(b, hn, lq, ws)
            if is_int:                                                    # unique key: value, then tie order
                key = v + tie if side == 0 else tie - v
                idx = torch.topk(key, kk, dim=-1, sorted=True).indices
                val = torch.div(v.gather(-1, idx), w, rounding_mode="floor").to(torch.int64)
            else:
                idx = torch.sort(v, dim=-1, descending=side == 0, stable=True).indices[..., :kk]
                val = v.gather(-1, idx)
            j, st = idx // sn, idx % sn
            from_top = walk_top.squeeze(-1).gather(-1, j)
            pos = torch.where(from_top, n.view(b, 1, 1, 1) - 1 - st, st).clamp(0, lk - 1)
            parts[2 * side].append(val)
            parts[2 * side + 1].append(asc_flat[:, sl].expand(b, hn, lq, lk * d).gather(-1, pos * d + j))
    vmax, rmax, vmin, rmin = (torch.cat(x, 1) for x in parts)
    if kk < steps:                                                        # more pops than entries
        extra = steps - kk
        vmax = torch.cat([vmax, vmax.new_full((b, h, lq, extra), -1 if is_int else float(lo))], -1)
        vmin = torch.cat([vmin, vmin.new_full((b, h, lq, extra), 1 if is_int else float(hi))], -1)
        rmax = torch.cat([rmax, rmax.new_zeros(b, h, lq, extra)], -1)
        rmin = torch.cat([rmin, rmin.new_zeros(b, h, lq, extra)], -1)
    return vmax, rmax, vmin, rmin


def a3_candidates(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, m: float) -> torch.Tensor:
    """Greedy candidate search (module docstring, step 1), vectorised over all queries.

    ``q`` ``[B, H, Lq, d]`` and ``k`` ``[B, H, Lk, d]`` are int64 codes or float64 values;
    returns bool ``[B, H, Lq, Lk]`` (only real keys; query padding is not masked here).

    The max-queue pops do not depend on the min queue, and each queue pops the merge of the
    monotone column walks (``_walk_orders``), so both pop sequences are computed up front
    with one sort per query; only the paper's cumulative-sum gate of the min queue is
    sequential, and it runs on ``[B, H, Lq]`` scalars. The greedy scores are accumulated in
    the same order as the paper's loop (max pop, then min pop, per iteration).
    """
    b, h, lq, d = q.shape
    lk = k.shape[2]
    if lq != lk:
        raise UserValueError("a3_candidates expects self-attention (Lq == Lk)")
    is_int = not q.dtype.is_floating_point
    km = key_mask[:, None, :, None].expand(b, h, lk, d)
    # sort each column ascending by (value, row); padding keys sort after every real key
    pad_val = torch.tensor(2 ** 62, dtype=torch.int64) if is_int else torch.tensor(float("inf"), dtype=k.dtype)
    asc = torch.sort(torch.where(km, k, pad_val), dim=2, stable=True).indices   # [B,H,Lk,d]
    ks = torch.gather(k, 2, asc)                                          # sorted values
    n = key_mask.sum(1).to(torch.int64)[:, None, None, None]              # [B,1,1,1]
    m_iter = torch.ceil(n.double() * m).to(torch.int64).clamp_min(1)
    steps = int(m_iter.max())
    vmax, rmax, vmin, rmin = _walk_orders(q, ks, asc, n, steps)
    zero = torch.zeros((), dtype=q.dtype)
    greedy = torch.zeros(b, h, lq, lk, dtype=q.dtype)
    cum = torch.zeros(b, h, lq, 1, dtype=q.dtype)
    c = torch.zeros(b, h, lq, 1, dtype=torch.int64)                       # min pops so far
    for it in range(steps):
        active = it < m_iter
        s = vmax[..., it:it + 1]
        s = torch.where(active & (s > 0), s, zero)
        greedy.scatter_add_(-1, rmax[..., it:it + 1], s)
        cum = cum + s
        go = active & (cum >= 0)                                          # min side gate
        s = vmin.gather(-1, c)
        s = torch.where(go & (s < 0), s, zero)
        greedy.scatter_add_(-1, rmin.gather(-1, c), s)
        cum = cum + s
        c = c + go.to(torch.int64)
    cand = (greedy > 0) & key_mask[:, None, None, :]
    empty = ~cand.any(-1, keepdim=True)
    fallback = torch.nn.functional.one_hot(rmax[..., 0], lk).bool()        # first max pop
    return cand | (fallback & empty)


def a3_post_scoring(dots: torch.Tensor, cand: torch.Tensor, t_raw: float) -> torch.Tensor:
    """Keep candidates with ``max_cand(dots) - dots <= t_raw`` (dots raw, unscaled)."""
    if math.isinf(t_raw):
        return cand
    lo = torch.iinfo(torch.int64).min if not dots.dtype.is_floating_point else float("-inf")
    s = dots.masked_fill(~cand, lo)
    smax = s.amax(-1, keepdim=True)
    if not dots.dtype.is_floating_point:
        return cand & ((smax - dots) <= math.floor(t_raw))
    return cand & ((smax - dots) <= t_raw)


@register_filter
class A3Filter(SparseAttentionFilter):
    """A^3 golden model: ``m`` = M/n (candidate-search iterations per key; None = off) and
    ``T`` = post-scoring threshold in percent of the top weight (0 = off)."""

    name = "a3"
    sweep: ClassVar[tuple[dict[str, Any], ...]] = (
        {"m": None, "T": 1.5},
        {"m": None, "T": 5.0},
        {"m": 2.0, "T": 1.0},
        {"m": None, "T": 10.0},
        {"m": 1.0, "T": 1.0},
        {"m": 0.75, "T": 2.5},
        {"m": 0.5, "T": 5.0},
        {"m": 0.25, "T": 10.0},
    )
    default: ClassVar[dict[str, Any]] = {"m": None, "T": 1.5}   # measured: NN >= 95 %

    def __init__(self, *, m: float | None = 0.5, T: float = 5.0, integer: bool = True) -> None:
        super().__init__(integer=integer)
        self.m = None if m is None else check_range("m (candidate-search iterations M/n)", m, 0.0, None,
                                                   lo_open=True)
        self.T = check_range("T (post-scoring threshold, percent)", T, 0.0, 100.0)

    def params(self) -> dict[str, Any]:
        return {"m": "off" if self.m is None else self.m, "T": self.T}

    @property
    def t(self) -> float:
        """Post-scoring margin on the scaled logit, ``ln(100/T)``; inf when T = 0."""
        return math.inf if self.T == 0 else math.log(100.0 / self.T)

    def mask(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, *,
             layer: int = 0) -> torch.Tensor:
        key_mask = _default_key_mask(k, key_mask)
        d = q.shape[-1]
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        if self.integer:
            qq, kk = quantize_fixed(q, INT_BITS, FRAC_BITS), quantize_fixed(k, INT_BITS, FRAC_BITS)
            t_raw = self.t * math.sqrt(d) * 2 ** (2 * FRAC_BITS)
        else:
            qq, kk = q.double(), k.double()
            t_raw = self.t * math.sqrt(d)
        if self.m is None:
            cand = valid.clone()
        else:
            cand = a3_candidates(qq, kk, key_mask, self.m) & valid
        dots = torch.matmul(qq, kk.transpose(-1, -2))
        out = a3_post_scoring(dots, cand, t_raw)
        return ensure_nonempty(out, dots, valid)
