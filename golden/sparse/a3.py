"""A^3 (Ham et al., HPCA 2020): greedy candidate search over sorted key columns, then
post-scoring selection.

The algorithm (both models)
---------------------------
1. Candidate search (``m`` = M/n; ``None`` skips it, every real key is a candidate). Every
   column of K is sorted ascending by (value, row) over the real keys (stable: lower row
   first on equal values). Per query, a max queue holds, per column j, the product
   ``q_j * K[ptr_j, j]`` at the column's max pointer (starting at the largest value when
   ``q_j > 0``, else at the smallest, then walking inward); a min queue likewise from the
   other end. ``M`` iterations (n = real keys): pop the max entry (ties: lowest column
   index), add it to the row's greedy score if positive, advance that pointer; then, only
   when the cumulative sum of the added entries is >= 0, pop the min entry (ties: lowest
   column index), add it if negative, advance. A pointer that has walked past the last real
   key offers -inf (max queue) or +inf (min queue). Candidates: rows with greedy score > 0.
   If none, the row popped first (the largest single product) is the candidate.
2. Post-scoring (``T`` percent; 0 skips it): the exact dot ``s`` of every candidate is
   computed; a candidate survives iff ``s_max - s <= t`` with ``t = ln(100/T)`` on the
   scaled logit ``s / sqrt(d)`` (``s_max`` over the candidates).

Float twin (``integer=False``): float64 Q, K, ``M = ceil(m * n)``, raw margin
``t * sqrt(d)``.

Integer contract (``integer=True``: ``quantize_qk_int8`` + :meth:`A3Filter.int_params` +
:meth:`A3Filter.mask_int`, what ``hw.sparse_a3`` computes bit for bit)
-------------------------------------------------------------------------------------------
* Inputs: int8 codes (int64 tensors in [-127, 127]) of Q and K with per-tensor scales
  ``s_q``, ``s_k``; self-attention (``Lq == Lk``), query rows of padding tokens get an empty
  mask.
* Run-time constants (:meth:`A3Filter.int_params`, host side, float64 allowed there):
  ``m_q8 = round(m * 256)`` (uint12, 1..4095; 0 = search off) and
  ``t_int = min(floor(t * sqrt(d) / (s_q * s_k)), 2**24 - 1)`` (uint24; ``T = 0`` gives
  ``2**24 - 1``, which exceeds every possible ``s_max - s = 2 * d * 127**2`` for
  ``d <= 520``, so post-scoring keeps every candidate).
* ``M = (m_q8 * n + 255) >> 8`` (``= ceil(m_q8 * n / 256) >= 1``), n = real keys of the
  sequence.
* Products ``q_j * k_rj``: exact, int16 (``|p| <= 127**2``); an exhausted column offers
  ``-2**15`` to the max queue and ``2**15 - 1`` to the min queue (outside every product,
  never added). Greedy scores: exact int64 (the hardware needs
  ``bits(d * 127**2) + 1``); the cumulative sum exact.
* Dots ``s = q . k``: exact (``|s| <= d * 127**2``); survivor iff ``s_max - s <= t_int``
  (an integer comparison, exact because ``floor`` moved the real threshold onto the
  integers). No rounding anywhere after the int8 codes; nothing saturates.
* Per query the search evaluates ``2 d`` head products, then one product per pop (``M``
  max pops and ``G`` min pops, ``G <= M``), and post-scoring ``d * |C|`` products for the
  ``|C|`` candidates: ``2d + M + G + d |C|`` against ``n d`` for dense scores
  (:func:`a3_search_int` returns ``M``, ``G`` and ``C``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from golden.errors import UserValueError
from golden.sparse.base import (
    IntFilterResult,
    SparseAttentionFilter,
    _default_key_mask,
    check_range,
    ensure_nonempty,
    quantize_qk_int8,
    register_filter,
    valid_pairs,
)

__all__ = ["A3Filter", "A3SearchInt", "a3_candidates", "a3_post_scoring", "a3_search",
           "a3_search_int", "check_qk_codes", "check_int_params", "M_Q8_MAX", "T_INT_MAX"]

#: largest ``m_q8`` (12-bit field): m < 16
M_Q8_MAX = 4095
#: ``t_int`` saturation (24-bit field); also "post-scoring off"
T_INT_MAX = 2 ** 24 - 1
#: int8 code range of the contract
CODE_MAX = 127


def check_qk_codes(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, *,
                   self_attention: bool = False) -> None:
    """Validate the integer contract's inputs: int64 ``q`` ``[B, H, Lq, d]`` and ``k``
    ``[B, H, Lk, d]`` holding codes in [-127, 127], bool ``key_mask`` ``[B, Lk]``
    (``UserValueError`` naming the operand)."""
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.int64 or x.dim() != 4:
            raise UserValueError(f"{name} must be an int64 tensor [B, H, L, d] of int8 codes "
                                 f"(quantize_qk_int8), not {getattr(x, 'dtype', type(x).__name__)} "
                                 f"of shape {tuple(getattr(x, 'shape', ()))}")
        if x.numel() and int(x.abs().max()) > CODE_MAX:
            raise UserValueError(f"{name} holds codes outside [-127, 127] (max |code| "
                                 f"{int(x.abs().max())})")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise UserValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch, "
                             "heads and head size")
    if not isinstance(key_mask, torch.Tensor) or key_mask.dtype != torch.bool \
            or tuple(key_mask.shape) != (k.shape[0], k.shape[2]):
        raise UserValueError(f"key_mask must be a bool tensor [B, Lk] = {(k.shape[0], k.shape[2])}, "
                             f"not {getattr(key_mask, 'dtype', None)} "
                             f"{tuple(getattr(key_mask, 'shape', ()))}")
    if self_attention and q.shape[2] != k.shape[2]:
        raise UserValueError(f"self-attention needs Lq == Lk, not {q.shape[2]} and {k.shape[2]}")


def check_int_params(params: Any, fields: dict[str, tuple[int, int]], who: str) -> dict[str, int]:
    """``params`` must hold exactly ``fields`` (name -> inclusive range) as integers."""
    if not isinstance(params, dict):
        raise UserValueError(f"{who} params must be a dict (int_params), not {type(params).__name__}")
    missing = [f for f in fields if f not in params]
    unknown = sorted(set(params) - set(fields))
    if missing or unknown:
        raise UserValueError(f"{who} params: missing {missing or 'none'}, unknown {unknown or 'none'}; "
                             f"expected {', '.join(fields)}")
    for f, (lo, hi) in fields.items():
        v = params[f]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise UserValueError(f"{who} params[{f!r}] must be an integer in [{lo}, {hi}], not {v!r}")
    return dict(params)


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


@dataclass(frozen=True)
class A3SearchInt:
    """Result of :func:`a3_search`: candidates bool ``[B, H, Lq, Lk]`` (greedy score > 0, or
    the first popped row), ``m_iter`` int64 ``[B]`` (M per sequence) and ``min_pops`` int64
    ``[B, H, Lq]`` (G, the min-queue pops per query)."""

    cand: torch.Tensor
    m_iter: torch.Tensor
    min_pops: torch.Tensor


def a3_search(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, m_iter: torch.Tensor
              ) -> A3SearchInt:
    """Greedy candidate search (module docstring, step 1) with ``m_iter`` int64 ``[B]``
    iterations per sequence (>= 1), vectorised over all queries.

    ``q`` ``[B, H, Lq, d]`` and ``k`` ``[B, H, Lk, d]`` are int64 codes or float64 values;
    the candidates cover real keys only (query padding is not masked here).

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
    m_iter = m_iter.to(torch.int64).reshape(b)
    if bool((m_iter < 1).any()):
        raise UserValueError("a3_search needs at least one iteration per sequence")
    mi = m_iter[:, None, None, None]
    steps = int(m_iter.max()) if b else 1
    vmax, rmax, vmin, rmin = _walk_orders(q, ks, asc, n, steps)
    zero = torch.zeros((), dtype=q.dtype)
    greedy = torch.zeros(b, h, lq, lk, dtype=q.dtype)
    cum = torch.zeros(b, h, lq, 1, dtype=q.dtype)
    c = torch.zeros(b, h, lq, 1, dtype=torch.int64)                       # min pops so far
    for it in range(steps):
        active = it < mi
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
    return A3SearchInt(cand | (fallback & empty), m_iter, c[..., 0])


