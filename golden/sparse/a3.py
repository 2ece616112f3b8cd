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


def a3_candidates(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, m: float) -> torch.Tensor:
    """Greedy candidate search (module docstring, step 1), vectorised over all queries.

    ``q`` ``[B, H, Lq, d]`` and ``k`` ``[B, H, Lk, d]`` are int64 codes or float64 values;
    returns bool ``[B, H, Lq, Lk]`` (only real keys; query padding is not masked here).
    """
    b, h, lq, d = q.shape
    lk = k.shape[2]
    is_int = not q.dtype.is_floating_point
    if is_int:
        big = torch.tensor(2 ** 62, dtype=torch.int64)
        neg_inf, pos_inf = -big, big
        zero = torch.zeros((), dtype=torch.int64)
    else:
        neg_inf = torch.tensor(float("-inf"), dtype=torch.float64)
        pos_inf = torch.tensor(float("inf"), dtype=torch.float64)
        zero = torch.zeros((), dtype=torch.float64)
    km = key_mask[:, None, :, None].expand(b, h, lk, d)
    # sort each column ascending by (value, row); padding keys sort after every real key
    kv = torch.where(km, k, pos_inf if is_int else torch.tensor(float("inf"), dtype=k.dtype))
    asc = torch.sort(kv, dim=2, stable=True).indices                      # [B,H,Lk,d]
    ks = torch.gather(k, 2, asc)                                          # sorted values
    if lq != lk:
        raise ValueError("a3_candidates expects self-attention (Lq == Lk)")
    n = key_mask.sum(1).to(torch.int64)[:, None, None, None]              # [B,1,1,1]
    m_iter = torch.ceil(n.double() * m).to(torch.int64).clamp_min(1)
    pos_q = q > 0
    p_max = torch.zeros(b, h, lq, d, dtype=torch.int64)
    p_min = torch.zeros(b, h, lq, d, dtype=torch.int64)
    greedy = torch.zeros(b, h, lq, lk, dtype=q.dtype)
    cum = torch.zeros(b, h, lq, 1, dtype=q.dtype)
    first_row = torch.zeros(b, h, lq, 1, dtype=torch.int64)
    n_exp = n.expand(b, h, lq, d)

    def head(ptr: torch.Tensor, from_top: torch.Tensor, off: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.where(from_top, n_exp - 1 - ptr, ptr).clamp(0, lk - 1)
        prod = q * torch.gather(ks, 2, pos)
        prod = torch.where(ptr < n_exp, prod, off)
        return prod, torch.gather(asc, 2, pos)

    for it in range(int(m_iter.max())):
        active = (it < m_iter).expand(b, h, lq, 1)
        # max side: start at the top of the column when q_j > 0
        prod, rows = head(p_max, pos_q, neg_inf)
        j = prod.argmax(-1, keepdim=True)                                  # first max: lowest j
        s = prod.gather(-1, j)
        r = rows.gather(-1, j)
        if it == 0:
            first_row = r
        add = active & (s > 0)
        greedy.scatter_add_(-1, r, torch.where(add, s, zero))
        cum = cum + torch.where(add, s, zero)
        p_max.scatter_add_(-1, j, active.to(torch.int64))
        # min side, only while the cumulative sum is non-negative
        go = active & (cum >= 0)
        prod, rows = head(p_min, ~pos_q, pos_inf)
        j = prod.argmin(-1, keepdim=True)
        s = prod.gather(-1, j)
        r = rows.gather(-1, j)
        add = go & (s < 0)
        greedy.scatter_add_(-1, r, torch.where(add, s, zero))
        cum = cum + torch.where(add, s, zero)
        p_min.scatter_add_(-1, j, go.to(torch.int64))
    cand = (greedy > 0) & key_mask[:, None, None, :]
    empty = ~cand.any(-1, keepdim=True)
    fallback = torch.nn.functional.one_hot(first_row.squeeze(-1), lk).bool()
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
        {"m": 1.0, "T": 1.0},
        {"m": 0.75, "T": 2.5},
        {"m": 0.5, "T": 5.0},
        {"m": 0.25, "T": 10.0},
    )
    default: ClassVar[dict[str, Any]] = {"m": 1.0, "T": 0.5}

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
