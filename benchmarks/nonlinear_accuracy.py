"""Accuracy of the integer nonlinear golden models (softmax, layer norm, GELU) against float.

Measures, per unit, the error of the bit-exact integer model against its float twin, in units of
the output LSB, on seeded random data and on REAL activations of all-MiniLM-L6-v2 run on the
shipped sentence set (``compiler/data/sentences.txt``):

* softmax: the attention logits ``Q K^T / sqrt(d)`` of every layer and head (computed from the
  per-head Q/K projections, since the model uses SDPA), padding keys masked with the masked
  variant; two input paths: int8 logits (per-layer scale ``max|s| / 127``) and the int32
  ``q_int8 . k_int8`` accumulator with scale ``s_q * s_k / sqrt(d)``. LSB = 1/256.
* layer norm: the input of each of the 13 LayerNorms (residual stream), quantized to int8
  (``max|x| / 127``) and to 24-bit values in int32 (``max|x| / 2**23``, exercising ``in_shift``);
  the model's own gamma, beta and eps; output scale ``max|LN(x)| / 127`` (calibrated on the
  model's output). LSB = output scale.
* GELU: the FFN intermediate pre-activations of every layer, int8 (``max|x| / 127``); output scale
  ``max|GELU(x)| / 127``; compared with the exact (erf) GELU. LSB = output scale.

Two errors per row of the table, both in output LSBs: ``q-err`` is ``|int - round(float)|`` (the
float twin's output quantized with the same scale: the targets, softmax <= 1 mean / 2 max,
layer norm and GELU <= 1 mean / 2 max), ``raw-err`` is ``|int - float / lsb|``. The float twin
sees the dequantized integer input, so the numbers measure the unit, not the input quantization.

Usage::

    python benchmarks/nonlinear_accuracy.py [--sentences N] [--json PATH|-]

Runs in about 1.5 minutes on two cores (two passes over the model: calibrate, then measure).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from golden.gelu import gelu_float, gelu_int, gelu_params
from golden.layernorm import layernorm_float, layernorm_int, layernorm_params
from golden.softmax import softmax_float, softmax_int, softmax_params

__all__ = ["ErrStat", "main", "measure_random", "measure_minilm"]

TARGETS = {"softmax": (1.0, 2), "layernorm": (1.0, 2), "gelu": (1.0, 2)}


@dataclass
class ErrStat:
    """Running max and mean of quantized-twin and raw errors, in output LSBs."""

    unit: str
    data: str
    path: str
    n: int = 0
    q_max: float = 0.0
    q_sum: float = 0.0
    raw_max: float = 0.0
    raw_sum: float = 0.0
    q_hist: dict[int, int] = field(default_factory=dict)

    def add(self, got: torch.Tensor, twin_lsb: torch.Tensor, lo: int, hi: int) -> None:
        """Add integer outputs ``got`` against the float twin in LSB units (clamped to [lo, hi])."""
        got = got.to(torch.float64).reshape(-1)
        twin_lsb = twin_lsb.to(torch.float64).reshape(-1)
        if got.numel() == 0:
            return
        q_err = (got - torch.clamp(torch.floor(twin_lsb + 0.5), lo, hi)).abs()
        raw = (got - twin_lsb).abs()
        self.n += got.numel()
        self.q_max = max(self.q_max, float(q_err.max()))
        self.q_sum += float(q_err.sum())
        self.raw_max = max(self.raw_max, float(raw.max()))
        self.raw_sum += float(raw.sum())
        vals, counts = torch.unique(q_err.to(torch.int64), return_counts=True)
        for v, c in zip(vals.tolist(), counts.tolist(), strict=True):
            self.q_hist[v] = self.q_hist.get(v, 0) + c

    def row(self) -> dict[str, Any]:
        """The table row as a plain dict."""
        mean_t, max_t = TARGETS[self.unit]
        q_mean = self.q_sum / max(self.n, 1)
        return {
            "unit": self.unit,
            "data": self.data,
            "path": self.path,
            "values": self.n,
            "q_err_max": self.q_max,
            "q_err_mean": q_mean,
            "raw_err_max": self.raw_max,
            "raw_err_mean": self.raw_sum / max(self.n, 1),
            "q_err_hist": {str(k): v for k, v in sorted(self.q_hist.items())},
            "target_mean": mean_t,
            "target_max": max_t,
            "pass": q_mean <= mean_t and self.q_max <= max_t,
        }


def _q(x: torch.Tensor, scale: float, bits: int = 8) -> torch.Tensor:
    hi = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x.double() / scale), -hi - 1, hi).to(torch.int64)


def _softmax_rows(stat: ErrStat, x: torch.Tensor, scale: float, mask: torch.Tensor) -> None:
    got = softmax_int(x, softmax_params(scale), mask)
    twin = softmax_float(x, scale, mask) * 256
    stat.add(got[mask], twin[mask], 0, 255)


def measure_random(seed: int = 0) -> list[ErrStat]:
    """Seeded random data for every unit."""
    g = torch.Generator().manual_seed(seed)
    out = []
    st = ErrStat("softmax", "random", "int8, N(0,40^2) logits, L=128, scale 1/16")
    x = torch.clamp(torch.round(torch.randn(2000, 128, generator=g) * 40), -128, 127).long()
    _softmax_rows(st, x, 1 / 16, torch.ones_like(x, dtype=torch.bool))
    out.append(st)
    st = ErrStat("softmax", "random", "int8 uniform, L=1..1024, scales 1/128..1/4")
    for length in (1, 2, 5, 16, 64, 256, 1024):
        for scale in (1 / 128, 1 / 32, 1 / 8, 1 / 4):
            x = torch.randint(-128, 128, (max(4, 4096 // length), length), generator=g)
            m = torch.rand(x.shape, generator=g) < 0.8
            m[:, 0] = True
            _softmax_rows(st, x, scale, m)
    out.append(st)
    st = ErrStat("layernorm", "random", "int8 uniform, N=384, gamma~N(1,.2), beta~N(0,.1)")
    x = torch.randint(-128, 128, (2000, 384), generator=g)
    gamma = torch.randn(384, generator=g, dtype=torch.float64) * 0.2 + 1
    beta = torch.randn(384, generator=g, dtype=torch.float64) * 0.1
    yf = layernorm_float(x * 0.05, gamma, beta, 1e-5)
    so = float(yf.abs().max()) / 127
    st.add(layernorm_int(x, layernorm_params(384, 0.05, gamma, beta, so, 1e-5)), yf / so, -128, 127)
    out.append(st)
    st = ErrStat("gelu", "random", "int8 uniform, in_scale 0.05 (x in [-6.4, 6.35])")
    x = torch.randint(-128, 128, (200000,), generator=g)
    yf = gelu_float(x * 0.05)
    so = float(yf.abs().max()) / 127
    st.add(gelu_int(x, gelu_params(0.05, so)), yf / so, -128, 127)
    out.append(st)
    return out


def measure_minilm(num_sentences: int | None = None, log: Any = sys.stderr) -> list[ErrStat]:
    """Real activations of all-MiniLM-L6-v2 on the shipped sentences (two passes)."""
    from compiler.models import dense_attention, embed, load_minilm, load_sentences

    model, tok = load_minilm()
    sentences = load_sentences()
    if num_sentences is not None:
        sentences = sentences[:num_sentences]
    layer_norms = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    ffn_in = [layer.intermediate.dense for layer in model.encoder.layer]
    token_mask: list[torch.Tensor] = [torch.ones(1, 1, dtype=torch.bool)]
    calib: dict[str, float] = {}
    measuring = [False]

    def amax(key: str, t: torch.Tensor) -> None:
        calib[key] = max(calib.get(key, 0.0), float(t.abs().max()))

    sm8 = ErrStat("softmax", "MiniLM", "int8 logits, per-layer scale, padding masked")
    sm32 = ErrStat("softmax", "MiniLM", "int32 q8.k8 accumulator, scale s_q*s_k/sqrt(d)")
    ln8 = ErrStat("layernorm", "MiniLM", "int8 residual input, 13 LayerNorms")
    ln24 = ErrStat("layernorm", "MiniLM", "int32 (24-bit) residual input, in_shift 8")
    ge8 = ErrStat("gelu", "MiniLM", "int8 FFN pre-activation, vs exact erf GELU")

    def attention(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor, layer: int
    ) -> torch.Tensor:
        d = q.shape[-1]
        s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(d)
        b, h, n, _ = s.shape
        rows = key_mask[:, None, :].expand(b, h, n)
        mask = key_mask[:, None, None, :].expand(b, h, n, n)[rows]
        if not measuring[0]:
            amax(f"logit{layer}", s[rows][mask])
            amax(f"q{layer}", q)
            amax(f"k{layer}", k)
        else:
            scale = calib[f"logit{layer}"] / 127
            _softmax_rows(sm8, _q(s[rows], scale), scale, mask)
            sq, sk = calib[f"q{layer}"] / 127, calib[f"k{layer}"] / 127
            acc = _q(q, sq) @ _q(k, sk).transpose(-1, -2)
            _softmax_rows(sm32, acc[rows], sq * sk / math.sqrt(d), mask)
        return dense_attention(q, k, v, key_mask, layer)

    def ln_hook(name: str, mod: torch.nn.LayerNorm) -> Any:
        def pre(_m: Any, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0][token_mask[0]].double()  # [tokens, hidden]
            if not measuring[0]:
                amax(f"ln_in:{name}", x)
                y = torch.nn.functional.layer_norm(
                    x, x.shape[-1:], mod.weight.double(), mod.bias.double(), mod.eps
                )
                amax(f"ln_out:{name}", y)
                return
            gamma, beta = mod.weight.double().detach(), mod.bias.double().detach()
            so = calib[f"ln_out:{name}"] / 127
            for stat, bits in ((ln8, 8), (ln24, 24)):
                si = calib[f"ln_in:{name}"] / (2 ** (bits - 1) - 1)
                xq = _q(x, si, bits)
                p = layernorm_params(x.shape[-1], si, gamma, beta, so, mod.eps, in_bits=bits)
                twin = layernorm_float(xq * si, gamma, beta, mod.eps) / so
                stat.add(layernorm_int(xq, p), twin, -128, 127)

        return pre

    def ffn_hook(layer: int) -> Any:
        def post(_m: Any, _args: Any, out: torch.Tensor) -> None:
            x = out[token_mask[0]].double()
            if not measuring[0]:
                amax(f"gelu_in{layer}", x)
                amax(f"gelu_out{layer}", gelu_float(x))
                return
            si, so = calib[f"gelu_in{layer}"] / 127, calib[f"gelu_out{layer}"] / 127
            xq = _q(x, si)
            ge8.add(gelu_int(xq, gelu_params(si, so)), gelu_float(xq * si) / so, -128, 127)

        return post

    handles = [m.register_forward_pre_hook(ln_hook(n, m)) for n, m in layer_norms]
    handles += [m.register_forward_hook(ffn_hook(i)) for i, m in enumerate(ffn_in)]
    try:
        for phase in ("calibrate", "measure"):
            t0 = time.time()
            measuring[0] = phase == "measure"
            with torch.no_grad():
                embed(
                    model,
                    tok,
                    sentences,
                    attention_fn=attention,
                    batch_size=32,
                    on_batch=lambda m: token_mask.__setitem__(0, m),
                )
            print(f"  {phase}: {len(sentences)} sentences, {time.time() - t0:.1f} s", file=log)
    finally:
        for hd in handles:
            hd.remove()
    return [sm8, sm32, ln8, ln24, ge8]


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of the measured errors."""
    head = f"{'unit':<10} {'data':<7} {'values':>9} {'q-err max':>9} {'q-err mean':>10} {'raw max':>8} {'raw mean':>8}  {'target':<9} {'ok':<4} path"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['unit']:<10} {r['data']:<7} {r['values']:>9} {r['q_err_max']:>9.0f} {r['q_err_mean']:>10.4f} "
            f"{r['raw_err_max']:>8.3f} {r['raw_err_mean']:>8.4f}  "
            f"{'<=' + str(r['target_mean']) + '/' + str(r['target_max']):<9} {'yes' if r['pass'] else 'NO':<4} {r['path']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 0 when every row meets its target."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sentences", type=int, default=None, help="use the first N sentences (default all)"
    )
    ap.add_argument(
        "--json", default=None, help="also write the rows as JSON to PATH ('-' = stdout)"
    )
    ap.add_argument("--no-minilm", action="store_true", help="random data only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    stats = measure_random(args.seed)
    if not args.no_minilm:
        stats += measure_minilm(args.sentences)
    rows = [s.row() for s in stats]
    print(
        "errors of the integer models in output LSBs (softmax: 1/256; layernorm, gelu: output scale)"
    )
    print(
        "q-err = |int - round(float twin)|, raw = |int - float twin / lsb|; target = mean/max of q-err"
    )
    print(format_table(rows))
    if args.json is not None:
        doc = json.dumps({"benchmark": "nonlinear_accuracy", "rows": rows}, indent=2)
        if args.json == "-":
            print(doc)
        else:
            with open(args.json + ".tmp", "w", encoding="utf-8") as f:
                f.write(doc + "\n")
            os.replace(args.json + ".tmp", args.json)
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
