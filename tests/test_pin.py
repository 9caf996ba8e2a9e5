"""The paper's path, pinned bit for bit: the first 20 training losses, the final
parameters' digest and the dropout generator's state, recorded before the options
beyond the paper (variational dropout, tied embeddings, weight drop) were added.

A run trained before those options (the Table 1 medium run) resumes on the new code,
so the default path must not change by one bit, nor the way the dropout masks draw
from the generator. The values below are exact (float repr), recorded with the code
of commit 527d397. If one of them changes, the paper's path changed; do not update
them unless that is the intent.

Exactness holds on one machine and one BLAS with one thread (each case runs in a
fresh process with OPENBLAS_NUM_THREADS=1, as recorded); another CPU (another
OpenBLAS kernel) may round a matrix product differently. The toy corpus cases run everywhere, the
PTB cases where $ZAREMBA_REF_DATA points to the real corpus.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zaremba_ref.backend import CPU
from zaremba_ref.config import PRESETS
from zaremba_ref.data import batchify, load_ptb, windows
from zaremba_ref.model import init_params, zero_state
from zaremba_ref.optim import learning_rate
from zaremba_ref.train import params_digest, train, train_step

from conftest import REPO, write_toy_corpus

STEPS = 20
SMALL = PRESETS["small"]
MEDIUM_200 = PRESETS["medium"].replace(hidden_size=200)      # dropout 0.5, zaremba mode
NAIVE_200 = MEDIUM_200.replace(mode="naive")
CONFIGS = {"small": SMALL, "medium_200": MEDIUM_200, "naive_200": NAIVE_200}


def first_losses(config, corpus, dtype, seed=0, steps=STEPS):
    """The training loop of ``train.train`` for its first ``steps`` windows: the losses,
    the parameters' digest, and the generator's raw state after them."""
    config = config.replace(vocab_size=corpus.vocab_size)
    params = init_params(config.vocab_size, config.hidden_size, config.num_layers,
                         config.init_scale, seed=seed, dtype=np.dtype(dtype))
    rng = CPU.rng(seed)
    state = zero_state(params, config.batch_size)
    lr = learning_rate(1, config.lr, config.decay_start, config.lr_decay)
    losses = []
    data = batchify(corpus.train, config.batch_size)
    for _, (x, y) in zip(range(steps), windows(data, config.num_steps)):
        loss, _, state = train_step(params, x, y, state, config, lr, rng)
        losses.append(loss)
    return losses, params_digest(params), rng.bit_generator.state["state"]["state"]


# (corpus, config, dtype) -> (20 losses, params digest, PCG64 state after 20 steps)
PINNED = {
    ("ptb", "small", "float64"): (
        [9.20790641146996, 8.732595374800605, 9.729645594386225, 8.557282770355563,
         9.996904106571945, 8.335071334269301, 8.279544159069472, 7.946522142228335,
         8.45859611807592, 7.769695629284872, 7.8050794338691984, 7.499239491216124,
         7.40939550546078, 7.582541891863997, 7.50589311678589, 7.7063898479126856,
         7.123208637503008, 7.430512768106077, 7.889179827423741, 7.397392712444015],
        "71525978f0be", 35399562948360463058890781895381311971),
    ("ptb", "medium_200", "float64"): (
        [9.210615092342183, 8.706202046210063, 7.9970485446935395, 8.55992450659079,
         7.752441267738244, 8.794488213266796, 7.816530743165545, 8.096770363774867,
         7.808323907291298, 7.3905767486902265, 7.803032759323391, 7.410792359995789,
         7.379515132106701, 7.402283221068142, 7.370537232044469, 7.509456065922012,
         7.322782660678609, 7.571490047030576, 7.397006298607895, 7.5126561839062145],
        "7610dda40702", 42762139311194404558579831990606138211),
    ("ptb", "medium_200", "float32"): (
        [9.209664635941182, 8.699493549823668, 8.065439100836208, 8.540647561212586,
         7.739900335345901, 8.25722078321591, 7.987945240533075, 7.446448973204242,
         7.928264243522829, 7.539559450294179, 7.76611646356632, 7.260773502573042,
         7.413647493320129, 7.3441980053688765, 7.6455593603832055, 7.470932591641058,
         7.487460351499833, 7.496472690393132, 7.54202612892697, 7.4585489889881185],
        "e4283324e9cc", 35946671217624535869033600267186493091),
    ("ptb", "naive_200", "float64"): (
        [9.210540554277403, 8.704780098596993, 8.009565104637277, 8.560386483148381,
         7.780199213020486, 8.471185933941838, 7.878739801301868, 7.887695892829813,
         7.835654846362991, 7.586684344593892, 7.759530622503954, 7.293830544818977,
         7.409176822930227, 7.357932254638259, 7.7253126575186615, 7.4821405065078865,
         7.367753667421717, 7.410399014079012, 7.100410021034784, 7.418202514300821],
        "c537f70c255e", 194073672117621351020165748573278108771),
    ("toy", "small", "float64"): (
        [3.7167960541027054, 3.5951790392613203, 4.218328823880735, 3.755671961898019,
         3.913059229938226, 3.8456179364855587, 3.869942491870743, 3.8967079989976923,
         3.706978375728431, 3.86235847187421, 3.6825621788949023, 3.6718811829971583,
         4.0435365218191865, 3.7587596860695087, 3.81201377524754, 4.082983978413853,
         3.7983327589751106, 3.6607295360329313, 3.765038729637151, 3.6208680903203483],
        "77e4b9f57ae6", 35399562948360463058890781895381311971),
    ("toy", "medium_200", "float64"): (
        [3.7140458737220756, 3.5362805304235922, 3.7216711737343564, 3.5920926026490556,
         3.7181522520309267, 3.662964959567825, 3.6194228026627377, 3.776873646465433,
         3.748036534798915, 3.7842415016628332, 3.691081360483496, 3.6678417697240717,
         3.76108544818419, 3.8090045603736793, 3.792355576266362, 3.6485922591017106,
         3.644102180939438, 3.6804400557048185, 3.7746275658243382, 3.7423829170542553],
        "eb3ca41e678a", 42762139311194404558579831990606138211),
    ("toy", "medium_200", "float32"): (
        [3.7141836661816265, 3.538170071386851, 3.6990631828069906, 3.58489900895269,
         3.766992852261421, 3.6484202682895583, 3.6179226553529693, 3.7284194302915705,
         3.7661558808467155, 3.7402608227322363, 3.693477920532232, 3.677086368830977,
         3.734825521947387, 3.732998131407472, 3.7607710849269553, 3.8113207598044574,
         3.661828469535135, 3.634292085163669, 3.8118653222038663, 3.666350517278818],
        "be4345e6fa48", 35946671217624535869033600267186493091),
    ("toy", "naive_200", "float64"): (
        [3.714067578527761, 3.5380363713251217, 3.7123665263685934, 3.593320117097782,
         3.723433472040229, 3.6609276856034363, 3.6220148453577568, 3.7747616040008065,
         3.7547017515410115, 3.78447851658736, 3.6883053761714057, 3.657080011762321,
         3.788837882037496, 3.683485111455766, 3.8115925547219494, 3.6474678227059067,
         3.6725437916713006, 3.6186738144596036, 3.7952069576677903, 3.6936183742862028],
        "9162a43ee515", 194073672117621351020165748573278108771),
}


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    return write_toy_corpus(tmp_path_factory.mktemp("pin") / "toy",
                            words_per_split=(30_000, 2_000, 2_000))


def _data_dir(which, toy_dir, request) -> Path:
    return toy_dir if which == "toy" else request.getfixturevalue("ptb_dir")  # skips w/o PTB


def _alone(*args) -> dict:
    """Run this file in a fresh process with one BLAS thread, as the values were
    recorded: a matrix product split across threads may round differently."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("which, name, dtype", list(PINNED))
