"""Ensembles and sweeps with the local engine (numpy only): members are plain runs of
the trainer, a re-run skips finished members and resumes an interrupted one (a real
SIGTERM), the averages are evaluate_ensemble's, a sweep is the placement study, and
bad command lines are one line with exit code 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zaremba_ref.checkpoint import load_checkpoint
from zaremba_ref.cli import main
from zaremba_ref.data import load_ptb
from zaremba_ref.ensemble import evaluate_ensemble
from zaremba_ref.launch import LaunchError, Member, train_subset
from zaremba_ref.launch_commands import _unfinished, parse_settings, sweep_summary

from conftest import REPO, write_toy_corpus

TINY = ["--no-verify-data", "--hidden-size", "12", "--batch-size", "4", "--num-steps", "5",
        "--max-epoch", "2", "--decay-start", "1", "--dropout", "0.3", "--init-scale", "0.3",
        "--save-every", "25"]


def ensemble_args(data: Path, out: Path, *extra) -> list[str]:
    return ["ensemble", "train", "--data-dir", str(data), "--out", str(out), *TINY,
            *map(str, extra)]


def params(run: Path) -> dict:
    return load_checkpoint(run)[0]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ensemble_train_trains_plain_runs_and_evaluates_their_average(toy_data, tmp_path,
                                                                      capsys):
    out = tmp_path / "ens"
    assert main(ensemble_args(toy_data, out, "--members", 2)) == 0
    stdout = capsys.readouterr().out
    # each member is what `train --seed S` makes, bit for bit
    plain = tmp_path / "plain"
    assert main(["train", "--data-dir", str(toy_data), "--out", str(plain), "--seed", "1",
                 *TINY]) == 0
    a, b = params(out / "member-1"), params(plain)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(params(out / "member-0")["embedding"], a["embedding"])
    # ensemble.json: each member and the average of their probabilities
    result = json.loads((out / "ensemble.json").read_text())
    corpus = load_ptb(toy_data, verify=False)
    members = [params(out / f"member-{s}") for s in (0, 1)]
    for split, B in (("valid", 4), ("test", 1)):
        r = evaluate_ensemble(members, getattr(corpus, split), B, 5)
        assert result["ensemble"][f"{split}_ppl"] == r.perplexity
        assert [m[f"{split}_ppl"] for m in result["members"]] == r.member_perplexities
    assert [m["seed"] for m in result["members"]] == [0, 1]
    # progress lines, then the table
    for s in (0, 1):
        assert f"member-{s}  queued    epoch 1/2" in stdout
        assert f"member-{s}  done      epoch 2/2  valid ppl" in stdout
    table = stdout[stdout.index("valid ppl    test ppl"):].splitlines()
    assert table[3].split() == ["average", "of", "2", f"{result['ensemble']['valid_ppl']:.2f}",
                                f"{result['ensemble']['test_ppl']:.2f}"]
    # run again: nothing is trained
    assert main(ensemble_args(toy_data, out, "--members", 2)) == 0
    stdout = capsys.readouterr().out
    assert "member-0  done earlier: skipped" in stdout and "queued" not in stdout
    assert len(lines(out / "member-0/attempts.jsonl")) == 1


def _launcher(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "zaremba_ref", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _launch_and_wait(args: list[str]) -> None:
    """``_launcher(args)`` to its end, which must be exit code 0."""
    proc = _launcher(args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def test_a_rerun_after_a_real_interruption_skips_done_members_and_resumes(tmp_path):
    """SIGTERM to the launcher while it trains the second of three members: the trainer
    saves and the launcher exits 130, naming member 1 interrupted and member 2 still
    queued. Run again: member 0 is skipped, member 1 resumes from its checkpoint, and
    ends bit for bit where an uninterrupted member ends."""
    big = write_toy_corpus(tmp_path / "big", words_per_split=(20_000, 1_500, 1_500))
    args = ensemble_args(big, tmp_path / "ens", "--seeds", 0, 1, 2)
    p = _launcher(args)
    ckpt = tmp_path / "ens/member-1/checkpoint.npz"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 130
    err = p.stderr.read()
    assert "run the same command again" in err
    assert "2 member(s) not done (member-1: interrupted, member-2: queued)" in err
    meta = load_checkpoint(ckpt)[2]
    assert meta["epoch"] == 1 and meta["step"] > 0            # stopped inside epoch 1
    assert not (tmp_path / "ens/member-1/done.json").exists()

    again = _launcher(args)
    assert again.wait(timeout=300) == 0, again.stderr.read()
    stdout = again.stdout.read()
    assert "member-0  done earlier: skipped" in stdout
    assert len(lines(tmp_path / "ens/member-0/attempts.jsonl")) == 1
    attempts = lines(tmp_path / "ens/member-1/attempts.jsonl")
    assert [a["resume"] for a in attempts] == [False, True]
    starts = [s for s in lines(tmp_path / "ens/member-1/segments.jsonl") if s["event"] == "start"]
    assert starts[1]["global_step"] == meta["global_step"] > 0   # not from step 0
    ref = tmp_path / "ref"
    # through _launcher too: both sides with the same BLAS thread count, so bit for bit
    _launch_and_wait(ensemble_args(big, ref, "--seeds", 1))
    a, b = params(ref / "member-1"), params(tmp_path / "ens/member-1")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_sigterm_stops_parallel_members_which_save_and_resume(tmp_path):
    """--parallel 2: SIGTERM to the launcher reaches both member processes, which save
    and stop (exit code 130, no process left); the command run again finishes them,
    bit for bit as uninterrupted runs."""
    big = write_toy_corpus(tmp_path / "big", words_per_split=(20_000, 1_500, 1_500))
    args = ensemble_args(big, tmp_path / "ens", "--seeds", 0, 1, "--parallel", 2)
    p = _launcher(args)
    ckpts = [tmp_path / f"ens/member-{s}/checkpoint.npz" for s in (0, 1)]
    deadline = time.time() + 120
    while not all(c.exists() for c in ckpts) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 130
    for s in (0, 1):
        run = tmp_path / f"ens/member-{s}"
        meta = load_checkpoint(run)[2]
        assert meta["epoch"] == 1 and meta["step"] > 0 and not (run / "done.json").exists()
        pid = lines(run / "attempts.jsonl")[0]["pid"]
        assert pid != p.pid and not Path(f"/proc/{pid}").exists()       # gone, not orphaned
        assert "interrupted: checkpoint saved" in (run / "train.log").read_text()
    # again, sequentially, and the plain run: both through _launcher, like the workers
    # above, so that every side uses the same BLAS thread count (bit for bit)
    _launch_and_wait(args[:-2])
    plain = tmp_path / "plain"
    _launch_and_wait(["train", "--data-dir", str(big), "--out", str(plain), "--seed", "0",
                      *TINY])
    a, b = params(plain), params(tmp_path / "ens/member-0")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_sweep_is_the_placement_study_with_seeds(toy_data, tmp_path, capsys):
    """A sweep over the modes at the study's budget (constant lr, a fraction of the
    training streams) gives examples/dropout_placement.py's numbers, seed for seed;
    its table is the mean and standard deviation over the seeds."""
    study_args = ["--hidden-size", "12", "--num-steps", "5", "--batch-size", "4",
                  "--dropout", "0.3", "--init-scale", "0.3", "--lr", "1"]
    out = tmp_path / "sweep"
    assert main(["sweep", "--data-dir", str(toy_data), "--no-verify-data", "--out", str(out),
                 *study_args, "--max-epoch", "2", "--decay-start", "2",
                 "--train-fraction", "0.5", "--set", "mode=none,zaremba", "--seeds", "0", "1",
                 "--parallel", "2"]) == 0
    stdout = capsys.readouterr().out
    summary = json.loads((out / "sweep.json").read_text())
    assert [s["label"] for s in summary["settings"]] == ["mode=none", "mode=zaremba"]
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import dropout_placement
    finally:
        sys.path.pop(0)
    for seed in (0, 1):
        study = tmp_path / f"study{seed}"
        assert dropout_placement.main(["--data-dir", str(toy_data), "--no-verify-data",
                                       "--out", str(study), *study_args, "--epochs", "2",
                                       "--train-fraction", "0.5", "--modes", "none,zaremba",
                                       "--seed", str(seed)]) == 0
        for record in lines(study / "placement.jsonl"):
            setting = next(s for s in summary["settings"] if s["setting"]["mode"] == record["mode"])
            run = next(r for r in setting["runs"] if r["seed"] == seed)
            assert run["valid_ppl"][record["epoch"] - 1] == record["valid_ppl"]
    capsys.readouterr()
    for s in summary["settings"]:
        per_seed = np.array([r["valid_ppl"] for r in s["runs"]])          # (seeds, epochs)
        assert s["valid_ppl_mean"] == pytest.approx(per_seed.mean(0).tolist(), rel=1e-12)
        assert s["valid_ppl_std"] == pytest.approx(per_seed.std(0, ddof=1).tolist(), rel=1e-12)
        assert 0 < s["valid_ppl_std"][1]                         # the seeds differ
    rows = stdout[stdout.index("validation perplexity per epoch"):].splitlines()
    assert rows[1].split() == ["epoch", "mode=none", "mode=zaremba"]
    z = summary["settings"][1]
    assert rows[3].split()[4:] == [f"{z['valid_ppl_mean'][1]:.2f}", "±",
                                   f"{z['valid_ppl_std'][1]:.2f}"]
    assert rows[4].startswith("test") and (out / "mode=zaremba/seed-1/checkpoint.npz").exists()


def test_train_subset_keeps_the_first_fraction_of_each_stream():
    stream = np.arange(40, dtype=np.int32)             # 4 rows of 10
    sub = train_subset(stream, 4, 2, 0.5)
    assert sub.tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24,
                            30, 31, 32, 33, 34]
    assert train_subset(stream, 4, 2, 1.0) is stream
    assert len(train_subset(stream, 4, 5, 0.1)) == 4 * 6   # at least one window per row


def test_settings_grid():
    grid = parse_settings(["dropout=0,0.5", "mode=zaremba,naive", "hidden-size=8"])
    assert grid == [{"dropout": 0.0, "mode": "zaremba", "hidden_size": 8},
                    {"dropout": 0.0, "mode": "naive", "hidden_size": 8},
                    {"dropout": 0.5, "mode": "zaremba", "hidden_size": 8},
                    {"dropout": 0.5, "mode": "naive", "hidden_size": 8}]
    assert type(grid[0]["dropout"]) is float and type(grid[0]["hidden_size"]) is int
    for bad, message in [("dropout", "FIELD=V1,V2"), ("size=3", "unknown field 'size'"),
                         ("hidden_size=1.5", "'1.5' is not a int"), ("seed=1,2", "--seeds"),
                         ("mode=naive,naive", "listed twice"), ("dropout=", "FIELD=V1")]:
        with pytest.raises(LaunchError, match=message):
            parse_settings([bad])
    with pytest.raises(LaunchError, match="given twice"):
        parse_settings(["mode=naive", "mode=zaremba"])


def test_a_sweep_summary_of_one_seed_has_zero_spread(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"valid_ppl": 5.0}) + "\n"
                                       + json.dumps({"test_ppl": 4.0}) + "\n")
    m = Member(name="x", run_dir=str(run), config={}, seed=0, setting={"mode": "none"})
    s = sweep_summary({"mode=none": [m]})["settings"][0]
    assert (s["valid_ppl_mean"], s["valid_ppl_std"], s["test_ppl_mean"]) == ([5.0], [0.0], 4.0)


@pytest.mark.parametrize("extra, message", [
    (["--set", "dropout=0,2"], "--set dropout=2.0: dropout must be in [0, 1), got 2.0"),
    (["--set", "colour=red"], "unknown field 'colour'"),
    (["--set", "mode"], "write FIELD=V1,V2"),
    ([], "a sweep needs at least one --set"),
    (["--set", "mode=naive", "--engine", "slurm"], "--engine must be local or ray, got 'slurm'"),
    (["--set", "mode=naive", "--train-fraction", "0"], "--train-fraction must be in (0, 1]"),
    (["--set", "mode=naive", "--gpus-per-member", "1"], "--gpus-per-member is for --engine ray"),
    (["--set", "mode=naive", "--parallel", "0"], "--parallel must be >= 1, got 0"),
])
def test_bad_sweeps_are_one_line_with_exit_code_2(toy_data, tmp_path, capsys, extra, message):
    code = main(["sweep", "--data-dir", str(toy_data), "--out", str(tmp_path / "s"), *TINY,
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()                    # nothing started


@pytest.mark.parametrize("extra, message", [
    (["--engine", "slurm", "--members", "2"], "--engine must be local or ray, got 'slurm'"),
    (["--members", "2", "--seeds", "4"], "--members 2 but 1 seed(s)"),
    ([], "--members N"),
    (["--seeds", "1", "1"], "lists a seed twice"),
])
def test_bad_ensembles_are_one_line_with_exit_code_2(toy_data, tmp_path, capsys, extra, message):
    assert main(ensemble_args(toy_data, tmp_path / "e", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_without_ray_the_ray_engine_is_one_line_with_the_install_command(
        toy_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # as if ray were not installed
    assert main(ensemble_args(toy_data, tmp_path / "e", "--members", "1",
                              "--engine", "ray")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[ray]"' in err
    assert not (tmp_path / "e").exists()


def test_a_member_stopped_by_max_steps_goes_on_with_a_larger_budget(toy_data, tmp_path,
                                                                    capsys):
    out = tmp_path / "ens"
    for max_steps, attempts in ((3, 1), (3, 1), (2, 1), (7, 2)):
        assert main(ensemble_args(toy_data, out, "--members", "1", "--max-steps",
                                  max_steps)) == 0
        assert len(lines(out / "member-0/attempts.jsonl")) == attempts
    assert load_checkpoint(out / "member-0")[2]["global_step"] == 7
    assert "stopped at --max-steps" in capsys.readouterr().out
    assert main(ensemble_args(toy_data, out, "--members", "1")) == 0     # to the end
    assert json.loads((out / "member-0/done.json").read_text())["status"] == "done"
    plain = tmp_path / "plain"
    assert main(["train", "--data-dir", str(toy_data), "--out", str(plain), *TINY]) == 0
    a, b = params(out / "member-0"), params(plain)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow is the point
def test_a_failing_member_is_named_and_the_others_still_train(toy_data, tmp_path, capsys):
    """lr_decay 1e-38 multiplies lr by 1e38 after epoch 1: every member blows up in
    epoch 2. Each is named with its error; one failure does not stop the others; the
    command ends with one line and exit code 1, without evaluating."""
    out = tmp_path / "ens"
    assert main(ensemble_args(toy_data, out, "--members", 2, "--lr-decay", "1e-38",
                              "--max-epoch", 3)) == 1
    captured = capsys.readouterr()
    failed = [line for line in captured.out.splitlines() if "failed" in line]
    assert failed and all(line.split()[1] == "failed" for line in failed)
    assert "is nan at epoch 2" in failed[0] or "NaN or Inf at epoch 2" in failed[0]
    assert captured.err.count("\n") == 1 and "member(s) not done" in captured.err
    assert "fix the cause" in captured.err and len(failed) == 2
    assert not (out / "ensemble.json").exists()
    assert load_checkpoint(out / "member-0")[2]["epoch"] == 2    # the last good one kept


def test_a_member_directory_holding_another_run_is_refused(toy_data, tmp_path, capsys):
    out = tmp_path / "ens"
    assert main(ensemble_args(toy_data, out, "--members", "1", "--max-steps", "3")) == 0
    capsys.readouterr()
    assert main(ensemble_args(toy_data, out, "--members", "1", "--hidden-size", "13")) == 2
    err = capsys.readouterr().err
    assert "member-0 holds another run (hidden_size: 12 there vs 13 now)" in err
    assert err.count("\n") == 1


def test_the_package_and_the_local_engine_never_import_ray(toy_data, tmp_path):
    args = ensemble_args(toy_data, tmp_path / "e", "--members", 1, "--max-steps", 2)
    code = ("import sys; from zaremba_ref.cli import main; "
            f"rc = main({args!r}); "
            "assert rc == 0 and 'ray' not in sys.modules, rc; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


@pytest.mark.parametrize("states, code", [
    ({"a": "done", "b": "done"}, 0),
    ({"a": "done", "b": "failed"}, 1),
    ({"a": "failed", "b": "interrupted"}, 130),
    ({"a": "failed", "b": "queued"}, 130),      # not reached: stopped before it started
])
def test_the_exit_code_says_whether_running_again_can_finish(states, code, capsys):
    assert _unfinished(states) == code
    err = capsys.readouterr().err
    assert err.count("\n") == (code != 0)
    if code:
        assert ("fix the cause" in err) == ("failed" in states.values())


def test_ensemble_evaluate_takes_the_first_members_of_a_folder(toy_data, tmp_path, capsys):
    """``ensemble evaluate DIR --members N``: the first N finished members and their
    average, the JSON ``ensemble train --members N`` writes, from a folder of more; a
    member not finished is named, nothing is trained."""
    out = tmp_path / "ens"
    assert main(ensemble_args(toy_data, out, "--members", 3)) == 0
    first2 = tmp_path / "first2"
    assert main(ensemble_args(toy_data, first2, "--members", 2)) == 0   # the same 2 runs
    capsys.readouterr()
    assert main(["ensemble", "evaluate", str(out), "--members", "2", "--data-dir",
                 str(toy_data), "--no-verify-data"]) == 0
    assert "average of 2" in capsys.readouterr().out
    got = json.loads((out / "ensemble-2.json").read_text())
    want = json.loads((first2 / "ensemble.json").read_text())
    assert got["ensemble"] == want["ensemble"] and got["config"] == want["config"]
    assert [(m["seed"], m["valid_ppl"], m["test_ppl"]) for m in got["members"]] == \
        [(m["seed"], m["valid_ppl"], m["test_ppl"]) for m in want["members"]]
    write = tmp_path / "two.json"
    assert main(["ensemble", "evaluate", str(out), "--seeds", "2", "0", "--write", str(write),
                 "--data-dir", str(toy_data), "--no-verify-data"]) == 0
    assert [m["seed"] for m in json.loads(write.read_text())["members"]] == [2, 0]
    (out / "member-1" / "done.json").unlink()                 # as if still training
    capsys.readouterr()
    assert main(["ensemble", "evaluate", str(out), "--members", "3", "--data-dir",
                 str(toy_data), "--no-verify-data"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 finished member(s) (seeds [0, 2]), 3 wanted" in err[0]
    assert main(["ensemble", "evaluate", str(out), "--seeds", "1", "--data-dir",
                 str(toy_data), "--no-verify-data"]) == 2
    assert "member(s) [1] not finished" in capsys.readouterr().err
