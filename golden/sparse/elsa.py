"""ELSA (Ham, Lee et al., ISCA 2021): sign-random-projection hashes with orthogonal
projections, Hamming-distance angle estimate, norm-scaled threshold learned per layer.

Projection (:func:`elsa_projection`): ``A_int`` = the first ``k`` rows of ``H_d diag(s)``,
``H_d`` the Sylvester Hadamard matrix (``H_1 = [1]``, ``H_2n = [[H, H], [H, -H]]``) and ``s``
in {-1, +1}^d drawn from ``seed``: every entry is +-1, the rows are orthogonal (``A_float =
A_int / sqrt(d)`` is orthonormal), and ``A_int x`` is a sign flip then a fast Walsh-Hadamard
transform (``d log2 d`` additions). On MiniLM Q/K its angle estimate is as good as the
paper's Kronecker-structured orthogonal projection (RMS error 0.212 rad both, d = k = 32).
``d`` and ``k`` must be powers of two, ``k <= d``. Hash bit i = 1 iff ``(A x)_i >= 0``.

``theta_bias``: the 80th percentile of ``pi*H/k - theta`` over 4096 seeded pairs of standard
normal vectors (0.127 rad for d = k = 64 in the paper; recomputed for the actual d, k).

Threshold t per layer, learned from ``p`` on calibration data (paper 2.3): per real query,
``P`` = exact attention row over the n real keys; ``j* = argmin_{P_j > p/n} P_j`` (lowest
index on ties), or ``argmax P`` when that set is empty; the sample is
``q.k_{j*} / (|q| * max_j |k_j|)`` on raw (unscaled) dots; ``t`` = the mean over all real
queries of all calibration sequences and heads. ``p = 0`` means exact attention.

Float twin (``integer=False``): float A, Q, K, norms and cosine; key y is a candidate iff
``|K_y| cos(max(0, pi H/k - theta_bias)) > t max|K|`` (the paper's "skip iff t |K_max| >=
|K_y| cos(theta)").

Integer contract (``integer=True``; :meth:`ElsaFilter.int_params` on the host,
:meth:`ElsaFilter.mask_int` in the RTL filter ``hw.sparse_elsa``). In: int8 codes of Q and K
(int64 in [-127, 127], :func:`golden.sparse.base.quantize_qk_int8`; the scales do not
matter: hashes are sign bits and norms are compared relative to the largest). No float,
square root or division:

1. Hashes (:func:`elsa_hash_int`): sign bits of the exact ``A_int x`` (``|.| <= 127 d``).
2. Hamming distance ``H = popcount(h_q xor h_k)`` in [0, k].
3. Cosine LUT (:func:`elsa_cos_lut`, ``k + 1`` entries, a constant of ``d, k, seed``):
   ``c_H = round(256 cos(max(0, pi H/k - theta_bias)))`` (half to even, in [-256, 256]);
   the table holds ``c_H |c_H|`` (signed, 16 fraction bits).
4. Squared key norms ``n2_y = sum_i k_i**2`` (``<= 127**2 d``); ``n2max`` = the largest over
   the head's real keys (0 if none).
5. Estimate ``est = c_H |c_H| n2_y`` (signed; ``f(c_H/256 |K_y|)`` with ``f(x) = x|x|``,
   monotone, in units of ``2**-16`` and key-code squared).
6. Key y is kept iff ``est * 2**8 > thr * n2max``, ``thr = round(t |t| 2**24)`` (half to even,
   signed, ``|thr| < 2**31``, so ``|t| < 2**3.5``): since ``f`` is monotone this is
   ``c_H/256 |K_y| > t |K_max|`` with ``t`` rounded onto ``thr``'s grid, signs included.
   ``keep_all`` (``p = 0``) keeps every valid key. A real query row left empty keeps its
   first valid key with the largest ``est``.

Padding keys are never kept (nor count in ``n2max``); padding query rows are empty.
"""

from __future__ import annotations

import math
from functools import lru_cache
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
from golden.sparse.sanger import check_int_param, check_qk_codes