def test_the_papers_path_is_pinned_bit_for_bit(which, name, dtype, toy_dir, request):
    got = _alone("losses", which, _data_dir(which, toy_dir, request), name, dtype)
    want_losses, want_digest, want_rng = PINNED[which, name, dtype]
    assert got["losses"] == want_losses
    assert got["digest"] == want_digest
    assert got["rng"] == want_rng


@pytest.mark.parametrize("name", ["medium_200", "naive_200"])
def test_the_trainer_takes_the_pinned_path(name, toy_dir, tmp_path):
    """``train`` itself, 20 steps from scratch with dropout: the same parameters and the
    same generator state as the loop above (so the trainer's own path is pinned too)."""
    got = _alone("train", "toy", toy_dir, name, "float64", tmp_path / "run")
    _, want_digest, want_rng = PINNED["toy", name, "float64"]
    assert got["digest"] == want_digest
    assert got["rng"] == want_rng


def _main(what: str, which: str, data_dir: str, name: str, dtype: str,
          run_dir: str | None = None) -> dict:
    corpus = load_ptb(data_dir, verify=which == "ptb")
    if what == "losses":
        losses, digest, rng = first_losses(CONFIGS[name], corpus, dtype)
        return {"losses": losses, "digest": digest, "rng": rng}
    from zaremba_ref.checkpoint import load_checkpoint
    config = CONFIGS[name].replace(vocab_size=corpus.vocab_size)
    with open(Path(run_dir).parent / "log", "w") as log:
        train(config, corpus, run_dir, dtype=dtype, seed=0, max_steps=STEPS, save_every=0,
              out=log)
    params, _, meta, _ = load_checkpoint(run_dir)
    return {"digest": params_digest(params), "rng": meta["rng"]["state"]["state"]}


if __name__ == "__main__":
    print(json.dumps(_main(*sys.argv[1:])))
