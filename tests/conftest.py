"""Shared fixtures: a small synthetic corpus in PTB's file format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from hypothesis import Phase, settings

# --hypothesis-profile fuzz-debug: report a failure as found, without shrinking it (the
# fuzzed command lines of test_faults.py shrink slowly)
settings.register_profile("fuzz-debug", phases=[Phase.explicit, Phase.reuse, Phase.generate])

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


@pytest.fixture
def toy_data(tmp_path: Path) -> Path:
    return write_toy_corpus(tmp_path / "toy")


@pytest.fixture
def ptb_dir() -> Path:
    """The real PTB directory from $ZAREMBA_REF_DATA, or skip."""
    d = os.environ.get("ZAREMBA_REF_DATA")
    if not d or not (Path(d) / "ptb.train.txt").exists():
        pytest.skip("real PTB not available: set ZAREMBA_REF_DATA=DIR (CI sets it to "
                    "../shared/data/ptb)")
    return Path(d)


@pytest.fixture(scope="session")
def builder(tmp_path_factory):
    """Compiles the CUDA kernel bodies for the CPU (tests/fake_cupy.py), each kernel and
    dtype once per session; skips without a C++ compiler."""
    from fake_cupy import Builder, find_compiler
    if find_compiler() is None:
        pytest.skip("no C++ compiler (g++ or c++, or $CXX): the CUDA kernel bodies are "
                    "tested by compiling them for the CPU")
    return Builder(tmp_path_factory.getbasetemp() / "cpu_kernels")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with the reason; under CI=true (CI must run everything) fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a skip here is a failure)")
    pytest.skip(reason)
