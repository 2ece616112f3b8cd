"""Energon (Zhou et al., MICRO 2021 / TCAD 2022): mix-precision multi-round filtering (MP-MRF).

Choices where the paper (not read in full text; see the reference notes) is open:

* The operands are the int8 codes of Q and K that the core's requantized Q/K GEMMs produce
  (``quantize_qk_int8``: one symmetric scale per tensor, ``round(x / s)``, half to even,
  clamped to [-127, 127]).
* A ``b``-bit operand is the top ``b`` bits of the int8 code: ``x >> (8 - b)`` (arithmetic
  shift, i.e. floor; the uniform -1/2 LSB bias shifts every score of a row by the same
  amount, so it cancels against the max/mean threshold to first order). ``b`` in 1..8.
* Rounds ``((4, 2), (4, 4))``: INT4 Q x INT2 K, then INT4 x INT4, on the survivors of the
  previous round. Scores are exact integer dot products.
* Per-row threshold over the current survivors, one ``alpha`` for every round:
  ``theta = alpha*max + (1-alpha)*mean`` for ``alpha >= 0`` and
  ``theta = -alpha*min + (1+alpha)*mean`` for ``alpha < 0``; a key survives iff
  ``score >= theta``. ``alpha = -1`` gives ``theta = min``: keep all.
* Survivors are attended exactly (the attention itself is computed from the float inputs;
  the INT16 attention unit has its own golden model).

Integer contract (``integer=True``: ``quantize_qk_int8`` + :meth:`EnergonFilter.int_params`
+ :meth:`EnergonFilter.mask_int`, what ``hw.sparse_energon`` computes bit for bit)
---------------------------------------------------------------------------------------------
* Run-time constants (:meth:`EnergonFilter.int_params`): ``alpha_q8 = round(alpha * 256)``
  (signed, [-256, 256], round half to even) and per round ``r`` the shifts
  ``q_shift{r} = 8 - bq``, ``k_shift{r} = 8 - bk`` (0..7). None depends on the scales
  (the threshold is relative to the row).
* Round ``r`` scores ``S = sum_i (q_i >> q_shift) * (k_i >> k_shift)``: exact integers
  (``|S| <= d * 127**2``), over the survivors of round ``r - 1`` (round 0: the real keys).
* Threshold without division, with ``a = alpha_q8``, ``cnt``/``sum``/``max``/``min`` over
  the current survivors of the row: keep iff
  ``256*cnt*S >= |a|*cnt*E + (256-|a|)*sum`` with ``E = max`` for ``a >= 0`` and
  ``E = min`` for ``a < 0`` (the same as the two forms below, exactly). Every product is
  exact (int64 here; the hardware sizes each from its bound). No rounding, no saturation.
* The row's largest score always survives (``sum <= cnt*max`` and ``min <= max``), so a
  real query never ends empty; padding keys and padding query rows are never kept.

Float twin (``integer=False``): the same rounds on float64 fake-quantised operands
``floor(x / s / 2**(8 - b))`` (no int8 rounding, same per-tensor scale ``s``) and the
thresholds with float ``alpha``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from golden.errors import UserValueError
from golden.sparse.a3 import check_int_params, check_qk_codes
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

__all__ = ["EnergonFilter", "energon_param_fields", "energon_round_keep", "energon_round_keep_int",
           "energon_rounds_int"]

CODE_BITS = 8
ALPHA_FRAC_BITS = 8
ALPHA_ONE = 2 ** ALPHA_FRAC_BITS


def energon_round_keep_int(scores: torch.Tensor, cand: torch.Tensor, a: int) -> torch.Tensor:
    """One integer filtering round (module docstring): keep candidates with
    ``256*cnt*S >= |a|*cnt*E + (256-|a|)*sum`` (``E`` max for ``a >= 0``, min for ``a < 0``)."""
    big = 2 ** 62
    cnt = cand.sum(-1, keepdim=True)
    mx = scores.masked_fill(~cand, -big).amax(-1, keepdim=True)
    mn = scores.masked_fill(~cand, big).amin(-1, keepdim=True)
    tot = scores.masked_fill(~cand, 0).sum(-1, keepdim=True)
    e = mx if a >= 0 else mn
    rhs = abs(a) * cnt * e + (ALPHA_ONE - abs(a)) * tot
    return cand & (ALPHA_ONE * cnt * scores >= rhs)


def energon_round_keep(scores: torch.Tensor, cand: torch.Tensor, alpha: float, integer: bool
                       ) -> torch.Tensor:
    """One filtering round: keep candidates with ``score >= theta(alpha)`` (module docstring);
    ``integer``: int64 scores and ``a = round(alpha * 256)``."""
    if integer:
        return energon_round_keep_int(scores, cand, round(alpha * ALPHA_ONE))
    cnt = cand.sum(-1, keepdim=True)
    s = scores.double()
    mx = s.masked_fill(~cand, float("-inf")).amax(-1, keepdim=True)
    mn = s.masked_fill(~cand, float("inf")).amin(-1, keepdim=True)
    mean = s.masked_fill(~cand, 0).sum(-1, keepdim=True) / cnt.clamp_min(1)
    rhs = alpha * mx + (1 - alpha) * mean if alpha >= 0 else -alpha * mn + (1 + alpha) * mean
    return cand & (s >= rhs)


def energon_param_fields(rounds: int) -> dict[str, tuple[int, int]]:
    """Run-time constants of ``rounds`` filtering rounds (name -> inclusive range)."""
    out = {"alpha_q8": (-ALPHA_ONE, ALPHA_ONE)}
    for r in range(rounds):
        out[f"q_shift{r}"] = (0, CODE_BITS - 1)
        out[f"k_shift{r}"] = (0, CODE_BITS - 1)
    return out


def _param_rounds(params: Any) -> int:
    if not isinstance(params, dict):
        raise UserValueError(f"energon params must be a dict (int_params), not {type(params).__name__}")
    r = 0
    while f"q_shift{r}" in params:
        r += 1
    if r == 0:
        raise UserValueError("energon params hold no round (q_shift0/k_shift0 missing)")
    return r


def energon_rounds_int(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor,
                       params: dict[str, int]) -> list[torch.Tensor]:
    """Survivor masks bool ``[B, H, Lq, Lk]`` after each round of the integer contract (the
    last one is the keep mask); the round count comes from ``params``."""
    check_qk_codes(q, k, key_mask)
    p = check_int_params(params, energon_param_fields(_param_rounds(params)), "energon")
    a = p["alpha_q8"]
    cand = valid_pairs(key_mask, q.shape[1], q.shape[2]).clone()
    out = []
    for r in range(_param_rounds(p)):
        scores = (q >> p[f"q_shift{r}"]) @ (k >> p[f"k_shift{r}"]).transpose(-1, -2)
        cand = energon_round_keep_int(scores, cand, a)
        out.append(cand)
    return out


@register_filter
class EnergonFilter(SparseAttentionFilter):
    """Energon golden model: ``alpha`` in [-1, 1) (-1 = keep all; larger prunes more) and the
    filtering ``rounds`` as (query bits, key bits) pairs, 1..8 bits each (top bits of the
    int8 codes)."""

    name = "energon"
    sweep: ClassVar[tuple[dict[str, Any], ...]] = (
        {"alpha": -0.9}, {"alpha": -0.75}, {"alpha": -0.5}, {"alpha": -0.4}, {"alpha": -0.25},
        {"alpha": 0.0},
        {"alpha": 0.25}, {"alpha": 0.5},
    )
    default: ClassVar[dict[str, Any]] = {"alpha": -0.9}

    def __init__(self, *, alpha: float = 0.0, rounds: tuple[tuple[int, int], ...] = ((4, 2), (4, 4)),
                 integer: bool = True) -> None:
        super().__init__(integer=integer)
        self.alpha = check_range("alpha (Energon threshold offset)", alpha, -1.0, 1.0, hi_open=True)
        rounds = tuple(tuple(r) for r in rounds)
        if not rounds:
            raise UserValueError("rounds must hold at least one (query bits, key bits) pair")
        for r in rounds:
            if len(r) != 2 or any(not isinstance(b, int) or isinstance(b, bool)
                                  or not 1 <= b <= CODE_BITS for b in r):
                raise UserValueError(f"each round must be (query bits, key bits) with bits in "
                                     f"[1, {CODE_BITS}], not {r!r}")
        self.rounds = rounds

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    # -- the integer contract --------------------------------------------------------------
    def int_params(self, scale_q: float, scale_k: float, d: int, *, layer: int = 0
                   ) -> dict[str, int]:
        """``alpha_q8 = round(alpha * 256)`` and per round ``q_shift{r} = 8 - bq``,
        ``k_shift{r} = 8 - bk`` (module docstring). The scales and ``layer`` do not enter
        (the thresholds are relative to the row); they are validated all the same."""
        for name, v in (("scale_q", scale_q), ("scale_k", scale_k)):
            check_range(name, v, 0.0, None, lo_open=True)
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise UserValueError(f"d (head size) must be a positive integer, not {d!r}")
        out = {"alpha_q8": round(self.alpha * ALPHA_ONE)}
        for r, (bq, bk) in enumerate(self.rounds):
            out[f"q_shift{r}"] = CODE_BITS - bq
            out[f"k_shift{r}"] = CODE_BITS - bk
        return out

    def mask_int(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor,
                 params: dict[str, int], state: Any = None) -> IntFilterResult:
        """The integer contract (module docstring): int8 codes in, the keep mask (survivors of
        the last round) out. No float, no division."""
        return IntFilterResult(energon_rounds_int(q, k, key_mask, params)[-1])

    # -- the filter ------------------------------------------------------------------------
    def round_scores(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor,
                     bq: int, bk: int) -> torch.Tensor:
        """Float twin scores of one round: ``floor(x / s / 2**(8 - b))`` operands."""
        _, sq = quantize_qk_int8(q, key_mask if q.shape[2] == k.shape[2] else None)
        _, sk = quantize_qk_int8(k, key_mask)
        qf = torch.floor(q.double() / sq / 2 ** (CODE_BITS - bq))
        kf = torch.floor(k.double() / sk / 2 ** (CODE_BITS - bk))
        return qf @ kf.transpose(-1, -2)

    def mask(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, *,
             layer: int = 0) -> torch.Tensor:
        key_mask = _default_key_mask(k, key_mask)
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        if self.integer:
            qm = key_mask if q.shape[2] == k.shape[2] else None
            qq, sq = quantize_qk_int8(q, qm)
            kk, sk = quantize_qk_int8(k, key_mask)
            return self.mask_int(qq, kk, key_mask, self.int_params(sq, sk, q.shape[-1], layer=layer)).mask
        if self.alpha == -1.0:
            return valid.clone()
        cand = valid.clone()
        scores = None
        for bq, bk in self.rounds:
            scores = self.round_scores(q, k, key_mask, bq, bk)
            cand = energon_round_keep(scores, cand, self.alpha, False)
        assert scores is not None
        return ensure_nonempty(cand, scores, valid)
