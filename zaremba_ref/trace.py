"""Every intermediate of one forward and backward pass, by name, for comparing
implementations array by array (``python -m zaremba_ref trace`` / ``compare``).

:func:`trace` returns a dict of float64 NumPy arrays, in this order (forward first,
then gradients). Time-major, like the model's insides: T steps, B rows, H units,
V words; step t of the window is index t - 1.

    state.{l}.h, state.{l}.c  (B, H)      the initial state of layer l (l = 1..L)
    mask.{k}                  (T, B, H)   the dropout masks used (see ``dropout.py``;
                                          k = 0..L feed layer k+1 / the softmax,
                                          L+l the recurrent input of layer l, naive
                                          and variational; a variational mask is
                                          written out at each of the T steps)
    input                     (T, B, H)   h^0_t, the embedding rows of the inputs
    l{l}.x                    (T, B, H)   the input of layer l, D(h^{l-1}_t)
    l{l}.z                    (T, B, 4H)  pre-activations W_x x_t + b_x + W_h h_{t-1}
                                          + b_h, gate order i, f, o, g (in naive mode
                                          h_{t-1} is D(h_{t-1}))
    l{l}.i, .f, .o, .g        (T, B, H)   the gates
    l{l}.c, l{l}.h            (T, B, H)   c^l_t and h^l_t for t = 1..T
    logits                    (T, B, V)   y_t = W_s D(h^L_t) + b_s (W_s = E if tied)
    loss                      ()          mean NLL per token (without the dstate term)
    grad.{name}               like params every gradient of ``loss_and_grads``
    grad.state.{l}.h, .c      (B, H)      dJ/dh_0, dJ/dc_0 of layer l

The gradients are those of the objective J = loss (+ sum <dstate, final state> when
``dstate`` is given). The model code overwrites the pre-activations with the gates
in place, so ``l{l}.z`` is recomputed here from the layer's cached inputs; the
gates are the model's own (``tests/test_trace.py`` checks that they are the
activations of z).

To hand to another implementation: the same params (``oracle.py`` converts the
layouts), ``state.*``, ``mask.*`` and the word ids; then compare its arrays with
``compare`` below (reorder gate blocks first, see ``oracle.py``).

Weight drop (beyond the paper) has no argument here: to trace a weight-dropped window,
pass ``model.drop_weights(params, weight_masks)`` as the params (the gradient
``grad.l{l}.W_h`` is then taken with respect to W_h * M_l; multiply it by M_l for the
one ``loss_and_grads`` returns).

``zaremba_ref.trace`` is the function; import this module's other names with
``from zaremba_ref.trace import compare_traces, load_trace``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .backend import CPU
from .checks import check_call
from .dropout import draw_masks
from .model import (_forward, _logits, _time_major_masks, loss_and_grads, num_layers_of,
                    param_names)


def trace(params: dict, inputs: np.ndarray, targets: np.ndarray, state: list | None = None,
          masks: Sequence[np.ndarray] | None = None, mode: str = "zaremba", *,
          dropout: float = 0.0, rng: Any = None, dstate: list | None = None
          ) -> dict[str, np.ndarray]:
    """One window of T steps, every intermediate and every gradient, in float64 on the
    CPU. Arguments as for :func:`zaremba_ref.loss_and_grads` (inputs, targets (B, T);
    masks (B, T, H) each, or drawn from ``rng`` when ``dropout`` > 0). Returns the
    dict described in the module docstring."""
    f64 = lambda a: np.array(a.get() if hasattr(a, "get") else a, dtype=np.float64)  # noqa: E731
    params = {k: f64(v) for k, v in params.items()}
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    state = None if state is None else [(f64(h), f64(c)) for h, c in state]
    masks = [f64(m) for m in masks] if masks else None
    dstate = None if dstate is None else [(f64(h), f64(c)) for h, c in dstate]
    state = check_call(params, inputs, targets, state, masks, dropout, mode, rng, dstate,
                       CPU)                               # zeros if state is None
    B, T = inputs.shape
    V, H = params["embedding"].shape
    L = num_layers_of(params)
    if masks is None and dropout > 0 and mode != "none":
        masks = draw_masks(rng, dropout, mode, L, B, T, H, np.float64)

    # The backward pass by the model itself
    loss, grads, _ = loss_and_grads(params, inputs, targets, state, masks, mode=mode,
                                    dstate=dstate)

    out: dict[str, np.ndarray] = {}
    for l, (h, c) in enumerate(state, start=1):
        out[f"state.{l}.h"], out[f"state.{l}.c"] = h.copy(), c.copy()
    tm_masks = _time_major_masks(masks, mode, 0.0, None, params, inputs, CPU) if masks else []
    for k, m in enumerate(tm_masks):
        out[f"mask.{k}"] = np.ascontiguousarray(m)
    out["input"] = params["embedding"][inputs.T]                 # h^0_t       (T, B, H)
    caches, hD = _forward(params, inputs, state, tm_masks, CPU)
    for l, cache in enumerate(caches, start=1):
        W_x, W_h = params[f"l{l}.W_x"], params[f"l{l}.W_h"]
        z = cache.x @ W_x.T + params[f"l{l}.b_x"]                # W_x x_t + b_x
        z += cache.h_rec @ W_h.T + params[f"l{l}.b_h"]           # + W_h h_{t-1} + b_h
        out[f"l{l}.x"] = cache.x.copy()
        out[f"l{l}.z"] = z                                       # (T, B, 4H)
        for j, gate in enumerate("ifog"):
            out[f"l{l}.{gate}"] = cache.gates[..., j * H:(j + 1) * H].copy()
        out[f"l{l}.c"] = cache.c[1:].copy()
        out[f"l{l}.h"] = cache.h[1:].copy()
    out["logits"] = _logits(params, hD, CPU).reshape(T, B, V)
    out["loss"] = np.array(loss, dtype=np.float64)
    for name in param_names(L, tie_weights="softmax.W" not in params):
        out[f"grad.{name}"] = grads[name]
    for l, (dh, dc) in enumerate(grads["state"], start=1):
        out[f"grad.state.{l}.h"], out[f"grad.state.{l}.c"] = dh, dc
    return out


# --------------------------------------------------------------------------- compare

class CompareError(Exception):
    """Two traces cannot be compared (unreadable, different keys or shapes)."""


def load_trace(path: str) -> dict[str, np.ndarray]:
    """A trace saved with ``np.savez``, its arrays in file order (no pickle)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # OSError, ValueError, BadZipFile, EOFError ...
        raise CompareError(f"{path}: cannot read a trace ({' '.join(str(e).split())})") \
            from None