__all__ = ["ElsaFilter", "elsa_calibrate_layer", "elsa_cos_lut", "elsa_hash_int", "elsa_projection",
           "elsa_signs", "elsa_theta_bias", "elsa_thr"]

LUT_FRAC_BITS = 8
THR_EXTRA_BITS = 8
THR_FRAC_BITS = 2 * LUT_FRAC_BITS + THR_EXTRA_BITS
THR_LIMIT = 2 ** 31
#: names of the run-time constants of :meth:`ElsaFilter.int_params`
INT_PARAMS = ("keep_all", "thr")


def _is_pow2(x: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0 and (x & (x - 1)) == 0


def _check_dk(d: int, k: int) -> None:
    if not _is_pow2(d):
        raise UserValueError(f"ELSA needs a power-of-two head dimension, not d={d}")
    if not _is_pow2(k) or k > d:
        raise UserValueError(f"hash_bits must be a power of two in [1, {d}], not {k}")


@lru_cache(maxsize=16)
def elsa_signs(d: int, seed: int = 0) -> tuple[int, ...]:
    """The seeded sign flips ``s`` (``d`` values in {-1, +1}) of the projection."""
    g = torch.Generator().manual_seed(seed)
    return tuple(int(v) * 2 - 1 for v in torch.randint(0, 2, (d,), generator=g).tolist())


@lru_cache(maxsize=16)
def elsa_projection(d: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_float [k, d], A_int [k, d])``: ``A_int`` = first ``k`` rows of ``H_d diag(s)``
    (entries +-1), ``A_float = A_int / sqrt(d)`` (orthonormal rows)."""
    _check_dk(d, k)
    h = torch.ones(1, 1, dtype=torch.int64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    ai = (h * torch.tensor(elsa_signs(d, seed), dtype=torch.int64)[None, :])[:k].contiguous()
    return ai.double() / math.sqrt(d), ai


@lru_cache(maxsize=16)
def elsa_theta_bias(d: int, k: int, seed: int = 0, samples: int = 4096) -> float:
    """80th-percentile error of the Hamming angle estimator on standard normal pairs."""
    a, _ = elsa_projection(d, k, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(samples, d, generator=g, dtype=torch.float64)
    y = torch.randn(samples, d, generator=g, dtype=torch.float64)
    hx, hy = (x @ a.T) >= 0, (y @ a.T) >= 0
    est = math.pi / k * (hx != hy).sum(-1).double()
    cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
    err = est - torch.arccos(cos.clamp(-1, 1))
    return float(torch.quantile(err, 0.8))


def _cos_table(d: int, k: int, seed: int) -> torch.Tensor:
    """Float ``cos(max(0, pi H/k - theta_bias))`` for H = 0..k (float64)."""
    hh = torch.arange(k + 1, dtype=torch.float64)
    return torch.cos((math.pi / k * hh - elsa_theta_bias(d, k, seed)).clamp_min(0))


@lru_cache(maxsize=16)
def elsa_cos_lut(d: int, k: int, seed: int = 0) -> tuple[int, ...]:
    """The integer contract's table (module docstring, step 3): ``c_H |c_H|`` for H = 0..k,
    ``c_H = round(256 cos(max(0, pi H/k - theta_bias)))`` (half to even)."""
    _check_dk(d, k)
    c = torch.round(_cos_table(d, k, seed) * 2 ** LUT_FRAC_BITS).to(torch.int64)
    return tuple(int(v) for v in (c * c.abs()).tolist())


def elsa_hash_int(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Hash bits bool ``[..., k]`` of integer vectors ``x`` ``[..., d]``: ``(A_int x)_i >= 0``."""
    _, ai = elsa_projection(x.shape[-1], k, seed)
    return (x.to(torch.int64) @ ai.T) >= 0


def elsa_thr(t: float) -> int:
    """The integer threshold ``round(t |t| 2**24)`` (half to even) of a real threshold ``t``."""
    check_range("ELSA threshold t", t, None, None)
    v = round(t * abs(t) * 2.0 ** THR_FRAC_BITS)
    if not -THR_LIMIT < v < THR_LIMIT:
        raise UserValueError(f"ELSA threshold t={t:g} is out of the integer contract's range "
                             f"(|t| < 2^3.5)")
    return v


def elsa_calibrate_layer(samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], p: float
                         ) -> float:
    """Mean threshold sample of one layer (module docstring); ``samples``: (q, k, key_mask)."""
    total, count = 0.0, 0
    for q, k, key_mask in samples:
        q, k = q.double(), k.double()
        d = q.shape[-1]
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        dots = q @ k.transpose(-1, -2)
        prob = torch.softmax((dots / math.sqrt(d)).masked_fill(~valid, float("-inf")), -1)
        prob = torch.nan_to_num(prob, nan=0.0)
        n = key_mask.sum(1).double()[:, None, None, None]
        rel = valid & (prob > p / n)
        inf = torch.tensor(float("inf"), dtype=torch.float64)
        j_min = torch.where(rel, prob, inf).argmin(-1, keepdim=True)
        j_max = prob.masked_fill(~valid, -1.0).argmax(-1, keepdim=True)
        j = torch.where(rel.any(-1, keepdim=True), j_min, j_max)
        kn = k.norm(dim=-1).masked_fill(~key_mask[:, None, :], 0.0).amax(-1)[:, :, None, None]
        sample = dots.gather(-1, j) / (q.norm(dim=-1, keepdim=True) * kn).clamp_min(1e-30)
        real_q = key_mask[:, None, :, None].expand_as(sample)
        total += float(sample[real_q].sum())
        count += int(real_q.sum())
    if count == 0:
        raise UserValueError("ELSA calibration data holds no real query")
    return total / count


