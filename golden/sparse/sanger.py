"""Sanger (Lu et al., MICRO 2021): 4-bit quantised Q/K score prediction, probability
threshold -> mask.

Prediction (as in the authors' code, ``normalize_qk = inner_product``): rows of Q and K are
L2-normalised, fake-quantised symmetrically to ``bits`` bits with
``q = clamp(round(x * (2**(b-1)-1) / clip), +-(2**(b-1)-1))`` (round half to even), and
``s_hat = (q_q . k_q) / scale_q / scale_k * |q| * |k| / sqrt(d)``; ``P_hat`` = softmax of
``s_hat`` over real keys; key j is a candidate iff ``P_hat_j > threshold``. The clip values
(``clip``, an EMA of max|x| in the authors' training) are the maxima of ``|x|/|x|_row`` over
the calibration data per layer, for Q and K separately; without calibration the maximum of
the current sequence and head is used. This is the float twin (``integer=False``).

Integer contract (``integer=True``; :meth:`SangerFilter.int_params` on the host,
:meth:`SangerFilter.mask_int` in the RTL filter ``hw.sparse_sanger``). In: int8 codes of Q
and K (int64 in [-127, 127], one scale per tensor, :func:`golden.sparse.base.quantize_qk_int8`).
No float, square root or division:

1. Row codes (:func:`sanger_row_codes`, ``b = bits``, ``top = 2**(b-1) - 1``): per row of
   ``d`` codes, ``L`` = bit length of ``max_i |x_i|`` (0 for a zero row), row shift
   ``s = max(0, L - (b - 1))`` in ``[0, 8 - b]``, code ``c_i = clamp(rne(x_i / 2**s), -top,
   top)``, ``rne`` the rounding right shift half to even, ``(x + 2**(s-1) - 1 + ((x >> s) & 1))
   >> s`` for ``s >= 1`` (arithmetic shifts), ``x`` itself for ``s = 0``. A power-of-two
   block scale per row stands for the float twin's row normalisation (the largest code of a
   row is 4..7 for 4 bits).
2. Dot ``D = sum_i cq_i * ck_i`` (signed, ``|D| <= d * top**2``).
3. Base-2 logit with 8 fraction bits: ``z = floor(D * mult * 2**(sq + sk) / 2**shift)`` (exact
   product, arithmetic right shift); the host's ``mult * 2**-shift`` is
   ``log2(e) * 2**8 * scale_q * scale_k / sqrt(d)`` (``mult`` 16-bit unsigned, ``shift`` the
   largest in [0, 63] with ``mult < 2**16``, ``mult`` rounded half to even).
4. Per query row over its valid keys: ``zmax``; ``x = zmax - z >= 0``; ``e =
   exp2_neg_fixed(x, 8)`` (64-entry LUT, 15 fraction bits, ``e = 2**15`` at the maximum and 0
   once ``x >= 16 * 2**8``); ``S = sum e``.
5. Key j is kept iff ``e_j * 2**16 > thr * S`` with ``thr = round(threshold * 2**16)`` (half to
   even, in [0, 2**16]); ``keep_all`` (threshold 0) keeps every valid key. A real query row
   left empty (only when ``thr * S >= 2**31``) keeps its first key with ``z = zmax``.

Padding keys are never kept; padding query rows (self-attention) are empty.

Golden-only knob, the **mass rule** (``mass`` / ``layer_masses``; ours, not in the Sanger
paper or code, and not implemented by ``hw.sparse_sanger``): instead of step 5, key j is kept
iff the predicted mass of the keys *strictly* more probable than j is below ``1 - mass``,
``A_j * 2**16 < (2**16 - m) * S`` with ``A_j = sum of e_i over valid keys with e_i > e_j``
and ``m = round(mass * 2**16)`` (half to even, in [0, 2**16)): the smallest set of the most
probable keys, ties kept together, whose predicted mass reaches ``1 - mass`` (a per-row
"top-p" on ``P_hat``; the row maximum is always kept). ``mass = 0`` keeps every valid key.
Integers only (:func:`sanger_mass_keep_int`); the host gives ``m`` as ``params["mass"]``
(:meth:`SangerFilter.int_params`), and :meth:`SangerFilter.mask_int`, the contract of the
RTL unit, refuses such params. The float twin applies the same rule to ``P_hat``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from golden.errors import UserValueError
from golden.sparse.base import (
    IntFilterResult,
    SparseAttentionFilter,
    _default_key_mask,
    check_range,
    ensure_nonempty,
    exp2_neg_fixed,
    quantize_qk_int8,
    register_filter,
    valid_pairs,
)

__all__ = ["SangerFilter", "check_int_param", "check_qk_codes", "rne_shift", "sanger_logits_int",
           "sanger_mass_keep", "sanger_mass_keep_int", "sanger_quantize", "sanger_row_codes",
           "sanger_mult_shift"]

ALLOWED_BITS = (2, 4, 6, 8)
LOGIT_FRAC_BITS = 8
THRESH_FRAC_BITS = 16
MULT_BITS = 16
MAX_SHIFT = 63
#: names of the run-time constants of :meth:`SangerFilter.int_params`
INT_PARAMS = ("keep_all", "thr", "mult", "shift")


def sanger_quantize(x: torch.Tensor, bits: int, clip: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float twin: symmetric ``bits``-bit codes (int64) of ``x`` with clip value ``clip``, and the scale."""
    top = 2 ** (bits - 1) - 1
    scale = top / torch.as_tensor(clip, dtype=torch.float64).clamp_min(1e-30)
    return torch.round(x.double() * scale).clamp(-top, top).to(torch.int64), scale


