"""Model averaging: the mean of the members' probabilities, each member its own state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import zaremba_ref
from zaremba_ref import evaluate_ensemble, init_params
from zaremba_ref.checkpoint import save_checkpoint
from zaremba_ref.cli import main
from zaremba_ref.config import Config
from zaremba_ref.train import evaluate


def stream(n: int, V: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, n).astype(np.int32)


@pytest.mark.parametrize("B,T,n", [(1, 5, 61), (3, 4, 100), (4, 7, 57)])
def test_an_ensemble_of_one_is_the_model(B, T, n):
    params = init_params(17, 6, 2, init_scale=0.3, seed=1, dtype=np.float64)
    words = stream(n, 17)
    result = evaluate_ensemble([params], words, B, T)
    expected = evaluate(params, words, B, T)
    assert abs(result.perplexity - expected) <= 1e-10 * expected
    assert abs(result.member_perplexities[0] - expected) <= 1e-10 * expected


def fixed(p0: float, H: int = 3) -> dict:
    """A model that predicts word 0 with probability p0, word 1 with 1 - p0, whatever
    it has seen: softmax.W = 0, softmax.b = log(p0, 1 - p0)."""
    params = init_params(2, H, 1, seed=0, dtype=np.float64)
    params["softmax.W"][:] = 0
    params["softmax.b"][:] = np.log([p0, 1 - p0])
    return params


def test_probabilities_are_averaged_not_log_probabilities():
    words = np.array([0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 1], dtype=np.int32)
    predicted = words[1:]                               # B = 1: every word after the first
    n0, n1, N = int((predicted == 0).sum()), int((predicted == 1).sum()), len(predicted)
    a, b = fixed(0.9), fixed(0.5)
    result = evaluate_ensemble([a, b], words, batch_size=1, num_steps=3)
    # by hand: the average predicts word 0 with (0.9 + 0.5) / 2 = 0.7, word 1 with 0.3
    by_hand = math.exp(-(n0 * math.log(0.7) + n1 * math.log(0.3)) / N)
    assert result.perplexity == pytest.approx(by_hand, rel=1e-12)
    member_a = math.exp(-(n0 * math.log(0.9) + n1 * math.log(0.1)) / N)
    assert result.member_perplexities == pytest.approx([member_a, 2.0], rel=1e-12)
    # the geometric mean (average of log-probabilities, renormalised) gives 0.75 / 0.25
    geometric = math.exp(-(n0 * math.log(0.75) + n1 * math.log(0.25)) / N)
    assert abs(geometric - by_hand) > 0.01 * by_hand  # measurably different here


def test_each_member_keeps_its_own_state():
    """Members that differ in size: each one's perplexity is its own evaluate()'s."""
    members = [init_params(11, H, L, init_scale=0.4, seed=s, dtype=np.float64)
               for s, (H, L) in enumerate([(4, 1), (6, 2), (5, 3)])]
    words = stream(90, 11, seed=3)
    result = evaluate_ensemble(members, words, 2, 6)
    for params, ppl in zip(members, result.member_perplexities):
        assert ppl == pytest.approx(evaluate(params, words, 2, 6), rel=1e-10)
    # the average of probabilities is never worse than the worst member (Jensen: better
    # than the geometric mean of the members' perplexities)
    assert result.perplexity <= math.exp(np.mean(np.log(result.member_perplexities)))
    assert zaremba_ref.evaluate_ensemble is evaluate_ensemble


def test_bad_members():
    with pytest.raises(ValueError, match="at least one"):
        evaluate_ensemble([], stream(20, 5), 1, 3)
    with pytest.raises(ValueError, match="vocabulary"):
        evaluate_ensemble([init_params(5, 2, 1), init_params(6, 2, 1)], stream(20, 5), 1, 3)


def toy_corpus(tmp_path):
    words = "a b c d e f g h".split()
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("valid", 120), ("test", 80)):
        lines = [" ".join(rng.choice(words, 9)) for _ in range(n // 10)]
        (tmp_path / f"ptb.{split}.txt").write_text(" " + " \n ".join(lines) + " \n")
    from zaremba_ref.data import load_ptb
    return load_ptb(tmp_path, verify=False)


def test_cli_evaluate_ensemble(tmp_path, capsys):
    corpus = toy_corpus(tmp_path)
    config = Config(num_layers=1, hidden_size=4, num_steps=5, batch_size=2,
                    vocab_size=corpus.vocab_size, test_batch_size=1)
    runs = []
    for seed in (1, 2):
        params = init_params(corpus.vocab_size, 4, 1, init_scale=0.5, seed=seed,
                             dtype=np.float64)
        run = tmp_path / f"run{seed}"
        run.mkdir()
        save_checkpoint(run, params, [(np.zeros((2, 4)), np.zeros((2, 4)))],
                        {"config": config.to_dict(), "dtype": "float64", "seed": seed},
                        corpus.vocab)
        runs.append((str(run), params))
    code = main(["evaluate", runs[0][0], runs[1][0], "--ensemble", "--data-dir",
                 str(tmp_path), "--no-verify-data"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["run"] for line in lines] == [runs[0][0], runs[1][0], "ensemble"]
    assert lines[2]["members"] == [runs[0][0], runs[1][0]]
    for line, (_, params) in zip(lines, runs):
        assert line["valid_ppl"] == pytest.approx(evaluate(params, corpus.valid, 2, 5),
                                                  rel=1e-10)
        assert line["test_ppl"] == pytest.approx(evaluate(params, corpus.test, 1, 5),
                                                 rel=1e-10)
    expected = evaluate_ensemble([p for _, p in runs], corpus.test, 1, 5).perplexity
    assert lines[2]["test_ppl"] == pytest.approx(expected, rel=1e-12)
    # without --ensemble: the old behaviour, one line per run
    assert main(["evaluate", runs[0][0], "--split", "valid", "--data-dir", str(tmp_path),
                 "--no-verify-data"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["run", "valid_ppl",
                                                         "valid_ppl_torch7_formula"]
