"""Accuracy of the sparse-attention filters on a real model (all-MiniLM-L6-v2).

Every self-attention layer of MiniLM is replaced by a filter (``compiler.models.embed``),
the shipped sentences are embedded, and the result is compared with the dense model:

* ``keep_ratio``: exactly computed query-key pairs / real query-key pairs, over all layers
  and heads (padding excluded);
* ``attn_rel_err``: ``||out - dense(q, k, v)|| / ||dense(q, k, v)||`` over real query rows of
  all layers, where ``dense`` is exact attention on the *same* (sparse-run) inputs;
* ``cosine_mean`` / ``cosine_min``: cosine between sparse and dense sentence embeddings;
* ``nn_agreement``: fraction of sentences whose most similar other sentence is the same
  as under the dense model.

No fine-tuning is done (the papers fine-tune with the filter in the loop), so these numbers
are a lower bound on what each method reaches after training. Filters that learn
parameters (ELSA, Sanger) are calibrated on every 5th sentence (label-free statistics of
the dense model only). Used by ``fmforge sparsity`` and ``benchmarks/sparse_attention_accuracy.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from golden.errors import UserValueError
from golden.sparse import METHODS
from golden.sparse.base import (
    FILTERS,
    SparseAttentionFilter,
    available_filters,
    make_filter,
    valid_pairs,
)

__all__ = ["EvalResult", "NO_FINETUNE_NOTE", "choose_sanger_layer_thresholds", "evaluate", "format_table",
           "parse_methods"]

NO_FINETUNE_NOTE = ("No fine-tuning: every filter is applied to the pretrained model as is "
                    "(the papers fine-tune with the filter in the loop).")


@dataclass(frozen=True)
class EvalResult:
    """One (method, setting) row of the evaluation."""

    method: str
    setting: str
    keep_ratio: float
    attn_rel_err: float
    cosine_mean: float
    cosine_min: float
    nn_agreement: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_methods(spec: str | Sequence[str] | None) -> list[str]:
    """Method names from ``"a3,elsa"`` or a list; unknown names raise ValueError listing valid ones."""
    if spec is None:
        return list(METHODS)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise UserValueError(f"no method given; valid: {', '.join(available_filters())}")
    for n in names:
        if n not in FILTERS:
            raise UserValueError(f"unknown sparse-attention method {n!r}; valid: {', '.join(available_filters())}")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise UserValueError(f"sparse-attention method {', '.join(map(repr, dups))} given more than "
                             "once; give each method once")
    return names


class _Meter:
    """attention_fn wrapper counting computed pairs and the attention-output error."""

    def __init__(self, filt: SparseAttentionFilter) -> None:
        self.filt = filt
        self.kept = 0
        self.total = 0
        self.err2 = 0.0
        self.ref2 = 0.0

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                 layer: int) -> torch.Tensor:
        res = self.filt.attend(q, k, v, key_mask, layer=layer)
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        self.kept += int((res.mask & valid).sum())
        self.total += int(valid.sum())
        dense = FILTERS["dense"]().attend(q, k, v, key_mask, layer=layer).out
        real_q = key_mask[:, None, :, None]
        self.err2 += float(((res.out - dense) ** 2).masked_fill(~real_q, 0).sum())
        self.ref2 += float((dense ** 2).masked_fill(~real_q, 0).sum())
        return res.out


def _nn(emb: torch.Tensor) -> torch.Tensor:
    sim = emb @ emb.T
    sim.fill_diagonal_(-math.inf)
    return sim.argmax(-1)


def evaluate(
    methods: str | Sequence[str] | None = None,
    *,
    sweep: bool = False,
    sentences: Sequence[str] | None = None,
    integer: bool = True,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
    settings: dict[str, Sequence[dict[str, Any]]] | None = None,
    holdout: bool = False,
) -> dict[str, Any]:
    """Evaluate methods at their default setting (or over their sweep) on MiniLM.

    ``settings`` maps a method to explicit knob settings (overrides default and sweep for that
    method). Calibration always uses every 5th sentence; ``holdout=True`` evaluates on the
    other sentences only (a disjoint split), otherwise on all of them.

    Returns ``{"results": [EvalResult.as_dict(), ...], "n_sentences": N, "holdout": bool,
    "setting_seconds": {method/setting: wall seconds}}``.
    """
    from compiler.models import embed, load_minilm, load_sentences

    names = parse_methods(methods)
    sents = list(sentences) if sentences is not None else load_sentences()
    if len(sents) < 2:
        raise UserValueError(f"need at least 2 sentences for nearest-neighbour agreement, got {len(sents)}")
    calib_sents = sents[::5]
    if holdout:
        sents = [s for i, s in enumerate(sents) if i % 5]
        if len(sents) < 2:
            raise UserValueError("holdout leaves fewer than 2 evaluation sentences")
    model, tok = load_minilm()
    dense_emb = embed(model, tok, sents, batch_size=batch_size)
    dense_nn = _nn(dense_emb)

    calib: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []

    def capture(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                layer: int) -> torch.Tensor:
        while len(calib) <= layer:
            calib.append([])
        calib[layer].append((q.clone(), k.clone(), key_mask.clone()))
        return FILTERS["dense"]().attend(q, k, v, key_mask, layer=layer).out

    if any(FILTERS[n].needs_calibration for n in names):
        embed(model, tok, calib_sents, attention_fn=capture, batch_size=batch_size)

    results = []
    seconds: dict[str, float] = {}
    for name in names:
        if settings is not None and name in settings:
            todo = tuple(settings[name])
        else:
            todo = FILTERS[name].sweep if sweep else (FILTERS[name].default,)
        for knobs in todo:
            t0 = time.perf_counter()
            filt = make_filter(name, integer=integer, **knobs)
            if filt.needs_calibration:
                filt.calibrate(calib)
            meter = _Meter(filt)
            emb = embed(model, tok, sents, attention_fn=meter, batch_size=batch_size,
                        on_batch=filt.reset)
            cos = (emb * dense_emb).sum(-1)
            r = EvalResult(
                method=name,
                setting=filt.setting(),
                keep_ratio=meter.kept / max(1, meter.total),
                attn_rel_err=math.sqrt(meter.err2 / max(meter.ref2, 1e-30)),
                cosine_mean=float(cos.mean()),
                cosine_min=float(cos.min()),
                nn_agreement=float((_nn(emb) == dense_nn).double().mean()),
            )
            results.append(r.as_dict())
            seconds[f"{name}/{r.setting}"] = round(time.perf_counter() - t0, 2)
            if progress is not None:
                progress(f"{name:8s} {r.setting:18s} keep {r.keep_ratio:.3f} cos {r.cosine_mean:.4f}")
    return {"results": results, "n_sentences": len(sents), "holdout": holdout,
            "setting_seconds": seconds}


#: per-layer threshold grid and trade-off weights of ``choose_sanger_layer_thresholds``
SANGER_LAYER_GRID = (0.01, 0.02, 0.03, 0.045, 0.06, 0.08, 0.12)
SANGER_LAMBDAS = (2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500)


def choose_sanger_layer_thresholds(
    sentences: Sequence[str],
    *,
    target: float = 0.99,
    grid: Sequence[float] = SANGER_LAYER_GRID,
    lambdas: Sequence[float] = SANGER_LAMBDAS,
    integer: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Per-layer Sanger thresholds chosen on ``sentences`` only (a calibration split).

    1. Per layer ``l`` and threshold ``t`` in ``grid``, only layer ``l`` is filtered: its
       keep ratio and the embedding-cosine loss ``1 - cos`` are measured.
    2. For each ``lam`` in ``lambdas`` every layer takes the ``t`` minimising
       ``keep_l + lam * loss_l`` (losses treated as additive).
    3. Each such combination is run with all layers filtered; the one with the lowest keep
       ratio whose mean cosine is ``>= target`` is chosen (the most conservative one if none).

    This is our extension (the Sanger configs use one threshold for the model; ELSA learns
    its threshold per sub-layer). Returns ``{"layer_thresholds": [...], "single_layer":
    [...], "combos": [...]}``.
    """
    from compiler.models import load_minilm

    n_layers = int(load_minilm()[0].config.num_hidden_layers)
    single = []
    for layer in range(n_layers):
        todo = []
        for t in grid:
            lt = [0.0] * n_layers
            lt[layer] = float(t)
            todo.append({"layer_thresholds": lt})
        res = evaluate(["sanger"], settings={"sanger": todo}, sentences=sentences, integer=integer)
        for t, r in zip(grid, res["results"], strict=True):
            keep_l = n_layers * r["keep_ratio"] - (n_layers - 1)
            single.append({"layer": layer, "threshold": float(t), "keep": keep_l,
                           "loss": 1.0 - r["cosine_mean"]})
        if progress is not None:
            progress(f"sanger per-layer: layer {layer} measured")
    cost = {(r["layer"], r["threshold"]): r for r in single}
    choices: list[tuple[float, ...]] = []
    for lam in lambdas:
        c = tuple(min(grid, key=lambda t, lay=lay: cost[(lay, float(t))]["keep"]
                      + lam * cost[(lay, float(t))]["loss"]) for lay in range(n_layers))
        if c not in choices:
            choices.append(c)
    res = evaluate(["sanger"], settings={"sanger": [{"layer_thresholds": list(c)} for c in choices]},
                   sentences=sentences, integer=integer)
    combos = [{"layer_thresholds": list(c), "keep_ratio": r["keep_ratio"], "cosine_mean": r["cosine_mean"]}
              for c, r in zip(choices, res["results"], strict=True)]
    ok = [c for c in combos if c["cosine_mean"] >= target]
    best = min(ok, key=lambda c: c["keep_ratio"]) if ok else max(combos, key=lambda c: c["cosine_mean"])
    return {"layer_thresholds": best["layer_thresholds"], "single_layer": single, "combos": combos}


def format_table(result: dict[str, Any]) -> str:
    """Human-readable table of ``evaluate``'s result."""
    head = (f"{'method':8s} {'setting':20s} {'keep':>6s} {'attn_err':>9s} {'cos_mean':>9s} "
            f"{'cos_min':>8s} {'nn_agree':>9s}")
    lines = [f"sparse attention on all-MiniLM-L6-v2, {result['n_sentences']} sentences", head,
             "-" * len(head)]
    for r in result["results"]:
        lines.append(f"{r['method']:8s} {r['setting']:20s} {r['keep_ratio']:6.3f} {r['attn_rel_err']:9.4f} "
                     f"{r['cosine_mean']:9.5f} {r['cosine_min']:8.5f} {r['nn_agreement']:9.3f}")
    lines.append(NO_FINETUNE_NOTE)
    return "\n".join(lines)
