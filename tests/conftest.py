"""Shared fixtures: a small synthetic corpus in PTB's file format; skip_or_fail (under
CI=true a missing PTB folder or torch fails instead of skipping); and the check that
``pytest -m gpu`` with no GPU test run exits non-zero and says why; and ``tmpfs``, a
real small filesystem to fill up or make read-only."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from hypothesis import Phase, settings

# --hypothesis-profile fuzz-debug: report a failure as found, without shrinking it (the
# fuzzed command lines of test_faults.py shrink slowly)
settings.register_profile("fuzz-debug", phases=[Phase.explicit, Phase.reuse, Phase.generate])
# --hypothesis-profile mutation (benchmarks/mutation.sh): the same, for the mutation run,
# where a mutant needs only one failing example to be killed (shrinking a failing
# finite-difference check takes minutes), and no example database
settings.register_profile("mutation", phases=[Phase.explicit, Phase.generate], database=None)

REPO = Path(__file__).resolve().parents[1]


def write_toy_corpus(root: Path, words_per_split=(6000, 1500, 1500), vocab: int = 40,
                     seed: int = 0) -> Path:
    """Write ptb.{train,valid,test}.txt drawn from one fixed sparse Markov chain over
    ``vocab`` words (each word has 3 likely successors), so a model can learn it and
    its perplexity falls well below ``vocab``. Every word appears in train."""
    rng = np.random.default_rng(seed)
    words = [f"w{k}" for k in range(vocab)]
    succ = rng.integers(0, vocab, (vocab, 3))
    root.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), words_per_split):
        w, out, line = 0, [], []
        for k in range(n):
            w = int(succ[w, rng.integers(0, 3)]) if rng.random() < 0.9 else int(rng.integers(vocab))
            if split == "train" and k < vocab:
                w = k                       # make sure every word is in the vocabulary
            line.append(words[w])
            if len(line) >= 12:
                out.append(" " + " ".join(line) + " ")
                line = []
        out.append(" " + " ".join(line) + " ")
        (root / f"ptb.{split}.txt").write_text("\n".join(out) + "\n")
    return root


def load_script(path: Path):
    """A script that is not in the package (benchmarks/*.py, examples/*.py) as a module,
    registered in ``sys.modules`` under its file name as an import would be (dataclasses
    defined in it look their module up there)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with the reason; under CI=true (CI must run everything) fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a skip here is a failure)")
    pytest.skip(reason)


def import_module_or_skip(name: str, reason: str):
    """Module ``name``, or skip the calling test module (at import time) with the reason;
    under CI=true a collection error instead, as CI installs it."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: a skip here is a failure)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def import_torch():
    """PyTorch, or skip (a failure under CI=true, which installs it)."""
    try:
        import torch
    except ImportError:
        skip_or_fail("PyTorch is not installed (pip install torch): no autograd oracle")
    return torch


@pytest.fixture
def toy_data(tmp_path: Path) -> Path:
    return write_toy_corpus(tmp_path / "toy")


@pytest.fixture
def ptb_dir() -> Path:
    """The real PTB directory from $ZAREMBA_REF_DATA, or skip (under CI=true, fail)."""
    d = os.environ.get("ZAREMBA_REF_DATA")
    if not d or not (Path(d) / "ptb.train.txt").exists():
        skip_or_fail("real PTB not available: set ZAREMBA_REF_DATA=DIR (CI sets it to "
                     "../shared/data/ptb)")
    return Path(d)


@pytest.fixture(scope="session")
def builder(tmp_path_factory):
    """Compiles the CUDA kernel bodies for the CPU (tests/fake_cupy.py), each kernel and
    dtype once per session (or once for all sessions, in $ZAREMBA_REF_KERNEL_CACHE: the
    mutation run's); skips without a C++ compiler."""
    from fake_cupy import Builder, find_compiler
    if find_compiler() is None:
        skip_or_fail("no C++ compiler (g++ or c++, or $CXX): the CUDA kernel bodies are "
                     "tested by compiling them for the CPU")
    return Builder(os.environ.get("ZAREMBA_REF_KERNEL_CACHE")
                   or tmp_path_factory.getbasetemp() / "cpu_kernels")


# -- `pytest -m gpu` must run a GPU test or fail --------------------------------------------

def _selects_gpu_only(config) -> bool:
    """True when the -m expression selects tests marked gpu and not unmarked ones
    (``-m gpu``, ``-m "gpu and not slow"``), so that a run of it is a GPU run."""
    from _pytest.mark.expression import Expression
    expr = config.getoption("markexpr", "") or ""
    if "gpu" not in expr:
        return False
    compiled = Expression.compile(expr)
    return (compiled.evaluate(lambda name, **kw: name == "gpu")
            and not compiled.evaluate(lambda name, **kw: False))


_GPU_RUN = {"ran": 0, "skipped": []}


def pytest_runtest_logreport(report):
    if report.when == "call" and not report.skipped:
        _GPU_RUN["ran"] += 1
    elif report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _GPU_RUN["skipped"].append(reason.removeprefix("Skipped: "))


def pytest_sessionfinish(session, exitstatus):
    """``pytest -m gpu`` where nothing ran (no cupy, no device, nothing collected) is
    not a pass: exit 1 and say why (the summary prints the reasons)."""
    config = session.config
    if config.option.collectonly:              # listing the GPU tests is not running them
        return
    if _selects_gpu_only(config) and _GPU_RUN["ran"] == 0 and exitstatus in (0, 5):
        reasons = sorted(set(_GPU_RUN["skipped"])) or ["no test selected by -m "
                                                      f"{config.getoption('markexpr')!r}"]
        config._gpu_nothing_ran = reasons
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    reasons = getattr(config, "_gpu_nothing_ran", None)
    if reasons:
        terminalreporter.write_line(
            "error: pytest -m gpu ran no GPU test, so nothing about the GPU was checked "
            "(exit code 1). Why: " + "; ".join(reasons)
            + ". Run it on a machine with cupy (pip install cupy-cuda12x) and a CUDA device.",
            red=True, bold=True)


def assert_train_steps_match(config, gpu, tie_weights: bool = False) -> None:
    """Two ``train_step``s as the trainer runs them (masks drawn from the backend's
    generator, the state carried on, the update applied) on the CPU and on ``gpu``, from
    the same start: losses, norms and parameters equal to 1e-12."""
    import zaremba_ref as z
    from zaremba_ref.backend import CPU
    from zaremba_ref.train import train_step
    rng = np.random.default_rng(3)
    x, y = (rng.integers(0, 9, (2, 5)).astype(np.int32) for _ in range(2))
    results = []
    for backend in (CPU, gpu):
        params = z.init_params(9, 4, 2, 0.3, seed=1, dtype=np.float64, backend=backend,
                               tie_weights=tie_weights)
        state, masks_rng, steps = z.zero_state(params, 2, backend), backend.rng(5), []
        for _ in range(2):
            loss, norm, state = train_step(params, backend.asarray(x), backend.asarray(y),
                                           state, config, 1.0, masks_rng, backend)
            steps.append((loss, norm))
        results.append((steps, {k: backend.to_numpy(v) for k, v in params.items()}))
    (cpu_steps, cpu_params), (gpu_steps, gpu_params) = results
    np.testing.assert_allclose(gpu_steps, cpu_steps, rtol=1e-12)
    for k in cpu_params:
        np.testing.assert_allclose(gpu_params[k], cpu_params[k], rtol=1e-12, atol=1e-12,
                                   err_msg=k)


@pytest.fixture
def tmpfs(tmp_path):
    """A 300 KiB tmpfs, mounted for the test and always unmounted after it."""
    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs Linux and mount(8)")
    where = tmp_path / "small_fs"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{' '.join(r.stderr.split())}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def require_cuda_device():
    """The real cupy module, for a -m gpu test; skip without cupy, a driver or a device."""
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA device")
    except Exception as e:  # no driver
        pytest.skip(f"CUDA not usable: {e}")
    return cupy