@register_filter
class ElsaFilter(SparseAttentionFilter):
    """ELSA golden model: ``p`` (>= 0; 0 = exact) sets the learned per-layer threshold;
    ``hash_bits`` (power of two <= d; None = d); ``thresholds`` sets t per layer directly."""

    name = "elsa"
    needs_calibration = True
    sweep: ClassVar[tuple[dict[str, Any], ...]] = (
        {"p": 0.04}, {"p": 0.1}, {"p": 0.25}, {"p": 0.5}, {"p": 1.0}, {"p": 2.0}, {"p": 4.0},
    )
    default: ClassVar[dict[str, Any]] = {"p": 0.04}   # measured: NN >= 95 %

    def __init__(self, *, p: float = 1.0, hash_bits: int | None = None,
                 thresholds: list[float] | None = None, seed: int = 0, integer: bool = True) -> None:
        super().__init__(integer=integer)
        self.p = check_range("p (ELSA relevance factor)", p, 0.0, None)
        if hash_bits is not None and not _is_pow2(hash_bits):
            raise UserValueError(f"hash_bits must be a power of two in [1, d], not {hash_bits!r}")
        self.hash_bits = hash_bits
        self.seed = int(seed)
        self.thresholds = None if thresholds is None else [
            check_range(f"thresholds[{i}] (ELSA threshold)", t, None, None) for i, t in enumerate(thresholds)]

    def params(self) -> dict[str, Any]:
        return {"p": self.p}

    def calibrate(self, samples: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]) -> None:
        self.thresholds = [elsa_calibrate_layer(layer, self.p) for layer in samples]

    def _k(self, d: int) -> int:
        if not _is_pow2(d):
            raise UserValueError(f"ELSA needs a power-of-two head dimension, not d={d}")
        k = d if self.hash_bits is None else self.hash_bits
        _check_dk(d, k)
        return k

    def threshold_at(self, layer: int) -> float:
        """The calibrated (or given) threshold t of ``layer``."""
        if self.thresholds is None:
            raise UserValueError("ELSA threshold not calibrated: call calibrate() or pass thresholds=")
        if not 0 <= layer < len(self.thresholds):
            raise UserValueError(f"layer {layer} has no ELSA threshold ({len(self.thresholds)} calibrated)")
        return self.thresholds[layer]

    def hashes(self, x: torch.Tensor) -> torch.Tensor:
        """Hash bits bool ``[..., k]`` of vectors ``x`` ``[..., d]``: of its int8 codes
        (``quantize_qk_int8``) on the integer path, of ``x`` itself on the float path."""
        d = x.shape[-1]
        k = self._k(d)
        if self.integer:
            return elsa_hash_int(quantize_qk_int8(x)[0], k, self.seed)
        af, _ = elsa_projection(d, k, self.seed)
        return (x.double() @ af.T) >= 0

    # -- the integer contract ----------------------------------------------------------------
    def int_params(self, scale_q: float, scale_k: float, d: int, *, layer: int = 0) -> dict[str, int]:
        """Run-time constants at ``layer`` (module docstring): ``keep_all`` (0/1, ``p = 0``) and
        ``thr`` (signed 32-bit, :func:`elsa_thr` of the layer's t; 0 when keeping all). The
        scales are checked but do not enter; ``d`` is checked against ``hash_bits``."""
        check_range("scale_q", scale_q, 0.0, None, lo_open=True)
        check_range("scale_k", scale_k, 0.0, None, lo_open=True)
        if isinstance(d, bool) or not isinstance(d, int):
            raise UserValueError(f"d (head size) must be a power-of-two integer, not {d!r}")
        self._k(d)
        if self.p == 0:
            return {"keep_all": 1, "thr": 0}
        return {"keep_all": 0, "thr": elsa_thr(self.threshold_at(layer))}

    def estimates_int(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(est [B, H, Lq, Lk], n2max [B, H])`` of the integer contract (steps 1-5)."""
        d = q.shape[-1]
        kb = self._k(d)
        q, k = q.to(torch.int64), k.to(torch.int64)
        ham = (elsa_hash_int(q, kb, self.seed)[..., :, None, :]
               != elsa_hash_int(k, kb, self.seed)[..., None, :, :]).sum(-1)
        lut = torch.tensor(elsa_cos_lut(d, kb, self.seed), dtype=torch.int64)
        n2 = (k * k).sum(-1)                                          # [B, H, Lk]
        n2max = n2.masked_fill(~key_mask[:, None, :], 0).amax(-1)      # [B, H]
        return lut[ham] * n2[:, :, None, :], n2max

    def mask_int(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor,
                 params: dict[str, int], state: Any = None) -> IntFilterResult:
        """The integer contract (module docstring): int8 codes ``q``, ``k`` and :meth:`int_params`
        in, the keep mask out. Bit for bit what ``hw.sparse_elsa`` computes."""
        del state
        key_mask = check_qk_codes(q, k, key_mask)
        self._k(q.shape[-1])
        keep_all = check_int_param(params, "keep_all", 0, 1)
        thr = check_int_param(params, "thr", -THR_LIMIT + 1, THR_LIMIT - 1)
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        if keep_all:
            return IntFilterResult(valid.clone())
        est, n2max = self.estimates_int(q, k, key_mask)
        cand = (est << THR_EXTRA_BITS) > thr * n2max[:, :, None, None]
        return IntFilterResult(ensure_nonempty(cand & valid, est, valid))

    # -- the filter ----------------------------------------------------------------------------
    def mask(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, *,
             layer: int = 0) -> torch.Tensor:
        key_mask = _default_key_mask(k, key_mask)
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        if self.p == 0:
            return valid.clone()
        t = self.threshold_at(layer)
        if self.integer:
            q8, sq = quantize_qk_int8(q, key_mask if q.shape[2] == k.shape[2] else None)
            k8, sk = quantize_qk_int8(k, key_mask)
            return self.mask_int(q8, k8, key_mask, self.int_params(sq, sk, q.shape[-1], layer=layer)).mask
        d = q.shape[-1]
        kb = self._k(d)
        ham = (self.hashes(q)[..., :, None, :] != self.hashes(k)[..., None, :, :]).sum(-1)
        cos_lut = _cos_table(d, kb, self.seed)
        kn = k.double().norm(dim=-1).masked_fill(~key_mask[:, None, :], 0.0)
        sim = kn[:, :, None, :] * cos_lut[ham]
        cand = sim > t * kn.amax(-1)[:, :, None, None]
        return ensure_nonempty(cand & valid, sim, valid)
