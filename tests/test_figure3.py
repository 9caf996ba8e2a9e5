"""Figure 3 as code: the count of dropout operators on the path from the word at
t - k to the prediction at t, and the claim checked on the model itself.

How the model is probed: float64, explicit masks. The words of a window are all
distinct (V = B*T), so the embedding's gradient row of the word at step s is
dloss/dh^0_s for that position alone. The top mask (mask L, the softmax's input) is
zero at every step but t, so every other prediction sees a zero input and the
gradient reaching the network is that of the loss at step t alone. "Information
from t - k reaches t" means that gradient is non-zero; "is cut" means it is
exactly zero, which the exact zeros of the masks make an exact test.
"""

from __future__ import annotations

import numpy as np
import pytest

import zaremba_ref
from zaremba_ref import dropout_crossings, init_params, loss_and_grads
from zaremba_ref.figure3 import path_masks, path_only_masks

B, T, H = 2, 6, 5


def model(L: int, seed: int = 0, forget_closed: bool = False) -> dict:
    """A random float64 model whose words in one window are all distinct (V = B*T).
    ``forget_closed``: forget-gate bias -1000, so f = 0 exactly and the cell forgets
    at every step: information crosses time only through h, the connection that
    Figure 3 draws and that naive dropout drops."""
    params = init_params(B * T, H, L, init_scale=0.5, seed=seed, dtype=np.float64)
    if forget_closed:
        for l in range(1, L + 1):
            params[f"l{l}.b_x"][H:2 * H] = -1000.0       # block 1 of i, f, o, g
    return params


WORDS = np.arange(B * T).reshape(B, T)                   # distinct words (B, T)
TARGETS = np.random.default_rng(0).integers(0, B * T, (B, T))


def grad_at(params: dict, masks: list, mode: str, s: int) -> np.ndarray:
    """dloss/dh^0_s, the gradient at the word of step s, for each row (B, H)."""
    _, grads, _ = loss_and_grads(params, WORDS, TARGETS, None, masks, mode=mode)
    return grads["embedding"][WORDS[:, s]]


# -- the count -----------------------------------------------------------------------

@pytest.mark.parametrize("L", [1, 2, 3, 5])
def test_zaremba_crosses_L_plus_1_at_every_distance(L):
    assert [dropout_crossings("zaremba", L, k) for k in range(100)] == [L + 1] * 100


@pytest.mark.parametrize("L", [1, 2, 3])
def test_naive_grows_strictly_with_distance(L):
    counts = [dropout_crossings("naive", L, k) for k in range(100)]
    assert counts[0] == L + 1
    assert all(b > a for a, b in zip(counts, counts[1:]))
    assert counts == [L + 1 + k for k in range(100)]


def test_none_and_bad_arguments():
    assert dropout_crossings("none", 2, 7) == 0
    for bad in (("other", 2, 1), ("zaremba", 0, 1), ("naive", 2, -1)):
        with pytest.raises(ValueError):
            dropout_crossings(*bad)
    with pytest.raises(ValueError):
        path_masks("zaremba", 2, t=3, distance=4)        # starts before the window
    assert zaremba_ref.dropout_crossings is dropout_crossings


@pytest.mark.parametrize("mode", ["zaremba", "naive", "none"])
@pytest.mark.parametrize("L", [1, 2, 3])
def test_the_path_has_as_many_masks_as_crossings(mode, L):
    for k in range(T):
        for layer in range(1, L + 1):
            entries = path_masks(mode, L, T - 1, k, layer)
            assert len(entries) == len(set(entries)) == dropout_crossings(mode, L, k)


def test_path_entries_spelled_out():
    # L = 2, t = 5, k = 3, along layer 1: up at step 2 into layer 1, along layer 1
    # over steps 3, 4, 5 (naive: mask L+1 = 3), up at step 5 into layer 2 and the softmax
    assert path_masks("zaremba", 2, 5, 3) == [(0, 2), (1, 5), (2, 5)]
    assert path_masks("naive", 2, 5, 3) == [(0, 2), (1, 5), (2, 5), (3, 3), (3, 4), (3, 5)]
    assert path_masks("naive", 2, 5, 3, layer=2) == [(0, 2), (1, 2), (2, 5),
                                                     (4, 3), (4, 4), (4, 5)]


# -- the claim, on the model -----------------------------------------------------------

def _check_path_is_sufficient_and_each_entry_necessary(params, mode, L, k, layer):
    s, t = T - 1 - k, T - 1
    masks = path_only_masks(mode, L, B, T, H, k, layer)
    entries = path_masks(mode, L, t, k, layer)
    g = grad_at(params, masks, mode, s)
    assert np.abs(g).max(axis=1).min() > 1e-12, \
        f"the word at t-{k} does not reach t through the {len(entries)} kept entries"
    for mask_index, step in entries:
        cut = [m.copy() for m in masks]
        cut[mask_index][:, step, :] = 0
        assert not grad_at(params, cut, mode, s).any(), (mask_index, step)


