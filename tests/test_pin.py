"""The paper's path, pinned: the first 20 training losses, the final parameters and the
dropout generator's state, recorded in ``tests/pins.json`` with the platform they were
recorded on (``zaremba_ref.machine.fingerprint``: CPU, NumPy and its SIMD targets, the
BLAS and its kernel, libc).

A run trained before the options beyond the paper were added (the Table 1 medium run)
resumes on today's code, so the default path must not change, nor the way the dropout
masks draw from the generator. Each case runs in a fresh process with one BLAS thread
and is checked one of two ways, which its test id names:

* ``bit-for-bit`` on the recording platform: the losses (float repr), the parameters'
  digest and the generator's state, exactly;
* ``tolerance`` anywhere else (another CPU generation rounds a matrix product or a
  ``tanh`` differently, so bits cannot hold): the generator's state exactly (integers),
  the 20 losses and each parameter's sum and sum of squares within the tolerances of
  ``TOLERANCE``, derived in the module's last section and in docs/tests.md from
  ``benchmarks/pin_tolerance.py``: well above what rounding alone moves, well below
  what a real change of path moves.

``test_a_changed_path_fails_the_tolerance_check`` shows that the tolerance check bites
(the lr scaled by 1 + 1e-4, one dropout mask drawn in another order, the forget-gate
bias off by 1e-6); ``test_rounding_alone_passes_the_tolerance_check`` that it lets a
rounding-only change through (two BLAS threads).

To re-record on purpose (a change of path you mean, or a change of rounding you have
shown is only rounding): ``python tests/test_pin.py record [PTB_DIR]``, in its own commit.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from zaremba_ref.backend import CPU
from zaremba_ref.config import PRESETS
from zaremba_ref.data import batchify, load_ptb, windows
from zaremba_ref.dropout import draw_masks
from zaremba_ref.machine import fingerprint
from zaremba_ref.model import init_params, loss_and_grads, num_layers_of, zero_state
from zaremba_ref.optim import learning_rate, sgd_step
from zaremba_ref.train import params_digest, train, train_step

from conftest import REPO, write_toy_corpus

STEPS = 20
SMALL = PRESETS["small"]
MEDIUM_200 = PRESETS["medium"].replace(hidden_size=200)      # dropout 0.5, zaremba mode
NAIVE_200 = MEDIUM_200.replace(mode="naive")
CONFIGS = {"small": SMALL, "medium_200": MEDIUM_200, "naive_200": NAIVE_200}
CASES = [("ptb", "small", "float64"), ("ptb", "medium_200", "float64"),
         ("ptb", "medium_200", "float32"), ("ptb", "naive_200", "float64"),
         ("toy", "small", "float64"), ("toy", "medium_200", "float64"),
         ("toy", "medium_200", "float32"), ("toy", "naive_200", "float64")]
PINS_FILE = Path(__file__).with_name("pins.json")
TOY_WORDS = (30_000, 2_000, 2_000)

# Real changes of the path, each small (test_a_changed_path_fails_the_tolerance_check)
CHANGES = ("lr", "mask_order", "forget_bias")


def first_losses(config, corpus, dtype, seed=0, steps=STEPS, change=None):
    """The training loop of ``train.train`` for its first ``steps`` windows: the losses,
    the final parameters and the generator's raw state after them. ``change`` is one of
    CHANGES, a small real change of the path, or None (the paper's path)."""
    config = config.replace(vocab_size=corpus.vocab_size)
    params = init_params(config.vocab_size, config.hidden_size, config.num_layers,
                         config.init_scale, seed=seed, dtype=np.dtype(dtype))
    H, L = config.hidden_size, config.num_layers
    if change == "forget_bias":                      # b_f off by 1e-6 in every layer
        for l in range(1, L + 1):
            params[f"l{l}.b_x"][H:2 * H] += 1e-6
    rng = CPU.rng(seed)
    state = zero_state(params, config.batch_size)
    lr = learning_rate(1, config.lr, config.decay_start, config.lr_decay)
    if change == "lr":
        lr *= 1 + 1e-4
    losses = []
    data = batchify(corpus.train, config.batch_size)
    for k, (x, y) in zip(range(steps), windows(data, config.num_steps)):
        if change == "mask_order" and k == 0:       # D(h^0)'s mask drawn second, once
            B, T = x.shape
            masks = draw_masks(rng, config.dropout, config.mode, L, B, T, H, np.dtype(dtype))
            masks[0], masks[1] = masks[1], masks[0]
            loss, grads, state = loss_and_grads(params, x, y, state, masks, mode=config.mode)
            sgd_step(params, grads, lr, config.max_grad_norm, config.loss_scale)
        else:
            loss, _, state = train_step(params, x, y, state, config, lr, rng)
        losses.append(loss)
    return losses, params, rng.bit_generator.state["state"]["state"]


def param_stats(params: dict) -> dict[str, list[float]]:
    """Each parameter's sum and sum of squares, accumulated in float64."""
    return {k: [float(p.sum(dtype=np.float64)), float(np.square(p, dtype=np.float64).sum())]
            for k, p in sorted(params.items())}


# -- the check ---------------------------------------------------------------------------

# How far a pinned run may move by rounding alone, by corpus and dtype. The numbers and
# their margins are derived in docs/tests.md ("The pins") from benchmarks/pin_tolerance.py,
# which runs each case under other BLAS kernels, thread counts and NumPy SIMD levels:
#   loss       |loss - pinned|                                    for each of the 20 losses
#   sum        |sum(p) - pinned| / sqrt(sum(p^2))                 for each parameter p
#   sumsq      |sum(p^2) - pinned| / sum(p^2)                     for each parameter p
# float64: rounding moves them <= 4.3e-13, 2.4e-12, 6.8e-14; the smallest real change
# (forget-gate bias 1e-6) >= 7.4e-7, 1.4e-4, 5.0e-6. float32 on the toy corpus: rounding
# <= 4.8e-7, 5.4e-6, 1.3e-6; the smallest change >= 1.4e-6, 1.9e-4, 7.8e-6 (the sum
# catches it). float32 on PTB: 20 steps at lr 1 over 10,000 words amplify rounding to
# 1.2e-3, 2.8e-3, 1.4e-4, as much as the lr change moves them: that case checks gross
# changes only (a mask drawn in another order moves it 0.56, 0.90, 0.067).
TOLERANCE = {
    ("toy", "float64"): {"loss": 1e-9, "sum": 1e-9, "sumsq": 1e-10},
    ("ptb", "float64"): {"loss": 1e-9, "sum": 1e-9, "sumsq": 1e-10},
    ("toy", "float32"): {"loss": 1e-5, "sum": 3e-5, "sumsq": 2e-5},
    ("ptb", "float32"): {"loss": 2e-2, "sum": 5e-2, "sumsq": 3e-3},
}


def deviation(got: dict, pin: dict) -> dict[str, float]:
    """The largest deviation of ``got`` from ``pin`` in each of TOLERANCE's measures."""
    loss = max(abs(a - b) for a, b in zip(got["losses"], pin["losses"]))
    s = max(abs(g[0] - p[0]) / math.sqrt(p[1]) for g, p in
            zip(got["stats"].values(), pin["stats"].values()))
    sq = max(abs(g[1] - p[1]) / p[1] for g, p in zip(got["stats"].values(), pin["stats"].values()))
    return {"loss": loss, "sum": s, "sumsq": sq}


def tolerance_failures(got: dict, pin: dict, which: str, dtype: str) -> list[str]:
    """What is off between a run and its pin (corpus ``which``) beyond rounding (empty:
    the same path)."""
    if list(got["stats"]) != list(pin["stats"]) or len(got["losses"]) != len(pin["losses"]):
        return ["not the same parameters or number of losses"]
    failures = [] if got["rng"] == pin["rng"] else [f"generator state {got['rng']} != {pin['rng']}"]
    dev = deviation(got, pin)
    tol = TOLERANCE[which, dtype]
    failures += [f"{k} moved {v:.3g} > {tol[k]:.3g}" for k, v in dev.items()
                 if not v <= tol[k]]                     # NaN fails
    return failures


def bit_failures(got: dict, pin: dict) -> list[str]:
    """What differs between a run and its pin in any bit (empty: identical)."""
    return [f"{k} differs" for k in ("losses", "digest", "rng") if got[k] != pin[k]]


# -- the tests ---------------------------------------------------------------------------

def _pins() -> dict:
    return json.loads(PINS_FILE.read_text())


def _check_here() -> str:
    """``bit-for-bit`` where this platform is the recording one, else ``tolerance``."""
    if not PINS_FILE.exists():                       # before the first ``record``
        return "unrecorded"
    return "bit-for-bit" if fingerprint() == _pins()["recorded_on"] else "tolerance"


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    return write_toy_corpus(tmp_path_factory.mktemp("pin") / "toy", words_per_split=TOY_WORDS)


def _data_dir(which, toy_dir, request) -> Path:
    return toy_dir if which == "toy" else request.getfixturevalue("ptb_dir")  # skip/fail w/o PTB


def _alone(*args, threads: int = 1) -> dict:
    """Run this file in a fresh process with ``threads`` BLAS threads (1, as recorded: a
    matrix product split across threads may round differently)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("check", [_check_here()])
@pytest.mark.parametrize("which, name, dtype", CASES)
def test_the_papers_path_is_pinned(which, name, dtype, check, toy_dir, request):
    """Bit for bit where recorded, within TOLERANCE elsewhere (the test id says which)."""
    got = _alone("run", which, _data_dir(which, toy_dir, request), name, dtype)
    pin = _pins()["cases"][f"{which}/{name}/{dtype}"]
    assert (got["platform"] == _pins()["recorded_on"]) == (check == "bit-for-bit")
    failures = bit_failures(got, pin) if check == "bit-for-bit" else \
        tolerance_failures(got, pin, which, dtype)
    assert not failures, f"the paper's path changed ({check} check): {failures}"


@pytest.mark.parametrize("name", ["medium_200", "naive_200"])
def test_the_trainer_takes_the_pinned_path(name, toy_dir, tmp_path):
    """``train`` itself, 20 steps from scratch with dropout, ends where the loop above
    does: the same generator state, and the same parameters (bit for bit: one machine,
    one process each)."""
    got = _alone("train", "toy", toy_dir, name, "float64", tmp_path / "run")
    loop = _alone("run", "toy", toy_dir, name, "float64")
    assert got["rng"] == loop["rng"] == _pins()["cases"][f"toy/{name}/float64"]["rng"]
    assert got["digest"] == loop["digest"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("change", CHANGES)
def test_a_changed_path_fails_the_tolerance_check(change, dtype, toy_dir):
    """Each small real change of the path is caught by the check that runs on other
    machines (so a pin that no longer holds bit for bit still bites)."""
    pin = _pins()["cases"][f"toy/medium_200/{dtype}"]
    got = _alone("run", "toy", toy_dir, "medium_200", dtype, change)
    assert tolerance_failures(got, pin, "toy", dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rounding_alone_passes_the_tolerance_check(dtype, toy_dir):
    """Two BLAS threads sum the matrix products in another order: other bits, the same
    path, within TOLERANCE."""
    one = _alone("run", "toy", toy_dir, "medium_200", dtype)
    two = _alone("run", "toy", toy_dir, "medium_200", dtype, threads=2)
    assert bit_failures(two, one), "two threads rounded alike here: nothing was shown"
    assert not tolerance_failures(two, one, "toy", dtype)
    assert not tolerance_failures(two, _pins()["cases"][f"toy/medium_200/{dtype}"], "toy", dtype)


# -- the runner (this file as a script) --------------------------------------------------

def run_case(which: str, data_dir: str, name: str, dtype: str, change: str | None = None) -> dict:
    corpus = load_ptb(data_dir, verify=which == "ptb")
    losses, params, rng = first_losses(CONFIGS[name], corpus, dtype, change=change)
    return {"losses": losses, "digest": params_digest(params), "rng": rng,
            "stats": param_stats(params), "platform": fingerprint()}


def train_case(which: str, data_dir: str, name: str, dtype: str, run_dir: str) -> dict:
    from zaremba_ref.checkpoint import load_checkpoint
    corpus = load_ptb(data_dir, verify=which == "ptb")
    config = CONFIGS[name].replace(vocab_size=corpus.vocab_size)
    with open(Path(run_dir).parent / "log", "w") as log:
        train(config, corpus, run_dir, dtype=dtype, seed=0, max_steps=STEPS, save_every=0,
              out=log)
    params, _, meta, _ = load_checkpoint(run_dir)
    return {"digest": params_digest(params), "rng": meta["rng"]["state"]["state"]}


def record(ptb_dir: str) -> None:
    """Write tests/pins.json: every case on this platform, one BLAS thread each."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        toy = write_toy_corpus(Path(tmp) / "toy", words_per_split=TOY_WORDS)
        for which, name, dtype in CASES:
            out = subprocess.run([sys.executable, __file__, "run", which,
                                  toy if which == "toy" else ptb_dir, name, dtype],
                                 capture_output=True, text=True, env=env, check=True)
            got = json.loads(out.stdout.splitlines()[-1])
            cases[f"{which}/{name}/{dtype}"] = {k: got[k] for k in ("losses", "digest", "rng",
                                                                     "stats")}
            print(f"{which}/{name}/{dtype}: {got['digest']}", file=sys.stderr)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    PINS_FILE.write_text(json.dumps({"recorded_on": got["platform"], "recorded_at": commit,
                                     "blas_threads": 1, "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    if what == "record":
        record(args[0] if args else os.environ["ZAREMBA_REF_DATA"])
    else:
        print(json.dumps({"run": run_case, "train": train_case}[what](*args)))
