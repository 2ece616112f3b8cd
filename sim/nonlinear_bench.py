"""Bench for the streaming nonlinear units: stimulus, stream words, golden checks, runners.

Simulator-independent stimulus (:class:`RequantConfig`, :class:`GeluConfig` make the unit and
the words of a job), a cocotb + Verilator runner (:func:`run_verilator`, one build per
configuration, all jobs in one simulator launch, module :mod:`sim.cocotb_elementwise`), an
Amaranth-simulator runner (:func:`run_pysim`) and :func:`cosim_unit`, what ``fmforge cosim
requant|gelu`` runs. Results are compared word for word with the golden model and the unit's
``cycles`` counter with its cycle model.

Timing is also measured by the testbenches themselves, independently of the design's counter:
both runners count the clock edges of each job from its first ``i_data`` transfer to its last
``o_data`` transfer, inclusive (``tb_cycles``), and the edges in that window at which the unit
was held by the sink (``o_data`` valid & ~ready, ``tb_sink_stalls``) or waited for the source
(``i_data`` ready & ~valid, ``tb_source_stalls``). The exact rule, from the units' end-to-end
models (``hw.<unit>.<unit>_edges``, see :mod:`hw.requant`): ``tb_cycles ==
tb_predicted_cycles = <unit>_cycles(...) + tb_sink_stalls + tb_source_stalls``, and both stall
counts are 0 under the stall mode ``none``.
"""

from __future__ import annotations

import bisect
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from golden.errors import UserValueError
from golden.gelu import GeluParams, gelu_float, gelu_int, gelu_params, relu_float, relu_int
from golden.requant import quantize_multiplier, requantize, requantize_float
from sim.streams import pack_lanes, stall_pattern, unpack_lanes

__all__ = [
    "VALUE_PATTERNS",
    "REQUANT_EDGE_PARAMS",
    "REQUANT_INT8_SCALES",
    "requant_rounding_points",
    "Job",
    "Stimulus",
    "RequantConfig",
    "GeluConfig",
    "SoftmaxConfig",
    "LayerNormConfig",
    "RmsNormConfig",
    "SiluConfig",
    "check",
    "job_data_words",
    "row_data_words",
    "softmax_data_words",
    "EdgeLog",
    "result_problems",
    "run_verilator",
    "run_pysim",
    "cosim_unit",
]

#: input patterns: random, every value at the minimum / maximum, all equal, alternating min/max,
#: every value of the range in order; per row: constant rows (the first rows at the minimum,
#: the maximum and 0, then random), near-constant rows (constant but one element +-1), rows of
#: two adjacent values, ties (values within 2 of the row maximum, which occurs at least twice),
#: one-hot rows (one maximum, the rest at the minimum), gap rows (one element at the maximum,
#: the rest equal at distance ``d = row mod 256`` below it: every distance once per 256 rows)
VALUE_PATTERNS = ("random", "min", "max", "equal", "minmax", "all", "rowconst", "nearconst",
                  "twovalues", "ties", "onehot", "gap")


@dataclass(frozen=True)
class Job:
    """One job: ``rows`` rows with a value pattern and a seed."""

    rows: int
    values: str = "random"
    seed: int = 0

    def describe(self) -> str:
        return f"rows={self.rows} values={self.values} seed={self.seed}"


@dataclass
class Stimulus:
    """Stream words of one job and what must come back."""

    param: list[int]
    data: list[int]
    expected: list[list[int]]  # per output word: lane values
    predicted_cycles: int
    max_abs_err_lsb: float
    out_bits: int
    lanes: int
    row_words: int | None = None  # output `last` after every row_words words (None: job end)
    out_signed: bool = True
    extra: dict = field(default_factory=dict)
    #: the unit's end-to-end model: stall edges -> edges from first input to last output transfer
    edge_model: Callable[[int], int] | None = None

    def predicted_edges(self, stalls: int) -> int:
        """Edges from the first input to the last output transfer given ``stalls`` stall edges."""
        if self.edge_model is None:
            return self.predicted_cycles + stalls
        return self.edge_model(stalls)


