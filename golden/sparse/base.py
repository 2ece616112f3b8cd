"""Plug-in interface of the sparse-attention golden models, shared integer helpers, registry.

A filter decides, per query, which keys are *candidates* from a cheap estimate; attention
is then computed exactly over the candidates only, with the softmax denominator summed over
the candidates only (``attend_candidates``), never as "mask to -inf after a full softmax".

Conventions shared by every filter (``docs/sparse_attention.md`` has the per-method ones):

* Shapes: ``q`` ``[B, H, Lq, d]``, ``k`` and ``v`` ``[B, H, Lk, d]`` float, *unscaled*
  (the filter applies ``1/sqrt(d)``); ``key_mask`` bool ``[B, Lk]``, True for real tokens.
  Query rows of padding positions (self-attention, ``Lq == Lk``) get an empty mask and a
  zero output; only real query rows and real keys count.
* ``integer=True`` (the default) is the bit-accurate model of the hardware filter: every
  quantity the filter compares is an int64 tensor; fixed-point quantisation rounds half to
  even and saturates. ``integer=False`` is the float twin: the same algorithm in float64
  where the datapath formats are dropped; quantisers that *are* the algorithm (low-bit
  prediction rounds) are kept as fake-quantisation.
* Every real query keeps at least one key: when the filter would empty a row, the key with
  the best estimate (lowest index on ties) is kept (the papers do not say; this is ours).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from golden.errors import UserValueError

__all__ = [
    "AttentionResult",
    "IntFilterResult",
    "quantize_qk_int8",
    "DenseFilter",
    "FILTERS",
    "SparseAttentionFilter",
    "attend_candidates",
    "available_filters",
    "check_range",
    "ensure_nonempty",
    "exp2_neg_fixed",
    "make_filter",
    "quantize_fixed",
    "register_filter",
    "stable_topk_mask",
    "valid_pairs",
]


@dataclass(frozen=True)
class AttentionResult:
    """Output of ``SparseAttentionFilter.attend``: ``out`` ``[B, H, Lq, d]`` and the candidate
    ``mask`` ``[B, H, Lq, Lk]`` over which it was computed exactly."""

    out: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class IntFilterResult:
    """Output of ``SparseAttentionFilter.mask_int`` (the integer contract an RTL filter is
    checked against): the keep ``mask`` bool ``[B, H, Lq, Lk]``, and for filters that prune
    whole tokens or heads (SpAtten) the surviving ``tokens`` (int64 ``[B, n_t]``, ascending)
    and ``heads`` (int64 ``[B, n_h]``, ascending); ``state`` carries a filter's integer state
    to the next layer (SpAtten's importance accumulators), None for stateless filters."""

    mask: torch.Tensor
    tokens: torch.Tensor | None = None
    heads: torch.Tensor | None = None
    state: Any = None


def quantize_qk_int8(x: torch.Tensor, key_mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, float]:
    """int8 codes of a float Q or K ``[B, H, L, d]`` with one per-tensor scale, as the core's
    requantized Q/K GEMM outputs are: ``scale = max|x| / 127`` over real tokens (``key_mask``
    ``[B, L]``, padding rows ignored; 1.0 for an all-zero tensor), ``code = clamp(round(x /
    scale), -127, 127)`` (round half to even). Returns ``(codes int64, scale)``."""
    xd = x.double()
    if key_mask is not None:
        xd_real = xd.masked_fill(~key_mask.bool()[:, None, :, None], 0.0)
    else:
        xd_real = xd
    amax = float(xd_real.abs().amax()) if xd_real.numel() else 0.0
    scale = amax / 127.0 if amax > 0 else 1.0
    return torch.round(xd / scale).clamp(-127, 127).to(torch.int64), scale


def check_range(name: str, value: Any, lo: float | None, hi: float | None, *,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """Validate a numeric knob; raise ValueError naming it and its valid range."""
    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    rng = f"{'(' if lo_open or lo is None else '['}{lo_s}, {hi_s}{')' if hi_open or hi is None else ']'}"
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise UserValueError(f"{name} must be a number in {rng}, not {value!r}")
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
        hi is not None and (value > hi or (hi_open and value == hi)))
    if bad:
        raise UserValueError(f"{name} must be in {rng}, not {value!r}")
    return float(value)


def quantize_fixed(x: torch.Tensor, int_bits: int, frac_bits: int) -> torch.Tensor:
    """Signed fixed point ``1 + int_bits + frac_bits`` bits: round half to even, saturate.

    Returns int64 codes ``c`` with ``x ~= c * 2**-frac_bits`` and
    ``-2**(int_bits+frac_bits) <= c <= 2**(int_bits+frac_bits) - 1``.
    """
    top = 2 ** (int_bits + frac_bits)
    c = torch.round(x.double() * (2.0 ** frac_bits))
    return c.clamp(-top, top - 1).to(torch.int64)


def exp2_neg_fixed(x: torch.Tensor, frac_bits: int, lut_bits: int = 6, out_bits: int = 15) -> torch.Tensor:
    """Integer ``2**(-x)`` for int64 ``x >= 0`` in fixed point with ``frac_bits`` fraction bits.

    ``x = u + v`` (u integer part, v fraction); ``2**-v`` comes from a ``2**lut_bits``-entry
    table indexed by the top ``lut_bits`` fraction bits (entry ``round(2**(-i/2**lut_bits) *
    2**out_bits)``), then shifted right by ``u`` (floor). Output: unsigned, ``out_bits``
    fraction bits (``2**out_bits`` is 1.0). Relative error below ``2**-lut_bits * ln 2``.
    """
    if frac_bits < lut_bits:
        raise UserValueError(f"frac_bits must be >= lut_bits ({lut_bits}), not {frac_bits}")
    idx = torch.arange(2 ** lut_bits, dtype=torch.float64)
    lut = torch.round(torch.pow(2.0, -idx / 2 ** lut_bits) * 2 ** out_bits).to(torch.int64)
    x = x.clamp_min(0)
    u = (x >> frac_bits).clamp_max(62)
    v = (x & (2 ** frac_bits - 1)) >> (frac_bits - lut_bits)
    return lut[v] >> u


def stable_topk_mask(scores: torch.Tensor, k: torch.Tensor | int, eligible: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Bool mask of the ``k`` largest ``scores`` along the last dim; ties keep input order.

    Equal to SpAtten's top-k engine: every element strictly above the k-th value plus the
    *first* elements equal to it, in input order; the result is a mask, so the original
    order is kept. ``eligible`` (bool, same shape) excludes elements; ``k`` may be a tensor
    broadcastable to ``scores.shape[:-1]``; it is clipped to the number eligible.
    """
    n = scores.shape[-1]
    if eligible is None:
        eligible = torch.ones_like(scores, dtype=torch.bool)
    # sort key: eligible first, then descending score; stable sort keeps input order on ties
    s = scores.double() if not scores.dtype.is_floating_point else scores.to(torch.float64)
    s = torch.where(eligible, s, torch.tensor(float("-inf"), dtype=torch.float64))
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(n).expand_as(order).contiguous())
    k_t = torch.as_tensor(k).to(torch.int64)
    k_t = torch.minimum(k_t.expand(scores.shape[:-1]), eligible.sum(-1))
    return (ranks < k_t.unsqueeze(-1)) & eligible


def valid_pairs(key_mask: torch.Tensor, heads: int, lq: int | None = None) -> torch.Tensor:
    """Bool ``[B, H, Lq, Lk]``: real query x real key (self-attention: queries are the keys)."""
    b, lk = key_mask.shape
    lq = lk if lq is None else lq
    qm = key_mask if lq == lk else torch.ones(b, lq, dtype=torch.bool)
    return (qm[:, None, :, None] & key_mask[:, None, None, :]).expand(b, heads, lq, lk)


def ensure_nonempty(mask: torch.Tensor, estimate: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Add the best-estimate valid key (lowest index on ties) to real query rows left empty."""
    est = estimate.double().masked_fill(~valid, float("-inf"))
    best = torch.nn.functional.one_hot(est.argmax(-1), mask.shape[-1]).bool()
    row_real = valid.any(-1, keepdim=True)
    empty = ~(mask & valid).any(-1, keepdim=True) & row_real
    return (mask & valid) | (best & empty)


def attend_candidates(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      scores: torch.Tensor | None = None) -> torch.Tensor:
    """Exact attention over candidates: ``sum_j∈C e^{s_j - m} v_j / sum_j∈C e^{s_j - m}``.

    ``s = q.k / sqrt(d)`` (or the given ``scores``); ``m`` is the row max over candidates; the
    denominator sums over candidates only. Rows without candidates give zero. Computed in the
    dtype of ``q`` (float32 for the model).
    """
    if scores is None:
        scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    scores = scores.to(q.dtype)
    neg = torch.tensor(float("-inf"), dtype=q.dtype)
    s = torch.where(mask, scores, neg)
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.where(mask, torch.exp(s - m), torch.zeros((), dtype=q.dtype))
    den = e.sum(-1, keepdim=True)
    out = torch.matmul(e, v.to(q.dtype)) / torch.where(den > 0, den, torch.ones_like(den))
    return out


class SparseAttentionFilter(ABC):
    """A sparse-attention filter: parameters validated at construction, a candidate mask per
    query, and exact attention over the candidates.

    Subclasses set ``name``, ``sweep`` (knob settings for the accuracy sweep, most
    conservative first), ``default`` (the setting used by ``fmforge sparsity``) and
    implement ``mask``. Filters whose parameters are learned (ELSA's per-layer threshold,
    Sanger's quantiser clip) set ``needs_calibration`` and implement ``calibrate``; filters
    with state across layers (SpAtten) implement ``reset``.
    """

    name: ClassVar[str] = ""
    sweep: ClassVar[tuple[dict[str, Any], ...]] = ()
    default: ClassVar[dict[str, Any]] = {}
    needs_calibration: ClassVar[bool] = False

    def __init__(self, *, integer: bool = True) -> None:
        if not isinstance(integer, bool):
            raise UserValueError(f"integer must be True or False, not {integer!r}")
        self.integer = integer

    # -- parameters ------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The knob values of this instance (for tables and JSON)."""
        return {}

    def setting(self) -> str:
        """Short human description of the knob values, e.g. ``p=1``."""
        return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in self.params().items())

    # -- state -----------------------------------------------------------------------------
    def reset(self, key_mask: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """Start a new batch of sequences (stateless filters ignore it)."""

    def calibrate(self, samples: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]) -> None:
        """Learn parameters from calibration data: ``samples[layer]`` is a list of
        ``(q, k, key_mask)`` captured from the dense model."""
        del samples

    def calibration_state(self, samples: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
                          ) -> dict[str, Any]:
        """Run :meth:`calibrate` and return what it learned as JSON-ready data: every instance
        attribute it set or replaced (tensors as ``{"tensor": values, "dtype": name}``), so a
        plan can carry the calibration and :meth:`load_calibration` restores it exactly."""
        before = dict(vars(self))
        self.calibrate(samples)
        return {name: _to_json(v) for name, v in vars(self).items()
                if name not in before or before[name] is not v}

    def load_calibration(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`calibration_state` (unknown attribute names are an error)."""
        if not isinstance(state, dict):
            raise UserValueError(f"{self.name} calibration must be an object, not {state!r}")
        for name, v in state.items():
            if not hasattr(self, name) or name.startswith("_"):
                raise UserValueError(f"{self.name} calibration names unknown attribute {name!r}")
            setattr(self, name, _from_json(v))

    # -- the filter ------------------------------------------------------------------------
    @abstractmethod
    def mask(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, *,
             layer: int = 0) -> torch.Tensor:
        """Candidate mask bool ``[B, H, Lq, Lk]`` (False for padding keys and padding queries)."""

    # -- the integer contract (what an RTL filter in hw/ computes bit for bit) ---------------
    def int_params(self, scale_q: float, scale_k: float, d: int, *, layer: int = 0
                   ) -> dict[str, int]:
        """The filter's run-time integer constants for int8 Q/K of per-tensor scales
        ``scale_q``/``scale_k`` and head size ``d`` at ``layer`` (computed on the host, loaded
        into the RTL filter's parameter port): thresholds, multipliers, shifts."""
        raise NotImplementedError(f"{self.name}: no integer contract yet")

    def mask_int(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor,
                 params: dict[str, int], state: Any = None) -> IntFilterResult:
        """The integer contract: int8 codes ``q`` ``[B, H, Lq, d]`` and ``k`` ``[B, H, Lk, d]``
        (int64 tensors holding values in [-127, 127]), the key mask bool ``[B, Lk]`` and the
        :meth:`int_params` constants in; the keep mask (and pruned tokens/heads) out. Every
        quantity is an integer; ``docs/sparse_attention.md`` states each format and rounding."""
        raise NotImplementedError(f"{self.name}: no integer contract yet")

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_mask: torch.Tensor | None = None, *, layer: int = 0) -> AttentionResult:
        """Exact attention over this filter's candidates (denominator over candidates only)."""
        key_mask = _default_key_mask(k, key_mask)
        m = self.mask(q, k, key_mask, layer=layer)
        return AttentionResult(attend_candidates(q, k, v, m), m)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                 layer: int) -> torch.Tensor:
        """``attention_fn`` form for ``compiler.models.embed``."""
        return self.attend(q, k, v, key_mask, layer=layer).out


def _to_json(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return {"tensor": v.tolist(), "dtype": str(v.dtype).removeprefix("torch.")}
    if isinstance(v, list | tuple):
        return [_to_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _to_json(x) for k, x in v.items()}
    if v is None or isinstance(v, bool | int | float | str):
        return v
    raise UserValueError(f"calibration value of type {type(v).__name__} cannot be stored in a plan")


def _from_json(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"tensor", "dtype"}:
        return torch.tensor(v["tensor"], dtype=getattr(torch, str(v["dtype"])))
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _from_json(x) for k, x in v.items()}
    return v


def _default_key_mask(k: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    if key_mask is None:
        return torch.ones(k.shape[0], k.shape[2], dtype=torch.bool)
    return key_mask.bool()


class DenseFilter(SparseAttentionFilter):
    """Every real key is a candidate: plain attention (the reference "method")."""

    name = "dense"
    sweep = ({},)
    default: ClassVar[dict[str, Any]] = {}

    def mask(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, *,
             layer: int = 0) -> torch.Tensor:
        key_mask = _default_key_mask(k, key_mask)
        return valid_pairs(key_mask, q.shape[1], q.shape[2]).clone()


#: registry: method name -> filter class
FILTERS: dict[str, type[SparseAttentionFilter]] = {}


def register_filter(cls: type[SparseAttentionFilter]) -> type[SparseAttentionFilter]:
    """Class decorator adding a filter to ``FILTERS`` under ``cls.name``."""
    if not cls.name:
        raise UserValueError(f"{cls.__name__} has no name")
    FILTERS[cls.name] = cls
    return cls


register_filter(DenseFilter)


def available_filters() -> list[str]:
    """Registered method names (importing ``golden.sparse`` registers all five)."""
    return sorted(FILTERS)


def make_filter(name: str, **params: Any) -> SparseAttentionFilter:
    """Instantiate a registered filter; unknown names raise ValueError listing valid ones."""
    if name not in FILTERS:
        raise UserValueError(f"unknown sparse-attention method {name!r}; valid: {', '.join(available_filters())}")
    return FILTERS[name](**params)


# re-exported helper type for users writing attention functions
AttentionFnType = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
