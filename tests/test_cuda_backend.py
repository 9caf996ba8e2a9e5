"""The GPU backend (cuda_backend.py): its code path, its errors, and (with -m gpu) CuPy.

Without a GPU, a test double of ``cupy`` (tests/fake_cupy.py) is put into
``sys.modules`` for one test at a time: its arrays are a device type of their own that
refuses what CuPy refuses at the host/device boundary, and its ``ElementwiseKernel``
compiles the real kernel text for the CPU. Through it, a whole training step on the GPU
code path must give what the NumPy path gives, to 1e-12 in float64, and every command
(train, resume, evaluate, ensemble, sample) and the benchmark must run. The test marked
``gpu`` repeats the comparison with the real CuPy on a device.
"""

from __future__ import annotations

import inspect
import io
import json
import sys

import numpy as np
import pytest

import zaremba_ref as z
from zaremba_ref import CPU, BackendUnavailable, get_backend, kernels
from zaremba_ref.cli import main
from zaremba_ref.config import Config
from zaremba_ref.data import load_ptb
from zaremba_ref.cuda_backend import make_gpu_backend
from zaremba_ref.optim import sgd_step
from zaremba_ref.train import train

from conftest import (REPO, assert_train_steps_match, load_script, require_cuda_device,
                      skip_or_fail)
from fake_cupy import make_fake_cupy

KERNELS = ("lstm_cell_forward", "lstm_cell_backward", "dropout", "softmax_cross_entropy_grad",
           "sgd_update")


def install(monkeypatch, cupy) -> None:
    """Make ``import cupy`` give this module, for this test only (and ``import cupyx``
    fail: the GPU path needs cupy alone)."""
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", None)


@pytest.fixture
def fake_cupy(builder, monkeypatch):
    cupy = make_fake_cupy(builder)
    install(monkeypatch, cupy)
    return cupy


# -- a case: parameters, a window, a state, dstate, masks ---------------------------------

def make_case(mode, V=11, H=5, L=2, B=3, T=4, seed=0, p=0.4):
    rng = np.random.default_rng(seed)
    params = z.init_params(V, H, L, 0.5, seed=seed, dtype=np.float64)
    x, y = (rng.integers(0, V, (B, T)).astype(np.int32) for _ in range(2))
    state = [(rng.normal(size=(B, H)), rng.normal(size=(B, H))) for _ in range(L)]
    dstate = [(rng.normal(size=(B, H)), rng.normal(size=(B, H))) for _ in range(L)]
    masks = z.draw_masks(rng, p, mode, L, B, T, H, np.float64)   # each mode's shapes
    return params, x, y, state, dstate, masks or None


def run_case(backend, mode, case, dtype=np.float64, lr=0.7, max_norm=0.5):
    """loss_and_grads then sgd_step on ``backend``; every result as a NumPy array."""
    params, x, y, state, dstate, masks = case
    put = lambda a: backend.asarray(np.array(a), dtype=dtype)       # noqa: E731  (a copy)
    pairs = lambda s: [(put(h), put(c)) for h, c in s]              # noqa: E731
    params = {k: put(v) for k, v in params.items()}
    loss, grads, final = z.loss_and_grads(
        params, backend.asarray(x), backend.asarray(y), pairs(state),
        [put(m) for m in masks] if masks else None, mode=mode, dstate=pairs(dstate),
        backend=backend)
    out = {f"grad {k}": backend.to_numpy(g) for k, g in grads.items() if k != "state"}
    for l, ((dh, dc), (h, c)) in enumerate(zip(grads["state"], final)):
        out.update({f"dh0 {l}": backend.to_numpy(dh), f"dc0 {l}": backend.to_numpy(dc),
                    f"hT {l}": backend.to_numpy(h), f"cT {l}": backend.to_numpy(c)})
    norm = sgd_step(params, grads, lr, max_norm, loss_scale=4.0, backend=backend)
    out.update({f"param {k}": backend.to_numpy(v) for k, v in params.items()})
    return loss, norm, out