def _values(shape: tuple[int, int], pattern: str, lo: int, hi: int, g: torch.Generator) -> torch.Tensor:
    if pattern == "random":
        return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64)
    if pattern == "min":
        return torch.full(shape, lo, dtype=torch.int64)
    if pattern == "max":
        return torch.full(shape, hi, dtype=torch.int64)
    if pattern == "equal":
        return torch.full(shape, int(torch.randint(lo, hi + 1, (1,), generator=g)), dtype=torch.int64)
    if pattern == "minmax":
        t = torch.full(shape, lo, dtype=torch.int64)
        t.view(-1)[1::2] = hi
        return t
    if pattern == "all":  # every value from lo up, wrapping (int8: each value once per 256)
        n = shape[0] * shape[1]
        return (torch.arange(n, dtype=torch.int64) % (hi - lo + 1) + lo).view(shape)
    rows, n = shape
    if pattern in ("rowconst", "nearconst", "twovalues"):
        c = torch.randint(lo, hi + 1, (rows,), generator=g, dtype=torch.int64)
        if pattern == "rowconst":
            c[: min(rows, 3)] = torch.tensor([lo, hi, 0], dtype=torch.int64)[: min(rows, 3)]
        t = c[:, None].expand(rows, n).clone()
        if pattern == "nearconst":  # one element +1 (even rows) or -1 (odd rows), kept in range
            pos = torch.randint(0, n, (rows,), generator=g)
            for r in range(rows):
                step = 1 if (r % 2 == 0 and c[r] < hi) or c[r] == lo else -1
                t[r, pos[r]] += step
        elif pattern == "twovalues":  # c and c+1 (c-1 at the maximum), both present when n > 1
            step = torch.where(c < hi, 1, -1)
            pick = torch.rand(shape, generator=g) < 0.5
            pick[:, 0], pick[:, -1] = False, n > 1
            t = torch.where(pick, t + step[:, None], t)
        return t
    if pattern == "ties":  # values in [m-2, m], the maximum m at least twice per row (if n > 1)
        m = torch.randint(lo + 2, hi + 1, (rows, 1), generator=g, dtype=torch.int64)
        t = m - torch.randint(0, 3, shape, generator=g, dtype=torch.int64)
        for r in range(rows):
            at = torch.randperm(n, generator=g)[: min(n, 2)]
            t[r, at] = m[r, 0]
        return t
    if pattern == "gap":  # one element at hi (position row mod n), the rest at hi - (row mod 256)
        r = torch.arange(rows)
        t = (hi - r % 256).clamp(min=lo)[:, None].expand(rows, n).clone()
        t[r, r % n] = hi
        return t
    if pattern == "onehot":  # one element at hi, the rest at lo
        t = torch.full(shape, lo, dtype=torch.int64)
        t[torch.arange(rows), torch.randint(0, n, (rows,), generator=g)] = hi
        return t
    raise UserValueError(f"values must be one of {', '.join(VALUE_PATTERNS)}, not {pattern!r}")


def job_data_words(x: torch.Tensor, lanes: int, width: int) -> list[int]:
    """Element-wise units' input words: ``lanes`` values of ``width`` bits, ``last`` on the job's
    final word."""
    flat = x.reshape(-1, lanes).tolist()
    words = [pack_lanes(w, width) for w in flat]
    words[-1] |= 1 << (lanes * width)  # last
    return words


