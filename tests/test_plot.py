"""The plot command: learning curves from metrics files, reference marks from the
paper for preset runs, one-line errors for what is not a metrics file or no matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zaremba_ref.cli import main
from zaremba_ref.config import PRESETS
from zaremba_ref.optim import learning_rate
from zaremba_ref.plot import PlotError, read_curves

from conftest import skip_or_fail

PNG = b"\x89PNG\r\n\x1a\n"


def _need_matplotlib() -> None:
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        skip_or_fail("matplotlib is not installed (pip install -e \".[plot]\")")


def _metrics(path: Path, preset: str = "small", epochs: int = 5, test: float | None = 111.0,
             extra: list[dict] | None = None) -> Path:
    """A metrics file as the trainer writes it: one row per epoch, an interrupted row,
    then the test row."""
    p = PRESETS[preset]
    rows = []
    for e in range(1, epochs + 1):
        lr = learning_rate(e, p.lr, p.decay_start, p.lr_decay)
        if e == 2:
            rows.append({"epoch": 2, "step": 2400, "lr": lr, "train_ppl": 150.0,
                         "words_per_sec": 1.0, "status": "interrupted"})
        rows.append({"epoch": e, "step": 2323 * e, "lr": lr, "train_ppl": 300.0 / e,
                     "words_per_sec": 6000.0, "valid_ppl": 200.0 - 10 * e})
    if test is not None:
        rows.append({"epoch": epochs, "step": 2323 * epochs, "lr": rows[-1]["lr"],
                     "train_ppl": 60.0, "words_per_sec": None, "test_ppl": test})
    rows += extra or []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_curves_one_row_per_epoch_and_the_preset_from_the_schedule(tmp_path):
    small = read_curves(_metrics(tmp_path / "s.jsonl", "small", epochs=6))
    assert small.epochs == [1, 2, 3, 4, 5, 6] and small.valid_ppl[0] == 190.0
    assert small.lr == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25] and small.test_ppl == 111.0
    assert small.preset == "small" and small.label == "s"
    medium = read_curves(_metrics(tmp_path / "m.jsonl", "medium", epochs=8, test=None))
    assert medium.preset == "medium" and medium.test_ppl is None
    assert medium.lr[-1] == pytest.approx(1 / 1.2 ** 2)
    # a schedule no preset follows: no reference marks
    odd = _metrics(tmp_path / "o.jsonl", "small", epochs=3,
                   extra=[{"epoch": 4, "step": 1, "lr": 0.3, "train_ppl": 1.0,
                           "words_per_sec": 1.0, "valid_ppl": 1.0}])
    assert read_curves(odd).preset is None


def test_plot_writes_the_picture_with_the_expected_lines(tmp_path):
    _need_matplotlib()
    from zaremba_ref.plot import save_plot
    small = _metrics(tmp_path / "small/metrics.jsonl", "small", epochs=13)
    medium = _metrics(tmp_path / "medium.jsonl", "medium", epochs=7, test=None)
    out = tmp_path / "curves.png"
    fig = save_plot([str(small.parent), str(medium)], out, ["small", "medium"], "t")
    assert out.read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp
    ax, ax_lr = fig.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["small train", "small valid", "small test 111.00",
                      "paper small valid 120.7", "paper small test 114.5",
                      "medium train", "medium valid",
                      "paper medium valid 86.2", "paper medium test 82.7"]
    valid = ax.get_lines()[1]
    assert list(valid.get_xdata()) == list(range(1, 14))
    assert list(valid.get_ydata()) == [200.0 - 10 * e for e in range(1, 14)]
    assert ax.get_yscale() == "log" and ax_lr.get_ylabel() == "lr"
    assert list(ax.get_lines()[3].get_xdata()) == [13]       # at the preset's last epoch
    assert list(ax_lr.get_lines()[1].get_ydata())[-1] == pytest.approx(1 / 1.2)


def test_the_papers_marks_once_per_preset_in_the_first_runs_colour(tmp_path):
    """medium and its dropout-0 control: the control's bare metrics follow the medium
    schedule for its 6 epochs, so both match the preset; the marks are drawn once."""
    _need_matplotlib()
    from zaremba_ref.plot import save_plot
    medium = _metrics(tmp_path / "medium.jsonl", "medium", epochs=9, test=None)
    control = _metrics(tmp_path / "control.jsonl", "medium", epochs=6, test=140.0)
    fig = save_plot([str(medium), str(control)], tmp_path / "c.png", ["p 0.5", "p 0"])
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == [
        "p 0.5 train", "p 0.5 valid", "paper medium valid 86.2", "paper medium test 82.7",
        "p 0 train", "p 0 valid", "p 0 test 140.00"]
    assert lines[2].get_color() == lines[0].get_color() != lines[4].get_color()


def test_a_run_directory_uses_its_checkpoint_configuration(tmp_path, toy_data):
    _need_matplotlib()
    run = tmp_path / "run"
    assert main(["train", "--data-dir", str(toy_data), "--no-verify-data", "--out", str(run),
                 "--hidden-size", "8", "--batch-size", "4", "--num-steps", "5",
                 "--max-epoch", "2", "--decay-start", "1"]) == 0
    curves = read_curves(run)
    assert curves.epochs == [1, 2] and curves.preset is None and curves.test_ppl > 1
    assert main(["plot", str(run), "--out", str(tmp_path / "c.svg")]) == 0
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("content", ["", "not json\n", '{"epoch": 1, "step": 3}\n', "[1, 2]\n"])
def test_what_is_not_a_metrics_file_gets_one_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    assert main(["plot", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "metrics" in err
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(PlotError):
        read_curves(bad)


def test_missing_file_and_label_count_get_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    good = _metrics(tmp_path / "m.jsonl")
    assert main(["plot", str(good), "--out", str(tmp_path / "x.png"),
                 "--label", "a", "--label", "b"]) == 2
    assert "2 --label for 1 runs" in capsys.readouterr().err


def test_without_matplotlib_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib fails
    good = _metrics(tmp_path / "m.jsonl")
    assert main(["plot", str(good), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and '.[plot]' in err
    assert not (tmp_path / "x.png").exists()


def test_a_read_only_place_for_the_picture_gets_one_line_and_no_file(tmp_path, tmpfs,
                                                                     capsys):
    """A real read-only filesystem: savefig fails at open, and so does removing the
    temporary it never wrote; the error is still the one line."""
    _need_matplotlib()
    good = _metrics(tmp_path / "m.jsonl")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    assert main(["plot", str(good), "--out", str(tmpfs / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {tmpfs / 'x.png'}: ")
    assert "Read-only file system" in err and err.count("\n") == 1
    assert list(tmpfs.iterdir()) == []