def check_qk_codes(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Validate the inputs of a ``mask_int``: int8 codes ``q`` ``[B, H, Lq, d]``, ``k``
    ``[B, H, Lk, d]`` (integer tensors in [-127, 127]) and ``key_mask`` ``[B, Lk]``; returns
    the key mask as bool. Raises ``ValueError`` naming the bad input."""
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool \
                or t.dim() != 4:
            raise UserValueError(f"{name} must be an int64 tensor [B, H, L, d] of int8 codes "
                                 f"(quantize_qk_int8), not {getattr(t, 'dtype', type(t).__name__)} "
                                 f"{tuple(getattr(t, 'shape', ()))}")
        if t.numel() and (int(t.min()) < -127 or int(t.max()) > 127):
            raise UserValueError(f"{name} codes must lie in [-127, 127], not [{int(t.min())}, {int(t.max())}]")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise UserValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in B, H and d")
    if not isinstance(key_mask, torch.Tensor) or tuple(key_mask.shape) != (k.shape[0], k.shape[2]):
        raise UserValueError(f"key_mask must be a bool tensor [B, Lk] = [{k.shape[0]}, {k.shape[2]}], "
                             f"not {tuple(getattr(key_mask, 'shape', ()))}")
    return key_mask.bool()


def check_int_param(params: dict[str, int], name: str, lo: int, hi: int) -> int:
    """``params[name]`` as an int in ``[lo, hi]`` (``ValueError`` naming it otherwise)."""
    if not isinstance(params, dict):
        raise UserValueError(f"params must be the dict of int_params(), not {type(params).__name__}")
    if name not in params:
        raise UserValueError(f"params lacks {name!r} (int_params() gives {', '.join(sorted(params)) or 'it'})")
    v = params[name]
    if isinstance(v, bool) or not isinstance(v, int):
        raise UserValueError(f"params[{name!r}] must be an integer, not {v!r}")
    if not lo <= v <= hi:
        raise UserValueError(f"params[{name!r}] must be in [{lo}, {hi}], not {v}")
    return v


def rne_shift(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x / 2**s`` rounded half to even, for int64 ``x`` and shifts ``s >= 0`` (broadcast):
    ``(x + 2**(s-1) - 1 + ((x >> s) & 1)) >> s`` with arithmetic shifts, ``x`` for ``s = 0``."""
    s = torch.as_tensor(s, dtype=torch.int64)
    half = torch.where(s > 0, (torch.ones_like(s) << (s - 1).clamp_min(0)) - 1, torch.zeros_like(s))
    r = (x + half + ((x >> s) & 1)) >> s
    return torch.where(s > 0, r, x)


def sanger_row_codes(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``bits``-bit codes of int8 code rows ``x`` ``[..., d]`` with a power-of-two scale per row
    (module docstring, step 1): ``(codes [..., d], shifts [..., 1])``, both int64."""
    if bits not in ALLOWED_BITS:
        raise UserValueError(f"bits must be one of {ALLOWED_BITS}, not {bits!r}")
    top = 2 ** (bits - 1) - 1
    m = x.abs().amax(-1, keepdim=True)
    length = torch.zeros_like(m)
    for b in range(1, 8):       # bit length of m in [0, 127]
        length = length + (m >= (1 << (b - 1))).to(torch.int64)
    s = (length - (bits - 1)).clamp_min(0)
    return rne_shift(x, s).clamp(-top, top), s


def sanger_logits_int(q: torch.Tensor, k: torch.Tensor, bits: int, mult: int, shift: int) -> torch.Tensor:
    """Base-2 logits int64 ``[B, H, Lq, Lk]`` with 8 fraction bits (module docstring, steps
    1-3) of int8 codes ``q``, ``k``."""
    qc, sq = sanger_row_codes(q, bits)
    kc, sk = sanger_row_codes(k, bits)
    dot = qc @ kc.transpose(-1, -2)
    return ((dot * mult) << (sq + sk.transpose(-1, -2))) >> shift


def sanger_mass_keep_int(e: torch.Tensor, valid: torch.Tensor, m: int) -> torch.Tensor:
    """The mass rule (module docstring) on int64 exp codes ``e`` ``[..., n]`` (0 outside
    ``valid``): key j is kept iff ``A_j * 2**16 < (2**16 - m) * S``, ``A_j`` the sum of the
    codes strictly above ``e_j`` in its row, ``S`` the row sum. Integers only."""
    asc = torch.sort(e, dim=-1).values                      # ascending; padding adds 0
    prefix = torch.nn.functional.pad(asc.cumsum(-1), (1, 0))
    at_most = torch.gather(prefix, -1, torch.searchsorted(asc, e, right=True))
    s = prefix[..., -1:]
    above = s - at_most                                     # sum of codes > e_j
    return ((above << THRESH_FRAC_BITS) < (2 ** THRESH_FRAC_BITS - m) * s) & valid


def sanger_mass_keep(p: torch.Tensor, valid: torch.Tensor, mass: float) -> torch.Tensor:
    """Float twin of :func:`sanger_mass_keep_int` on probabilities ``p`` (0 outside ``valid``):
    keep j iff the mass strictly above ``p_j`` is below ``1 - mass``."""
    p = p.double().masked_fill(~valid, 0.0)
    asc = torch.sort(p, dim=-1).values
    prefix = torch.nn.functional.pad(asc.cumsum(-1), (1, 0))
    above = prefix[..., -1:] - torch.gather(prefix, -1, torch.searchsorted(asc, p, right=True))
    return (above < 1.0 - mass) & valid


def sanger_mult_shift(value: float) -> tuple[int, int]:
    """``(mult, shift)`` with ``mult * 2**-shift ~= value``: ``shift`` the largest in [0, 63]
    with ``round(value * 2**shift) < 2**16``, ``mult`` that rounding (half to even)."""
    check_range("logit multiplier", value, 0.0, None, lo_open=True)
    shift = MAX_SHIFT
    while shift > 0 and round(value * 2.0 ** shift) >= 2 ** MULT_BITS:
        shift -= 1
    mult = round(value * 2.0 ** shift)
    if mult >= 2 ** MULT_BITS:
        raise UserValueError(f"Q/K scales too large for the Sanger logit multiplier ({value:g} >= 2^16)")
    return mult, shift


@register_filter
class SangerFilter(SparseAttentionFilter):
    """Sanger golden model: ``threshold`` in [0, 1) on the predicted probability (0 = keep
    all); ``bits`` of the prediction in {2, 4, 6, 8}; ``layer_thresholds`` (one per layer,
    each in [0, 1)) overrides ``threshold`` per layer. Per-layer thresholds are our
    extension (the authors' configs use one threshold for the whole model); they are meant
    to be chosen on calibration data (``benchmarks/sparse_attention_accuracy.py``).

    ``mass`` in [0, 1) (or ``layer_masses``, one per layer) replaces the threshold by the
    golden-only mass rule (module docstring; ours, no RTL): per row the most probable keys
    up to a predicted mass of ``1 - mass``. Give either a threshold or a mass, not both."""

    name = "sanger"
    needs_calibration = True
    sweep: ClassVar[tuple[dict[str, Any], ...]] = (
        {"threshold": 0.002}, {"threshold": 0.005}, {"threshold": 0.01},
        {"threshold": 0.02}, {"threshold": 0.03}, {"threshold": 0.0325}, {"threshold": 0.04},
        {"threshold": 0.08},
    )
    default: ClassVar[dict[str, Any]] = {"threshold": 0.01}

    def __init__(self, *, threshold: float | None = None, bits: int = 4,
                 layer_thresholds: list[float] | tuple[float, ...] | None = None,
                 mass: float | None = None,
                 layer_masses: list[float] | tuple[float, ...] | None = None,
                 integer: bool = True) -> None:
        super().__init__(integer=integer)
        if (mass is not None or layer_masses is not None) and (threshold is not None
                                                               or layer_thresholds is not None):
            raise UserValueError("give Sanger either a probability threshold (threshold, "
                                 "layer_thresholds) or a mass (mass, layer_masses), not both")
        if mass is not None and layer_masses is not None:
            raise UserValueError("give Sanger either mass or layer_masses, not both")
        self.mass = None if mass is None else check_range(
            "mass (Sanger predicted mass left out per row)", mass, 0.0, 1.0, hi_open=True)
        self.layer_masses = None if layer_masses is None else tuple(
            check_range(f"layer_masses[{i}] (Sanger predicted mass left out per row)", m, 0.0, 1.0,
                        hi_open=True) for i, m in enumerate(layer_masses))
        if self.layer_masses is not None and not self.layer_masses:
            raise UserValueError("layer_masses must hold one mass per layer, not an empty list")
        threshold = 0.002 if threshold is None else threshold
        self.threshold = check_range("threshold (Sanger probability threshold)", threshold, 0.0, 1.0,
                                     hi_open=True)
        if bits not in ALLOWED_BITS:
            raise UserValueError(f"bits must be one of {ALLOWED_BITS}, not {bits!r}")
        self.bits = bits
        self.layer_thresholds = None if layer_thresholds is None else tuple(
            check_range(f"layer_thresholds[{i}] (Sanger probability threshold)", t, 0.0, 1.0, hi_open=True)
            for i, t in enumerate(layer_thresholds))
        if self.layer_thresholds is not None and not self.layer_thresholds:
            raise UserValueError("layer_thresholds must hold one threshold per layer, not an empty list")
        self.clips: list[tuple[float, float]] | None = None

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"threshold": self.threshold}
        if self.bits != 4:
            p["bits"] = self.bits
        if self.layer_thresholds is not None:
            p = {"layers": "/".join(f"{t:g}" for t in self.layer_thresholds), **p}
            del p["threshold"]
        if self.mass is not None or self.layer_masses is not None:
            del p["threshold"]
            p = ({"mass": self.mass} if self.mass is not None
                 else {"mass_layers": "/".join(f"{m:g}" for m in self.layer_masses or ())}) | p
        return p

    @property
    def uses_mass(self) -> bool:
        """True when the golden-only mass rule replaces the threshold (no RTL)."""
        return self.mass is not None or self.layer_masses is not None

    def mass_at(self, layer: int) -> float:
        """The mass left out per row at ``layer`` (mass rule only)."""
        if self.layer_masses is None:
            if self.mass is None:
                raise UserValueError("this Sanger filter uses a probability threshold, not a mass")
            return self.mass
        if not 0 <= layer < len(self.layer_masses):
            raise UserValueError(f"layer {layer} has no Sanger mass ({len(self.layer_masses)} given)")
        return self.layer_masses[layer]

    def threshold_at(self, layer: int) -> float:
        """The probability threshold used at ``layer``."""
        if self.layer_thresholds is None:
            return self.threshold
        if not 0 <= layer < len(self.layer_thresholds):
            raise UserValueError(f"layer {layer} has no Sanger threshold ({len(self.layer_thresholds)} given)")
        return self.layer_thresholds[layer]

    def calibrate(self, samples: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]) -> None:
        """Learn the float twin's per-layer clips (the integer contract scales each row by a
        power of two instead and needs none)."""
        clips = []
        for layer in samples:
            cq = ck = 0.0
            for q, k, key_mask in layer:
                m = key_mask[:, None, :, None]
                cq = max(cq, float((q.double() / q.double().norm(dim=-1, keepdim=True).clamp_min(1e-30))
                                   .abs().masked_fill(~m, 0).amax()))
                ck = max(ck, float((k.double() / k.double().norm(dim=-1, keepdim=True).clamp_min(1e-30))
                                   .abs().masked_fill(~m, 0).amax()))
            clips.append((cq, ck))
        self.clips = clips

    def _clip(self, xn: torch.Tensor, key_mask: torch.Tensor, layer: int, which: int) -> torch.Tensor:
        if self.clips is not None:
            if not 0 <= layer < len(self.clips):
                raise UserValueError(f"layer {layer} has no Sanger calibration ({len(self.clips)} layers)")
            return torch.tensor(self.clips[layer][which], dtype=torch.float64)
        return xn.abs().masked_fill(~key_mask[:, None, :, None], 0).amax((-1, -2), keepdim=True)

    # -- the integer contract ----------------------------------------------------------------
    def int_params(self, scale_q: float, scale_k: float, d: int, *, layer: int = 0) -> dict[str, int]:
        """Run-time constants for int8 Q/K of scales ``scale_q``, ``scale_k`` and head size
        ``d`` at ``layer`` (module docstring): ``keep_all`` (0/1), ``thr`` (17-bit unsigned,
        16 fraction bits), ``mult`` (16-bit unsigned) and ``shift`` (0..63)."""
        check_range("scale_q", scale_q, 0.0, None, lo_open=True)
        check_range("scale_k", scale_k, 0.0, None, lo_open=True)
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise UserValueError(f"d (head size) must be a positive integer, not {d!r}")
        mult, shift = sanger_mult_shift(math.log2(math.e) * 2 ** LOGIT_FRAC_BITS * scale_q * scale_k
                                        / math.sqrt(d))
        if self.uses_mass:      # golden-only (sanger_mass_keep_int); mask_int refuses it
            mass = self.mass_at(layer)
            return {"keep_all": int(mass == 0), "thr": 0, "mult": mult, "shift": shift,
                    "mass": round(mass * 2 ** THRESH_FRAC_BITS)}
        thr = self.threshold_at(layer)
        return {"keep_all": int(thr == 0), "thr": round(thr * 2 ** THRESH_FRAC_BITS),
                "mult": mult, "shift": shift}

    def mask_int(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor,
                 params: dict[str, int], state: Any = None) -> IntFilterResult:
        """The integer contract (module docstring): int8 codes ``q``, ``k`` and :meth:`int_params`
        in, the keep mask out. Bit for bit what ``hw.sparse_sanger`` computes. Params of the
        golden-only mass rule (a ``mass`` entry) are refused: the unit has no such rule
        (:meth:`mask_mass_int` is its golden model)."""
        del state
        if isinstance(params, dict) and "mass" in params:
            raise UserValueError("the Sanger mass rule is golden-only: the sparse_sanger unit "
                                 "implements the probability threshold (mask_int) only; use "
                                 "mask_mass_int, or a threshold for the RTL")
        key_mask = check_qk_codes(q, k, key_mask)
        keep_all = check_int_param(params, "keep_all", 0, 1)
        thr = check_int_param(params, "thr", 0, 2 ** THRESH_FRAC_BITS)
        mult = check_int_param(params, "mult", 0, 2 ** MULT_BITS - 1)
        shift = check_int_param(params, "shift", 0, MAX_SHIFT)
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        if keep_all:
            return IntFilterResult(valid.clone())
        z = sanger_logits_int(q.to(torch.int64), k.to(torch.int64), self.bits, mult, shift)
        zm = z.masked_fill(~valid, -(2 ** 62))
        e = exp2_neg_fixed(zm.amax(-1, keepdim=True) - zm, LOGIT_FRAC_BITS).masked_fill(~valid, 0)
        cand = (e << THRESH_FRAC_BITS) > thr * e.sum(-1, keepdim=True)
        return IntFilterResult(ensure_nonempty(cand & valid, z, valid))

    def mask_mass_int(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor,
                      params: dict[str, int]) -> IntFilterResult:
        """The golden-only mass rule in integers (module docstring): as :meth:`mask_int`, with
        step 5 replaced by :func:`sanger_mass_keep_int` for ``params["mass"]``. No RTL."""
        key_mask = check_qk_codes(q, k, key_mask)
        keep_all = check_int_param(params, "keep_all", 0, 1)
        m = check_int_param(params, "mass", 0, 2 ** THRESH_FRAC_BITS - 1)
        mult = check_int_param(params, "mult", 0, 2 ** MULT_BITS - 1)
        shift = check_int_param(params, "shift", 0, MAX_SHIFT)
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        if keep_all:
            return IntFilterResult(valid.clone())
        z = sanger_logits_int(q.to(torch.int64), k.to(torch.int64), self.bits, mult, shift)
        zm = z.masked_fill(~valid, -(2 ** 62))
        e = exp2_neg_fixed(zm.amax(-1, keepdim=True) - zm, LOGIT_FRAC_BITS).masked_fill(~valid, 0)
        return IntFilterResult(ensure_nonempty(sanger_mass_keep_int(e, valid, m), z, valid))

    # -- the filter ----------------------------------------------------------------------------
    def _int8(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, layer: int
              ) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        q8, sq = quantize_qk_int8(q, key_mask if q.shape[2] == k.shape[2] else None)
        k8, sk = quantize_qk_int8(k, key_mask)
        return q8, k8, self.int_params(sq, sk, q.shape[-1], layer=layer)

    def predicted_logits(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, layer: int
                         ) -> torch.Tensor:
        """Predicted scores: int64 base-2 logits (8 fraction bits; the integer contract on
        ``quantize_qk_int8`` codes) or float64 natural logits (the float twin)."""
        if self.integer:
            q8, k8, prm = self._int8(q, k, key_mask, layer)
            return sanger_logits_int(q8, k8, self.bits, prm["mult"], prm["shift"])
        d = q.shape[-1]
        qd, kd = q.double(), k.double()
        nq, nk = qd.norm(dim=-1, keepdim=True), kd.norm(dim=-1, keepdim=True)
        qn, kn = qd / nq.clamp_min(1e-30), kd / nk.clamp_min(1e-30)
        qc, sq = sanger_quantize(qn, self.bits, self._clip(qn, key_mask, layer, 0))
        kc, sk = sanger_quantize(kn, self.bits, self._clip(kn, key_mask, layer, 1))
        dots = qc.double() @ kc.double().transpose(-1, -2)
        return dots / (sq * sk) * nq * nk.transpose(-1, -2) / math.sqrt(d)

    def mask(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, *,
             layer: int = 0) -> torch.Tensor:
        key_mask = _default_key_mask(k, key_mask)
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        if self.integer:
            q8, k8, prm = self._int8(q, k, key_mask, layer)
            if self.uses_mass:
                return self.mask_mass_int(q8, k8, key_mask, prm).mask
            return self.mask_int(q8, k8, key_mask, prm).mask
        knob = self.mass_at(layer) if self.uses_mass else self.threshold_at(layer)
        if knob == 0:
            return valid.clone()
        z = self.predicted_logits(q, k, key_mask, layer)
        p = torch.nan_to_num(torch.softmax(z.masked_fill(~valid, float("-inf")), -1), nan=0.0)
        cand = sanger_mass_keep(p, valid, knob) if self.uses_mass else p > knob
        return ensure_nonempty(cand & valid, z, valid)
