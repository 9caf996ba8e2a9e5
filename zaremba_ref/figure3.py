"""Figure 3 of the paper as code: how many dropout operators the information from
one word passes through on its way to a later prediction.

The paper (section 3.2, Figure 3): "The thick line shows a typical path of
information flow in the LSTM. The information is affected by dropout L + 1 times,
where L is depth of network." Dropping the recurrent connections instead would
corrupt it once more for every time step it travels.

The graph of Figure 3. Nodes are (layer, time), layer 0 the word's embedding and
layer L+1 the softmax. An edge goes *up*, (l-1, s) -> (l, s), through mask l-1 at
step s, or *across*, (l, s-1) -> (l, s) for 1 <= l <= L, along the recurrent
connection h^l_{s-1} -> h^l_s. Dropout sits on every up edge (modes zaremba and
naive) and on every across edge in naive mode (mask L + l of ``dropout.py``, which
multiplies h^l_{s-1} on its way into W_h at step s).

The path. Information from the word at step t - k reaches the prediction at step t
along a path of exactly L + 1 up edges and k across edges, whichever path it takes,
so the count below does not depend on the choice. For :func:`path_masks` we fix one
path: it enters layer 1 at t - k, climbs to layer ``layer`` (1 by default) at t - k,
travels along that layer's recurrence from t - k to t, and climbs to the softmax at
t. Hence::

    dropout_crossings("zaremba", L, k) = L + 1            for every k
    dropout_crossings("naive",   L, k) = L + 1 + k
    dropout_crossings("none",    L, k) = 0

Beyond the paper, variational dropout (Gal & Ghahramani 2016) drops h^l_{s-1} too,
like naive mode, so the information still passes a dropout operator at each of the
k across edges: :func:`mask_applications` counts L + 1 + k, as for naive. But every
one of those k applications uses the *same* mask (one per layer per window), so the
*distinct* masks it meets are L + 1, plus one once it travels (k >= 1)::

    dropout_crossings("variational", L, k) = L + 1 + min(k, 1)
    mask_applications("variational", L, k) = L + 1 + k

:func:`dropout_crossings` counts distinct masks (independent draws); in zaremba and
naive mode every application is a draw of its own, so the two counts agree there.
The distinct count is what keeps the noise from compounding with distance: the same
units are dropped at every step, so what survives the first crossing survives the
next (tested on the model in ``tests/test_beyond.py``).

What this does not count (and the tests show): inside the LSTM unit, the cell's
self-loop c_{s-1} -> c_s (through the forget gate) also carries information across
time, and no mode drops it, the naive mode included (it drops h_{s-1} only, as the
earlier work the paper cites does). Figure 3 draws the unit as one box; the count is
along its h connections. In ``tests/test_figure3.py`` the claim is checked on the
model itself: in zaremba mode, keeping only the L + 1 mask entries of
:func:`path_masks` (every other entry of every mask zero) still lets the word at
t - k change the prediction at t, for every k, and zeroing any one of them cuts it
exactly; in naive mode with the forget gate closed (so that h is the only carrier
across time, as in the figure), L + 1 + k entries are needed and each one of them is
necessary. What the count does not say: that the gradient's value ignores the other
masks. Every mask entry before t changes the activations the information meets on
its way (the LSTM is not linear); only the masks after t leave it exactly unchanged
(tested too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dropout import MODES


def dropout_crossings(mode: str, num_layers: int, distance: int) -> int:
    """How many distinct dropout masks the information from the word at step
    t - distance meets on its way to the prediction at step t, along a path of Figure
    3 (see the module docstring): L + 1 in zaremba mode, L + 1 + distance in naive
    mode, L + 1 + min(distance, 1) in variational mode, 0 in mode none."""
    _check(mode, num_layers, distance)
    L, k = num_layers, distance
    return {"zaremba": L + 1, "naive": L + 1 + k, "variational": L + 1 + min(k, 1),
            "none": 0}[mode]


def mask_applications(mode: str, num_layers: int, distance: int) -> int:
    """How many times a dropout mask multiplies that information on the same path: L
    + 1 in zaremba mode, L + 1 + distance in naive and variational mode (variational
    applies one recurrent mask at each of the ``distance`` steps), 0 in mode none."""
    _check(mode, num_layers, distance)
    L, k = num_layers, distance
    return {"zaremba": L + 1, "naive": L + 1 + k, "variational": L + 1 + k, "none": 0}[mode]


def _check(mode: str, num_layers: int, distance: int) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if num_layers < 1 or distance < 0:
        raise ValueError(f"num_layers must be >= 1 and distance >= 0, got {num_layers}, "
                         f"{distance}")


def path_masks(mode: str, num_layers: int, t: int, distance: int,
               layer: int = 1) -> list[tuple[int, int]]:
    """The mask entries on the chosen path from the word at step t - distance to the
    prediction at step t, as (mask index, step) pairs; steps are 0-based positions in
    the window (the T axis of the (B, T, H) masks), mask indices those of
    ``dropout.py``: k = 0..L for the up edges (mask k feeds layer k+1, mask L the
    softmax), L + l for the across edges of layer l (naive and variational mode).

    The path climbs to ``layer`` at t - distance, runs along it to t, climbs on at t.
    ``len(path_masks(...)) == mask_applications(mode, L, distance)``; the distinct
    draws among them (pairs in zaremba and naive mode, mask indices alone in
    variational mode) number ``dropout_crossings(mode, L, distance)``.
    """
    L, s = num_layers, t - distance
    dropout_crossings(mode, L, distance)               # checks the arguments
    if s < 0 or not 1 <= layer <= L:
        raise ValueError(f"need 0 <= t - distance and 1 <= layer <= {L}, got t={t}, "
                         f"distance={distance}, layer={layer}")
    if mode == "none":
        return []
    up = [(k, s) for k in range(layer)] + [(k, t) for k in range(layer, L + 1)]
    across = ([(L + layer, step) for step in range(s + 1, t + 1)]
              if mode in ("naive", "variational") else [])
    return up + across


def path_only_masks(mode: str, num_layers: int, batch: int, steps: int, hidden: int,
                    distance: int, layer: int = 1, t: int | None = None,
                    dtype: Any = np.float64) -> list[np.ndarray]:
    """Explicit masks (B, T, H) that keep every unit at the entries of
    :func:`path_masks` (value 1) and drop everything else (value 0). ``t`` defaults to
    the last step. With them only the chosen path can carry information from the word
    at t - distance to the prediction at t, and every prediction but the one at t
    sees a zero input (so the loss depends on the network through step t only).

    In variational mode a mask is one (B, H) array for every step, so no single step
    can be kept: the masks (B, H) are 1 for each mask index on the path, 0 for the
    others (the path's layer's recurrence kept, the other layers' cut)."""
    from .dropout import num_masks
    t = steps - 1 if t is None else t
    if mode == "variational":
        on_path = {k for k, _ in path_masks(mode, num_layers, t, distance, layer)}
        return [np.full((batch, hidden), float(k in on_path), dtype=dtype)
                for k in range(num_masks(mode, num_layers))]
    masks = [np.zeros((batch, steps, hidden), dtype=dtype)
             for _ in range(num_masks(mode, num_layers))]
    for k, step in path_masks(mode, num_layers, t, distance, layer):
        masks[k][:, step, :] = 1
    return masks
