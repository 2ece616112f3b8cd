"""Greedy generation through a decode-step plan, bit-accurate, against the float model.

A decode-step plan (``<decoder>/decode@T``, :class:`compiler.zoo.DecodeStep`) is one compiled
graph: ``N`` new tokens (the plan's ``seq_len``) over a static KV cache of ``T`` slots, returning
the LM head's logits, the last hidden state and the new tokens' keys and values. The LM head is
part of that graph: a GEMV priced and placed like the layers' (on the accelerator when the
partition puts it there). :func:`generate_plan` runs it as a runtime would:

* prefill: the prompt through the same graph in chunks of ``N`` tokens (a last, shorter chunk is
  padded with copies of its last token; the pad rows come after the real ones, so causality
  keeps them out of the real rows, and their outputs and keys are dropped);
* decode: one token per step, the argmax of the previous step's logits (greedy);
* KV cache: the executor's own keys and values of every fed token are written into the next free
  slots, and ``cache_mask`` marks the filled slots: each step reads the cache the earlier
  steps of the executor wrote, never the float model's.

Every graph run goes through :func:`compiler.execute.make_impl` (integer golden models where the
plan placed ops on accelerators). The float reference is the model's own incremental forward
(``transformers``' cache, no slots, no mask) with its head, greedy on the same prompts. Reported:

* free-running token agreement: the fraction of generated tokens equal to the float model's, and
  each prompt's first divergence step (the sequences differ from there on, so later steps
  compare different contexts);
* teacher-forced agreement: the executor fed the float model's tokens, its argmax compared with
  the float token at every step (the fairer measure once sequences diverge), with the logits and
  hidden-state cosines of those steps;
* the float model's top-1 margin (largest minus second largest logit), overall and where the
  teacher-forced argmax differs, and the share of teacher-forced steps whose margin exceeds
  twice the executor's largest logit error there (``margin_exceeds_error``: at those steps no
  error of that size can change the argmax; below it, it may): random-initialised models have
  near-uniform logits, so argmax agreement is a stringent measure.

The cache must hold every fed token but the last: a prompt of ``P`` tokens and ``n`` generated
tokens feed ``P + n - 1`` tokens, so ``P + n - 2 <= T`` (``n >= 2``); anything longer is
refused before any work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from compiler.ir import Graph
from golden.errors import UserFileNotFoundError, UserValueError

__all__ = ["DEFAULT_PROMPT_LEN", "DEFAULT_PROMPTS", "StaticKVCache", "cache_slots_needed",
           "decode_plan_shape", "fill_cosines", "float_greedy", "generate_plan", "load_prompts",
           "random_prompts"]

#: prompts ``fmforge execute --generate`` draws by default, and their length
DEFAULT_PROMPTS = 8
DEFAULT_PROMPT_LEN = 8


def decode_plan_shape(plan: dict[str, Any]) -> tuple[str, int, int]:
    """``(decoder, T, N)`` of a decode-step plan: its decoder, cache slots and tokens per step;
    ``UserValueError`` for any other plan."""
    src = str(plan["model"]["source"])
    base, phase, ctx = src.partition("/decode@")
    if not phase or not ctx.isdigit():
        raise UserValueError(f"--generate needs a decode-step plan (fmforge compile --model "
                             f"<decoder> --phase decode --context T); this plan's model is "
                             f"{src!r}, not a decode step")
    return base, int(ctx), int(plan["model"].get("seq_len") or 1)


def cache_slots_needed(prompt_len: int, n_tokens: int, chunk: int) -> int:
    """KV-cache slots a prompt of ``prompt_len`` tokens and ``n_tokens`` generated tokens need:
    every fed token but those of the last graph run (prefill in chunks of ``chunk``)."""
    if n_tokens >= 2:
        return prompt_len + n_tokens - 2
    last = prompt_len - chunk * ((prompt_len - 1) // chunk)
    return prompt_len - last


def random_prompts(vocab: int, n: int = DEFAULT_PROMPTS, length: int = DEFAULT_PROMPT_LEN,
                   seed: int = 0) -> list[list[int]]:
    """``n`` prompts of ``length`` token ids uniform over ``0..vocab-1`` (seeded)."""
    if n < 1 or length < 1:
        raise UserValueError(f"prompts: need at least one prompt of at least one token, not "
                             f"{n} x {length}")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g).tolist()


def load_prompts(path: str | Path, vocab: int) -> list[list[int]]:
    """Prompts from a text file: one prompt a line, token ids separated by spaces or commas
    (blank lines and ``#`` comments skipped), each id in ``0..vocab-1``."""
    p = Path(path)
    if not p.is_file():
        raise UserFileNotFoundError(f"prompts file not found: {path}")
    out: list[list[int]] = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].replace(",", " ").split()
        if not text:
            continue
        ids = []
        for tok in text:
            if not tok.lstrip("-").isdigit():
                raise UserValueError(f"prompts file {path} line {i}: {tok!r} is not a token id "
                                     "(integers separated by spaces or commas)")
            if not 0 <= int(tok) < vocab:
                raise UserValueError(f"prompts file {path} line {i}: token {tok} is outside "
                                     f"the model's vocabulary 0..{vocab - 1}")
            ids.append(int(tok))
        out.append(ids)
    if not out:
        raise UserValueError(f"prompts file {path} has no prompt (one line of token ids each)")
    return out