def a3_candidates(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, m: float) -> torch.Tensor:
    """The search with ``M = ceil(m * n)`` (the float twin's rule) iterations: candidates
    bool ``[B, H, Lq, Lk]`` (see :func:`a3_search`)."""
    n = key_mask.sum(1).to(torch.int64)
    m_iter = torch.ceil(n.double() * m).to(torch.int64).clamp_min(1)
    return a3_search(q, k, key_mask, m_iter).cand


def a3_m_iter(m_q8: int, n: torch.Tensor) -> torch.Tensor:
    """Integer iteration count ``M = (m_q8 * n + 255) >> 8`` (``ceil(m_q8 n / 256)``), at
    least 1 for ``m_q8 >= 1`` and ``n >= 1`` (clamped to 1 for an all-padding sequence)."""
    return ((m_q8 * n.to(torch.int64) + 255) >> 8).clamp_min(1)


def a3_search_int(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor,
                  params: dict[str, int]) -> A3SearchInt:
    """The integer contract's candidate search on int8 codes (``m_q8 = 0``: every real key is
    a candidate, ``M = G = 0``); candidates are masked to real query rows."""
    check_qk_codes(q, k, key_mask, self_attention=True)
    p = check_int_params(params, A3_PARAM_FIELDS, "a3")
    b, h, lq, _ = q.shape
    valid = valid_pairs(key_mask, h, lq)
    if p["m_q8"] == 0:
        z = torch.zeros(b, h, lq, dtype=torch.int64)
        return A3SearchInt(valid.clone(), torch.zeros(b, dtype=torch.int64), z)
    res = a3_search(q, k, key_mask, a3_m_iter(p["m_q8"], key_mask.sum(1)))
    return A3SearchInt(res.cand & valid, res.m_iter, res.min_pops)


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


