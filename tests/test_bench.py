"""Smoke tests of benchmarks/bench.py: it runs, and its last line is the promised JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import import_torch, load_script, write_toy_corpus

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
TINY = ["--config", "small", "--hidden-size", "16", "--num-steps", "5", "--batch-size", "4",
        "--steps", "2", "--repeats", "1", "--warmup", "1", "--threads", "1"]
KEYS = {"config", "device", "dtype", "num_steps", "hidden_size", "batch_size",
        "words_per_sec", "eval_words_per_sec", "gemm_floor_words_per_sec",
        "torch_words_per_sec", "ratio_vs_torch", "ratio_vs_floor", "eval_ratio",
        "eval_floor_words_per_sec", "eval_ratio_vs_floor", "blas", "platform", "cpu_count", "numpy_version", "torch_version", "peak_rss_mib",
        "rss_after_round_mib"}


def run(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def check_row(row: dict, torch: bool) -> None:
    assert KEYS <= set(row)
    for k in ("words_per_sec", "eval_words_per_sec", "gemm_floor_words_per_sec",
              "ratio_vs_floor", "eval_ratio", "eval_floor_words_per_sec",
              "eval_ratio_vs_floor", "peak_rss_mib"):
        assert row[k] > 0, k
    assert (row["hidden_size"], row["batch_size"], row["device"]) == (16, 4, "cpu")
    assert len(row["rss_after_round_mib"]) == row["repeats"]
    if torch:
        assert row["torch_words_per_sec"] > 0 and row["ratio_vs_torch"] > 0
    else:
        assert row["torch_words_per_sec"] is None and row["ratio_vs_torch"] is None


def test_bench_without_torch():
    proc, row = run(*TINY, "--no-torch", "--repeats", "2")
    check_row(row, torch=False)
    assert row["num_steps"] == 5 and row["dtype"] == "float32"
    for label in ("ours train", "ours eval", "GEMM floor", "eval floor", "words/s", "ms/step"):
        assert label in proc.stdout


def test_bench_with_torch():
    import_torch()
    proc, row = run(*TINY, "--dtype", "float64", "--json-only")
    check_row(row, torch=True)
    assert row["dtype"] == "float64"
    assert len(proc.stdout.strip().splitlines()) == 1      # --json-only: just the JSON


def test_scaling_tiny():
    proc, out = run(*TINY, "--no-torch", "--scaling", "--scaling-steps", "3,6",
                    "--scaling-hidden", "8")
    rows = out["scaling"]
    assert [(r["sweep"], r["num_steps"], r["hidden_size"]) for r in rows] == [
        ("num_steps", 3, 16), ("num_steps", 6, 16), ("hidden_size", 5, 8)]
    for r in rows:
        assert r["words_per_sec"] > 0 and r["gemm_floor_words_per_sec"] > 0
    assert "| sweep | T | H |" in proc.stdout


def test_gpu_unavailable_exits_2():
    from zaremba_ref.backend import BackendUnavailable, get_backend
    try:
        get_backend("gpu")
    except BackendUnavailable:
        pass
    else:
        pytest.skip("a GPU backend is available here")
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--device", "gpu"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1


def test_profile_step_smoke():
    out = subprocess.run([sys.executable, str(SCRIPT.parent / "profile_step.py"),
                          "--steps", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "softmax product dW_s" in out.stdout and "words/s" in out.stdout


def test_memory_script_reports_params_peak_and_rss_per_step():
    script = SCRIPT.with_name("memory_step.py")
    proc = subprocess.run([sys.executable, str(script), "--config", "small", "--steps", "3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("small: params 17.8 MiB; peak extra during one step"), out
    assert "RSS after steps 1..3: [" in out and "peak RSS" in out


# -- benchmarks/gpu_check.sh, the one command for a GPU machine, smoke-tested on the CPU --

GPU_CHECK = SCRIPT.with_name("gpu_check.sh")
PARTS = ["0_environment", "1_pytest_gpu", "2_bench_small", "2_bench_medium", "2_bench_large",
         "2_sequential_path", "3_small_run"]


def gpu_check(*args, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHON=sys.executable)
    return subprocess.run(["bash", str(GPU_CHECK), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def summary_rows(stdout: str) -> dict[str, list[str]]:
    table = stdout[stdout.index("## gpu_check summary"):]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| part")]
    return {r[0]: r[1:] for r in rows}


def test_gpu_check_dry_run_runs_every_part_and_ends_with_the_summary(tmp_path):
    data = write_toy_corpus(tmp_path / "toy")
    out = tmp_path / "check"
    proc = gpu_check("--dry-run", "--data-dir", data, "--out", out)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = summary_rows(proc.stdout)
    assert list(rows) == PARTS
    for part, (status, seconds, limit, result) in rows.items():
        assert status == "ok" and 0 <= int(seconds) <= int(limit), (part, status)
        assert (out / f"{part}.log").exists()
    assert "collected" in rows["1_pytest_gpu"][3]          # no device: the GPU tests listed
    for preset in ("small", "medium", "large"):
        assert re.match(r"ours [\d,]+ w/s, torch - w/s, .*\(torch: --no-torch\)$",
                        rows[f"2_bench_{preset}"][3])
    assert re.match(r"small s [\d.]+ \(T=3\) to [\d.]+ \(T=6\); medium s .*; large s ",
                    rows["2_sequential_path"][3])
    assert (out / "sequential_path.json").exists()
    assert re.match(r"1 epochs, valid [\d.]+, test [\d.]+, ", rows["3_small_run"][3])
    assert (out / "small_run" / "metrics.jsonl").exists()
    assert "## gpu_check summary" in (out / "summary.md").read_text()


def test_gpu_check_reports_a_failed_part_and_exits_1(tmp_path):
    data = write_toy_corpus(tmp_path / "toy")
    (data / "ptb.valid.txt").unlink()                      # the small run cannot load it
    proc = gpu_check("--dry-run", "--data-dir", data, "--out", tmp_path / "check")
    assert proc.returncode == 1, proc.stdout[-4000:]
    rows = summary_rows(proc.stdout)
    assert rows["3_small_run"][0] == "FAILED (rc 2)" and rows["2_bench_large"][0] == "ok"


def test_gpu_check_usage_errors_exit_2(tmp_path):
    for args in ([], ["--data-dir", tmp_path], ["--data-dir"], ["--bogus"]):
        proc = gpu_check(*args, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", (args, proc.stdout)
        assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr


# -- benchmarks/sequential_path.py: the sequential part of a training step -----------------

SEQ_SCRIPT = SCRIPT.with_name("sequential_path.py")
SEQ_KEYS = {"config", "num_steps", "step_ms", "sequential_ms", "sequential_fraction",
            "amdahl_bound", "words_per_sec", "critical_path_cell_steps", "transformer_layers"}


def test_sequential_path_quick(tmp_path):
    out_json, out_png = tmp_path / "seq.json", tmp_path / "seq.png"
    proc = subprocess.run([sys.executable, str(SEQ_SCRIPT), "--quick", "--repeats", "2",
                           "--threads", "1", "--out-json", str(out_json), "--out-png",
                           str(out_png)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out_json.read_text())
    rows = result["rows"]
    assert [(r["config"], r["num_steps"]) for r in rows] == [
        (c, t) for c in ("small", "medium", "large") for t in (3, 6)]
    for r in rows:
        assert SEQ_KEYS <= set(r)
        assert r["step_ms"] > 0 and r["sequential_ms"] > 0 and r["words_per_sec"] > 0
        assert r["sequential_fraction"] == pytest.approx(r["sequential_ms"] / r["step_ms"])
        assert r["amdahl_bound"] == pytest.approx(1 / r["sequential_fraction"])
        assert r["words_per_sec"] == pytest.approx(4 * r["num_steps"] / r["step_ms"] * 1e3)
        assert r["critical_path_cell_steps"] == r["num_steps"] + 2 - 1
        assert r["transformer_layers"] == 2 and r["batch_size"] == 4
        assert len(r["round_ms"]["step"]) == len(r["round_ms"]["sequential"]) == 2
    assert {"library", "version", "kernel"} <= set(result["machine"]["blas"])
    assert result["command"].startswith("python benchmarks/sequential_path.py --quick")
    assert "| config | T | step ms | sequential ms | s | 1/s |" in proc.stdout
    assert out_png.exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_sequential_path_usage_errors_exit_2(tmp_path):
    for bad in (["--num-steps", "0"], ["--num-steps", "5,x"], ["--configs", "small,huge"],
                ["--repeats", "0"]):
        proc = subprocess.run([sys.executable, str(SEQ_SCRIPT), "--quick", *bad,
                               "--out-json", str(tmp_path / "x.json")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", bad
        assert proc.stderr.startswith("error:") and len(proc.stderr.splitlines()) == 1, bad
    assert not (tmp_path / "x.json").exists()


def test_the_timed_sequential_part_is_the_recurrence_of_lstm_py():
    """The loops timed as 'sequential' compute what lstm.lstm_forward and lstm_backward
    compute, bit for bit, given the input projection: the timed code is the real one."""
    import numpy as np

    from zaremba_ref import CPU
    from zaremba_ref.lstm import lstm_backward, lstm_forward
    seq = load_script(SEQ_SCRIPT)
    rng = np.random.default_rng(0)
    T, B, H = 5, 3, 4
    W_x, W_h = rng.uniform(-0.5, 0.5, (4 * H, H)), rng.uniform(-0.5, 0.5, (4 * H, H))
    b_x, b_h = rng.uniform(-0.5, 0.5, 4 * H), rng.uniform(-0.5, 0.5, 4 * H)
    x, h0, c0 = rng.normal(size=(T, B, H)), rng.normal(size=(B, H)), rng.normal(size=(B, H))
    cache = lstm_forward(W_x, W_h, b_x, b_h, x, h0, c0, CPU)
    z = np.matmul(x.reshape(T * B, H), W_x.T).reshape(T, B, 4 * H)   # the parallel part
    z += b_x + b_h
    h, c = np.empty((T + 1, B, H)), np.empty((T + 1, B, H))
    h[0], c[0] = h0, c0
    seq.sequential_forward(z, h, c, W_h, CPU)
    for ours, theirs in ((z, cache.gates), (h, cache.h), (c, cache.c)):
        np.testing.assert_array_equal(ours, theirs)
    dh_out = rng.normal(size=(T, B, H))
    dh_T, dc_T = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    dx, _, _, _, dh0, dc0 = lstm_backward(cache, W_x, W_h, dh_out, dh_T, dc_T, CPU)
    dz = np.empty((T, B, 4 * H))
    got_h, got_c = seq.sequential_backward(z, c, dh_out, W_h, dh_T, dc_T, dz, CPU)
    np.testing.assert_array_equal(got_h, dh0)
    np.testing.assert_array_equal(got_c, dc0)
    np.testing.assert_array_equal(np.matmul(dz.reshape(T * B, 4 * H), W_x).reshape(T, B, H), dx)


def test_the_sequential_path_gpu_path_keeps_the_boundary(builder, monkeypatch):
    """--device gpu under the cupy test double (tests/fake_cupy.py): the step, the
    sequential loops and the synchronisation run on device arrays only."""
    import numpy as np

    from fake_cupy import make_fake_cupy
    from zaremba_ref.config import PRESETS
    from zaremba_ref.cuda_backend import make_gpu_backend
    from zaremba_ref.model import init_params
    cupy = make_fake_cupy(builder)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    seq = load_script(SEQ_SCRIPT)
    args = seq.parse_args(["--quick", "--device", "gpu", "--repeats", "1", "--settle", "0"])
    gpu = make_gpu_backend()
    cfg = PRESETS["medium"].replace(hidden_size=8, num_steps=3, batch_size=2, vocab_size=30)
    params = init_params(30, 8, 2, 0.05, dtype="float32", backend=gpu)
    row = seq.time_row("medium", cfg, params, args, gpu, np.dtype("float32"))
    assert row["step_ms"] > 0 and row["sequential_ms"] > 0
    assert {"lstm_cell_forward", "lstm_cell_backward"} <= {k.name for k in cupy.kernels}
    assert cupy.host_to_device == []


# -- benchmarks/lean_step.py: the leanest NumPy step, against the floor and ours --------------

LEAN_SCRIPT = SCRIPT.with_name("lean_step.py")


def _lean_step():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import lean_step
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return lean_step


def test_the_lean_step_counts_every_dense_parameter():
    """Its norm and update cover the model's parameters, the embedding's used rows aside:
    a parameter added to the model and not here would make the lean step too lean."""
    from zaremba_ref import init_params
    from zaremba_ref.config import PRESETS
    cfg = PRESETS["small"].replace(hidden_size=8, vocab_size=50, num_layers=3)
    p = init_params(cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.init_scale, seed=0)
    want = sorted(v.shape for k, v in p.items() if k != "embedding")
    assert sorted(_lean_step().dense_shapes(cfg)) == want


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_lean_step_times_the_backward_cell_of_the_model(dtype):
    """Its backward cell computes kernels.lstm_cell_backward, to the bit."""
    import numpy as np
    from zaremba_ref import kernels
    B, H = 3, 5
    r = np.random.default_rng(0)
    a = lambda *s: r.uniform(-1, 1, s).astype(dtype)  # noqa: E731
    gates, c_prev, c, dh, dc_next = a(B, 4 * H), a(B, H), a(B, H), a(B, H), a(B, H)
    dz, dc_prev, dz2, dc_prev2 = a(B, 4 * H), a(B, H), a(B, 4 * H), a(B, H)
    kernels.lstm_cell_backward(gates, c_prev, c, dh, dc_next, dz, dc_prev)
    scratch = (a(B, H), a(B, H), a(B, H), a(B, 4 * H))
    _lean_step().cell_backward_least(gates, c_prev, c, dh, dc_next, dz2, dc_prev2, scratch)
    assert np.array_equal(dz, dz2) and np.array_equal(dc_prev, dc_prev2)


def test_the_lean_step_does_the_steps_elementwise_work():
    """One lean step with dropout moves the parameters and fills every gradient, the
    masks' zeros included: a section dropped from it would leave its gradient as it was."""
    import numpy as np
    from zaremba_ref.config import PRESETS
    cfg = PRESETS["medium"].replace(hidden_size=8, vocab_size=30, num_steps=4, batch_size=3)
    step = _lean_step().lean_step(cfg, np.float64)
    grads, params = [g.copy() for g in step.grads], [p.copy() for p in step.params]
    step()
    assert len(step.grads) == 2 + 4 * cfg.num_layers + 1
    assert all(not np.array_equal(a, b) for a, b in zip(grads, step.grads))
    assert all(not np.array_equal(a, b) for a, b in zip(params, step.params))


def test_lean_step_smoke():
    proc = subprocess.run([sys.executable, str(LEAN_SCRIPT), "--config", "small",
                           "--repeats", "1", "--steps", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    ms = r["step_ms"]
    assert set(ms) == {"floor", "lean", "ours"} and min(ms.values()) > 0
    assert r["lean_vs_floor"] == pytest.approx(ms["floor"] / ms["lean"])
    assert r["ours_vs_lean"] == pytest.approx(ms["lean"] / ms["ours"])
    assert "what a NumPy step can reach here" in proc.stdout
