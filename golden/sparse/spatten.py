"""SpAtten (Wang, Zhang, Han, HPCA 2021): cascade token pruning, cascade head pruning and
progressive quantisation.

State across layers (``reset`` per batch, and at ``layer == 0``): token importance
``s_t[b, j]`` and head importance ``s_h[b, m]``, never reset between layers, plus the
surviving tokens and heads. ``mask`` runs one layer and advances the state (call it once
per layer, in layer order); ``attend`` is ``mask`` plus exact attention over the candidates.

One layer ``l`` (the same algorithm in both models):

1. Candidates: real query x real key pairs of the surviving tokens (keys) and heads. Pruned
   tokens are removed as keys from this and every later layer; their query rows are still
   computed (BERT summarisation drops them entirely; the embedding here mean-pools all
   tokens, so their rows keep flowing). A pruned head has no candidates (it outputs zero).
2. Probabilities ``P`` over the candidates (the softmax denominator sums over surviving keys).
3. Importance: ``s_t[j] += sum over heads and query rows of P[:, :, j]`` and
   ``s_h[m] += sum over query rows of max_j P[m, i, j]`` (the head's attention concentration).
   Pruned heads and tokens add nothing. The paper's head importance is ``sum |out|``, which
   needs V; a filter on the Q/K side of the attention (the ``mask``/``mask_int`` interface)
   never sees V, so the row maximum of the probabilities stands in for it (our choice).
4. Pruning for layer ``l + 1`` with the order-preserving top-k (every element above the k-th
   value plus the *first* ones equal to it, input order kept: ``stable_topk_mask``), among the
   survivors only (the cascade never restores):

   * tokens (knob ``token_keep`` in (0, 1], the average fraction kept over the pruned layers):
     the first ``ceil(0.15 L)`` layers are not pruned; over the remaining ``m`` layers the
     pruning ratio rises linearly from ``p/2`` to ``3p/2`` (``p = 1 - token_keep``; start +
     end = 2 x average, the paper's rule; capped at 1); layer ``l`` keeps
     ``k = max(1, floor(n * keep_l))`` of the ``n`` real tokens;
   * heads (knob ``head_keep`` in (0, 1]): layers before ``ceil(0.3 L)`` keep every head;
     from there on ``max(1, floor(H * head_keep))`` heads.

Integer model (``integer=True``, :meth:`SpattenFilter.mask_int`, what the RTL unit
``hw.sparse_spatten`` computes): the importance taps the fmforge core's softmax unit. Q and
K are the core's int8 codes (``quantize_qk_int8``); the logits are the exact int32 dots
``q . k``; ``P`` are the softmax unit's uint8 probability codes (``golden.softmax.softmax_int``
with the constants of scale ``scale_q * scale_k / sqrt(d)``, masked to the candidates; a
row without candidates gives zeros). ``s_t`` and ``s_h`` are unbounded int64 sums of those
codes; keep ratios are 16-bit fixed point (:func:`keep_q16`) and ``k = max(1, (n * q16) >> 16)``.
Progressive quantisation: the int8 code is the top 8 bits of the paper's 12-bit word
(``msb_bits + lsb_bits = 12``), so the MSB pass reads the codes with their low
``max(0, 8 - msb_bits)`` bits floored (``x >> s << s``); a row whose largest MSB-pass code is
below ``floor(tau * 256)`` would refetch the LSBs. The probabilities that feed the importance
come from the core's full int8 codes either way, so the refetch changes no value here; its
fraction is reported in ``trace.lsb_refetch`` (the LSB traffic saved).

The float twin: float64 softmax of ``q . k / sqrt(d)`` over the candidates, float importances,
``k = max(1, floor(n * keep_l))`` (no refetch statistics); with ``token_keep = head_keep = 1``
it is dense attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from golden.errors import UserValueError
from golden.softmax import OUT_BITS, SoftmaxParams, exp2_table, softmax_int, softmax_params
from golden.sparse.base import (
    IntFilterResult,
    SparseAttentionFilter,
    _default_key_mask,
    check_range,
    quantize_qk_int8,
    register_filter,
    stable_topk_mask,
    valid_pairs,
)

__all__ = [
    "KEEP_FRAC_BITS",
    "SpattenFilter",
    "SpattenIntState",
    "SpattenTrace",
    "keep_q16",
    "spatten_initial_state",
    "spatten_keep_count",
    "spatten_probs_int",
    "spatten_radix_select",
    "spatten_step",
    "spatten_step_int",
]

#: the paper's Q/K word: 12 bits (1 sign + 4 integer + 7 fraction); the int8 code is its top 8
WORD_BITS = 12
CODE_BITS = 8
#: fraction bits of the keep ratios handed to the integer contract
KEEP_FRAC_BITS = 16
#: largest probability code of the softmax unit
PROB_MAX = (1 << OUT_BITS) - 1
_SM_FRAC_BITS = 8


@dataclass
class SpattenTrace:
    """Per layer of the current batch: surviving tokens ``[B, L]``, surviving heads ``[B, H]``
    and the fraction of candidate query rows whose MSB pass was flat (LSB refetch)."""

    tokens: list[torch.Tensor] = field(default_factory=list)
    heads: list[torch.Tensor] = field(default_factory=list)
    lsb_refetch: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SpattenIntState:
    """SpAtten's state between layers (the ``state`` of :meth:`SpattenFilter.mask_int`).

    ``s_t`` token importance ``[B, L]`` and ``s_h`` head importance ``[B, H]``: int64 sums of
    uint8 probability codes (unbounded here; the RTL's accumulators must be wide enough, see
    ``hw.sparse_spatten``), float64 in the float twin. ``tokens`` ``[B, L]`` and ``heads``
    ``[B, H]`` (bool): the survivors the *next* layer uses. ``rows`` and ``refetch_rows``:
    candidate query rows of the layer that produced this state and those of them whose MSB
    pass was flat (statistics, not state)."""

    s_t: torch.Tensor
    s_h: torch.Tensor
    tokens: torch.Tensor
    heads: torch.Tensor
    rows: int = 0
    refetch_rows: int = 0


def keep_q16(keep: float) -> int:
    """A keep ratio in [0, 1] as the 16-bit fixed point of the integer contract (host side):
    ``2**16`` for 1, else ``min(2**16, floor(keep * 2**16) + 1)``, one LSB above ``keep`` so
    that ``(n * q16) >> 16`` equals ``floor(n * keep)`` also where ``n * keep`` is an integer
    that binary ``keep`` misses from below (for ``n < 2**16 * (1 - frac(n * keep))``)."""
    keep = check_range("keep ratio", keep, 0.0, 1.0)
    if keep >= 1.0:
        return 1 << KEEP_FRAC_BITS
    return min(1 << KEEP_FRAC_BITS, math.floor(keep * 2 ** KEEP_FRAC_BITS + 1e-9) + 1)


def spatten_keep_count(n: torch.Tensor | int, q16: int) -> torch.Tensor:
    """Top-k sizes ``max(1, (n * q16) >> 16)`` (int64) for ``n`` candidates and keep ``q16``."""
    n_t = torch.as_tensor(n, dtype=torch.int64)
    return torch.clamp((n_t * int(q16)) >> KEEP_FRAC_BITS, min=1)


def spatten_initial_state(key_mask: torch.Tensor, heads: int, *, integer: bool = True
                          ) -> SpattenIntState:
    """The state before layer 0: zero importances, every real token and every head alive."""
    b, n = key_mask.shape
    dt = torch.int64 if integer else torch.float64
    return SpattenIntState(torch.zeros(b, n, dtype=dt), torch.zeros(b, heads, dtype=dt),
                           key_mask.bool().clone(), torch.ones(b, heads, dtype=torch.bool))


def _check_state(state: SpattenIntState, b: int, n: int, h: int) -> None:
    if not isinstance(state, SpattenIntState):
        raise UserValueError(f"state must be a SpattenIntState (or None), not {type(state).__name__}")
    for name, t, shape in (("s_t", state.s_t, (b, n)), ("tokens", state.tokens, (b, n)),
                           ("s_h", state.s_h, (b, h)), ("heads", state.heads, (b, h))):
        if tuple(t.shape) != shape:
            raise UserValueError(f"state.{name} must have shape {list(shape)}, not {list(t.shape)}")


def spatten_step(state: SpattenIntState, probs: torch.Tensor, k_tokens: torch.Tensor | int,
                 k_heads: torch.Tensor | int) -> SpattenIntState:
    """One layer's importance update and pruning (module docstring, steps 3 and 4).

    ``probs`` ``[B, H, Lq, L]`` (uint8 codes as int64, or float probabilities in the twin);
    entries of pruned tokens and heads are ignored. ``k_tokens``/``k_heads``: top-k sizes
    (int or ``[B]``), clipped to the survivors. Returns the next state (survivors for the
    next layer)."""
    b, h, _, n = probs.shape
    _check_state(state, b, n, h)
    gate = state.tokens[:, None, None, :] & state.heads[:, :, None, None]
    p = torch.where(gate, probs, torch.zeros((), dtype=probs.dtype))
    s_t = state.s_t + p.sum((1, 2)).to(state.s_t.dtype)
    s_h = state.s_h + p.amax(-1).sum(-1).to(state.s_h.dtype)
    tokens = stable_topk_mask(s_t, k_tokens, state.tokens)
    heads = stable_topk_mask(s_h, k_heads, state.heads)
    return SpattenIntState(s_t, s_h, tokens, heads)


def spatten_step_int(state: SpattenIntState, probs: torch.Tensor, k_tokens: torch.Tensor | int,
                     k_heads: torch.Tensor | int) -> SpattenIntState:
    """:func:`spatten_step` of the integer contract: what ``hw.sparse_spatten`` computes per
    layer job. ``probs`` int64 uint8 codes in [0, 255]; the state int64; ``k`` non-negative."""
    if probs.dtype.is_floating_point or probs.dtype == torch.bool:
        raise UserValueError(f"probs must be integer probability codes, not {probs.dtype}")
    if probs.numel() and (int(probs.min()) < 0 or int(probs.max()) > PROB_MAX):
        raise UserValueError(f"probs codes must lie in [0, {PROB_MAX}]")
    if state.s_t.dtype != torch.int64 or state.s_h.dtype != torch.int64:
        raise UserValueError("the integer state holds int64 importances")
    for name, kv in (("k_tokens", k_tokens), ("k_heads", k_heads)):
        kt = torch.as_tensor(kv)
        if kt.dtype.is_floating_point or (kt.numel() and int(kt.min()) < 0):
            raise UserValueError(f"{name} must be non-negative integers, not {kv!r}")
    return spatten_step(state, probs.to(torch.int64), k_tokens, k_heads)


def spatten_radix_select(values: torch.Tensor, eligible: torch.Tensor, k: int, bits: int
                         ) -> tuple[torch.Tensor, int]:
    """The RTL's top-k engine on one vector: ``(keep, passes)``; ``keep`` equals
    ``stable_topk_mask(values, k, eligible)``.

    ``values`` int64 in ``[0, 2**bits)``. Bit-serial radix select from the MSB: ``m`` eligible
    elements match the prefix decided so far (all of them at the start), ``need`` of those are
    still to be kept (``min(k, eligible)`` at the start). While ``m > need`` and bits are left,
    one pass counts ``c1``, the matching elements whose next bit is 1: if ``c1 >= need`` the
    prefix takes a 1 (``m = c1``), else it takes a 0 (``need -= c1``, ``m -= c1``). The in-order
    emit pass then keeps every eligible element whose top bits exceed the prefix and the first
    ``need`` ones equal to it. ``passes`` (data dependent: 0 when ``k`` covers every eligible
    element, at most ``bits``) is what the unit's cycle count depends on.
    """
    if values.dim() != 1 or eligible.shape != values.shape:
        raise UserValueError("values and eligible must be vectors of one length")
    if values.dtype.is_floating_point or (values.numel() and (
            int(values.min()) < 0 or int(values.max()) >= 1 << bits)):
        raise UserValueError(f"values must be integers in [0, 2**{bits})")
    el = eligible.bool()
    v = values.to(torch.int64)
    m = int(el.sum())
    need = min(int(k), m)
    b, prefix, passes = bits, 0, 0
    while m > need and b > 0:
        b -= 1
        passes += 1
        c1 = int((el & ((v >> b) == (prefix << 1 | 1))).sum())
        if c1 >= need:
            prefix, m = prefix << 1 | 1, c1
        else:
            prefix, need, m = prefix << 1, need - c1, m - c1
    top = v >> b
    eq = el & (top == prefix)
    first_eq = eq & (torch.cumsum(eq.to(torch.int64), 0) <= need)
    return (el & (top > prefix)) | first_eq, passes


def _softmax_consts(mult: int, shift: int) -> SoftmaxParams:
    """The softmax unit's constants from their integers (``mult``, ``shift``; the 2^-f table
    of 8 fraction bits); ``d_zero`` as :func:`golden.softmax.softmax_params` derives it."""
    s = shift - _SM_FRAC_BITS
    limit = 17 << _SM_FRAC_BITS
    need = limit if s == 0 else (limit << s) - (1 << (s - 1))
    # ``scale`` is for reference only (the integer path never reads it)
    return SoftmaxParams(mult, shift, _SM_FRAC_BITS, exp2_table(_SM_FRAC_BITS), -(-need // mult), 0.0)


def spatten_probs_int(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, sm_mult: int,
                      sm_shift: int) -> torch.Tensor:
    """The softmax unit's uint8 probability codes (int64 ``[B, H, Lq, Lk]``) of int8 codes
    ``q``, ``k`` over the candidates ``mask``: ``softmax_int(q . k, (sm_mult, sm_shift), mask)``,
    0 outside the candidates. The input stream of ``hw.sparse_spatten``."""
    qi, ki = q.to(torch.int64), k.to(torch.int64)
    return softmax_int(qi @ ki.transpose(-1, -2), _softmax_consts(sm_mult, sm_shift), mask)


def _param(params: dict[str, int], name: str, lo: int, hi: int) -> int:
    if not isinstance(params, dict):
        raise UserValueError(f"params must be the dict of int_params(), not {type(params).__name__}")
    if name not in params:
        raise UserValueError(f"params lacks {name!r} (SpAtten's int_params() gives it)")
    v = params[name]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise UserValueError(f"params[{name!r}] must be an integer in [{lo}, {hi}], not {v!r}")
    return v


def _check_codes(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool \
                or t.dim() != 4:
            raise UserValueError(f"{name} must be an integer tensor [B, H, L, d] of int8 codes "
                                 f"(quantize_qk_int8), not {getattr(t, 'dtype', type(t).__name__)}")
        if t.numel() and (int(t.min()) < -127 or int(t.max()) > 127):
            raise UserValueError(f"{name} codes must lie in [-127, 127]")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise UserValueError(f"q {list(q.shape)} and k {list(k.shape)} must agree in B, H and d")
    if not isinstance(key_mask, torch.Tensor) or tuple(key_mask.shape) != (k.shape[0], k.shape[2]):
        raise UserValueError(f"key_mask must be a bool tensor [B, Lk] = [{k.shape[0]}, {k.shape[2]}]")
    return key_mask.bool()


def _indices(mask: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the True entries per row ``[B, n_max]``, padded with -1."""
    n = int(mask.sum(-1).max()) if mask.numel() else 0
    out = torch.full((mask.shape[0], n), -1, dtype=torch.int64)
    for b in range(mask.shape[0]):
        idx = mask[b].nonzero().flatten()
        out[b, :len(idx)] = idx
    return out