class StaticKVCache:
    """The runtime side of a decode-step graph: ``T`` cache slots per layer filled in order by
    the keys and values the graph returns, and the mask of filled slots. ``run`` maps the
    graph's inputs to its outputs (the executor, or the float module for a check)."""

    def __init__(self, run: Callable[[tuple[torch.Tensor, ...]], Sequence[torch.Tensor]],
                 example: Sequence[torch.Tensor], chunk: int) -> None:
        self.run, self.chunk = run, chunk
        self.kv = [torch.zeros_like(t) for t in example[3:]]
        self.slots = int(self.kv[0].shape[2])
        self.mask = torch.zeros(1, self.slots, dtype=example[2].dtype)
        self.filled = 0
        self.full = False  # the last run's keys did not fit: no further run can be exact
        self.runs = 0

    def clone(self) -> StaticKVCache:
        c = StaticKVCache.__new__(StaticKVCache)
        c.run, c.chunk, c.slots, c.filled, c.full, c.runs = (self.run, self.chunk, self.slots,
                                                             self.filled, self.full, 0)
        c.kv, c.mask = [t.clone() for t in self.kv], self.mask.clone()
        return c

    def feed(self, tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``tokens`` (at the next positions) in chunks; ``(logits [r, V], hidden [r, d])``
        of the last chunk's ``r`` real tokens."""
        out: tuple[torch.Tensor, torch.Tensor] | None = None
        for i in range(0, len(tokens), self.chunk):
            real = list(tokens[i:i + self.chunk])
            out = self._step(real)
        assert out is not None
        return out

    def _step(self, real: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.full:
            raise UserValueError(f"KV cache full: all {self.slots} slots hold tokens (compile "
                                 "the decode step with a longer --context)")
        r, n = len(real), self.chunk
        ids = torch.tensor([real + [real[-1]] * (n - r)], dtype=torch.int64)
        pos = torch.arange(self.filled, self.filled + n, dtype=torch.int64).unsqueeze(0)
        outs = self.run((ids, pos, self.mask.clone(), *self.kv))
        self.runs += 1
        logits, hidden, new = outs[0], outs[1], outs[2:]
        if self.filled + r <= self.slots:
            for slot, t in zip(self.kv, new, strict=True):
                slot[:, :, self.filled:self.filled + r] = t[:, :, :r]
            self.mask[:, self.filled:self.filled + r] = 1
            self.filled += r
        else:
            self.full = True
        return logits[0, :r].detach(), hidden[0, :r].detach()


def float_greedy(step: Any, prompt: Sequence[int], n_tokens: int
                 ) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
    """The float model's greedy generation: its own incremental forward and LM head
    (``step.m``, ``step.head`` of a :class:`compiler.zoo.DecodeStep`); ``(tokens, logits,
    hidden)`` per generated token."""
    from compiler.zoo import cache_kwarg, output_cache

    kw = cache_kwarg(step.m)
    toks: list[int] = []
    logits: list[torch.Tensor] = []
    hidden: list[torch.Tensor] = []
    with torch.no_grad():
        out = step.m(input_ids=torch.tensor([list(prompt)]), use_cache=True)
        for s in range(n_tokens):
            h = out.last_hidden_state[0, -1]
            lg = step.head(h)
            toks.append(int(lg.argmax()))
            logits.append(lg)
            hidden.append(h)
            if s + 1 < n_tokens:
                out = step.m(input_ids=torch.tensor([[toks[-1]]]), use_cache=True,
                             **{kw: output_cache(out)})
    return toks, logits, hidden


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten()[None],
                                                       b.double().flatten()[None])[0])


def _margin(lg: torch.Tensor) -> float:
    top = torch.topk(lg.double(), 2).values
    return float(top[0] - top[1])


