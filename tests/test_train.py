"""The trainer: learning on real and synthetic text, checkpoints, exact resume after a
real SIGTERM and SIGKILL, corrupt checkpoints, NaN, and the command line."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zaremba_ref.backend import CPU
from zaremba_ref.checkpoint import CheckpointError, load_checkpoint
from zaremba_ref.cli import main
from zaremba_ref.config import PRESETS, Config
from zaremba_ref.data import Corpus, load_ptb
from zaremba_ref.train import TrainingError, evaluate, train

from conftest import REPO

TINY = Config(num_layers=2, hidden_size=16, num_steps=10, batch_size=4, init_scale=0.3,
              dropout=0.0, lr=1.0, decay_start=1, lr_decay=2.0, max_epoch=2, max_grad_norm=5.0)


def test_presets_are_the_papers_section_4_1():
    s, m, l = PRESETS["small"], PRESETS["medium"], PRESETS["large"]
    assert (s.num_layers, s.hidden_size, s.num_steps, s.batch_size, s.init_scale, s.dropout,
            s.lr, s.decay_start, s.lr_decay, s.max_epoch, s.max_grad_norm) == \
        (2, 200, 20, 20, 0.1, 0.0, 1.0, 4, 2.0, 13, 5.0)
    assert (m.num_layers, m.hidden_size, m.num_steps, m.batch_size, m.init_scale, m.dropout,
            m.lr, m.decay_start, m.lr_decay, m.max_epoch, m.max_grad_norm) == \
        (2, 650, 35, 20, 0.05, 0.5, 1.0, 6, 1.2, 39, 5.0)
    assert (l.num_layers, l.hidden_size, l.num_steps, l.batch_size, l.init_scale, l.dropout,
            l.lr, l.decay_start, l.lr_decay, l.max_epoch, l.max_grad_norm) == \
        (2, 1500, 35, 20, 0.04, 0.65, 1.0, 14, 1.15, 55, 10.0)
    assert s.objective == "sum_steps" and s.loss_scale == 20.0 and m.mode == "zaremba"


def test_loss_scale_is_t_not_b_and_clipping_uses_the_scaled_norm():
    """T = 7 != B = 3, so the scale cannot be the batch size by accident. One real
    train_step against the hand computation from loss_and_grads' gradient g:
    unclipped, p - lr T g and the norm T ||g||; clipped with ||g|| < max_norm < T ||g||,
    p - lr (max_norm / (T ||g||)) T g."""
    from zaremba_ref.model import init_params, loss_and_grads
    from zaremba_ref.train import train_step
    config = Config(num_layers=2, hidden_size=5, num_steps=7, batch_size=3, vocab_size=11)
    assert config.loss_scale == 7.0 and config.replace(objective="mean").loss_scale == 1.0
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (3, 7)), rng.integers(0, 11, (3, 7))
    p0 = init_params(11, 5, 2, 0.3, seed=1, dtype=np.float64)
    _, g, _ = loss_and_grads(p0, x, y)
    gnorm = float(np.sqrt(sum(np.sum(g[k] ** 2) for k in p0)))
    for max_norm, step in [(1e6, 7.0), (2 * gnorm, 2 * gnorm / (7 * gnorm) * 7)]:
        params = {k: v.copy() for k, v in p0.items()}
        _, norm, _ = train_step(params, x, y, None, config.replace(max_grad_norm=max_norm),
                                0.3, None)
        assert norm == pytest.approx(7 * gnorm, rel=1e-12)
        for k in p0:
            np.testing.assert_allclose(params[k], p0[k] - 0.3 * step * g[k], rtol=1e-12,
                                       atol=1e-15, err_msg=k)



@pytest.mark.parametrize("mode, weight_drop", [("naive", 0.0), ("zaremba", 0.4),
                                               ("variational", 0.0)])
def test_train_step_passes_every_setting_and_the_carried_state(mode, weight_drop):
    """One train_step against loss_and_grads and sgd_step called by hand with the same
    state, dropout, mode, weight drop and generator: equal bit for bit. The state is
    non-zero and p = 0.5, so a step that drops any of them differs."""
    from zaremba_ref.model import init_params, loss_and_grads
    from zaremba_ref.optim import sgd_step
    from zaremba_ref.train import train_step
    config = Config(num_layers=2, hidden_size=5, num_steps=4, batch_size=3, vocab_size=11,
                    dropout=0.5, mode=mode, weight_drop=weight_drop, max_grad_norm=5.0)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (3, 4)), rng.integers(0, 11, (3, 4))
    p0 = init_params(11, 5, 2, 0.3, seed=1, dtype=np.float64)
    state = [(rng.standard_normal((3, 5)), rng.standard_normal((3, 5))) for _ in range(2)]
    params = {k: v.copy() for k, v in p0.items()}
    loss, norm, final = train_step(params, x, y, state, config, 0.7, np.random.default_rng(9))
    want = {k: v.copy() for k, v in p0.items()}
    loss_want, grads, final_want = loss_and_grads(want, x, y, state, dropout=0.5, mode=mode,
                                                  rng=np.random.default_rng(9),
                                                  weight_drop=weight_drop)
    norm_want = sgd_step(want, grads, 0.7, 5.0, config.loss_scale)
    assert (loss, norm) == (loss_want, norm_want)
    for (h, c), (h_want, c_want) in zip(final, final_want):
        np.testing.assert_array_equal(h, h_want)
        np.testing.assert_array_equal(c, c_want)
    for k in p0:
        np.testing.assert_array_equal(params[k], want[k], err_msg=k)
    # and each setting matters here: without it the step is another one
    same = dict(state=state, dropout=0.5, mode=mode, weight_drop=weight_drop)
    for other in (dict(state=None), dict(dropout=0.0),
                  dict(mode="naive" if mode == "zaremba" else "zaremba"),
                  dict(weight_drop=0.0 if weight_drop else 0.4)):
        kwargs = same | other
        l_other, _, _ = loss_and_grads(p0, x, y, kwargs.pop("state"),
                                       rng=np.random.default_rng(9), **kwargs)
        assert l_other != loss_want, other

def _corpus(toy_data: Path) -> Corpus:
    return load_ptb(toy_data, verify=False)


def test_training_lowers_validation_perplexity(toy_data, tmp_path):
    corpus = _corpus(toy_data)
    config = TINY.replace(vocab_size=corpus.vocab_size, dropout=0.2)
    from zaremba_ref.model import init_params
    before = evaluate(init_params(corpus.vocab_size, 16, 2, 0.3, seed=0), corpus.valid, 4, 10)
    out = io.StringIO()
    summary = train(config, corpus, tmp_path / "run", seed=0, out=out)
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    valid = [r["valid_ppl"] for r in records if "valid_ppl" in r]
    assert len(valid) == 2 and before > valid[0] > valid[1]
    assert summary["status"] == "done" and summary["test_ppl"] < 0.6 * before
    for r in records:
        assert {"epoch", "step", "lr", "train_ppl", "words_per_sec"} <= set(r)
    assert records[-1]["test_ppl"] == summary["test_ppl"]
    assert [r["lr"] for r in records[:2]] == [1.0, 0.5]
    assert "epoch 1/2" in out.getvalue()                     # plain progress lines (not a tty)


def test_learning_quality_beats_every_model_that_ignores_the_context(tmp_path):
    """The learning-quality check of the default suite (~20 s). The corpus is a Markov
    chain: each word has 3 likely successors, so the previous words predict the next
    one. No model that ignores them (one that learns only the softmax bias, say) can
    do better on valid than the entropy of valid's own word frequencies (the
    minimum over all fixed distributions of the cross-entropy). The trained model
    must reach under half of that perplexity, and the test pass must agree."""
    from conftest import write_toy_corpus
    corpus = load_ptb(write_toy_corpus(tmp_path / "chain", (40_000, 4_000, 4_000)),
                      verify=False)
    counts = np.bincount(corpus.valid, minlength=corpus.vocab_size)
    freq = counts[counts > 0] / counts.sum()
    context_free = float(np.exp(-(freq * np.log(freq)).sum()))   # its best perplexity
    config = TINY.replace(vocab_size=corpus.vocab_size, hidden_size=32, num_steps=10,
                          batch_size=10, init_scale=0.1, max_epoch=3, decay_start=2)
    summary = train(config, corpus, tmp_path / "run", out=io.StringIO())
    assert context_free > 25                                     # ~31 on this corpus
    assert summary["valid_ppl"] < 0.5 * context_free, (summary, context_free)
    assert summary["test_ppl"] < 0.5 * context_free, (summary, context_free)


def test_real_ptb_smoke_validation_perplexity_falls(ptb_dir, tmp_path):
    """A tiny model on the real PTB for a few hundred steps."""
    corpus = load_ptb(ptb_dir)
    short = Corpus(corpus.vocab, corpus.word_to_id, corpus.train[:40_000],
                   corpus.valid[:8_000], corpus.test[:4_000])
    config = TINY.replace(hidden_size=32, batch_size=20, num_steps=10, max_epoch=2,
                          decay_start=2)
    from zaremba_ref.model import init_params
    before = evaluate(init_params(10000, 32, 2, 0.1, seed=0), short.valid, 20, 10)
    summary = train(config, short, tmp_path / "run", out=io.StringIO())
    assert summary["valid_ppl"] < 0.2 * before                 # ~10000 -> under 2000
    assert summary["test_ppl"] < 0.2 * before


def _cli(args, env_extra=None, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1",
               **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "zaremba_ref", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _train_args(data, out, *extra):
    return [str(a) for a in ["train", "--data-dir", data, "--no-verify-data", "--out", out, "--hidden-size", 12,
            "--batch-size", 4, "--num-steps", 5, "--max-epoch", 2, "--dropout", 0.3,
            "--decay-start", 1, "--save-every", 25, "--seed", 3, *extra]]


def _final_params(run: Path) -> dict:
    params, state, meta, _ = load_checkpoint(run)
    assert meta["epoch"] == 3 and meta["step"] == 0        # past the last epoch
    return params


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_resume_after_a_real_kill_is_bit_identical(toy_data, tmp_path, sig):
    big = tmp_path / "big"
    from conftest import write_toy_corpus
    write_toy_corpus(big, words_per_split=(30_000, 2_000, 2_000))
    ref = _cli(_train_args(big, tmp_path / "ref"))
    assert ref.wait(timeout=300) == 0, ref.stderr.read()

    run = tmp_path / "run"
    p = _cli(_train_args(big, run))
    ckpt = run / "checkpoint.npz"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:   # wait for the first periodic save
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(sig)
    rc = p.wait(timeout=60)
    out = p.stdout.read()
    if sig == signal.SIGTERM:
        assert rc == 143 and "interrupted: checkpoint saved" in out
    else:
        assert rc == -signal.SIGKILL
    _, _, meta, _ = load_checkpoint(run)
    assert meta["epoch"] == 1 and 0 < meta["step"], meta    # stopped inside epoch 1
    resumed = _cli(_train_args(big, run, "--resume"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert "resuming" in resumed.stdout.read()
    a, b = _final_params(tmp_path / "ref"), _final_params(run)
    assert all(np.array_equal(a[k], b[k]) for k in a)        # bit for bit
    # and not by starting over: the resumed process made only the steps that were left
    total = load_checkpoint(tmp_path / "ref")[2]["global_step"]
    segments = [json.loads(line) for line in (run / "segments.jsonl").read_text().splitlines()]
    assert segments[-2]["event"] == "start" and segments[-2]["resume"]
    assert segments[-2]["global_step"] == meta["global_step"]
    assert segments[-1]["steps"] == total - meta["global_step"] > 0
    last = lambda d: json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])  # noqa: E731
    assert last(tmp_path / "ref")["test_ppl"] == last(run)["test_ppl"]


def test_resume_continues_the_saved_run_and_a_restart_cannot_pass(toy_data, tmp_path,
                                                                   monkeypatch):
    """A restart that loads the checkpoint and then starts over ends with the same bits
    as an uninterrupted run, so bit-identity alone cannot tell. Here: (1) the resumed
    call makes exactly the steps left after the checkpoint (counted by a spy on
    train_step); (2) parameters changed inside the checkpoint carry to the end: the
    result equals the saved state continued by hand (the remaining windows with the
    saved generator and carried state), and differs from the run that never stopped."""
    import zaremba_ref.train as trainer
    from zaremba_ref.checkpoint import save_checkpoint
    from zaremba_ref.data import batchify, num_windows, windows
    from zaremba_ref.optim import learning_rate
    corpus = _corpus(toy_data)
    config = TINY.replace(vocab_size=corpus.vocab_size, dropout=0.3, max_epoch=1)
    n = num_windows(batchify(corpus.train, config.batch_size), config.num_steps)
    k = n // 3
    train(config, corpus, tmp_path / "full", seed=5, save_every=0, out=io.StringIO())
    run = tmp_path / "run"
    train(config, corpus, run, seed=5, save_every=0, max_steps=k, out=io.StringIO())
    params, state, meta, vocab = load_checkpoint(run)
    assert (meta["epoch"], meta["step"], meta["global_step"]) == (1, k, k)
    params["softmax.b"] += np.float32(0.25)                  # a change a restart would lose
    params["l1.W_h"] *= np.float32(0.5)
    meta.pop("format")
    save_checkpoint(run, params, state, meta, vocab)

    rng = np.random.default_rng()
    rng.bit_generator.state = meta["rng"]
    lr = learning_rate(1, config.lr, config.decay_start, config.lr_decay)
    want, carried = {name: v.copy() for name, v in params.items()}, state
    for x, y in windows(batchify(corpus.train, config.batch_size), config.num_steps, start=k):
        _, _, carried = trainer.train_step(want, x, y, carried, config, lr, rng)

    calls = []
    real_step = trainer.train_step
    monkeypatch.setattr(trainer, "train_step",
                        lambda *a, **kw: calls.append(1) or real_step(*a, **kw))
    summary = train(config, corpus, run, seed=5, resume=True, save_every=0, out=io.StringIO())
    assert summary["status"] == "done" and len(calls) == n - k
    final, _, meta, _ = load_checkpoint(run)
    assert (meta["epoch"], meta["global_step"]) == (2, n)
    for name in want:
        np.testing.assert_array_equal(final[name], want[name], err_msg=name)
    uninterrupted = load_checkpoint(tmp_path / "full")[0]
    assert not np.array_equal(final["softmax.b"], uninterrupted["softmax.b"])


def test_corrupt_or_mismatched_checkpoint_is_refused_and_kept(toy_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(toy_data, run, "--max-steps", 3)) == 0
    ckpt = run / "checkpoint.npz"
    good = ckpt.read_bytes()
    capsys.readouterr()
    # the configuration differs from the checkpoint's
    assert main(_train_args(toy_data, run, "--resume", "--hidden-size", 13)) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "hidden_size: checkpoint 12 vs command line 13" in err
    assert err.count("\n") == 1
    # starting again over an existing run without --resume
    assert main(_train_args(toy_data, run)) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert ckpt.read_bytes() == good
    # truncated
    ckpt.write_bytes(good[: len(good) // 2])
    assert main(_train_args(toy_data, run, "--resume")) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "truncated or corrupted" in err
    assert ckpt.read_bytes() == good[: len(good) // 2]      # nothing overwritten
    with pytest.raises(CheckpointError):
        load_checkpoint(ckpt)
    # garbage with the right name
    ckpt.write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(run), "--data-dir", str(toy_data), "--no-verify-data"]) == 2
    assert "truncated or corrupted" in capsys.readouterr().err


def test_a_checkpoint_from_before_a_new_config_field_still_resumes(toy_data, tmp_path):
    """A later version adds configuration fields; an older checkpoint lacks them and they
    count as their defaults, so a long run (Table 1's medium row) resumes across versions."""
    from zaremba_ref.checkpoint import save_checkpoint
    run = tmp_path / "run"
    assert main(_train_args(toy_data, run, "--max-steps", 3)) == 0
    params, state, meta, vocab = load_checkpoint(run)
    del meta["config"]["test_batch_size"]          # as if written before the field existed
    meta.pop("format")
    save_checkpoint(run, params, state, meta, vocab)
    assert main(_train_args(toy_data, run, "--resume", "--max-steps", 5)) == 0
    assert load_checkpoint(run)[2]["global_step"] == 5
    # a field missing from the checkpoint and not at its default is still a mismatch
    assert main(_train_args(toy_data, run, "--resume", "--test-batch-size", 2)) == 2


def test_resume_drops_metrics_written_after_its_checkpoint_and_logs_segments(toy_data,
                                                                              tmp_path):
    """A kill between an epoch's metrics row and its checkpoint leaves a row the resumed
    run writes again: resume drops it, so each epoch has exactly one validation row."""
    run = tmp_path / "run"
    args = _train_args(toy_data, run, "--save-every", 0)
    assert main(args + ["--max-steps", "2"]) == 0             # checkpoint at global step 2
    metrics = run / "metrics.jsonl"
    stale = {"epoch": 1, "step": 99, "lr": 1.0, "train_ppl": 5.0, "words_per_sec": 1.0,
             "valid_ppl": 5.0}
    with open(metrics, "a") as f:
        f.write(json.dumps(stale) + "\n")
    assert main(args + ["--resume"]) == 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert stale not in records
    assert [r["epoch"] for r in records if "valid_ppl" in r] == [1, 2]
    segments = [json.loads(line) for line in (run / "segments.jsonl").read_text().splitlines()]
    assert [s["event"] for s in segments] == ["start", "end", "start", "end"]
    assert segments[0]["global_step"] == 0 and segments[1]["global_step"] == 2
    assert segments[2]["resume"] and segments[2]["global_step"] == 2
    assert segments[3]["status"] == "done" and segments[3]["steps"] > 0
    from zaremba_ref.train import params_digest
    params, _, _, _ = load_checkpoint(run)
    assert len(segments[2]["params"]) == 12 and segments[2]["params"] != params_digest(params)


def test_resume_refuses_another_seed_or_dtype_and_keeps_rows_up_to_its_checkpoint(
        toy_data, tmp_path, capsys):
    """The seed and dtype are part of the run: both are checked, every mismatch is named
    in the one line. Resume keeps every metrics row up to its checkpoint's step (the
    row written at that very step too), rewritten whole, one JSON object per line."""
    run = tmp_path / "run"
    args = _train_args(toy_data, run, "--save-every", 0)
    assert main(args + ["--max-steps", "2"]) == 0
    assert main(args + ["--resume", "--max-steps", "3"]) == 0
    capsys.readouterr()
    assert main(args + ["--resume", "--seed", "4", "--dtype", "float64"]) == 2
    err = capsys.readouterr().err
    assert (f"{run / 'checkpoint.npz'}: configuration does not match (dtype: checkpoint "
            "'float32' vs command line 'float64'; seed: checkpoint 3 vs command line 4); "
            "resume with the original settings or use another --out") in err
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 1, "step": 99, "lr": 1.0, "train_ppl": 5.0}) + "\n")
    assert main(args + ["--resume"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("status")) for r in records[:2]] == [(2, "max_steps"),
                                                                   (3, "max_steps")]
    assert all(r["step"] != 99 for r in records)