# -- the GPU code path through the fake cupy ------------------------------------------------

def test_wrappers_have_the_twins_signatures_and_build_each_kernel_once(fake_cupy):
    gpu = make_gpu_backend()
    assert gpu.name == "gpu" and gpu.xp is fake_cupy
    assert gpu.scatter_add == fake_cupy.add.at
    for name in KERNELS:
        assert (list(inspect.signature(getattr(gpu, name)).parameters)
                == list(inspect.signature(getattr(kernels, name)).parameters)), name
    assert fake_cupy.kernels == []                                   # nothing built yet
    B, H = 2, 3
    x, mask = gpu.asarray(np.ones((B, H))), gpu.asarray(np.full((B, H), 2.0))
    for _ in range(3):
        out = gpu.dropout(x, mask, out=gpu.xp.empty((B, H)))        # as lstm.py calls it
    np.testing.assert_array_equal(out.get(), 2.0)
    assert [k.name for k in fake_cupy.kernels] == ["dropout"] and fake_cupy.kernels[0].calls == 3
    assert make_gpu_backend().dropout(x, mask, out=out) is out      # still one kernel
    assert len(fake_cupy.kernels) == 1


@pytest.mark.parametrize("mode", ["zaremba", "naive", "none"])
def test_a_training_step_on_the_gpu_path_matches_numpy(fake_cupy, mode):
    case = make_case(mode)
    cpu_loss, cpu_norm, want = run_case(CPU, mode, case)
    gpu_loss, gpu_norm, got = run_case(make_gpu_backend(), mode, case)
    ran = set(KERNELS) - ({"dropout"} if mode == "none" else set())
    assert {k.name for k in fake_cupy.kernels} == ran                 # each kernel ran
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-12)
    assert gpu_norm == pytest.approx(cpu_norm, rel=1e-12)
    assert cpu_norm > 0.5                                             # clipping was exercised
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("mode", ["zaremba", "naive"])
def test_train_step_with_drawn_masks_matches_numpy(fake_cupy, mode):
    """train_step as the trainer runs it: masks drawn from backend.rng, update applied."""
    config = Config(num_layers=2, hidden_size=4, num_steps=5, batch_size=2, dropout=0.5,
                    mode=mode, vocab_size=9, max_grad_norm=1.0)
    assert_train_steps_match(config, make_gpu_backend())


def test_evaluation_on_the_gpu_path_matches_numpy(fake_cupy):
    params, x, y, state, _, _ = make_case("none", seed=2)
    gpu = make_gpu_backend()
    want, want_state = z.loss_only(params, x, y, state)
    got, got_state = z.loss_only({k: gpu.asarray(v) for k, v in params.items()},
                                 gpu.asarray(x), gpu.asarray(y),
                                 [(gpu.asarray(h), gpu.asarray(c)) for h, c in state],
                                 backend=gpu)
    assert got == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose([[gpu.to_numpy(a) for a in pair] for pair in got_state],
                               np.array(want_state), rtol=1e-12, atol=1e-12)


def test_training_on_the_gpu_path_saves_a_checkpoint(fake_cupy, toy_data, tmp_path):
    corpus = load_ptb(toy_data, verify=False)
    config = Config(num_layers=1, hidden_size=8, num_steps=5, batch_size=4, dropout=0.5,
                    vocab_size=corpus.vocab_size, max_epoch=1)
    summary = train(config, corpus, tmp_path / "run", backend=make_gpu_backend(),
                    max_steps=2, out=io.StringIO())
    assert summary["status"] == "max_steps" and (tmp_path / "run" / "checkpoint.npz").exists()


# -- the whole GPU code path under the boundary-keeping double ----------------------------
#
# The double's arrays are a device type of their own (tests/fake_cupy.py): a NumPy array
# that reaches a kernel, a ufunc or arithmetic with a device array, or a device array that
# reaches numpy.asarray, raises as it would with CuPy. Every command of the GPU path runs
# here in every dropout mode; DROPOUT_MODES follows dropout.MODES, so a new mode is covered
# as soon as draw_masks accepts it.

