"""Calibration draws varied inputs: random token ids over the model's vocabulary, noise of the
example's statistics for float inputs, held-out shipped sentences for MiniLM; the count is an
option (``fmforge compile --calib N``)."""

from __future__ import annotations

import pytest
import torch

from compiler.driver import EVAL_SENTENCES, calibration_samples, prepare_graph, token_inputs
from compiler.frontend import export_graph, load_model
from fmforge.cli import main
from golden.errors import UserValueError


def _graph(lm):
    return export_graph(lm.module, lm.example_inputs, source=lm.name)


def test_token_ids_are_drawn_over_the_vocabulary():
    lm = load_model("gpt2-tiny")
    g = _graph(lm)
    assert token_inputs(g) == {g.inputs[0][0]: 1000}
    samples = calibration_samples(lm, 8, g)
    assert len(samples) == 8 and torch.equal(samples[0][0], lm.example_inputs[0])
    ids = torch.cat([s[0] for s in samples[1:]])
    assert ids.shape == (7, 16) and ids.dtype == lm.example_inputs[0].dtype
    assert int(ids.min()) >= 0 and int(ids.max()) < 1000
    assert len({tuple(r.tolist()) for r in ids}) == 7  # no copies of one sequence
    assert int(ids.max()) > 900 and len(set(ids.flatten().tolist())) > 80
    assert [torch.equal(a[0], b[0]) for a, b in zip(samples, calibration_samples(lm, 8, g),
                                                     strict=True)] == [True] * 8  # seeded


def test_float_inputs_are_noise_of_the_example_statistics():
    lm = load_model("vit-tiny")
    samples = calibration_samples(lm, 5, _graph(lm))
    x = lm.example_inputs[0]
    for (s,) in samples[1:]:
        assert s.shape == x.shape and not torch.equal(s, x)
        assert abs(float(s.mean()) - float(x.mean())) < 0.1
        assert abs(float(s.std()) / float(x.std()) - 1) < 0.1


def test_minilm_sentences_are_held_out_and_count_is_honoured():
    from compiler.models import load_sentences
    from compiler.zoo import tokenize

    lm = load_model("minilm")
    samples = calibration_samples(lm, 20)
    assert len(samples) == 20
    rows = {tuple(s[0][0].tolist()) for s in samples}
    assert len(rows) == 20
    ids, _, _ = tokenize(load_sentences()[:EVAL_SENTENCES], lm.seq_len)
    assert not rows & {tuple(r.tolist()) for r in ids}  # none of the evaluation sentences


@pytest.mark.parametrize("n", [0, 257, True, 2.0])
def test_bad_count(n):
    with pytest.raises(UserValueError, match="calibration sample count"):
        calibration_samples(load_model("encoder-tiny"), n)


def test_prepare_graph_calibrates_on_the_count(monkeypatch):
    import compiler.passes.quantize as q

    counts = []  # samples the quantize pass's calibration sees (the smoothing run records it)
    real = q.Calibration.inputs
    monkeypatch.setattr(q.Calibration, "inputs",
                        lambda self, s: counts.append(1) or real(self, s))
    prepare_graph(load_model("encoder-tiny"), calib=3)
    assert len(counts) == 3
    counts.clear()
    prepare_graph(load_model("encoder-tiny"), calib=3, smooth="off")
    assert len(counts) == 3


@pytest.mark.parametrize("value", ["0", "257", "x"])
def test_cli_calib_is_bounded(value, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["compile", "--model", "encoder-tiny", "--calib", value, "-o",
              str(tmp_path / "p.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--calib" in err and "1..256" in err
