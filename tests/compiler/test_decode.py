"""Decode steps (``fmforge compile --phase decode --context T``): a built-in decoder's step on new
tokens with its KV cache slots and their fill mask as inputs, its LM head included, equal to the
model's own incremental forward, compiled with its GEMVs on the accelerator and executed against
float on held-out caches."""

from __future__ import annotations

import pytest
import torch

from compiler.driver import compile_model
from compiler.execute import execute_plan
from compiler.frontend import load_model
from fmforge.cli import main


def test_decode_step_equals_the_full_forward():
    lm = load_model("llama-tiny/decode@7", 2)
    step = lm.module
    ids, pos, mask, *kv = lm.example_inputs
    assert ids.shape == (1, 2) and pos.tolist() == [[7, 8]] and len(kv) == 4
    assert mask.tolist() == [[1] * 7]  # the example fills every slot
    assert kv[0].shape == (1, 2, 7, 16)  # grouped-query attention: 2 key/value heads
    # the step after a prefill of prompt P == the last rows of the forward over P + new tokens,
    # with P in the first 5 of the 7 slots and junk in the 2 empty ones (the mask hides them)
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, step.vocab, (1, 5), generator=g)
    kv = step.prefill_cache(prompt)
    kv = [torch.cat([t[:, :, :5], 50 * torch.randn(1, 2, 2, 16, generator=g)], 2) for t in kv]
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    pos = torch.tensor([[5, 6]])
    with torch.no_grad():
        logits, hidden, *new = step(ids, pos, mask, *kv)
        full = step.m(input_ids=torch.cat([prompt, ids], 1), use_cache=True)
    assert torch.allclose(hidden, full.last_hidden_state[:, -2:], atol=1e-5)
    assert torch.allclose(logits, step.head(full.last_hidden_state[:, -2:]), atol=1e-5)
    assert logits.shape == (1, 2, 1000)
    # the new keys/values are the model's own for those positions (what a runtime caches)
    own = [t for layer in full.cache.layers for t in (layer.keys, layer.values)]
    assert len(new) == 4 and all(torch.allclose(a, b[:, :, -2:], atol=1e-5)
                                 for a, b in zip(new, own, strict=True))


def test_decode_plan_puts_the_gemvs_on_the_accelerator_and_executes():
    c = compile_model("llama-tiny/decode@15", "asic,cpu:mode=roofline", "energy")
    assert c.plan["model"]["source"] == "llama-tiny/decode@15" and c.plan["model"]["seq_len"] == 1
    lin = [o for o in c.plan["ops"] if o["op"] == "linear"]
    # 14 in the layers and the LM head (64 x 1000, the step's first output)
    assert len(lin) == 15 and all(o["device"] == "asic" for o in lin)
    head = next(o for o in c.plan["ops"] if o["name"] == c.graph.outputs[0].name)
    assert head["op"] == "linear" and head["macs"] == 64 * 1000
    r = execute_plan(c.plan, limit=3)  # held-out steps: real caches of other random prompts
    assert r["n_inputs"] == 3 and r["cosine_min"] > 0.99


@pytest.mark.parametrize(("argv", "message"), [
    (["--phase", "decode"], "--phase decode needs --context T"),
    (["--context", "8"], "--context applies to --phase decode only"),
    (["--model", "minilm", "--phase", "decode", "--context", "8"],
     "a decode step needs a built-in decoder"),
    (["--phase", "decode", "--context", "0"], "--context"),
])
def test_decode_cli_errors(argv, message, tmp_path, capsys):
    base = ["compile", "--model", "gpt2-tiny", "--devices", "cpu", "-o", str(tmp_path / "p.json")]
    args = base + argv
    if "--model" in argv:
        args = ["compile", *argv, "--devices", "cpu", "-o", str(tmp_path / "p.json")]
    try:
        rc = main(args)
    except SystemExit as e:  # argparse's own range check
        rc = e.code
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
