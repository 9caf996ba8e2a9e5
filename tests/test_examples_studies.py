"""Smoke runs of the study examples: dropout_placement.py (tiny budget) and
check_against_torch.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import REPO, import_torch, load_script


def load_example(name: str):
    return load_script(REPO / "examples" / f"{name}.py")


TINY = ["--hidden-size", "16", "--epochs", "2", "--max-steps-per-epoch", "20",
        "--num-steps", "5", "--batch-size", "4"]


def check_study(out: Path, stdout: str, modes=("none", "naive", "zaremba"), epochs=2):
    records = [json.loads(line) for line in (out / "placement.jsonl").read_text().splitlines()]
    assert [(r["mode"], r["epoch"]) for r in records] == \
        [(m, e) for m in modes for e in range(1, epochs + 1)]
    for r in records:
        assert r["steps"] <= 20 and r["valid_ppl"] > 1 and r["train_ppl"] > 1
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("epoch "))
    assert lines[header].split() == ["epoch", *modes]
    for e in range(1, epochs + 1):
        row = lines[header + e].split()
        assert row[0] == str(e) and len(row) == 1 + 2 * len(modes)
        valid = [float(v) for v in row[1::2]]
        expected = [r["valid_ppl"] for r in records if r["epoch"] == e]
        assert valid == pytest.approx(expected, abs=0.006)
    assert lines[header + epochs + 1].startswith("best")
    for m in modes:
        assert (out / m / "checkpoint.npz").exists()
    return records


def test_dropout_placement_smoke_on_a_toy_corpus(toy_data, tmp_path, capsys):
    study = load_example("dropout_placement")
    out = tmp_path / "study"
    code = study.main(["--data-dir", str(toy_data), "--no-verify-data", "--out", str(out),
                       *TINY])
    assert code == 0
    records = check_study(out, capsys.readouterr().out)
    # the modes differ only in where dropout goes: every pair of them differs
    by_mode = {r["mode"]: r for r in records if r["epoch"] == 2}
    for a, b in (("none", "zaremba"), ("none", "naive"), ("naive", "zaremba")):
        assert by_mode[a]["valid_ppl"] != by_mode[b]["valid_ppl"], (a, b)
        assert by_mode[a]["train_ppl"] != by_mode[b]["train_ppl"], (a, b)
    assert (out / "placement.png").exists() == (importlib.util.find_spec("matplotlib")
                                                is not None)


def test_without_dropout_the_three_placements_are_one_run(toy_data, tmp_path, capsys):
    """Same seed, same weights, same budget: with p = 0 the modes cannot differ."""
    study = load_example("dropout_placement")
    out = tmp_path / "p0"
    assert study.main(["--data-dir", str(toy_data), "--no-verify-data", "--out", str(out),
                       "--dropout", "0", *TINY]) == 0
    records = check_study(out, capsys.readouterr().out)
    for e in (1, 2):
        ppl = {r["valid_ppl"] for r in records if r["epoch"] == e}
        assert len(ppl) == 1


def test_the_rows_beyond_the_paper(toy_data, tmp_path, capsys):
    """variational and zaremba+tied: the same seed and initial weights as the others
    (a tied model's are the untied one's without softmax.W), and their checkpoints
    say what they ran."""
    from zaremba_ref.checkpoint import load_checkpoint
    study = load_example("dropout_placement")
    out = tmp_path / "beyond"
    modes = ("zaremba", "variational", "zaremba+tied")
    assert study.main(["--data-dir", str(toy_data), "--no-verify-data", "--out", str(out),
                       "--modes", ",".join(modes), *TINY]) == 0
    records = check_study(out, capsys.readouterr().out, modes=modes)
    assert len({r["valid_ppl"] for r in records if r["epoch"] == 2}) == 3   # three runs
    params, _, meta, _ = load_checkpoint(out / "zaremba+tied")
    assert "softmax.W" not in params and meta["config"]["tie_weights"] is True
    assert meta["config"]["mode"] == "zaremba"
    assert load_checkpoint(out / "variational")[2]["config"]["mode"] == "variational"


def test_dropout_placement_smoke_on_ptb(ptb_dir, tmp_path, capsys):
    study = load_example("dropout_placement")
    out = tmp_path / "ptb"
    assert study.main(["--data-dir", str(ptb_dir), "--out", str(out), "--modes",
                       "naive,zaremba", "--max-valid-words", "500", *TINY]) == 0
    check_study(out, capsys.readouterr().out, modes=("naive", "zaremba"))


def test_dropout_placement_bad_options(toy_data, tmp_path, capsys):
    from zaremba_ref.cli import run_cli
    study = load_example("dropout_placement")
    for bad in (["--modes", "none,other"], ["--train-fraction", "0"],
                ["--max-steps-per-epoch", "0"], ["--max-valid-words", "0"],
                ["--dropout", "1.5"]):
        argv = ["--data-dir", str(toy_data), "--no-verify-data", "--out", str(tmp_path),
                *bad]
        assert run_cli(lambda: study.main(argv)) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("error:") and len(err.splitlines()) == 1


def test_check_against_torch_agrees():
    import_torch()
    example = load_example("check_against_torch")
    assert example.main(["--layers", "3", "--steps", "4"]) == 0
    assert example.main(["--dropout", "0", "--steps", "1", "--layers", "1"]) == 0


# -- examples/gradient_path.py: how far back the last word's loss reaches -----------------

GP_TINY = ["--hidden-size", "8", "--num-steps", "30", "--batch-size", "4", "--windows", "3"]


def test_gradient_path_study_on_a_toy_corpus(toy_data, tmp_path, capsys):
    """An untrained model and a checkpoint: the curves are the mean of gradient_path over
    the first windows with the state carried (as in evaluation), by distance k, and
    falls_to is the first k at each ratio."""
    import numpy as np

    import zaremba_ref as z
    from zaremba_ref.checkpoint import save_checkpoint
    from zaremba_ref.config import Config
    from zaremba_ref.data import batchify, load_ptb, windows
    from zaremba_ref.model import forward
    corpus = load_ptb(toy_data, verify=False)
    V = corpus.vocab_size
    trained = z.init_params(V, 6, 1, 0.3, seed=5)                  # float32, like a run's
    config = Config(hidden_size=6, num_layers=1, vocab_size=V, num_steps=5, batch_size=4)
    (tmp_path / "toyrun").mkdir()                                  # a run directory
    save_checkpoint(tmp_path / "toyrun", trained, z.zero_state(trained, 4),
                    {"config": config.to_dict()}, corpus.vocab)
    study = load_example("gradient_path")
    out_json, out_png = tmp_path / "gp" / "gp.json", tmp_path / "gp" / "gp.png"
    argv = ["--data-dir", str(toy_data), "--no-verify-data", "--checkpoint",
            str(tmp_path / "toyrun"), *GP_TINY, "--out-json", str(out_json),
            "--out-png", str(out_png)]
    assert study.main(argv) == 0
    stdout = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert result["command"].startswith("python examples/gradient_path.py --data-dir ")
    assert (result["windows"], result["num_steps"], result["batch_size"]) == (3, 30, 4)
    untrained, run = result["models"]
    assert untrained["name"] == "untrained (small init)" and run["name"] == "toyrun (1 x 6, dropout 0)"
    assert untrained["config"]["hidden_size"] == 8 and untrained["config"]["init_scale"] == 0.1
    assert run["config"] == config.to_dict()
    small = z.init_params(V, 8, 2, 0.1, seed=0, dtype=np.float64)  # the small preset's init
    data = batchify(corpus.valid, 4)
    for record, params in ((untrained, small), (run, trained)):
        params = {k: v.astype(np.float64) for k, v in params.items()}
        want, state = {"h": 0, "c": 0}, None
        for _, (x, y) in zip(range(3), windows(data, 30)):
            g = z.gradient_path(params, x, y, state)
            want = {w: want[w] + g[w] / 3 for w in "hc"}
            _, state = forward(params, x, state)
        for w in "hc":
            curves = np.array(record[w])
            assert curves.shape == want[w].shape
            np.testing.assert_allclose(curves, want[w][:, ::-1], rtol=1e-12)  # by k = T - t
            for curve, fall in zip(curves, record["falls_to"][w]):
                assert set(fall) == {"0.01", "0.001"}
                for key, ratio in (("0.01", 1e-2), ("0.001", 1e-3)):
                    k = fall[key]
                    above = curve[:k if k is not None else None] > ratio * curve[0]
                    assert above.all() and (k is None or curve[k] <= ratio * curve[0])
    assert "k @ 1e-2" in stdout and "toyrun" in stdout and "h^2" in stdout
    assert out_png.exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_gradient_path_study_errors_are_one_line(toy_data, tmp_path, capsys):
    from zaremba_ref.cli import run_cli
    study = load_example("gradient_path")
    base = ["--data-dir", str(toy_data), "--no-verify-data", *GP_TINY, "--out-json",
            str(tmp_path / "x.json"), "--out-png", str(tmp_path / "x.png")]
    for bad, says in ((["--windows", "999"], "holds 13 full windows"),
                      (["--num-steps", "1000", "--windows", "1"], "holds 0 full windows"),
                      (["--untrained", "none"], "nothing to study"),
                      (["--checkpoint", str(tmp_path / "nowhere")], "no checkpoint there"),
                      (["--num-steps", "0"], "--num-steps must be")):
        try:
            code = run_cli(lambda: study.main([*base, *bad]))
        except SystemExit as e:                                    # argparse: a bad value
            code = e.code
        assert code == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("error:") and says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.json").exists()
