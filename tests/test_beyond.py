"""Beyond the paper: variational dropout, tied embeddings, weight drop.

For each option: finite differences for every parameter and the initial state
(float64, Hypothesis), the option's own contract, float32 against float64, the GPU
code path through the cupy test double, and (in test_oracle_beyond below) PyTorch
autograd on a model built the way those papers' code builds it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zaremba_ref as z
from zaremba_ref import CPU
from zaremba_ref.dropout import draw_weight_masks
from zaremba_ref.figure3 import mask_applications, path_masks, path_only_masks
from zaremba_ref.model import drop_weights, softmax_key


def case(rng, V, H, L, B, T, mode="zaremba", tie=False, weight_drop=False, p=0.4,
         dtype=np.float64, scale=0.5):
    """Parameters, a window, a non-zero state, dstate, masks and weight masks."""
    params = z.init_params(V, H, L, scale, seed=int(rng.integers(1 << 30)), dtype=dtype,
                           tie_weights=tie)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = [tuple(rng.normal(size=(B, H)).astype(dtype) for _ in "hc") for _ in range(L)]
    dstate = [tuple(rng.normal(size=(B, H)).astype(dtype) for _ in "hc") for _ in range(L)]
    masks = z.draw_masks(rng, p, mode, L, B, T, H, dtype) or None
    wmasks = draw_weight_masks(rng, p, L, H, dtype) if weight_drop else None
    return params, x, y, state, dstate, masks, wmasks


def expected_names(L, tie):
    return set(z.param_names(L, tie)) | {f"state.{l}.{w}" for l in range(1, L + 1)
                                         for w in "hc"}


def check_all(params, x, y, state, dstate, masks, wmasks, mode, seed):
    errors = z.check_gradients(params, x, y, state, masks, mode=mode, dstate=dstate,
                               weight_masks=wmasks, max_entries=12, seed=seed)
    L = z.model.num_layers_of(params)
    assert set(errors) == expected_names(L, "softmax.W" not in params)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-6, (worst, errors[worst])


SIZES = dict(V=st.integers(2, 8), H=st.integers(1, 4), L=st.integers(1, 3),
             B=st.integers(1, 3), T=st.integers(1, 4), seed=st.integers(0, 2**31))


# -- finite differences, one test per option ---------------------------------------------

@settings(max_examples=12, deadline=None)
@given(**SIZES)
def test_variational_gradients_match_finite_differences(V, H, L, B, T, seed):
    rng = np.random.default_rng(seed)
    params, x, y, state, dstate, masks, _ = case(rng, V, H, L, B, T, "variational")
    check_all(params, x, y, state, dstate, masks, None, "variational", seed)


@settings(max_examples=12, deadline=None)
@given(**SIZES, mode=st.sampled_from(z.MODES))
def test_tied_gradients_match_finite_differences(V, H, L, B, T, seed, mode):
    rng = np.random.default_rng(seed)
    params, x, y, state, dstate, masks, _ = case(rng, V, H, L, B, T, mode, tie=True)
    check_all(params, x, y, state, dstate, masks, None, mode, seed)


@settings(max_examples=12, deadline=None)
@given(**SIZES, mode=st.sampled_from(z.MODES), tie=st.booleans())
def test_weight_drop_gradients_match_finite_differences(V, H, L, B, T, seed, mode, tie):
    rng = np.random.default_rng(seed)
    params, x, y, state, dstate, masks, wmasks = case(rng, V, H, L, B, T, mode, tie=tie,
                                                      weight_drop=True)
    check_all(params, x, y, state, dstate, masks, wmasks, mode, seed)


# -- variational dropout -----------------------------------------------------------------

def test_variational_masks_are_one_per_connection_per_window():
    L, B, T, H = 2, 20, 7, 30
    masks = z.draw_masks(np.random.default_rng(0), 0.25, "variational", L, B, T, H,
                         np.float32)
    assert len(masks) == 2 * L + 1 == z.num_masks("variational", L)
    assert all(m.shape == (B, H) and m.dtype == np.float32 for m in masks)
    np.testing.assert_allclose(np.unique(np.concatenate(masks)), [0, 1 / 0.75])
    # the recurrent masks at a rate of their own (Gal's grid): vertical first, then L
    masks = z.draw_masks(np.random.default_rng(0), 0.25, "variational", L, 400, T, H,
                         np.float64, recurrent_p=0.6)
    kept = [np.mean(m > 0) for m in masks]
    assert all(abs(k - 0.75) < 0.02 for k in kept[:L + 1])        # sd 0.004
    assert all(abs(k - 0.4) < 0.02 for k in kept[L + 1:])
    np.testing.assert_allclose(np.unique(masks[-1]), [0, 1 / 0.4])
    assert z.draw_masks(np.random.default_rng(0), 0.0, "variational", L, B, T, H,
                        np.float64) == []
    assert len(z.draw_masks(np.random.default_rng(0), 0.0, "variational", L, B, T, H,
                            np.float64, recurrent_p=0.5)) == 2 * L + 1


def test_variational_is_naive_with_each_mask_repeated_at_every_step():
    """The same mask at every step t: naive mode given the (B, H) masks repeated over
    the T steps computes the same loss, gradients and final state, bit for bit."""
    rng = np.random.default_rng(1)
    V, H, L, B, T = 9, 4, 2, 3, 6
    params, x, y, state, dstate, masks, _ = case(rng, V, H, L, B, T, "variational")
    got = z.loss_and_grads(params, x, y, state, masks, mode="variational", dstate=dstate)
    repeated = [np.repeat(m[:, None, :], T, axis=1) for m in masks]     # (B, T, H)
    want = z.loss_and_grads(params, x, y, state, repeated, mode="naive", dstate=dstate)
    assert got[0] == want[0]
    for k in params:
        np.testing.assert_array_equal(got[1][k], want[1][k], err_msg=k)
    for (h1, c1), (h2, c2) in zip(got[2], want[2]):
        np.testing.assert_array_equal(h1, h2)
        np.testing.assert_array_equal(c1, c2)


def test_variational_masks_drawn_from_the_generator_and_checked():
    rng = np.random.default_rng(2)
    params, x, y, state, _, _, _ = case(rng, 9, 4, 2, 3, 5)
    a = z.loss_and_grads(params, x, y, state, dropout=0.5, mode="variational",
                         rng=np.random.default_rng(7))[0]
    masks = z.draw_masks(np.random.default_rng(7), 0.5, "variational", 2, 3, 5, 4,
                         np.float64)
    assert a == z.loss_and_grads(params, x, y, state, masks, mode="variational")[0]
    with pytest.raises(ValueError, match=r"masks\[0\] has shape \(3, 5, 4\), expected "
                                         r"\(batch, hidden\) = \(3, 4\) in 'variational'"):
        z.loss_and_grads(params, x, y, state, [np.ones((3, 5, 4))] * 5, mode="variational")


# -- tied embeddings ---------------------------------------------------------------------

def test_tied_params_have_no_softmax_weight_and_the_gradient_sums_both_uses():
    """y = E D(h^L) + b_s: the same loss as an untied model whose W_s is a copy of E,
    and dL/dE = (its rows' gradient as the input) + (its gradient as W_s)."""
    rng = np.random.default_rng(3)
    V, H, L, B, T = 10, 4, 2, 3, 5
    params, x, y, state, dstate, masks, _ = case(rng, V, H, L, B, T, tie=True)
    assert list(params) == z.param_names(L, tie_weights=True) and "softmax.W" not in params
    assert softmax_key(params) == "embedding"
    untied = dict(params, **{"softmax.W": params["embedding"].copy()})
    assert softmax_key(untied) == "softmax.W"
    l1, g1, f1 = z.loss_and_grads(params, x, y, state, masks, dstate=dstate)
    l2, g2, f2 = z.loss_and_grads(untied, x, y, state, masks, dstate=dstate)
    assert l1 == l2 and "softmax.W" not in g1
    np.testing.assert_allclose(g1["embedding"], g2["embedding"] + g2["softmax.W"],
                               rtol=1e-13, atol=1e-16)
    assert np.abs(g2["softmax.W"]).max() > 1e-3 and np.abs(g2["embedding"]).max() > 1e-3
    for k in g2:
        if k not in ("embedding", "softmax.W", "state"):
            np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)
    np.testing.assert_array_equal(z.loss_only(params, x, y, state)[0],
                                  z.loss_only(untied, x, y, state)[0])