@pytest.mark.parametrize("L", [1, 2, 3])
def test_zaremba_L_plus_1_mask_entries_carry_any_distance(L):
    """Every mask entry zero but the L + 1 of the path: the word at t - k still reaches
    the prediction at t, for every k in the window, and each of the L + 1 is needed.
    The forget gate is open (a generic LSTM)."""
    params = model(L)
    for k in range(T):
        for layer in range(1, L + 1):
            _check_path_is_sufficient_and_each_entry_necessary(params, "zaremba", L, k, layer)


@pytest.mark.parametrize("L", [1, 2])
def test_with_h_the_only_carrier_zaremba_still_needs_L_plus_1(L):
    params = model(L, forget_closed=True)
    for k in range(T):
        _check_path_is_sufficient_and_each_entry_necessary(params, "zaremba", L, k, 1)


@pytest.mark.parametrize("L", [1, 2])
def test_with_h_the_only_carrier_naive_needs_L_plus_1_plus_k(L):
    """Forget gate closed: naive dropout sits on every step the information travels;
    L + 1 + k entries are needed, each one of them (zero one: the gradient is 0)."""
    params = model(L, forget_closed=True)
    for k in range(T):
        for layer in range(1, L + 1):
            _check_path_is_sufficient_and_each_entry_necessary(params, "naive", L, k, layer)
    for k in range(1, T):       # the L + 1 vertical entries alone do not carry it a step
        masks = path_only_masks("naive", L, B, T, H, k)
        for m in masks[L + 1:]:
            m[:] = 0
        assert not grad_at(params, masks, "naive", T - 1 - k).any()


def test_honest_caveat_the_cell_escapes_naive_dropout():
    """With the forget gate open, the cell's self-loop c_{t-1} -> c_t carries the word
    across time with no recurrent mask at all, in naive mode too: Figure 3's count is
    along h, and our naive mode (like the earlier work) drops h only."""
    L, k = 2, T - 1
    params = model(L)
    masks = path_only_masks("naive", L, B, T, H, k)
    for m in masks[L + 1:]:
        m[:] = 0                                       # every recurrent connection dropped
    assert np.abs(grad_at(params, masks, "naive", T - 1 - k)).max() > 1e-12


def _random_masks(mode, L, seed, t):
    """Random masks (p = 0.5, values 0 or 2); the softmax sees step t only."""
    rng = np.random.default_rng(seed)
    masks = zaremba_ref.draw_masks(rng, 0.5, mode, L, B, T, H, np.float64)
    masks[L][:] = 0
    masks[L][:, t] = 2.0
    return masks


@pytest.mark.parametrize("L", [1, 2])
def test_naive_recurrent_masks_between_t_minus_k_and_t_change_the_gradient(L):
    k, t = 3, T - 1
    params = model(L)
    masks = _random_masks("naive", L, 1, t)
    g = grad_at(params, masks, "naive", t - k)
    assert np.abs(g).max() > 1e-12
    for step in range(t - k + 1, t + 1):                # the steps crossed: t-k+1 .. t
        for layer in range(1, L + 1):
            flipped = [m.copy() for m in masks]
            flipped[L + layer][:, step] = 2.0 - flipped[L + layer][:, step]
            assert np.abs(grad_at(params, flipped, "naive", t - k) - g).max() > 1e-12, \
                (layer, step)


@pytest.mark.parametrize("mode", ["zaremba", "naive"])
def test_what_the_gradient_depends_on(mode):
    """Exactly unchanged: every mask after step t (they act after the prediction).
    Changed in value, though not in the count: a mask entry before t - k, off the
    path. It changes the state the word meets, and the LSTM is not linear; what Figure
    3 counts is how many masks multiply the path, not which values flow along it."""
    L, k, t = 2, 2, T - 2
    params = model(L)
    masks = _random_masks(mode, L, 2, t)
    g = grad_at(params, masks, mode, t - k)
    assert np.abs(g).max() > 1e-12
    after = [m.copy() for m in masks]
    for m in after[:L] + after[L + 1:]:
        m[:, t + 1:] = 2.0 - m[:, t + 1:]               # flip every entry after t
    np.testing.assert_array_equal(grad_at(params, after, mode, t - k), g)
    before = [m.copy() for m in masks]
    before[1][:, 0] = 2.0 - before[1][:, 0]              # layer 2's input at step 0 < t - k
    assert np.abs(grad_at(params, before, mode, t - k) - g).max() > 1e-12