def compare_traces(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float = 1e-7,
                   atol: float = 1e-9) -> tuple[list[dict], dict | None]:
    """Compare two traces array by array, in ``a``'s order.

    An element is off where |a - b| > atol + rtol * |b| (NaN equals NaN). Returns one
    row per array (name, shape, max_abs = max |a - b|, max_rel = max_abs / max(|a|,
    |b|), ok) and the first difference (array name, index, the two values) or None.
    Raises CompareError when the keys or the shapes differ.
    """
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise CompareError(f"the traces hold different arrays: only in the first "
                           f"{only_a[:5]}, only in the second {only_b[:5]}")
    rows, first = [], None
    for name, x in a.items():
        y = b[name]
        if x.shape != y.shape:
            raise CompareError(f"{name}: shapes differ, {x.shape} vs {y.shape}")
        x64, y64 = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        both_nan = np.isnan(x64) & np.isnan(y64)
        diff = np.where(both_nan, 0.0, np.abs(x64 - y64))
        off = ~(diff <= atol + rtol * np.abs(y64))              # NaN diff counts as off
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = max([float(np.abs(v[~both_nan]).max()) for v in (x64, y64)
                     if (~both_nan).any()] + [0.0])
        max_rel = 0.0 if max_abs == 0 else (max_abs / scale if scale > 0 else float("inf"))
        rows.append({"name": name, "shape": x.shape, "max_abs": max_abs,
                     "max_rel": max_rel, "ok": not off.any()})
        if first is None and off.any():
            k = int(np.argmax(off))
            first = {"name": name,
                     "index": tuple(int(i) for i in np.unravel_index(k, x.shape)),
                     "a": float(x64[k]), "b": float(y64[k])}
    return rows, first


def format_comparison(rows: list[dict], first: dict | None, rtol: float, atol: float) -> str:
    """The table of :func:`compare_traces` as text, with the verdict on the last line."""
    width = max([len(r["name"]) for r in rows] + [5])
    lines = [f"{'array':<{width}}  {'shape':<16}  {'max abs diff':>12}  {'max rel diff':>12}"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {str(r['shape']):<16}  {r['max_abs']:>12.3e}  "
                     f"{r['max_rel']:>12.3e}  {'ok' if r['ok'] else 'OFF'}")
    if first is None:
        lines.append(f"all {len(rows)} arrays agree (rtol {rtol:g}, atol {atol:g})")
    else:
        n_off = sum(not r["ok"] for r in rows)
        lines.append(f"{n_off} of {len(rows)} arrays differ (rtol {rtol:g}, atol {atol:g}); "
                     f"they first part at {first['name']}{list(first['index'])}: "
                     f"{first['a']!r} vs {first['b']!r}")
    return "\n".join(lines)