def test_tied_init_and_bad_params():
    p = z.init_params(50, 8, 2, 0.1, seed=3, tie_weights=True)
    q = z.init_params(50, 8, 2, 0.1, seed=3)
    assert set(q) - set(p) == {"softmax.W"}
    np.testing.assert_array_equal(p["embedding"], q["embedding"])
    with pytest.raises(ValueError, match=r"params\['softmax.W'\] has shape"):
        z.loss_and_grads(dict(p, **{"softmax.W": np.zeros((3, 8))}), np.zeros((1, 1), int),
                         np.zeros((1, 1), int))


# -- weight drop -------------------------------------------------------------------------

def test_weight_drop_runs_the_window_with_masked_W_h():
    """Layer l uses W_h * M_l at every step: the same loss as a model whose W_h is
    W_h * M_l; the gradient is taken with respect to W_h itself, so it is the other
    model's gradient times M_l (zero where the weight was dropped)."""
    rng = np.random.default_rng(4)
    V, H, L, B, T = 9, 4, 2, 3, 5
    params, x, y, state, dstate, masks, wmasks = case(rng, V, H, L, B, T, weight_drop=True)
    dropped = drop_weights(params, wmasks)
    assert dropped is not params and all(dropped[f"l{l}.W_h"] is not params[f"l{l}.W_h"]
                                         for l in (1, 2))
    np.testing.assert_array_equal(dropped["l1.W_h"], params["l1.W_h"] * wmasks[0])
    before = {k: v.copy() for k, v in params.items()}
    l1, g1, _ = z.loss_and_grads(params, x, y, state, masks, dstate=dstate,
                                 weight_masks=wmasks)
    l2, g2, _ = z.loss_and_grads(dropped, x, y, state, masks, dstate=dstate)
    assert l1 == l2
    for k in params:
        want = g2[k] * wmasks[int(k[1]) - 1] if k.endswith(".W_h") else g2[k]
        np.testing.assert_array_equal(g1[k], want, err_msg=k)
        np.testing.assert_array_equal(params[k], before[k], err_msg=k)  # untouched
    assert not g1["l1.W_h"][wmasks[0] == 0].any() and g1["l1.W_h"].any()
    ones = [np.ones_like(M) for M in wmasks]                  # all kept: no weight drop
    l3, g3, _ = z.loss_and_grads(params, x, y, state, masks, weight_masks=ones)
    l4, g4, _ = z.loss_and_grads(params, x, y, state, masks)
    assert l3 == l4 and all(np.array_equal(g3[k], g4[k]) for k in params)
    assert drop_weights(params, []) is params


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weight_masks_drawn_after_the_activation_masks(dtype):
    """Drawn from the caller's generator after the activation masks, in the
    parameters' dtype (a float64 draw would consume the stream differently)."""
    rng = np.random.default_rng(5)
    params, x, y, state, _, _, _ = case(rng, 9, 4, 2, 3, 5)
    params = {k: v.astype(dtype) for k, v in params.items()}
    state = [(h.astype(dtype), c.astype(dtype)) for h, c in state]
    a = z.loss_and_grads(params, x, y, state, dropout=0.5, weight_drop=0.3,
                         rng=np.random.default_rng(7))
    r = np.random.default_rng(7)
    masks = z.draw_masks(r, 0.5, "zaremba", 2, 3, 5, 4, dtype)
    wmasks = draw_weight_masks(r, 0.3, 2, 4, dtype)
    assert [M.shape for M in wmasks] == [(16, 4)] * 2
    np.testing.assert_allclose(np.unique(np.concatenate(wmasks)), [0, 1 / 0.7], rtol=1e-7)
    b = z.loss_and_grads(params, x, y, state, masks, weight_masks=wmasks)
    assert a[0] == b[0] and all(np.array_equal(a[1][k], b[1][k]) for k in params)
    assert draw_weight_masks(r, 0.0, 2, 4, dtype) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight_masks=[np.ones((16, 4))]), "weight_masks must be a list of 2 arrays"),
    (dict(weight_masks=[np.ones((16, 4)), np.ones((4, 16))]),
     "weight_masks[1] has shape (4, 16), expected (4 * hidden, hidden) = (16, 4) like l2.W_h"),
    (dict(weight_drop=1.0), "weight_drop must be in [0, 1)"),
    (dict(weight_drop=0.5), "weight_drop > 0 needs rng"),
])
def test_bad_weight_drop_arguments_raise_one_clear_error(kwargs, message):
    params = z.init_params(9, 4, 2, dtype=np.float64)
    with pytest.raises(ValueError) as e:
        z.loss_and_grads(params, np.zeros((2, 3), int), np.zeros((2, 3), int), **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


# -- float32 against float64 -------------------------------------------------------------

@pytest.mark.parametrize("mode, tie, wd", [("variational", False, False),
                                           ("zaremba", True, False),
                                           ("zaremba", False, True),
                                           ("variational", True, True)])
def test_float32_agrees_with_float64(mode, tie, wd):
    rng = np.random.default_rng(6)
    params, x, y, state, dstate, masks, wmasks = case(rng, 30, 16, 2, 4, 8, mode, tie, wd,
                                                      scale=0.3)
    f32 = lambda a: a.astype(np.float32)                                  # noqa: E731
    l64, g64, s64 = z.loss_and_grads(params, x, y, state, masks, mode=mode, dstate=dstate,
                                     weight_masks=wmasks)
    l32, g32, s32 = z.loss_and_grads(
        {k: f32(v) for k, v in params.items()}, x, y, [(f32(h), f32(c)) for h, c in state],
        [f32(m) for m in masks], mode=mode, dstate=[(f32(h), f32(c)) for h, c in dstate],
        weight_masks=None if wmasks is None else [f32(M) for M in wmasks])
    assert abs(l32 - l64) <= 1e-5 * abs(l64)
    for k in params:
        assert g32[k].dtype == np.float32
        assert np.abs(g32[k] - g64[k]).max() <= 1e-4 * np.abs(g64[k]).max(), k
    for (h32, c32), (h64, c64) in zip(s32, s64):
        np.testing.assert_allclose(h32, h64, atol=1e-5)
        np.testing.assert_allclose(c32, c64, atol=1e-5)


# -- the GPU code path, through the cupy test double -------------------------------------

@pytest.fixture
def gpu(builder, monkeypatch):
    import sys

    from fake_cupy import make_fake_cupy
    from zaremba_ref.cuda_backend import make_gpu_backend
    cupy = make_fake_cupy(builder)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return make_gpu_backend()


def run_on(backend, mode, c, dtype=np.float64):
    params, x, y, state, dstate, masks, wmasks = c
    put = lambda a: backend.asarray(np.array(a), dtype=dtype)            # noqa: E731
    pairs = lambda s: [(put(h), put(c)) for h, c in s]                   # noqa: E731
    params = {k: put(v) for k, v in params.items()}
    loss, grads, final = z.loss_and_grads(
        params, backend.asarray(x), backend.asarray(y), pairs(state),
        [put(m) for m in masks] if masks else None, mode=mode, dstate=pairs(dstate),
        weight_masks=None if wmasks is None else [put(M) for M in wmasks], backend=backend)
    out = {k: backend.to_numpy(g) for k, g in grads.items() if k != "state"}
    out.update({f"h{l}": backend.to_numpy(h) for l, (h, _) in enumerate(final)})
    norm = z.sgd_step(params, grads, 0.7, 0.5, loss_scale=4.0, backend=backend)
    out.update({f"param {k}": backend.to_numpy(v) for k, v in params.items()})
    return loss, norm, out


@pytest.mark.parametrize("mode, tie, wd", [("variational", False, False),
                                           ("zaremba", True, False),
                                           ("naive", False, True),
                                           ("variational", True, True)])
def test_the_gpu_path_matches_numpy(gpu, mode, tie, wd):
    c = case(np.random.default_rng(7), 11, 5, 2, 3, 4, mode, tie, wd)
    want = run_on(CPU, mode, c)
    got = run_on(gpu, mode, c)
    assert "dropout" in {k.name for k in gpu.xp.kernels}     # masks through the one kernel
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    assert got[1] == pytest.approx(want[1], rel=1e-12)
    assert got[2].keys() == want[2].keys()
    for k in want[2]:
        np.testing.assert_allclose(got[2][k], want[2][k], rtol=1e-12, atol=1e-12, err_msg=k)


@pytest.mark.gpu
@pytest.mark.parametrize("mode, tie, wd", [("variational", False, False),
                                           ("zaremba", True, False),
                                           ("naive", False, True),
                                           ("variational", True, True)])
def test_cupy_matches_numpy_for_every_option(mode, tie, wd):
    """On a real device (-m gpu): CuPy float64 equals NumPy float64 to 1e-10."""
    from conftest import require_cuda_device
    require_cuda_device()
    c = case(np.random.default_rng(8), 50, 16, 2, 4, 5, mode, tie, wd)
    want = run_on(CPU, mode, c)
    got = run_on(z.get_backend("gpu"), mode, c)
    assert got[0] == pytest.approx(want[0], rel=1e-10)
    for k in want[2]:
        np.testing.assert_allclose(got[2][k], want[2][k], rtol=1e-10, atol=1e-10, err_msg=k)


def test_train_step_with_every_option_on_the_gpu_path_matches_numpy(gpu):
    """Masks and weight masks drawn from the backend's generator, as the trainer does."""
    from conftest import assert_train_steps_match
    from zaremba_ref.config import Config
    config = Config(num_layers=2, hidden_size=4, num_steps=5, batch_size=2, dropout=0.5,
                    mode="variational", tie_weights=True, weight_drop=0.3, vocab_size=9,
                    max_grad_norm=1.0)
    assert_train_steps_match(config, gpu, tie_weights=True)


# -- Figure 3, variational ---------------------------------------------------------------

@pytest.mark.parametrize("L", [1, 2, 3])
def test_variational_meets_L_plus_2_distinct_masks_at_any_distance(L):
    assert z.dropout_crossings("variational", L, 0) == L + 1
    assert [z.dropout_crossings("variational", L, k) for k in range(1, 50)] == [L + 2] * 49
    assert [mask_applications("variational", L, k) for k in range(50)] == \
        [L + 1 + k for k in range(50)]
    for mode in z.MODES:                  # zaremba, naive: every application its own draw
        for k in range(6):
            for layer in range(1, L + 1):
                entries = path_masks(mode, L, 5, k, layer)
                distinct = {m for m, _ in entries} if mode == "variational" else set(entries)
                assert len(entries) == mask_applications(mode, L, k)
                assert len(distinct) == z.dropout_crossings(mode, L, k)
    for mode in ("zaremba", "naive", "none"):
        assert [mask_applications(mode, L, k) for k in range(9)] == \
            [z.dropout_crossings(mode, L, k) for k in range(9)]
    with pytest.raises(ValueError):
        mask_applications("other", L, 1)


@pytest.mark.parametrize("L", [1, 2])
def test_on_the_model_the_distinct_variational_masks_are_each_necessary(L):
    """With the forget gate closed (h the only carrier across time), the word at T-1-k
    reaches the top layer's final state h^L_T through the masks on its path, those
    (B, H) masks only (every other mask zero), at every distance k; zeroing any one of
    them cuts it exactly. k >= 1 needs the path layer's one recurrent mask, the same
    one at all k steps: L + 2 distinct masks on the way to the softmax (L + 1 here,
    where the probe ends at h^L_T, below the softmax's mask L)."""
    B, T, H = 2, 6, 5
    params = z.init_params(B * T, H, L, init_scale=0.5, seed=0, dtype=np.float64)
    for l in range(1, L + 1):
        params[f"l{l}.b_x"][H:2 * H] = -1000.0                 # f = 0 exactly
    words = np.arange(B * T).reshape(B, T)
    targets = np.random.default_rng(0).integers(0, B * T, (B, T))
    dh = np.random.default_rng(1).normal(size=(B, H))
    dstate = [(np.zeros((B, H)), np.zeros((B, H)))] * (L - 1) + [(dh, np.zeros((B, H)))]

    def grad_at(masks, s):
        _, grads, _ = z.loss_and_grads(params, words, targets, None, masks,
                                       mode="variational", dstate=dstate)
        return grads["embedding"][words[:, s]]

    for k in range(T):
        for layer in range(1, L + 1):
            masks = path_only_masks("variational", L, B, T, H, k, layer)
            masks[L][:] = 0                                    # no loss: the probe is dh
            on_path = sorted({m for m, _ in path_masks("variational", L, T - 1, k, layer)}
                             - {L})
            assert len(on_path) == z.dropout_crossings("variational", L, k) - 1
            assert np.abs(grad_at(masks, T - 1 - k)).max(axis=1).min() > 1e-12, (k, layer)
            for m in on_path:
                cut = [a.copy() for a in masks]
                cut[m][:] = 0
                assert not grad_at(cut, T - 1 - k).any(), (k, layer, m)


# -- the command line, checkpoints, trace ------------------------------------------------

# The Config fields of the code before these options (commit 527d397): a checkpoint it
# wrote holds exactly these.
OLD_FIELDS = ("num_layers", "hidden_size", "num_steps", "batch_size", "init_scale", "dropout",
              "mode", "lr", "decay_start", "lr_decay", "max_epoch", "max_grad_norm",
              "objective", "vocab_size", "test_batch_size")


def train_args(data, out, *extra):
    return [str(a) for a in ["train", "--data-dir", data, "--no-verify-data", "--out", out,
                             "--hidden-size", 12, "--batch-size", 4, "--num-steps", 5,
                             "--max-epoch", 2, "--dropout", 0.3, "--decay-start", 1,
                             "--save-every", 0, "--seed", 3, *extra]]


def final_params(run):
    from zaremba_ref.checkpoint import load_checkpoint
    return load_checkpoint(run)[0]


@pytest.mark.parametrize("option", [["--mode", "variational"], ["--tie-weights"],
                                    ["--weight-drop", "0.4"],
                                    ["--mode", "variational", "--tie-weights",
                                     "--weight-drop", "0.4"]])
def test_each_option_trains_from_the_cli_and_resumes_bit_for_bit(toy_data, tmp_path, option):
    from zaremba_ref.checkpoint import load_checkpoint
    from zaremba_ref.cli import main
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(train_args(toy_data, ref, *option, "--max-steps", 6)) == 0
    assert main(train_args(toy_data, run, *option, "--max-steps", 3)) == 0
    assert main(train_args(toy_data, run, *option, "--max-steps", 6, "--resume")) == 0
    a, b = final_params(ref), final_params(run)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    config = load_checkpoint(run)[2]["config"]
    assert ("softmax.W" in a) == ("--tie-weights" not in option) == (not config["tie_weights"])
    assert config["mode"] == ("variational" if "variational" in option else "zaremba")
    assert config["weight_drop"] == (0.4 if "--weight-drop" in option else 0.0)
    plain = tmp_path / "plain"                               # the option did change the run
    assert main(train_args(toy_data, plain, "--max-steps", 6)) == 0
    c = final_params(plain)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_a_tied_run_evaluates_samples_and_traces(toy_data, tmp_path, capsys):
    from zaremba_ref.cli import main
    run = tmp_path / "run"
    assert main(train_args(toy_data, run, "--tie-weights", "--max-steps", 5)) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data-dir", str(toy_data), "--no-verify-data"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["test_ppl"] > 1
    assert main(["sample", str(run), "--words", "5", "--seed", "1"]) == 0
    capsys.readouterr()
    out = tmp_path / "trace.npz"
    assert main(["trace", "--checkpoint", str(run), "--data-dir", str(toy_data),
                 "--no-verify-data", "--dropout", "0.3", "--mode", "variational", "--out",
                 str(out)]) == 0
    with np.load(out) as t:
        assert "grad.softmax.W" not in t.files and "grad.embedding" in t.files
        assert t["mask.0"].shape == (5, 4, 12)                       # (T, B, H), repeated
        assert (t["mask.0"] == t["mask.0"][0]).all()                 # the same at each step


def test_a_checkpoint_written_before_these_options_resumes_bit_for_bit(toy_data, tmp_path,
                                                                       capsys):
    """The old code's checkpoint has none of the new fields: they count as their defaults
    (the paper's behaviour) and the run continues exactly as an uninterrupted one."""
    from zaremba_ref.checkpoint import load_checkpoint, save_checkpoint
    from zaremba_ref.cli import main
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(train_args(toy_data, ref, "--max-steps", 8)) == 0
    assert main(train_args(toy_data, run, "--max-steps", 4)) == 0
    params, state, meta, vocab = load_checkpoint(run)
    meta["config"] = {k: v for k, v in meta["config"].items() if k in OLD_FIELDS}
    assert set(meta["config"]) == set(OLD_FIELDS)
    meta.pop("format")
    save_checkpoint(run, params, state, meta, vocab)
    capsys.readouterr()
    assert main(train_args(toy_data, run, "--tie-weights", "--max-steps", 8, "--resume")) == 2
    err = capsys.readouterr().err
    assert "tie_weights: checkpoint False vs command line True" in err and err.count("\n") == 1
    assert main(train_args(toy_data, run, "--max-steps", 8, "--resume")) == 0
    a, b = final_params(ref), final_params(run)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args, message", [
    (["--weight-drop", "1.5"], "--weight-drop must be in [0, 1), got 1.5"),
    (["--weight-drop", "-0.1"], "--weight-drop must be in [0, 1), got -0.1"),
    (["--mode", "locked"], "--mode must be zaremba, naive, variational or none, got 'locked'"),
])
def test_bad_option_values_give_one_line_errors(toy_data, tmp_path, capsys, args, message):
    from zaremba_ref.cli import main
    assert main(train_args(toy_data, tmp_path / "run", *args)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_bool_fields_are_switches_on_the_command_line(capsys):
    from zaremba_ref.cli import build_parser, config_from_args
    parse = lambda *a: build_parser().parse_args(["train", *a])       # noqa: E731
    assert config_from_args(parse()).tie_weights is False             # the preset's
    assert config_from_args(parse("--tie-weights")).tie_weights is True
    assert config_from_args(parse("--no-tie-weights")).tie_weights is False
    with pytest.raises(SystemExit) as e:
        parse("--tie-weights", "false")                               # a switch takes no value
    assert e.value.code == 2 and "unrecognized arguments: false" in capsys.readouterr().err