def test_evaluation_progress_goes_to_out_with_its_prefix_and_nowhere_without(toy_data,
                                                                          capsys):
    from zaremba_ref.model import init_params
    corpus = _corpus(toy_data)
    params = init_params(corpus.vocab_size, 8, 2, 0.3, seed=1)
    out = io.StringIO()
    ppl = evaluate(params, corpus.test, 1, 7, progress_prefix="test ", out=out)
    assert evaluate(params, corpus.test, 1, 7) == ppl
    lines = out.getvalue().replace("\r", "\n").split("\n")
    assert any(line.startswith("test ") and "100.0%" in line and f"ppl {ppl:.2f}" in line
               for line in lines)
    quiet = io.StringIO()
    evaluate(params, corpus.test, 1, 7, out=quiet)
    assert quiet.getvalue() == "" and capsys.readouterr() == ("", "")


def test_a_bad_metrics_line_stops_the_resume_with_the_fix_and_keeps_the_file(toy_data,
                                                                             tmp_path,
                                                                             capsys):
    run = tmp_path / "run"
    assert main(_train_args(toy_data, run, "--max-steps", 2)) == 0
    metrics = run / "metrics.jsonl"
    broken = metrics.read_text() + "{not json\n"
    metrics.write_text(broken)
    capsys.readouterr()
    assert main(_train_args(toy_data, run, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {metrics}: a line is not a metrics record (")
    assert err.endswith("); move the file away to resume\n") and err.count("\n") == 1
    assert metrics.read_text() == broken


def test_metrics_that_cannot_be_rewritten_stop_the_resume_and_stay_whole(toy_data, tmpfs,
                                                                         capsys):
    """A real read-only filesystem: the trimmed rows cannot be written, the resume stops
    with the reason, the file is unchanged and no temporary is left."""
    run = tmpfs / "run"
    assert main(_train_args(toy_data, run, "--max-steps", 2, "--dtype", "float64",
                            "--hidden-size", 4)) == 0
    metrics = run / "metrics.jsonl"
    with open(metrics, "a") as f:                       # a row after the checkpoint
        f.write(json.dumps({"epoch": 1, "step": 99, "lr": 1.0, "train_ppl": 5.0}) + "\n")
    before = metrics.read_text()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    from zaremba_ref.train import _trim_metrics
    with pytest.raises(CheckpointError) as e:
        _trim_metrics(run, 2)
    assert str(e.value) == f"{metrics}: cannot rewrite (Read-only file system (EROFS))"
    assert metrics.read_text() == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz", "metrics.jsonl",
                                                     "segments.jsonl"]


def test_a_checkpoint_without_its_counters_is_refused_by_name(toy_data, tmp_path, capsys):
    from zaremba_ref.checkpoint import save_checkpoint
    run = tmp_path / "run"
    assert main(_train_args(toy_data, run, "--max-steps", 2)) == 0
    params, state, meta, vocab = load_checkpoint(run)
    del meta["rng"], meta["words"]
    meta.pop("format")
    save_checkpoint(run, params, state, meta, vocab)
    capsys.readouterr()
    assert main(_train_args(toy_data, run, "--resume")) == 2
    assert capsys.readouterr().err == (f"error: {run / 'checkpoint.npz'}: its meta lacks "
                                       "['words', 'rng']; it cannot be resumed\n")


def test_a_checkpoint_without_a_generator_state_resumes_with_seeded_fresh_masks(toy_data,
                                                                               tmp_path):
    """A GPU run saves no generator state (it is on the device). Resumed on the CPU, its
    masks come from a generator seeded by (seed, global_step): fresh and reproducible."""
    from zaremba_ref.checkpoint import save_checkpoint
    from zaremba_ref.train import _resume
    run = tmp_path / "run"
    assert main(_train_args(toy_data, run, "--max-steps", 2)) == 0
    params, state, meta, vocab = load_checkpoint(run)
    saved_rng = meta["rng"]
    config = Config.from_dict(meta["config"])
    _, _, rng, counters = _resume(run / "checkpoint.npz", config, "float32", 3, CPU)
    assert rng.bit_generator.state == saved_rng and counters[2] == 2
    meta["rng"] = None
    meta.pop("format")
    save_checkpoint(run, params, state, meta, vocab)
    _, _, rng, counters = _resume(run / "checkpoint.npz", config, "float32", 3, CPU)
    assert counters == (meta["epoch"], meta["step"], 2, meta["loss_sum"], meta["words"])
    assert rng.random(4).tolist() == np.random.default_rng([3, 2]).random(4).tolist()


def test_parameters_holding_nan_are_never_saved_over_the_last_checkpoint(toy_data,
                                                                         tmp_path):
    """The update after the last finite loss can still overflow: the save refuses it,
    with the step and the fix, and the last good checkpoint stays as it was."""
    from zaremba_ref.train import _save
    run = tmp_path / "run"
    assert main(_train_args(toy_data, run, "--max-steps", 2)) == 0
    ckpt = run / "checkpoint.npz"
    good = ckpt.read_bytes()
    params, state, meta, vocab = load_checkpoint(run)
    config = Config.from_dict(meta["config"])
    params["softmax.b"][0] = np.inf
    with pytest.raises(TrainingError) as e:
        _save(ckpt, params, state, np.random.default_rng(0), vocab, CPU, config=config,
              dtype="float32", seed=3, epoch=1, step=7, global_step=7, loss_sum=1.0,
              words=20)
    assert str(e.value) == (f"the parameters hold NaN or Inf at epoch 1, step 7; not "
                            f"saving over {ckpt}; try a lower --lr")
    assert ckpt.read_bytes() == good


def test_a_checkpoint_holds_the_learning_rate_of_its_epoch(toy_data, tmp_path):
    """decay_start 1, lr_decay 2: the checkpoint written at the end of epoch 1 (epoch 2,
    step 0) carries epoch 2's rate, 0.5, for whoever reads it."""
    run = tmp_path / "run"
    assert main(_train_args(toy_data, run, "--max-steps", 2)) == 0
    assert load_checkpoint(run)[2]["lr"] == 1.0
    assert main(_train_args(toy_data, run, "--resume")) == 0
    meta = load_checkpoint(run)[2]
    assert (meta["epoch"], meta["step"], meta["lr"]) == (3, 0, 0.25)


def test_only_a_numpy_generator_state_is_saved():
    """CuPy's generator keeps its state on the device: no state is saved for it (the
    resume then draws fresh masks), rather than a crash or an object JSON cannot hold."""
    from types import SimpleNamespace
    from zaremba_ref.train import _rng_state
    rng = np.random.default_rng(3)
    assert _rng_state(rng) == rng.bit_generator.state
    assert _rng_state(object()) is None                               # no bit_generator
    assert _rng_state(SimpleNamespace(bit_generator=object())) is None  # no state
    assert _rng_state(SimpleNamespace(bit_generator=SimpleNamespace(state=b"dev"))) is None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow is the point
def test_nan_stops_training_and_keeps_the_last_good_checkpoint(toy_data, tmp_path):
    """lr_decay 1e-38 multiplies lr by 1e38 after epoch 1: epoch 2 blows up."""
    corpus = _corpus(toy_data)
    config = TINY.replace(vocab_size=corpus.vocab_size, lr_decay=1e-38, max_epoch=3)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"(is (nan|inf)|NaN or Inf) at epoch 2, step \d+"):
        train(config, corpus, run, save_every=0, out=io.StringIO())
    _, _, meta, _ = load_checkpoint(run)
    assert meta["epoch"] == 2 and meta["step"] == 0          # the end of epoch 1, intact


@pytest.mark.parametrize("args, message", [
    (["--hidden-size", "-1"], "--hidden-size must be >= 1, got -1"),
    (["--dropout", "1"], "dropout must be in [0, 1), got 1.0"),
    (["--mode", "sideways"], "--mode must be zaremba, naive, variational or none"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--device", "gpu"], "--device gpu"),
])
def test_bad_command_lines_give_one_line_errors(toy_data, tmp_path, capsys, args, message):
    if args[0] == "--device":  # the GPU error path needs a machine where the GPU is unusable
        from zaremba_ref import BackendUnavailable, get_backend
        try:
            get_backend("gpu")
            pytest.skip("a CUDA device is usable here: --device gpu works")
        except BackendUnavailable:
            pass                      # no cupy, or cupy without a driver or device
    assert main(_train_args(toy_data, tmp_path / "run", *args)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_data_is_one_line(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path), "--max-steps", "1",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "PTB files missing" in err and err.count("\n") == 1


def test_unknown_preset_is_rejected(capsys):
    assert main(["train", "--config", "huge"]) == 2
    err = capsys.readouterr().err
    assert "--config must be large, medium or small, got 'huge'" in err
    assert err.count("\n") == 1


def test_evaluate_and_sample_from_a_run(toy_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(toy_data, run, "--max-steps", 20)) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data-dir", str(toy_data), "--no-verify-data"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["valid_ppl"] > 1 and result["test_ppl"] > 1
    assert main(["sample", str(run), "--words", "7", "--prime", "w1 w2", "--seed", "1"]) == 0
    words = capsys.readouterr().out.split()
    assert 1 <= len(words) <= 7 and all(w.startswith("w") for w in words)
    assert main(["sample", str(run), "--prime", "zebra"]) == 2
    assert "not in the vocabulary" in capsys.readouterr().err


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "zaremba_ref", "train", "--help"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0
    for flag in ("--config", "--data-dir", "--device", "--dtype", "--seed", "--out",
                 "--max-steps", "--resume", "--hidden-size", "--decay-start", "--objective"):
        assert flag in out.stdout


def test_example_script_trains_and_checkpoints(toy_data, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(REPO / "examples/ptb_small.py"), "--data-dir",
                          str(toy_data), "--no-verify-data", "--out", str(tmp_path / "run"),
                          "--hidden-size", "8", "--max-steps", "3"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "max_steps: checkpoint saved" in out.stdout
    assert (tmp_path / "run/checkpoint.npz").exists()


@pytest.mark.slow
def test_small_preset_first_epoch_on_real_ptb(ptb_dir, tmp_path):
    """Opt-in (-m slow, ~3 minutes): one epoch of the paper's small preset. The full run
    (13 epochs) reached valid 182.59 after epoch 1; allow for noise across machines."""
    corpus = load_ptb(ptb_dir)
    config = PRESETS["small"].replace(max_epoch=1)
    summary = train(config, corpus, tmp_path / "run", out=io.StringIO())
    assert summary["valid_ppl"] < 190 and summary["test_ppl"] < 185


def test_torch7_formula_is_main_lua_run_valid_line_by_line(toy_data):
    """main.lua's run_valid: len = (N - 1) / T without rounding down, the loop over the
    full windows (for i = 1, len), each fp the mean over T steps of the batch-mean NLL,
    then exp(perp / len). Ours counts every word, the shorter last window too."""
    from zaremba_ref.data import batchify
    from zaremba_ref.model import init_params, loss_only, zero_state
    from zaremba_ref.train import evaluation_nll, torch7_perplexity
    corpus = _corpus(toy_data)
    params = init_params(corpus.vocab_size, 8, 2, 0.3, seed=1, dtype=np.float64)
    B, T = 4, 7
    data = batchify(corpus.valid, B)
    N = data.shape[1]
    assert (N - 1) % T != 0                                   # a shorter last window exists
    length = (N - 1) / T                                      # Lua's "/" is float division
    perp, state = 0.0, zero_state(params, B)
    for i in range(int(length)):                              # for i = 1, len
        x, y = data[:, i * T:(i + 1) * T], data[:, i * T + 1:(i + 1) * T + 1]
        loss, state = loss_only(params, x, y, state)          # mean over T and B
        perp += loss
    expected = math.exp(perp / length)
    full, tail, count = evaluation_nll(params, corpus.valid, B, T)
    assert count == B * (N - 1) and tail > 0
    x, y = data[:, int(length) * T:-1], data[:, int(length) * T + 1:]   # the shorter window
    loss, _ = loss_only(params, x, y, state)
    assert full == pytest.approx(perp * B * T, rel=1e-12)
    assert tail == pytest.approx(loss * y.size, rel=1e-12)
    T = next(t for t in range(2, 20) if (N - 1) % t == 0)     # no shorter window: no tail
    assert evaluation_nll(params, corpus.valid, B, T)[1] == 0.0
    assert torch7_perplexity(full, count) == pytest.approx(expected, rel=1e-12)
    assert torch7_perplexity(full, count) < evaluate(params, corpus.valid, B, T)
    assert evaluate(params, corpus.valid, B, T) == pytest.approx(math.exp((full + tail) / count))


def test_evaluate_command_prints_the_torch7_formula_beside_ours(toy_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(toy_data, run, "--max-steps", "4")) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "valid", "--data-dir", str(toy_data),
                 "--no-verify-data"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 1 < result["valid_ppl_torch7_formula"] <= result["valid_ppl"]