def fill_cosines(plan: dict[str, Any], fills: Sequence[int], steps: int = 3, seed: int = 11,
                 graph: tuple[Graph, Any] | None = None) -> dict[int, dict[str, float]]:
    """Accuracy of one decode step of ``plan`` by cache fill: per fill level ``f`` in ``fills``,
    ``steps`` held-out steps (:meth:`compiler.zoo.DecodeStep.step_inputs` seeded with ``seed +
    1000 * f``: the float model's own cache of ``f`` random tokens, random new tokens at positions
    ``f..``) through the executor, their logits and hidden state against the float step's;
    ``{f: {"logits_min", "logits_mean", "hidden_min", "hidden_mean"}}`` (cosines)."""
    from compiler.execute import make_impl, rebuild_graph
    from compiler.interp import run_graph

    decode_plan_shape(plan)
    g, lm = graph if graph is not None else rebuild_graph(plan)
    step = lm.module
    impl = make_impl(g, plan)
    out: dict[int, dict[str, float]] = {}
    for f in fills:
        if not 0 <= f <= step.context:
            raise UserValueError(f"cache fill {f} outside 0..{step.context}")
        gen = torch.Generator().manual_seed(seed + 1000 * f)
        lc, hc = [], []
        for _ in range(steps):
            inputs = step.step_inputs(gen, f)
            with torch.no_grad():
                ref = step(*inputs)
                got = run_graph(g, inputs, impl=impl)
            lc.append(_cos(got[0], ref[0]))
            hc.append(_cos(got[1], ref[1]))
        out[f] = {"logits_min": min(lc), "logits_mean": sum(lc) / len(lc),
                  "hidden_min": min(hc), "hidden_mean": sum(hc) / len(hc)}
    return out