@register_filter
class SpattenFilter(SparseAttentionFilter):
    """SpAtten golden model (module docstring). ``num_layers`` sets the pruning schedule."""

    name = "spatten"
    sweep: ClassVar[tuple[dict[str, Any], ...]] = (
        {"token_keep": 1.0}, {"token_keep": 0.95}, {"token_keep": 0.9}, {"token_keep": 0.8},
        {"token_keep": 0.7}, {"token_keep": 0.6}, {"token_keep": 0.5},
    )
    default: ClassVar[dict[str, Any]] = {"token_keep": 1.0}   # measured: NN >= 95 %

    def __init__(self, *, token_keep: float = 0.7, head_keep: float = 1.0, num_layers: int = 6,
                 msb_bits: int = 8, lsb_bits: int = 4, tau: float = 0.1, integer: bool = True) -> None:
        super().__init__(integer=integer)
        self.token_keep = check_range("token_keep (SpAtten token keep ratio)", token_keep, 0.0, 1.0,
                                      lo_open=True)
        self.head_keep = check_range("head_keep (SpAtten head keep ratio)", head_keep, 0.0, 1.0,
                                     lo_open=True)
        if not isinstance(num_layers, int) or num_layers < 1:
            raise UserValueError(f"num_layers must be a positive integer, not {num_layers!r}")
        if not isinstance(msb_bits, int) or not isinstance(lsb_bits, int) or msb_bits < 2 or lsb_bits < 0 \
                or msb_bits + lsb_bits != WORD_BITS:
            raise UserValueError(f"msb_bits + lsb_bits must be 12 with msb_bits >= 2, not {msb_bits}+{lsb_bits}")
        self.tau = check_range("tau (SpAtten LSB refetch threshold)", tau, 0.0, 1.0)
        self.num_layers = num_layers
        self.msb_bits, self.lsb_bits = msb_bits, lsb_bits
        self.token_start = math.ceil(0.15 * num_layers)
        self.head_start = math.ceil(0.3 * num_layers)
        self.trace = SpattenTrace()
        self._state: SpattenIntState | None = None

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"token_keep": self.token_keep}
        if self.head_keep < 1:
            p["head_keep"] = self.head_keep
        return p

    def token_keep_at(self, layer: int) -> float:
        """Fraction of the original tokens kept at ``layer`` (the linear schedule)."""
        if layer < self.token_start or self.token_keep >= 1:
            return 1.0
        m = self.num_layers - self.token_start
        p = 1.0 - self.token_keep
        frac = 0.5 + (layer - self.token_start) / (m - 1) if m > 1 else 1.0
        return max(0.0, 1.0 - min(1.0, p * frac))

    def head_keep_at(self, layer: int) -> float:
        """Fraction of the heads kept at ``layer`` (all before ``ceil(0.3 L)``)."""
        return self.head_keep if layer >= self.head_start else 1.0

    def reset(self, key_mask: torch.Tensor | None = None) -> None:
        """Start a new batch: the next ``mask`` begins from the initial state."""
        del key_mask
        self._state = None
        self.trace = SpattenTrace()

    # -- the integer contract ---------------------------------------------------------------
    def int_params(self, scale_q: float, scale_k: float, d: int, *, layer: int = 0
                   ) -> dict[str, int]:
        """Run-time constants of ``layer`` (host side):

        * ``sm_mult``, ``sm_shift``: the softmax unit's constants for the logit scale
          ``scale_q * scale_k / sqrt(d)`` (:func:`golden.softmax.softmax_params`);
        * ``token_keep_q16``, ``head_keep_q16``: the keep ratios of layer ``layer + 1`` (the
          pruning at the end of this layer is for the next one) as :func:`keep_q16`;
        * ``msb_drop`` = ``max(0, 8 - msb_bits)`` and ``tau_code`` = ``floor(tau * 256)``
          (the progressive-quantisation statistic).
        """
        for name, s in (("scale_q", scale_q), ("scale_k", scale_k)):
            check_range(name, s, 0.0, None, lo_open=True)
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise UserValueError(f"d must be a positive integer, not {d!r}")
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise UserValueError(f"layer must be a non-negative integer, not {layer!r}")
        sm = softmax_params(float(scale_q) * float(scale_k) / math.sqrt(d), _SM_FRAC_BITS)
        return {"sm_mult": sm.mult, "sm_shift": sm.shift,
                "token_keep_q16": keep_q16(self.token_keep_at(layer + 1)),
                "head_keep_q16": keep_q16(self.head_keep_at(layer + 1)),
                "msb_drop": max(0, CODE_BITS - self.msb_bits),
                "tau_code": math.floor(self.tau * 2 ** OUT_BITS)}

    def mask_int(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor,
                 params: dict[str, int], state: Any = None) -> IntFilterResult:
        """One layer of the integer contract (module docstring); every quantity an integer.

        ``q`` ``[B, H, Lq, d]`` and ``k`` ``[B, H, Lk, d]`` int8 codes, ``key_mask`` ``[B, Lk]``,
        ``params`` from :meth:`int_params`, ``state`` a :class:`SpattenIntState` (None before
        layer 0). Returns the keep ``mask`` of this layer, its surviving ``tokens`` and
        ``heads`` (ascending indices ``[B, n]``, padded with -1 where sequences keep fewer) and
        the next ``state``: importances after this layer and the survivors of the next
        (``k = max(1, (n * q16) >> 16)`` of the ``n`` real tokens, of the ``H`` heads).
        """
        key_mask = _check_codes(q, k, key_mask)
        mult = _param(params, "sm_mult", 1 << 15, (1 << 16) - 1)
        shift = _param(params, "sm_shift", _SM_FRAC_BITS, 62)
        tq = _param(params, "token_keep_q16", 0, 1 << KEEP_FRAC_BITS)
        hq = _param(params, "head_keep_q16", 0, 1 << KEEP_FRAC_BITS)
        drop = _param(params, "msb_drop", 0, CODE_BITS - 2)
        tau = _param(params, "tau_code", 0, 1 << OUT_BITS)
        b, h, lq, _ = q.shape
        st = spatten_initial_state(key_mask, h) if state is None else state
        _check_state(st, b, k.shape[2], h)
        m = valid_pairs(key_mask, h, lq) & st.tokens[:, None, None, :] & st.heads[:, :, None, None]
        p = spatten_probs_int(q, k, m, mult, shift)
        if drop:
            qi, ki = q.to(torch.int64), k.to(torch.int64)
            p_msb = spatten_probs_int((qi >> drop) << drop, (ki >> drop) << drop, m, mult, shift)
        else:
            p_msb = p
        rows = m.any(-1)
        refetch = rows & (p_msb.amax(-1) < tau)
        k_t = spatten_keep_count(key_mask.sum(-1), tq)
        k_h = spatten_keep_count(torch.full((b,), h), hq)
        nxt = spatten_step_int(st, p, k_t, k_h)
        nxt = SpattenIntState(nxt.s_t, nxt.s_h, nxt.tokens, nxt.heads, int(rows.sum()),
                              int(refetch.sum()))
        return IntFilterResult(m, _indices(st.tokens), _indices(st.heads), nxt)

    # -- the filter -------------------------------------------------------------------------
    def _mask_float(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, layer: int,
                    st: SpattenIntState | None) -> IntFilterResult:
        """The float twin of :meth:`mask_int` on float ``q``, ``k``."""
        b, h, lq, d = q.shape
        st = spatten_initial_state(key_mask, h, integer=False) if st is None else st
        m = valid_pairs(key_mask, h, lq) & st.tokens[:, None, None, :] & st.heads[:, :, None, None]
        s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(d)
        p = torch.nan_to_num(torch.softmax(s.masked_fill(~m, float("-inf")), -1), nan=0.0)
        p = p.masked_fill(~m, 0.0)
        n = key_mask.sum(-1).double()
        k_t = torch.clamp(torch.floor(n * self.token_keep_at(layer + 1) + 1e-9).to(torch.int64), min=1)
        k_h = max(1, math.floor(h * self.head_keep_at(layer + 1) + 1e-9))
        nxt = spatten_step(st, p, k_t, k_h)
        nxt = SpattenIntState(nxt.s_t, nxt.s_h, nxt.tokens, nxt.heads, int(m.any(-1).sum()), 0)
        return IntFilterResult(m, _indices(st.tokens), _indices(st.heads), nxt)

    def mask(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, *,
             layer: int = 0) -> torch.Tensor:
        """Candidates of ``layer``; advances the state (call once per layer, in order). The
        integer model quantises ``q``, ``k`` to int8 codes (``quantize_qk_int8``, per-tensor
        scales over the real tokens) and runs :meth:`mask_int`."""
        key_mask = _default_key_mask(k, key_mask)
        st = self._state
        h = q.shape[1]
        fresh = layer == 0 or st is None or tuple(st.tokens.shape) != tuple(key_mask.shape) \
            or st.heads.shape[1] != h or st.s_t.dtype != (torch.int64 if self.integer else torch.float64)
        if fresh:
            self.reset()
            st = None
        cur_t = key_mask.clone() if st is None else st.tokens
        cur_h = torch.ones(q.shape[0], h, dtype=torch.bool) if st is None else st.heads
        if self.integer:
            qi, sq = quantize_qk_int8(q, key_mask if q.shape[2] == k.shape[2] else None)
            ki, sk = quantize_qk_int8(k, key_mask)
            res = self.mask_int(qi, ki, key_mask, self.int_params(sq, sk, q.shape[-1], layer=layer), st)
        else:
            res = self._mask_float(q, k, key_mask, layer, st)
        self._state = res.state
        self.trace.tokens.append(cur_t.clone())
        self.trace.heads.append(cur_h.clone())
        self.trace.lsb_refetch.append(res.state.refetch_rows / max(1, res.state.rows))
        return res.mask