def row_data_words(x: torch.Tensor, lanes: int, width: int = 32) -> list[int]:
    """Row units' (layer norm) input words: each row of ``x`` as ``lanes``-value words, ``last``
    on the final word of every row (``lanes`` divides the row length)."""
    words = [pack_lanes(w, width) for w in x.reshape(-1, lanes).tolist()]
    w = x.shape[-1] // lanes
    for r in range(len(words) // w):
        words[r * w + w - 1] |= 1 << (width * lanes)
    return words


def softmax_data_words(x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor,
                       lanes: int) -> tuple[list[int], list[list[int]], int]:
    """The softmax unit's input words for rows ``x`` (int32 logits) with ``mask``, and the output
    lanes ``y`` must come back as: ``(words, expected lanes per output word, words per row)``.
    Rows are padded to whole words with masked-off lanes (their probability is 0)."""
    rows, length = x.shape
    w = -(-length // lanes)
    xp = torch.zeros(rows, w * lanes, dtype=torch.int64)
    kp = torch.zeros(rows, w * lanes, dtype=torch.int64)
    yp = torch.zeros(rows, w * lanes, dtype=torch.int64)
    xp[:, :length], kp[:, :length], yp[:, :length] = x, mask.to(torch.int64), y
    words = []
    for r in range(rows):
        for j in range(w):
            sl = slice(j * lanes, j * lanes + lanes)
            wd = pack_lanes(xp[r, sl].tolist(), 32) | (pack_lanes(kp[r, sl].tolist(), 1) << (32 * lanes))
            if j == w - 1:
                wd |= 1 << (33 * lanes)
            words.append(wd)
    return words, yp.reshape(-1, lanes).tolist(), w


#: (mult, shift) per channel for the requantizer's ``int8`` and ``rounding`` patterns, cycled over
#: the channels: realistic scales (quantize_multiplier), then exact-tie pairs (small mult), a
#: negative multiplier, the shift-0 path and the extreme multipliers
REQUANT_EDGE_PARAMS = (
    (1, 0), (1, 1), (3, 2), (-5, 3), (1, 7), (-(2**31), 63), (2**31 - 1, 62), (-(2**31), 40))
REQUANT_INT8_SCALES = (1.0, 0.5, 0.37, 1.6, 0.031, 2.7, 0.999, 0.0079)


def requant_rounding_points(mult: int, shift: int) -> list[int]:
    """int32 inputs around every rounding point and saturation edge of ``requantize(., mult, shift)``.

    For each output boundary ``k + 1/2`` (``k`` from -130 to 129, so the saturation edges at
    -128.5 and 127.5 are included) the inputs whose scaled value ``x * mult / 2**shift`` is
    just below, at (when an integer input lands there exactly) and just above it, plus the int32
    extremes and 0; clipped to int32, deduplicated, in increasing order.
    """
    pts = {0, -(2**31), 2**31 - 1}
    for k in range(-130, 130):
        num = (2 * k + 1) << shift  # boundary * 2**(shift+1): x * 2 * mult == num at the boundary
        den = 2 * mult
        q = num // den  # floor(boundary / scale)
        pts.update(q + d for d in (-1, 0, 1, 2))
    return sorted(v for v in pts if -(2**31) <= v < 2**31)


@dataclass(frozen=True)
class RequantConfig:
    """A :class:`hw.requant.Requantizer` configuration (one Verilator build).

    Extra value patterns: ``int8`` (every channel sees every int8 input, -128..127 in order,
    one per row, with the realistic scales :data:`REQUANT_INT8_SCALES`; 256 rows cover them
    all) and ``rounding`` (channel ``c`` uses ``REQUANT_EDGE_PARAMS[c mod 8]`` and its column
    walks :func:`requant_rounding_points`, cycling when the rows outnumber them).
    """

    lanes: int
    channels: int
    name = "requant"

    def spec(self):
        """The registry spec of the unit under test."""
        from hw.requant import RequantSpec

        return RequantSpec(lanes=self.lanes, channels=self.channels)

    def unit(self):
        return self.spec().build()

    @property
    def tag(self) -> str:
        return f"requant_p{self.lanes}_n{self.channels}"

    def stimulus(self, job: Job) -> Stimulus:
        from hw.requant import requant_cycles, requant_edges

        g = torch.Generator().manual_seed(job.seed)
        n, p = self.channels, self.lanes
        mult = torch.empty(n, dtype=torch.int64)
        shift = torch.empty(n, dtype=torch.int64)
        if job.values == "int8":
            x = (torch.arange(job.rows, dtype=torch.int64) % 256 - 128)[:, None].expand(job.rows, n)
            for c in range(n):
                mult[c], shift[c] = quantize_multiplier(REQUANT_INT8_SCALES[c % len(REQUANT_INT8_SCALES)])
        elif job.values == "rounding":
            x = torch.empty(job.rows, n, dtype=torch.int64)
            for c in range(n):
                mult[c], shift[c] = REQUANT_EDGE_PARAMS[c % len(REQUANT_EDGE_PARAMS)]
                pts = torch.tensor(requant_rounding_points(int(mult[c]), int(shift[c])), dtype=torch.int64)
                x[:, c] = pts[torch.arange(job.rows) % len(pts)]
        else:
            x = _values((job.rows, n), job.values, -(2**31), 2**31 - 1, g)
        for c in range(n if job.values not in ("int8", "rounding") else 0):
            k = int(torch.randint(0, 4, (1,), generator=g))
            if k == 0:  # raw int32 multiplier (negative too), any shift
                mult[c] = int(torch.randint(-(2**31), 2**31, (1,), generator=g))
                shift[c] = int(torch.randint(0, 64, (1,), generator=g))
            else:  # a realistic scale
                scale = float(torch.exp(torch.empty(1).uniform_(-20.0, 2.0, generator=g)))
                mult[c], shift[c] = quantize_multiplier(scale)
        if job.values == "min" or job.values == "max":
            shift[0], mult[0] = 0, 1  # saturation through the shift-0 path
        y = requantize(x, mult, shift)
        ref = requantize_float(x, mult.double() / torch.pow(2.0, shift.double()))
        params = [pack_lanes([(int(mult[c]) & 0xFFFFFFFF) | (int(shift[c]) << 32)
                              for c in range(gi * p, gi * p + p)], 38) for gi in range(n // p)]
        return Stimulus(param=params, data=job_data_words(x, p, 32), expected=y.reshape(-1, p).tolist(),
                        predicted_cycles=requant_cycles(job.rows, n, p),
                        max_abs_err_lsb=float((y.double() - ref).abs().max()), out_bits=8, lanes=p,
                        edge_model=lambda stalls: requant_edges(job.rows, n, p, stalls))


@dataclass(frozen=True)
class GeluConfig:
    """A :class:`hw.gelu.Gelu` configuration: lanes, mode and the compiled scales."""

    lanes: int
    mode: str = "gelu"
    in_scale: float = 0.05
    out_scale: float = 0.03
    name = "gelu"

    def params(self) -> GeluParams | tuple[int, int]:
        if self.mode == "gelu":
            return gelu_params(self.in_scale, self.out_scale)
        return quantize_multiplier(self.in_scale / self.out_scale)

    def spec(self):
        """The registry spec of the unit under test."""
        from hw.gelu import GeluSpec

        return GeluSpec(lanes=self.lanes, in_scale=self.in_scale, out_scale=self.out_scale,
                        mode=self.mode)

    def unit(self):
        return self.spec().build()

    @property
    def tag(self) -> str:
        return f"{self.mode}_p{self.lanes}"

    def stimulus(self, job: Job, length: int) -> Stimulus:
        from hw.gelu import gelu_cycles, gelu_edges

        g = torch.Generator().manual_seed(job.seed)
        p = self.lanes
        x = _values((job.rows, length), job.values, -128, 127, g)
        if self.mode == "gelu":
            y = gelu_int(x, self.params())
            ref = gelu_float(x * self.in_scale) / self.out_scale
        else:
            mult, shift = self.params()
            y = relu_int(x, mult, shift)
            ref = relu_float(x * self.in_scale) / self.out_scale
        ref = ref.clamp(-128, 127)  # the int8 output range saturates; that is not an error
        return Stimulus(param=[], data=job_data_words(x, p, 8), expected=y.reshape(-1, p).tolist(),
                        predicted_cycles=gelu_cycles(job.rows, length, p),
                        max_abs_err_lsb=float((y.double() - ref).abs().max()), out_bits=8, lanes=p,
                        edge_model=lambda stalls: gelu_edges(job.rows, length, p, stalls))


@dataclass(frozen=True)
class SoftmaxConfig:
    """A :class:`hw.softmax.Softmax` configuration: lanes, buffer length and the logit scale.

    Extra value patterns: ``masked`` (random logits, random mask), ``allmasked`` (every position
    masked off), ``wide`` (random int32 logits in [-2**20, 2**20]), ``maskedties`` (``ties``
    with a random mask), ``maskedonehot`` (``onehot`` with the maximum masked off, so the kept
    logits are all equal at the minimum).
    """

    lanes: int
    max_length: int
    scale: float = 1 / 16
    name = "softmax"
    cumulative = True  # the unit's cycle counter runs since reset

    def params(self):
        from golden.softmax import softmax_params

        return softmax_params(self.scale)

    def spec(self):
        """The registry spec of the unit under test."""
        from hw.softmax import SoftmaxSpec

        return SoftmaxSpec(lanes=self.lanes, max_length=self.max_length, scale=self.scale)

    def unit(self):
        return self.spec().build()

    def stimulus(self, job: Job, length: int) -> Stimulus:
        from golden.softmax import softmax_float, softmax_int
        from hw.softmax import check_row_length, softmax_cycles, softmax_edges, softmax_words

        check_row_length(length, self.max_length)
        g = torch.Generator().manual_seed(job.seed)
        p = self.lanes
        w = softmax_words(length, p)
        shape = (job.rows, length)
        if job.values == "wide":
            x = torch.randint(-(2**20), 2**20 + 1, shape, generator=g, dtype=torch.int64)
        else:
            base = {"masked": "random", "allmasked": "random", "maskedties": "ties",
                    "maskedonehot": "onehot"}.get(job.values, job.values)
            x = _values(shape, base, -128, 127, g)
        if job.values == "maskedonehot":
            mask = x != 127
        elif job.values in ("masked", "maskedties"):
            mask = torch.rand(shape, generator=g) < 0.7
        elif job.values == "allmasked":
            mask = torch.zeros(shape, dtype=torch.bool)
        else:
            mask = torch.ones(shape, dtype=torch.bool)
        y = softmax_int(x, self.params(), mask)
        ref = softmax_float(x, self.scale, mask) * 256
        words, expected, w = softmax_data_words(x, mask, y, p)
        err = float((y.double() - ref.clamp(max=255)).abs().max())
        return Stimulus(param=[], data=words, expected=expected,
                        predicted_cycles=softmax_cycles(job.rows, length, p), max_abs_err_lsb=err,
                        out_bits=8, lanes=p, row_words=w, out_signed=False,
                        edge_model=lambda stalls: softmax_edges(job.rows, length, p, stalls))


@dataclass(frozen=True)
class LayerNormConfig:
    """A :class:`hw.layernorm.LayerNorm` configuration: lanes, N, input bits and a seed for gamma/beta.

    gamma ~ N(1, 0.2), beta ~ N(0, 0.1) per channel (seeded), in_scale 0.05 (int8) or 2**-12
    (``in_bits`` 24), out_scale 0.05, ``eps`` (default 1e-5; ``eps=0`` gives ``eps_int = 0``, so
    a constant row has a zero variance term ``D``). Extra value pattern: ``wide`` (int32 inputs with ``in_bits``
    significant bits; needs ``in_bits`` > 8).
    """

    lanes: int
    length: int
    in_bits: int = 8
    seed: int = 0
    eps: float = 1e-5
    name = "layernorm"
    cumulative = True

    def params(self):
        from golden.layernorm import layernorm_params

        g = torch.Generator().manual_seed(self.seed)
        gamma = 1.0 + 0.2 * torch.randn(self.length, generator=g, dtype=torch.float64)
        beta = 0.1 * torch.randn(self.length, generator=g, dtype=torch.float64)
        in_scale = 0.05 if self.in_bits == 8 else 2.0**-12
        prm = layernorm_params(self.length, in_scale, gamma, beta, 0.05, eps=self.eps, in_bits=self.in_bits)
        return prm, gamma, beta, in_scale

    def spec(self):
        """The registry spec of the unit under test (this configuration's gamma/beta/eps)."""
        from hw.layernorm import LayerNormSpec

        return LayerNormSpec.from_params(self.params()[0], self.lanes)

    def unit(self):
        return self.spec().build()

    def stimulus(self, job: Job, length: int | None = None) -> Stimulus:
        from golden.layernorm import layernorm_float, layernorm_int
        from hw.layernorm import layernorm_cycles, layernorm_edges

        if length not in (None, self.length):
            raise UserValueError(f"this layernorm unit takes rows of {self.length}, not {length}")
        prm, gamma, beta, in_scale = self.params()
        g = torch.Generator().manual_seed(job.seed)
        n, p = self.length, self.lanes
        hi = 2 ** (self.in_bits - 1) - 1
        if job.values == "wide":
            x = torch.randint(-hi - 1, hi + 1, (job.rows, n), generator=g, dtype=torch.int64)
        else:
            x = _values((job.rows, n), job.values, -128, 127, g)
        y = layernorm_int(x, prm)
        ref = (layernorm_float(x * in_scale, gamma, beta, eps=self.eps) / 0.05).clamp(-128, 127)
        words = row_data_words(x, p)
        w = n // p
        return Stimulus(param=[], data=words, expected=y.reshape(-1, p).tolist(),
                        predicted_cycles=layernorm_cycles(job.rows, n, p),
                        max_abs_err_lsb=float((y.double() - ref).abs().max()), out_bits=8, lanes=p,
                        row_words=w, edge_model=lambda stalls: layernorm_edges(job.rows, n, p, stalls))


@dataclass(frozen=True)
class RmsNormConfig:
    """A :class:`hw.rmsnorm.RmsNorm` configuration: lanes, N and a seed for gamma.

    gamma ~ N(1, 0.2) per channel (seeded), in_scale 0.05, out_scale 0.05, ``eps`` (default
    1e-6; ``eps=0`` gives ``eps_int = 0``, so a row of zeros has ``D = 0``). Input int8 words,
    ``last`` on every row's final word.
    """

    lanes: int
    length: int
    seed: int = 0
    eps: float = 1e-6
    name = "rmsnorm"
    cumulative = True

    def params(self):
        from golden.rmsnorm import rmsnorm_params

        g = torch.Generator().manual_seed(self.seed)
        gamma = 1.0 + 0.2 * torch.randn(self.length, generator=g, dtype=torch.float64)
        return rmsnorm_params(self.length, 0.05, gamma, 0.05, eps=self.eps), gamma

    def spec(self):
        """The registry spec of the unit under test (this configuration's gamma/eps)."""
        from hw.rmsnorm import RmsNormSpec

        return RmsNormSpec.from_params(self.params()[0], self.lanes)

    def unit(self):
        return self.spec().build()

    def stimulus(self, job: Job, length: int | None = None) -> Stimulus:
        from golden.rmsnorm import rmsnorm_float, rmsnorm_int
        from hw.rmsnorm import rmsnorm_cycles, rmsnorm_edges

        if length not in (None, self.length):
            raise UserValueError(f"this rmsnorm unit takes rows of {self.length}, not {length}")
        prm, gamma = self.params()
        g = torch.Generator().manual_seed(job.seed)
        n, p = self.length, self.lanes
        x = _values((job.rows, n), job.values, -128, 127, g)
        y = rmsnorm_int(x, prm)
        ref = (rmsnorm_float(x * 0.05, gamma, eps=self.eps) / 0.05).clamp(-128, 127)
        err = (y.double() - ref).abs().nan_to_num(0.0)  # eps = 0: a zero row's float twin is 0/0
        return Stimulus(param=[], data=row_data_words(x, p, 8), expected=y.reshape(-1, p).tolist(),
                        predicted_cycles=rmsnorm_cycles(job.rows, n, p),
                        max_abs_err_lsb=float(err.max()), out_bits=8, lanes=p, row_words=n // p,
                        edge_model=lambda stalls: rmsnorm_edges(job.rows, n, p, stalls))


@dataclass(frozen=True)
class SiluConfig:
    """A :class:`hw.silu.Silu` configuration: lanes and the scales its table is compiled for."""

    lanes: int
    in_scale: float = 0.05
    out_scale: float = 0.03
    name = "silu"

    def spec(self):
        """The registry spec of the unit under test."""
        from hw.silu import SiluSpec

        return SiluSpec(lanes=self.lanes, in_scale=self.in_scale, out_scale=self.out_scale)

    def unit(self):
        return self.spec().build()

    @property
    def tag(self) -> str:
        return f"silu_p{self.lanes}"

    def stimulus(self, job: Job, length: int) -> Stimulus:
        from golden.silu import silu_float, silu_int
        from hw.silu import silu_cycles, silu_edges

        g = torch.Generator().manual_seed(job.seed)
        p = self.lanes
        x = _values((job.rows, length), job.values, -128, 127, g)
        y = silu_int(x, self.spec().params())
        ref = (silu_float(x * self.in_scale) / self.out_scale).clamp(-128, 127)
        return Stimulus(param=[], data=job_data_words(x, p, 8), expected=y.reshape(-1, p).tolist(),
                        predicted_cycles=silu_cycles(job.rows, length, p),
                        max_abs_err_lsb=float((y.double() - ref).abs().max()), out_bits=8, lanes=p,
                        edge_model=lambda stalls: silu_edges(job.rows, length, p, stalls))


def check(st: Stimulus, words: Sequence[int]) -> dict:
    """Compare raw output words with the expected lanes; ``last`` only on the final word."""
    mism = []
    if len(words) != len(st.expected):
        mism.append(f"expected {len(st.expected)} words, got {len(words)}")
    width = st.lanes * st.out_bits
    for k, (w, exp) in enumerate(zip(words, st.expected, strict=False)):
        got = unpack_lanes(w & ((1 << width) - 1), st.out_bits, st.lanes, st.out_signed)
        last = (w >> width) & 1
        if got != exp:
            mism.append(f"word {k}: expected {exp}, got {got}")
        rw = st.row_words or len(st.expected)
        if last != ((k + 1) % rw == 0):
            mism.append(f"word {k}: last={last}")
        if len(mism) >= 5:
            break
    return {"match": not mism, "mismatches": mism}


@dataclass
class EdgeLog:
    """What a testbench saw at a unit's data ports, edge by edge (edge numbers from 0).

    ``inputs``/``outputs``: the edges of each ``i_data``/``o_data`` transfer; ``sink_stalls``:
    edges with ``o_data`` valid and not ready; ``source_stalls``: edges with ``i_data`` ready
    and not valid. All four lists are increasing.
    """

    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    sink_stalls: list[int] = field(default_factory=list)
    source_stalls: list[int] = field(default_factory=list)

    def record(self, edge: int, i_valid: int, i_ready: int, o_valid: int, o_ready: int) -> None:
        """Add one edge's samples."""
        if i_valid and i_ready:
            self.inputs.append(edge)
        elif i_ready:
            self.source_stalls.append(edge)
        if o_valid and o_ready:
            self.outputs.append(edge)
        elif o_valid:
            self.sink_stalls.append(edge)

    def window(self, first_input: int, last_output: int) -> dict | None:
        """Edge counts of the job whose first input transfer is ``inputs[first_input]`` and whose
        last output transfer is ``outputs[last_output]``; None if either did not happen."""
        if first_input >= len(self.inputs) or last_output >= len(self.outputs):
            return None
        t0, t1 = self.inputs[first_input], self.outputs[last_output]

        def count(edges: list[int]) -> int:
            return bisect.bisect_right(edges, t1) - bisect.bisect_left(edges, t0)

        return {"tb_cycles": t1 - t0 + 1, "tb_sink_stalls": count(self.sink_stalls),
                "tb_source_stalls": count(self.source_stalls)}


def _tb_timing(st: Stimulus, counts: dict | None) -> dict:
    """The testbench's edge counts of one job and what the unit's end-to-end model predicts."""
    if counts is None:
        return {"tb_cycles": None, "tb_predicted_cycles": None, "tb_sink_stalls": None,
                "tb_source_stalls": None}
    stalls = counts["tb_sink_stalls"] + counts["tb_source_stalls"]
    return {**counts, "tb_predicted_cycles": st.predicted_edges(stalls)}


def result_problems(r: dict, stall: str = "none", *, error_ok: bool = False) -> list[str]:
    """What is wrong with one job's result dict (empty if nothing): golden mismatches, the
    design's ``cycles`` vs its model, the testbench's edge count vs the end-to-end model (and
    no stall edges under stall mode ``none``), the unit's error flag (unless ``error_ok``)."""
    where = f"{r['job']} (stall={stall})"
    out = [f"{where}: {m}" for m in r["mismatches"]] if not r["match"] else []
    if r["cycles"] != r["predicted_cycles"]:
        out.append(f"{where}: design cycles {r['cycles']} != model {r['predicted_cycles']}")
    if r.get("tb_cycles") is None or r["tb_cycles"] != r["tb_predicted_cycles"]:
        out.append(f"{where}: testbench edges {r.get('tb_cycles')} != model {r.get('tb_predicted_cycles')} "
                   f"(sink stalls {r.get('tb_sink_stalls')}, source stalls {r.get('tb_source_stalls')})")
    if stall == "none" and (r.get("tb_sink_stalls") or r.get("tb_source_stalls")):
        out.append(f"{where}: stall edges without stalls: {r['tb_sink_stalls']} + {r['tb_source_stalls']}")
    if r["error"] and not error_ok:
        out.append(f"{where}: the unit flagged a framing error")
    return out


def _progress(msg: str) -> None:
    print(f"[fmforge] {msg}", file=sys.stderr, flush=True)


def _stimuli(cfg, jobs: Sequence[Job], length: int | None) -> list[Stimulus]:
    if isinstance(cfg, RequantConfig):
        return [cfg.stimulus(j) for j in jobs]
    return [cfg.stimulus(j, length) for j in jobs]


def run_verilator(cfg, jobs: Sequence[Job], *, length: int | None = None, stall: str = "none",
                  seed: int = 0, monitor: bool = False, test_dir: Path | None = None,
                  data_override: list[list[int]] | None = None, progress=_progress) -> list[dict]:
    """Run ``jobs`` in order on unit ``cfg`` in cocotb + Verilator; check each against golden.

    ``length`` is the row length for the GELU (the requantizer's is its ``channels``).
    ``data_override`` replaces jobs' input words (to feed malformed streams). Returns one dict
    per job: ``job``, ``match``, ``mismatches``, ``cycles``, ``predicted_cycles``, ``error``
    (the unit's sticky framing-error flag), ``max_abs_err_lsb`` (golden vs float twin),
    ``sim_seconds``, and the testbench's own timing (module docstring): ``tb_cycles``,
    ``tb_predicted_cycles``, ``tb_sink_stalls``, ``tb_source_stalls`` (None after a timeout).
    """
    from sim.verilator import build, run_cocotb, to_verilog

    b = build(to_verilog(cfg.unit(), cfg.name), cfg.name, progress=progress)
    stims = _stimuli(cfg, jobs, length)
    datas = data_override or [s.data for s in stims]
    own = test_dir is None
    tdir = Path(tempfile.mkdtemp(prefix="fmforge-cosim-")) if own else Path(test_dir)
    tdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "stall": stall, "seed": seed, "monitor": monitor, "out": str(tdir / "out.json"),
        "has_param": isinstance(cfg, RequantConfig),
        "jobs": [{"param": s.param, "data": d, "n_out": len(s.expected),
                  "timeout_cycles": 20 * (s.predicted_cycles + len(d)) + 200}
                 for s, d in zip(stims, datas, strict=True)],
    }
    (tdir / "spec.json").write_text(json.dumps(spec))
    try:
        res = run_cocotb(b, "sim.cocotb_elementwise",
                         extra_env={"FMFORGE_BENCH_SPEC": str(tdir / "spec.json")},
                         test_dir=tdir, seed=seed)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep nothing of this run
        if own:
            shutil.rmtree(tdir, ignore_errors=True)
        raise
    if res["failed"] or not (tdir / "out.json").exists():
        raise AssertionError(f"cocotb run failed ({'; '.join(res['failures']) or 'no results'}); logs in {tdir}")
    raw = json.loads((tdir / "out.json").read_text())["results"]
    if getattr(cfg, "cumulative", False):
        _deltas(raw)
    out = []
    for job, st, r in zip(jobs, stims, raw, strict=False):
        chk = check(st, r["words"])
        if r.get("timeout"):
            chk["mismatches"].insert(0, r["timeout"])
        out.append({"job": job.describe(), "match": chk["match"] and not r.get("timeout"),
                    "mismatches": chk["mismatches"], "cycles": r["cycles"],
                    "predicted_cycles": st.predicted_cycles, "error": bool(r["error"]),
                    "max_abs_err_lsb": st.max_abs_err_lsb, "sim_seconds": r["sim_seconds"],
                    **_tb_timing(st, r.get("edges"))})
    if own:
        shutil.rmtree(tdir, ignore_errors=True)
    return out


def run_pysim(cfg, jobs: Sequence[Job], *, length: int | None = None, stall: str = "none",
              seed: int = 0) -> list[dict]:
    """The same jobs on the Amaranth simulator (small configurations); same result dicts.

    A background process samples ``i_data``/``o_data`` valid and ready at every clock edge
    (:class:`EdgeLog`) for the testbench's own edge counts (module docstring).
    """
    from amaranth.sim import Simulator

    from sim.pysim import stream_sink, stream_source

    dut = cfg.unit()
    stims = _stimuli(cfg, jobs, length)
    pattern = stall_pattern(stall, seed)
    results: list[dict] = []
    go = [False] * len(stims)  # job j's data may start (its table is loaded)
    log = EdgeLog()

    async def watch(ctx):
        i, o = dut.i_data, dut.o_data
        edge = 0
        async for _clk, _rst, iv, ir, ov, ordy in ctx.tick().sample(i.valid, i.ready, o.valid, o.ready):
            log.record(edge, iv, ir, ov, ordy)
            edge += 1

    async def source(ctx):
        src_p = pattern.fork(1)
        for j, st in enumerate(stims):
            while not go[j]:
                await ctx.tick()
            await stream_source(ctx, dut.i_data, st.data, src_p)

    async def bench(ctx):
        sink_p, par_p = pattern.fork(99), pattern.fork(2)
        for j, (job, st) in enumerate(zip(jobs, stims, strict=True)):
            t0 = time.perf_counter()
            if st.param:
                await stream_source(ctx, dut.i_param, st.param, par_p)
            go[j] = True
            got: list[int] = []
            await stream_sink(ctx, dut.o_data, len(st.expected), sink_p, got,
                              20 * (st.predicted_cycles + len(st.data)) + 200)
            chk = check(st, got)
            results.append({"job": job.describe(), "match": chk["match"], "mismatches": chk["mismatches"],
                            "cycles": int(ctx.get(dut.cycles)), "predicted_cycles": st.predicted_cycles,
                            "error": bool(ctx.get(dut.error)), "max_abs_err_lsb": st.max_abs_err_lsb,
                            "sim_seconds": time.perf_counter() - t0})
        await ctx.tick()  # let the edge watcher record the final transfer's edge

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(watch, background=True)
    sim.add_testbench(source, background=True)
    sim.add_testbench(bench)
    sim.run()
    n_in = n_out = 0
    for st, r in zip(stims, results, strict=False):
        n_in, n_out = n_in + len(st.data), n_out + len(st.expected)
        r.update(_tb_timing(st, log.window(n_in - len(st.data), n_out - 1)))
    if getattr(cfg, "cumulative", False):
        _deltas(results)
    return results


def _deltas(results: list[dict]) -> None:
    """Turn a cumulative cycle counter's readings into per-job counts (in place)."""
    prev = 0
    for r in results:
        cur = r["cycles"]
        r["cycles"] = cur - prev
        prev = cur


def cosim_unit(unit: str, *, length: int, rows: int, lanes: int = 1, seed: int = 0, stall: str = "none",
               simulator: str = "verilator", **kw) -> dict:
    """Random rows through one unit's RTL vs its golden model: the ``fmforge cosim`` result."""
    if unit == "requant":
        cfg = RequantConfig(lanes=lanes, channels=length)
    elif unit in ("gelu", "relu"):
        cfg = GeluConfig(lanes=lanes, mode=unit, **kw)
    elif unit == "layernorm":
        cfg = LayerNormConfig(lanes=lanes, length=length, **kw)
    elif unit == "softmax":
        cfg = SoftmaxConfig(lanes=lanes, max_length=-(-length // lanes) * lanes, **kw)
    elif unit == "rmsnorm":
        cfg = RmsNormConfig(lanes=lanes, length=length, **kw)
    elif unit == "silu":
        cfg = SiluConfig(lanes=lanes, **kw)
    else:
        raise UserValueError("unit must be requant, gelu, relu, softmax, layernorm, rmsnorm or "
                             f"silu, not {unit!r}")
    jobs = [Job(rows, "random", seed)]
    t0 = time.perf_counter()
    if simulator == "verilator":
        r = run_verilator(cfg, jobs, length=length, stall=stall, seed=seed)[0]
    elif simulator == "amaranth":
        r = run_pysim(cfg, jobs, length=length, stall=stall, seed=seed)[0]
    else:
        raise UserValueError(f"simulator must be 'verilator' or 'amaranth', not {simulator!r}")
    r.update({"unit": unit, "len": length, "rows": rows, "lanes": lanes, "seed": seed, "stall": stall,
              "simulator": simulator, "wall_seconds": time.perf_counter() - t0, "match": bool(r["match"])})
    return r