def generate_plan(plan: dict[str, Any], n_tokens: int, prompts: Sequence[Sequence[int]] | None = None,
                  n_prompts: int = DEFAULT_PROMPTS, prompt_len: int = DEFAULT_PROMPT_LEN,
                  seed: int = 0, imc: Any = None, quantize: bool = True,
                  graph: tuple[Graph, Any] | None = None) -> dict[str, Any]:
    """Greedy generation of ``n_tokens`` tokens per prompt through decode-step ``plan`` (module
    docstring), compared with the float model's.

    ``prompts``: token-id lists (default: ``n_prompts`` random prompts of ``prompt_len`` tokens,
    :func:`random_prompts` with ``seed``). ``imc``: crossbar non-idealities, as
    :func:`compiler.execute.execute_plan`. ``quantize=False``: every op where the plan placed it
    but without rounding (:func:`compiler.execute.make_impl`), so the tokens must be the float
    model's. ``graph``: the rebuilt graph and model (default :func:`rebuild_graph` of the plan).
    """
    from compiler.execute import make_impl, rebuild_graph
    from compiler.interp import run_graph
    from compiler.passes.sparsify import reset_sparse_filters

    name, slots, chunk = decode_plan_shape(plan)
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise UserValueError(f"--generate: the number of tokens must be a positive integer, "
                             f"not {n_tokens!r}")
    g, lm = graph if graph is not None else rebuild_graph(plan)
    step = lm.module
    vocab = int(step.vocab)
    if prompts is None:
        prompts = random_prompts(vocab, n_prompts, prompt_len, seed)
    prompts = [list(p) for p in prompts]
    for i, p in enumerate(prompts):
        if not p:
            raise UserValueError(f"prompt {i + 1} is empty")
        bad = [t for t in p if not 0 <= int(t) < vocab]
        if bad:
            raise UserValueError(f"prompt {i + 1}: token {bad[0]} is outside the model's "
                                 f"vocabulary 0..{vocab - 1}")
        need = cache_slots_needed(len(p), n_tokens, chunk)
        if need > slots:
            raise UserValueError(
                f"prompt {i + 1} ({len(p)} tokens) and {n_tokens} generated tokens need a KV "
                f"cache of {need} slots; the plan's decode step ({plan['model']['source']}) has "
                f"{slots}: compile it with --context {need} or more, or use a shorter prompt or "
                "fewer tokens")

    impl = make_impl(g, plan, imc=imc, quantize=quantize)
    if any(d["kind"] == "core" for d in plan["devices"]):  # core regions: the golden core
        from compiler.core_run import core_impl
        impl = core_impl(plan, g, impl)
    start = getattr(impl, "start", lambda inputs: None)

    def run(inputs: tuple[torch.Tensor, ...]) -> Sequence[torch.Tensor]:
        reset_sparse_filters()
        start(inputs)
        return run_graph(g, inputs, impl=impl)

    per_prompt = []
    free_ok = [[0] * n_tokens for _ in prompts]
    tf_ok = [[0] * n_tokens for _ in prompts]
    lcos = [[0.0] * n_tokens for _ in prompts]
    hcos = [[0.0] * n_tokens for _ in prompts]
    margins = [[0.0] * n_tokens for _ in prompts]
    errs = [[0.0] * n_tokens for _ in prompts]
    runs = 0
    for i, p in enumerate(prompts):
        ref, ref_logits, ref_hidden = float_greedy(step, p, n_tokens)
        tf = StaticKVCache(run, lm.example_inputs, chunk)
        lg, h = tf.feed(p)
        free = [int(lg[-1].argmax())]
        tf_pred = [free[0]]
        tf_out = [(lg[-1], h[-1])]
        fr: StaticKVCache | None = None  # the free-running cache once it differs from tf's
        for s in range(1, n_tokens):
            if fr is None and free[-1] != ref[s - 1]:
                fr = tf.clone()
            lg, h = tf.feed([ref[s - 1]])
            tf_pred.append(int(lg[-1].argmax()))
            tf_out.append((lg[-1], h[-1]))
            if fr is None:
                free.append(tf_pred[-1])
            else:
                flg, _ = fr.feed([free[-1]])
                free.append(int(flg[-1].argmax()))
        runs += tf.runs + (fr.runs if fr is not None else 0)
        for s in range(n_tokens):
            free_ok[i][s] = int(free[s] == ref[s])
            tf_ok[i][s] = int(tf_pred[s] == ref[s])
            lcos[i][s] = _cos(tf_out[s][0], ref_logits[s])
            hcos[i][s] = _cos(tf_out[s][1], ref_hidden[s])
            margins[i][s] = _margin(ref_logits[s])
            errs[i][s] = float((tf_out[s][0].double() - ref_logits[s].double()).abs().max())
        first = next((s for s in range(n_tokens) if free[s] != ref[s]), None)
        per_prompt.append({"prompt": p, "float_tokens": ref, "tokens": free,
                           "teacher_forced_tokens": tf_pred, "first_divergence": first})

    cells = len(prompts) * n_tokens
    flat = [(i, s) for i in range(len(prompts)) for s in range(n_tokens)]
    miss = [margins[i][s] for i, s in flat if not tf_ok[i][s]]
    steps = []
    for s in range(n_tokens):
        col = range(len(prompts))
        steps.append({"step": s,
                      "agreement": sum(free_ok[i][s] for i in col) / len(prompts),
                      "teacher_forced_agreement": sum(tf_ok[i][s] for i in col) / len(prompts),
                      "logits_cosine_min": min(lcos[i][s] for i in col),
                      "logits_cosine_mean": sum(lcos[i][s] for i in col) / len(prompts),
                      "hidden_cosine_min": min(hcos[i][s] for i in col),
                      "hidden_cosine_mean": sum(hcos[i][s] for i in col) / len(prompts),
                      "float_margin_mean": sum(margins[i][s] for i in col) / len(prompts)})
    ops = {o["name"]: o for o in plan["ops"]}
    head = ops.get(g.outputs[0].name, {})
    linears: dict[str, int] = {}
    for o in plan["ops"]:
        if o["op"] in ("linear", "matmul"):
            linears[o["device"]] = linears.get(o["device"], 0) + 1
    return {
        "model": plan["model"]["source"], "decoder": name, "context": slots, "chunk": chunk,
        "n_prompts": len(prompts), "prompt_lens": sorted({len(p) for p in prompts}),
        "n_tokens": n_tokens, "quantize": quantize, "graph_runs": runs,
        "token_agreement": sum(map(sum, free_ok)) / cells,
        "teacher_forced_agreement": sum(map(sum, tf_ok)) / cells,
        "exact_sequences": sum(1 for r in per_prompt if r["first_divergence"] is None),
        "first_divergence": [r["first_divergence"] for r in per_prompt],
        "logits_cosine_min": min(lcos[i][s] for i, s in flat),
        "logits_cosine_mean": sum(lcos[i][s] for i, s in flat) / cells,
        "hidden_cosine_min": min(hcos[i][s] for i, s in flat),
        "hidden_cosine_mean": sum(hcos[i][s] for i, s in flat) / cells,
        "float_margin_mean": sum(margins[i][s] for i, s in flat) / cells,
        "float_margin_at_mismatch_mean": sum(miss) / len(miss) if miss else None,
        "logits_max_abs_err_mean": sum(errs[i][s] for i, s in flat) / cells,
        "margin_exceeds_error": sum(margins[i][s] > 2 * errs[i][s] for i, s in flat) / cells,
        "lm_head": {"op": head.get("name"), "device": head.get("device"),
                    "k": int(step.head.in_features), "n": int(step.head.out_features)},
        "gemms_per_device": linears,
        "steps": steps, "prompts": per_prompt,
    }