#: run-time constants of the integer contract (name -> inclusive range)
A3_PARAM_FIELDS = {"m_q8": (0, M_Q8_MAX), "t_int": (0, T_INT_MAX)}


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
    default: ClassVar[dict[str, Any]] = {"m": 2.0, "T": 1.0}   # the search on (module docs)

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

    # -- the integer contract --------------------------------------------------------------
    def int_params(self, scale_q: float, scale_k: float, d: int, *, layer: int = 0
                   ) -> dict[str, int]:
        """``{"m_q8", "t_int"}`` for int8 Q/K of scales ``scale_q``/``scale_k`` and head size
        ``d`` (module docstring; ``layer`` is not used: A^3 has no per-layer constants).

        ``m_q8 = round(m * 256)`` (0 when the search is off; ``m`` must round into 1..4095),
        ``t_int = min(floor(ln(100/T) * sqrt(d) / (scale_q * scale_k)), 2**24 - 1)``.
        """
        for name, v in (("scale_q", scale_q), ("scale_k", scale_k)):
            check_range(name, v, 0.0, None, lo_open=True)
            if math.isinf(v):
                raise UserValueError(f"{name} must be finite, not {v!r}")
        if not isinstance(d, int) or isinstance(d, bool) or not 1 <= d <= 520:
            raise UserValueError(f"d (head size) must be an integer in [1, 520], not {d!r}")
        if self.m is None:
            m_q8 = 0
        else:
            m_q8 = round(self.m * 256)
            if not 1 <= m_q8 <= M_Q8_MAX:
                raise UserValueError(f"m (candidate-search iterations M/n) = {self.m:g} does not fit "
                                     f"the integer filter's m_q8 = round(m * 256) in [1, {M_Q8_MAX}] "
                                     f"(m in [1/512, {M_Q8_MAX / 256:g}])")
        if math.isinf(self.t):
            t_int = T_INT_MAX
        else:
            t_int = min(math.floor(self.t * math.sqrt(d) / (scale_q * scale_k)), T_INT_MAX)
        return {"m_q8": m_q8, "t_int": t_int}

    def mask_int(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor,
                 params: dict[str, int], state: Any = None) -> IntFilterResult:
        """The integer contract (module docstring): int8 codes in, the keep mask out.

        Candidates from :func:`a3_search_int` (``M = (m_q8 n + 255) >> 8``), exact int64 dots,
        survivors ``s_max - s <= t_int``. Every real query keeps at least one key (the
        candidate with the largest dot survives, ``t_int >= 0``); padding keys and padding
        query rows are never kept. No float, no division.
        """
        search = a3_search_int(q, k, key_mask, params)
        dots = torch.matmul(q, k.transpose(-1, -2))
        lo = torch.iinfo(torch.int64).min
        smax = dots.masked_fill(~search.cand, lo).amax(-1, keepdim=True)
        keep = search.cand & ((smax - dots) <= params["t_int"])
        return IntFilterResult(keep)

    # -- the filter ------------------------------------------------------------------------
    def mask(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, *,
             layer: int = 0) -> torch.Tensor:
        key_mask = _default_key_mask(k, key_mask)
        d = q.shape[-1]
        if self.integer:
            if q.shape[2] != k.shape[2]:
                raise UserValueError("A^3 expects self-attention (Lq == Lk)")
            qq, sq = quantize_qk_int8(q, key_mask)
            kk, sk = quantize_qk_int8(k, key_mask)
            return self.mask_int(qq, kk, key_mask, self.int_params(sq, sk, d, layer=layer)).mask
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        qq, kk = q.double(), k.double()
        t_raw = self.t * math.sqrt(d)
        if self.m is None:
            cand = valid.clone()
        else:
            cand = a3_candidates(qq, kk, key_mask, self.m) & valid
        dots = torch.matmul(qq, kk.transpose(-1, -2))
        out = a3_post_scoring(dots, cand, t_raw)
        return ensure_nonempty(out, dots, valid)
