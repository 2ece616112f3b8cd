"""SpAtten (Wang, Zhang, Han, HPCA 2021): cascade token pruning, cascade head pruning and
progressive quantisation.

State across layers (``reset`` per batch): token importance ``s_t[b, j]`` and head importance
``s_h[b, m]``, never reset between layers, plus the surviving tokens and heads.

* Token pruning (knob ``token_keep`` in (0, 1]: the average fraction of tokens kept over the
  pruned layers). The first ``ceil(0.15 L)`` layers are not pruned; over the remaining ``m``
  layers the pruning ratio rises linearly from ``p/2`` to ``3p/2`` (``p = 1 - token_keep``;
  start + end = 2 x average, the paper's rule; capped at 1). Before layer ``l`` the
  ``max(1, floor(n * (1 - p_l)))`` surviving tokens with the largest ``s_t`` are kept (top-k
  with ties in input order, output in input order). Pruned tokens are removed as keys and
  values from this and every later layer; their query rows are still computed (BERT
  summarisation drops them entirely; the embedding here mean-pools all tokens, so their
  rows keep flowing). After each layer ``s_t[j] += sum over surviving heads and real query
  rows of P[:, :, j]``.
* Head pruning (knob ``head_keep`` in (0, 1]): the first ``ceil(0.3 L)`` layers keep every
  head; after each layer ``s_h[m] += sum |out[m]|`` over real query rows; from layer
  ``ceil(0.3 L)`` on only the ``max(1, floor(H * head_keep))`` heads with the largest
  ``s_h`` (ties in input order) are computed; a pruned head outputs zero.
* Progressive quantisation (integer model only): Q and K are 12-bit fixed point (1 sign + 4
  integer + 7 fraction bits); the MSB pass uses the top ``msb_bits`` (``x >> lsb`` then
  ``<< lsb``, floor); a row whose largest 12-bit probability ``floor(P * 4096)`` (clamped to
  4095) is below ``floor(tau * 4096)`` refetches the LSBs and is recomputed from the full
  12-bit values. Token importance accumulates the 12-bit probability codes (int64); head
  importance accumulates ``|quantize(out, 4, 7)|`` codes. The softmax itself is float (the
  softmax unit has its own golden model) and its denominator sums over surviving keys only.

The float twin uses float probabilities and float importances, without quantisation; with
``token_keep = head_keep = 1`` it is dense attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from golden.errors import UserValueError
from golden.sparse.base import (
    AttentionResult,
    SparseAttentionFilter,
    _default_key_mask,
    check_range,
    quantize_fixed,
    register_filter,
    stable_topk_mask,
    valid_pairs,
)

__all__ = ["SpattenFilter", "SpattenTrace"]

INT_BITS = 4
FRAC_BITS = 7
PROB_BITS = 12


@dataclass
class SpattenTrace:
    """Per layer of the current batch: surviving tokens ``[B, L]``, surviving heads ``[B, H]``
    and the fraction of real query rows that refetched LSBs."""

    tokens: list[torch.Tensor] = field(default_factory=list)
    heads: list[torch.Tensor] = field(default_factory=list)
    lsb_refetch: list[float] = field(default_factory=list)


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
                or msb_bits + lsb_bits != 1 + INT_BITS + FRAC_BITS:
            raise UserValueError(f"msb_bits + lsb_bits must be 12 with msb_bits >= 2, not {msb_bits}+{lsb_bits}")
        self.tau = check_range("tau (SpAtten LSB refetch threshold)", tau, 0.0, 1.0)
        self.num_layers = num_layers
        self.msb_bits, self.lsb_bits = msb_bits, lsb_bits
        self.token_start = math.ceil(0.15 * num_layers)
        self.head_start = math.ceil(0.3 * num_layers)
        self.trace = SpattenTrace()
        self._state: dict[str, torch.Tensor] | None = None

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

    def reset(self, key_mask: torch.Tensor) -> None:
        b, n = key_mask.shape
        dt = torch.int64 if self.integer else torch.float64
        self._state = {"s_t": torch.zeros(b, n, dtype=dt), "tokens": key_mask.bool().clone(),
                       "s_h": None, "heads": None}  # type: ignore[dict-item]
        self.trace = SpattenTrace()

    def _ensure_state(self, key_mask: torch.Tensor, heads: int, layer: int) -> dict[str, Any]:
        st = self._state
        if layer == 0 or st is None or st["tokens"].shape != key_mask.shape:
            self.reset(key_mask)
            st = self._state
        assert st is not None
        if st["heads"] is None:
            st["heads"] = torch.ones(key_mask.shape[0], heads, dtype=torch.bool)
            st["s_h"] = torch.zeros(key_mask.shape[0], heads,
                                    dtype=torch.int64 if self.integer else torch.float64)
        return st

    def _prune_tokens(self, st: dict[str, Any], key_mask: torch.Tensor, layer: int) -> None:
        keep = self.token_keep_at(layer)
        if keep >= 1.0:
            return
        n = key_mask.sum(1).double()
        k_l = torch.clamp(torch.floor(n * keep + 1e-9).to(torch.int64), min=1)
        st["tokens"] = stable_topk_mask(st["s_t"], k_l, st["tokens"])

    def mask(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, *,
             layer: int = 0) -> torch.Tensor:
        """Candidates at ``layer`` given the current state (does not advance the state)."""
        key_mask = _default_key_mask(k, key_mask)
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        if self._state is None or self._state["tokens"].shape != key_mask.shape or \
                self._state["heads"] is None:
            return valid.clone()
        return valid & self._state["tokens"][:, None, None, :] & self._state["heads"][:, :, None, None]

    def _probs(self, q: torch.Tensor, k: torch.Tensor, m: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Probabilities over candidates (float), their 12-bit codes and the refetch fraction."""
        d = q.shape[-1]
        neg = float("-inf")
        if not self.integer:
            s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(d)
            p = torch.nan_to_num(torch.softmax(s.masked_fill(~m, neg), -1), nan=0.0)
            return p, p, 0.0
        qi, ki = quantize_fixed(q, INT_BITS, FRAC_BITS), quantize_fixed(k, INT_BITS, FRAC_BITS)
        sh = self.lsb_bits
        lsb = 2.0 ** (-2 * FRAC_BITS) / math.sqrt(d)

        def probs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s = (a @ b.transpose(-1, -2)).double() * lsb
            p = torch.nan_to_num(torch.softmax(s.masked_fill(~m, neg), -1), nan=0.0)
            code = torch.floor(p * 2 ** PROB_BITS).clamp_max(2 ** PROB_BITS - 1).to(torch.int64)
            return p, code

        p_msb, c_msb = probs((qi >> sh) << sh, (ki >> sh) << sh)
        row = m.any(-1, keepdim=True)
        need = row & (c_msb.amax(-1, keepdim=True) < math.floor(self.tau * 2 ** PROB_BITS))
        if bool(need.any()):
            p_full, c_full = probs(qi, ki)
            p = torch.where(need, p_full, p_msb)
            code = torch.where(need, c_full, c_msb)
        else:
            p, code = p_msb, c_msb
        frac = float(need.sum()) / max(1, int(row.sum()))
        return p, code, frac

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_mask: torch.Tensor | None = None, *, layer: int = 0) -> AttentionResult:
        """Run one layer: prune, attend over survivors, update the importances (advances state)."""
        key_mask = _default_key_mask(k, key_mask)
        st = self._ensure_state(key_mask, q.shape[1], layer)
        self._prune_tokens(st, key_mask, layer)
        m = self.mask(q, k, key_mask, layer=layer)
        p, code, frac = self._probs(q, k, m)
        out = torch.matmul(p.to(v.dtype), v)
        real_q = key_mask[:, None, :, None]
        # token importance: probabilities summed over surviving heads and real query rows
        st["s_t"] = st["s_t"] + code.masked_fill(~real_q, 0).sum((1, 2)).to(st["s_t"].dtype)
        # head importance, and head pruning for the next layer
        mag = quantize_fixed(out, INT_BITS, FRAC_BITS).abs() if self.integer else out.double().abs()
        st["s_h"] = st["s_h"] + mag.masked_fill(~real_q, 0).sum((2, 3)).to(st["s_h"].dtype)
        self.trace.tokens.append(st["tokens"].clone())
        self.trace.heads.append(st["heads"].clone())
        self.trace.lsb_refetch.append(frac)
        if self.head_keep < 1 and layer + 1 >= self.head_start:
            h = q.shape[1]
            k_h = max(1, math.floor(h * self.head_keep + 1e-9))
            st["heads"] = stable_topk_mask(st["s_h"], k_h, st["heads"])
        return AttentionResult(out, m)