DROPOUT_MODES = tuple(z.dropout.MODES)
TINY = ["--config", "small", "--num-layers", "2", "--hidden-size", "8", "--num-steps", "5",
        "--batch-size", "4", "--max-epoch", "1", "--seed", "3"]


def run_cli(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize("mode", DROPOUT_MODES)
def test_the_whole_gpu_path_keeps_the_host_device_boundary(fake_cupy, toy_data, tmp_path,
                                                            capsys, mode):
    """Train (every step of an epoch, validation, the batch-1 test pass), checkpoint on
    the way, resume from it onto the device, evaluate, average an ensemble, sample: all
    with --device gpu through the double, and the GPU path's numbers equal the CPU's."""
    data = ["--data-dir", toy_data, "--no-verify-data"]
    run = tmp_path / "run"
    common = ["train", *TINY, *data, "--mode", mode, "--dropout", "0.3", "--device", "gpu",
              "--out", run, "--save-every", "7"]
    run_cli(capsys, *common, "--max-steps", "12")                   # stops mid-epoch, saved
    assert (run / "checkpoint.npz").exists()
    out = run_cli(capsys, *common, "--resume")                      # onto the device, on
    summary = json.loads(out.splitlines()[-1].removeprefix("summary "))
    assert summary["status"] == "done" and summary["test_ppl"] > 1
    kernels_run = {k.name for k in fake_cupy.kernels}
    assert kernels_run >= {"lstm_cell_forward", "lstm_cell_backward", "sgd_update",
                           "softmax_cross_entropy_grad"}

    gpu = [json.loads(line) for line in run_cli(
        capsys, "evaluate", run, *data, "--device", "gpu").splitlines()]
    cpu = [json.loads(line) for line in run_cli(
        capsys, "evaluate", run, *data, "--device", "cpu").splitlines()]
    assert gpu[0]["valid_ppl"] == pytest.approx(cpu[0]["valid_ppl"], rel=1e-5)
    assert gpu[0]["test_ppl"] == pytest.approx(summary["test_ppl"], rel=1e-5)
    ensemble = [json.loads(line) for line in run_cli(
        capsys, "evaluate", run, run, *data, "--device", "gpu", "--ensemble",
        "--split", "valid").splitlines()]
    assert ensemble[-1]["valid_ppl"] == pytest.approx(cpu[0]["valid_ppl"], rel=1e-5)
    words = run_cli(capsys, "sample", run, "--words", "7", "--device", "gpu").split()
    # No host array was indexed with or copied over implicitly (CuPy allows those, each a
    # synchronous copy): every array reached the device through backend.asarray.
    assert fake_cupy.host_to_device == []
    assert words == run_cli(capsys, "sample", run, "--words", "7", "--device", "cpu").split()
    check_kinds_are_compiled_by_test_nvrtc(fake_cupy.kernels)     # evaluation's too


def check_kinds_are_compiled_by_test_nvrtc(kernels_built) -> int:
    """Every argument the backend passed to a kernel is of a kind tests/test_nvrtc.py
    compiles: arrays of at most 3 dimensions (folded or not), raw arrays C-contiguous with
    the dimensions it assumes, Python scalars where it assumes scalars, its dtypes."""
    import test_nvrtc as nv
    from fake_cupy import parse_params
    checked = 0
    for k in kernels_built:
        spec = kernels.CUDA_KERNELS[k.name]
        params = parse_params(spec.in_params, True) + parse_params(spec.out_params, False)
        for call in k.argument_kinds:
            for p, kind in zip(params, call):
                where = f"{k.name}: {p.name} passed as {kind}"
                if not p.raw and nv.is_scalar(spec, p.name):
                    assert kind[0] == "scalar", where
                    continue
                assert kind[0] == "array" and kind[1] in {np.dtype(t).name for t in
                                                          nv.FLOATS + nv.INTS}, where
                if p.raw:
                    assert kind[2:] == (nv.RAW_NDIM[p.name], True), where
                else:
                    assert 1 <= kind[2] <= 3, where
            checked += 1
    return checked


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kernels_get_only_arguments_test_nvrtc_compiles(fake_cupy, dtype):
    """A training step in every mode, float32 and float64 (the whole-path test checks the
    commands' calls too)."""
    for mode in DROPOUT_MODES:
        run_case(make_gpu_backend(), mode, make_case(mode), dtype=dtype)
    assert {k.name for k in fake_cupy.kernels} == set(kernels.CUDA_KERNELS)
    assert check_kinds_are_compiled_by_test_nvrtc(fake_cupy.kernels) >= len(kernels.CUDA_KERNELS)


def test_the_benchmark_gpu_path_keeps_the_boundary(fake_cupy):
    """benchmarks/bench.py --device gpu (a part of gpu_check.sh) under the double: its
    GEMM floor (matmul into preallocated outputs), the stream synchronisation, our train
    and eval steps on device windows."""
    from zaremba_ref.config import PRESETS
    bench = load_script(REPO / "benchmarks" / "bench.py")
    args = bench.parse_args(["--device", "gpu", "--steps", "1", "--repeats", "1",
                             "--warmup", "1", "--settle", "0", "--no-torch"])
    cfg = PRESETS["medium"].replace(hidden_size=8, num_steps=3, batch_size=2, vocab_size=30)
    res = bench.bench(cfg, args, make_gpu_backend(), threads=1)
    assert res["words_per_sec"] > 0 and res["gemm_floor_words_per_sec"] > 0
    assert fake_cupy.host_to_device == []
    # the device is recorded beside the host (the JSON's "gpu", the table's first line)
    res.update(bench.machine(1, make_gpu_backend()))
    assert res["gpu"] == {"name": "fake GPU (tests/fake_cupy.py)", "compute_capability": "9.0",
                          "memory_gib": 16.0, "cuda_runtime": 13000, "cupy": "0+fake"}
    res.update(config="medium", dtype="float32", peak_rss_mib=1, rss_after_round_mib=[1])
    head = bench.table(res, cfg, args).splitlines()[0]
    assert head.endswith(", GPU fake GPU (tests/fake_cupy.py) (CUDA 13000)"), head
    assert bench.machine(1, CPU)["gpu"] is None


# -- the errors: one line, what to install or check ---------------------------------------

def test_without_cupy_the_message_says_what_to_install(monkeypatch):
    install(monkeypatch, None)                                        # import cupy fails
    with pytest.raises(BackendUnavailable) as err:
        get_backend("gpu")
    msg = str(err.value)
    assert "\n" not in msg and "not installed" in msg
    for part in ('pip install -e ".[gpu]"', "cupy-cuda12x", "pip install cupy-cuda13x"):
        assert part in msg


def test_with_the_real_cupy_but_no_device_the_error_is_one_line(monkeypatch, tmp_path,
                                                                  capsys):
    """cupy imports (pip install works without a GPU) but no driver or device answers:
    the real CuPy's error, on one line, and exit code 2 from the command line."""
    try:
        import cupy
    except ImportError as e:
        skip_or_fail(f"cupy is not installed ({e}): pip install -e \".[gpu-compile]\"")
    try:
        usable = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        usable = False
    if usable:
        pytest.skip("a CUDA device is usable here: --device gpu works")
    with pytest.raises(BackendUnavailable) as err:
        get_backend("gpu")
    msg = str(err.value)
    assert "\n" not in msg and "--device cpu" in msg, msg
    assert "cupy is installed but CUDA is not usable" in msg or "no CUDA device" in msg, msg
    code = main(["train", "--device", "gpu", "--max-steps", "1", "--out", str(tmp_path / "r")])
    out, err_text = capsys.readouterr()
    assert code == 2 and out == "" and err_text.count("\n") == 1, err_text


def test_a_cupy_that_fails_to_import_is_one_line(monkeypatch, tmp_path):
    """Installed but broken (CuPy's import errors span lines): one line, not 'not installed'.
    The broken cupy is a real package on sys.path whose import raises, as CuPy's does
    when it cannot load a CUDA library."""
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text(
        'raise ImportError("CuPy failed to load libnvrtc.so.12\\n  OSError: no such file")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    with pytest.raises(BackendUnavailable) as err:
        make_gpu_backend()
    msg = str(err.value)
    assert "\n" not in msg and "does not import" in msg and "--device cpu" in msg, msg
    assert "libnvrtc.so.12" in msg, msg                              # CuPy's reason, kept


@pytest.mark.parametrize("count, words", [(0, "no CUDA device is visible"),
                                          (RuntimeError("cudaErrorNoDevice"), "cudaErrorNoDevice")])
def test_without_a_device_the_message_says_what_to_check(builder, monkeypatch, count, words):
    install(monkeypatch, make_fake_cupy(builder, device_count=count))
    with pytest.raises(BackendUnavailable, match=words) as err:
        make_gpu_backend()
    assert "\n" not in str(err.value) and "--device cpu" in str(err.value)


@pytest.mark.parametrize("cause", ["no cupy", "no device"])
def test_cli_exits_2_with_one_line(builder, monkeypatch, capsys, tmp_path, cause):
    if cause == "no cupy":
        install(monkeypatch, None)
    else:
        install(monkeypatch, make_fake_cupy(builder, device_count=0))
    code = main(["train", "--device", "gpu", "--max-steps", "1", "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: --device gpu") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


# -- the real thing -----------------------------------------------------------------------

def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.mark.gpu
def test_on_a_gpu_the_benchmarks_name_the_device():
    """benchmarks/bench.py's machine record on a real device: CuPy's own answer for
    the current device, as the double (above) only imitates it."""
    cupy = require_cuda_device()
    bench = load_script(REPO / "benchmarks" / "bench.py")
    gpu = bench.machine(1, get_backend("gpu"))["gpu"]
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    assert gpu["name"] == props["name"].decode() and gpu["name"]
    assert gpu["memory_gib"] > 0 and gpu["cuda_runtime"] >= 11000
    major, minor = (int(v) for v in gpu["compute_capability"].split("."))
    assert f"{major}{minor}" == cupy.cuda.Device().compute_capability   # e.g. "90"
    assert gpu["cupy"] == cupy.__version__


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [dict(V=50, H=16, L=2, B=4, T=5),
                                   dict(V=97, H=33, L=1, B=7, T=3),
                                   dict(V=40, H=64, L=3, B=2, T=8)])
@pytest.mark.parametrize("mode", ["zaremba", "naive", "none"])
def test_cupy_matches_numpy(shape, mode):
    """CuPy float64 equals NumPy float64 to 1e-10 (loss, every gradient, final state,
    updated params); CuPy float32 is as close to it as NumPy float32 is."""
    cupy = require_cuda_device()
    gpu = get_backend("gpu")
    assert gpu.xp is cupy
    case = make_case(mode, seed=shape["V"], **shape)
    loss64, norm64, want = run_case(CPU, mode, case)
    gpu_loss, gpu_norm, got = run_case(gpu, mode, case)
    assert gpu_loss == pytest.approx(loss64, rel=1e-10)
    assert gpu_norm == pytest.approx(norm64, rel=1e-10)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-10, err_msg=k)

    loss32, _, cpu32 = run_case(CPU, mode, case, dtype=np.float32)
    gpu_loss32, _, gpu32 = run_case(gpu, mode, case, dtype=np.float32)
    assert abs(gpu_loss32 - loss64) <= max(10 * abs(loss32 - loss64), 1e-5 * abs(loss64))
    for k in want:
        bound = max(10 * rel_err(cpu32[k], want[k]), 1e-5)
        assert rel_err(gpu32[k], want[k]) <= bound, (k, rel_err(gpu32[k], want[k]), bound)
