"""A test kit: check anyone's LSTM language model against the reference, and name the
mistake when it differs.

The implementation under test is one function, a training step over one window::

    step(weights, inputs, targets, state, masks) -> (loss, grads, final_state)

    weights      dict of NumPy arrays in the chosen layout (``LAYOUTS``): ``torch``, the
                 keys of ``oracle.params_to_torch`` (gate rows i, f, g, o, two biases);
                 ``torch7``, the paper's Torch code (``params_to_torch7``, i, g, f, o);
                 ``zaremba_ref``, ours (i, f, o, g)
    inputs       int64 (B, T) word ids; targets (B, T) the word after each input
    state        [(h_0, c_0)] * L, each (B, H)
    masks        the L+1 scaled (B, T, H) dropout masks of the paper's placement (mask k
                 multiplies the input of layer k+1, mask L the top output into the
                 softmax; see ``dropout.py``), or None for no dropout
    loss         the mean NLL per token, mean over the B*T predictions
    grads        dloss/dweight, keyed like ``weights``, shaped like them
    final_state  [(h_T, c_T)] * L

:func:`check_implementation` draws cases with Hypothesis (V, H, L, B, T; with and without
masks; a zero and a carried state) and compares, case by case, the loss, the final state
and every gradient with the reference (``model.loss_and_grads`` in float64 on the same
numbers). Hypothesis shrinks the first failing case to the smallest; the :class:`Report`
then says which quantity departs first, in dependency order (forward before backward:
the loss, the final state from the top layer down, h before c; then the gradients from
the softmax down to the embedding), and names the mistake where it can. Naming is by
test, never by the size of an error: each known mistake (``MISTAKES``) is a hypothesis,
the reference run *with that mistake made* (rows read in another order, a mask left
out, the loss times B, ...), and it is named only when it then matches the step on
every quantity, on the failing case and on a probe case of other shapes. Probes of the
step itself (all masks ones, a zero state, one step) say where an unnamed mistake lives.

Importing this module needs NumPy only; Hypothesis is imported when cases are drawn.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import random
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .dropout import draw_masks
from .model import init_params, loss_and_grads, num_layers_of, param_names
from .oracle import (OURS_TO_TORCH, OURS_TO_TORCH7, TORCH, TORCH7, _key_pairs, params_to_torch,
                     params_to_torch7)

OUR_GATES = "ifog"                       # the paper's order, ours: rows of W_x, W_h, b_x, b_h
ORDER_NAMES = {"ifog": "the paper's and zaremba_ref's", "ifgo": "PyTorch's",
               "igfo": "the paper's Torch7 code's"}
PROBE_SHAPES = dict(V=7, H=3, L=2, B=2, T=3)     # B != T, L > 1, T > 1: tells mistakes apart
TOLERANCE = {"float64": (1e-9, 1e-12), "float32": (1e-4, 1e-6)}   # (rtol, atol) per quantity


class KitError(ValueError):
    """A step (or a FILE:FUNCTION) that cannot be checked: it raises, or returns the wrong
    keys or shapes. The message is one line."""


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- layouts and modes ---------------------------------------------------------------------

def _ours(params: dict) -> dict[str, np.ndarray]:
    return {k: np.array(params[k]) for k in param_names(num_layers_of(params))}


@dataclass(frozen=True)
class Layout:
    """How the step receives the weights: converters from oracle.py, and the gate order."""

    name: str
    to: Callable[[dict], dict]       # our params (or grads) -> the layout's dict
    gates: str                       # the gate of each H-row block of the 4H-row tensors
    keys: tuple | None               # oracle's key table (None: our own keys)

    def key(self, ours: str, num_layers: int) -> str:
        """The layout's name of our key (``l2.W_h`` -> ``lstm.weight_hh_l1`` in torch)."""
        if self.keys is None:
            return ours
        return {o: t for o, t, _ in _key_pairs(self.keys, num_layers)}[ours]

    def pattern(self, name: str) -> str:
        """The layout's name of our per-layer ``l{l}.<name>`` in every layer, e.g.
        ``lstm.weight_hh_l*``."""
        if self.keys is None:
            return f"l*.{name}"
        return self.keys[0][f"l{{l}}.{name}"].format(l="*", k="*")


LAYOUTS = {
    "torch": Layout("torch", params_to_torch,
                    "".join(OUR_GATES[j] for j in OURS_TO_TORCH), TORCH),
    "torch7": Layout("torch7", params_to_torch7,
                     "".join(OUR_GATES[j] for j in OURS_TO_TORCH7), TORCH7),
    "zaremba_ref": Layout("zaremba_ref", _ours, OUR_GATES, None),
}


@dataclass(frozen=True)
class Mode:
    """What the step receives as ``masks``, and how the reference runs. Another mode is
    one more entry in ``MODES``: the reference's mode, whether cases carry masks and
    how they are drawn (``draw``), and which mask mistakes apply to it."""

    name: str
    model_mode: str                  # the ``mode`` of model.loss_and_grads
    has_masks: bool                  # False: masks is always None
    mask_mistakes: bool = False      # the hypotheses about the paper's L+1 masks apply

    def draw(self, rng: np.random.Generator, L: int, B: int, T: int, H: int) -> list:
        """The masks of one case (p = 0.5, float64)."""
        return draw_masks(rng, 0.5, self.model_mode, L, B, T, H, np.float64)


MODES = {"zaremba": Mode("zaremba", "zaremba", True, mask_mistakes=True),  # the paper's L+1
         "none": Mode("none", "none", False)}                              # masks is None


def _mode(mode: str | None) -> Mode:
    key = "none" if mode is None else mode
    if key not in MODES:
        raise KitError(f"mode must be one of {sorted(MODES)} or None, got {mode!r}")
    return MODES[key]


def _check_args(mode: str | None, layout: str, dtype: str) -> Mode:
    if layout not in LAYOUTS:
        raise KitError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    if dtype not in TOLERANCE:
        raise KitError(f"dtype must be one of {sorted(TOLERANCE)}, got {dtype!r}")
    return _mode(mode)


# -- cases -----------------------------------------------------------------------------------

@dataclass
class Case:
    """One window to check: the shapes, the seed of its numbers, and the numbers (ours)."""

    V: int
    H: int
    L: int
    B: int
    T: int
    masks: bool
    carried: bool
    seed: int
    mode: str
    layout: str
    dtype: str
    params: dict = field(repr=False, default_factory=dict)   # ours, float64 values of dtype
    inputs: np.ndarray = field(repr=False, default=None)
    targets: np.ndarray = field(repr=False, default=None)
    state: list = field(repr=False, default_factory=list)     # [(h, c)] * L
    mask_arrays: list | None = field(repr=False, default=None)

    def args(self) -> tuple:
        """(weights, inputs, targets, state, masks) for the step: fresh copies, in the
        case's layout and dtype."""
        dt = np.dtype(self.dtype)
        weights = {k: v.astype(dt) for k, v in LAYOUTS[self.layout].to(self.params).items()}
        state = [(h.astype(dt), c.astype(dt)) for h, c in self.state]
        masks = None if self.mask_arrays is None else [m.astype(dt) for m in self.mask_arrays]
        return weights, self.inputs.copy(), self.targets.copy(), state, masks

    def describe(self) -> str:
        return (f"V={self.V} H={self.H} L={self.L} B={self.B} T={self.T}, "
                f"{'with masks' if self.masks else 'no masks'}, "
                f"{'carried' if self.carried else 'zero'} state, data seed {self.seed}")

    def replay(self) -> str:
        """The call that rebuilds this case: ``step(*make_case(...).args())``."""
        return (f"zaremba_ref.testing.make_case(V={self.V}, H={self.H}, L={self.L}, "
                f"B={self.B}, T={self.T}, masks={self.masks}, carried={self.carried}, "
                f"seed={self.seed}, mode={self.mode!r}, layout={self.layout!r}, "
                f"dtype={self.dtype!r})")


def make_case(V: int, H: int, L: int, B: int, T: int, *, masks: bool = True,
              carried: bool = True, seed: int = 0, mode: str | None = "zaremba",
              layout: str = "torch", dtype: str = "float64") -> Case:
    """The case drawn from ``seed``: weights ``init_params(V, H, L, 0.5, seed)``, then from
    ``numpy.random.default_rng([seed, 1])`` the inputs and targets, the state (uniform
    (-0.5, 0.5), if ``carried``, else zeros) and the masks (p = 0.5, if ``masks``). Every
    number is rounded to ``dtype`` first, so the reference sees what the step sees."""
    m = _check_args(mode, layout, dtype)
    dt = np.dtype(dtype)
    r = lambda a: np.asarray(a, dtype=dt).astype(np.float64)  # noqa: E731  (values of dtype)
    rng = np.random.default_rng([seed, 1])
    params = {k: r(v) for k, v in init_params(V, H, L, 0.5, seed=seed,
                                                dtype=np.float64).items()}
    inputs, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = [tuple(r(rng.uniform(-0.5, 0.5, (B, H))) if carried else np.zeros((B, H))
                   for _ in "hc") for _ in range(L)]
    mask_arrays = [r(a) for a in m.draw(rng, L, B, T, H)] if masks and m.has_masks else None
    return Case(V, H, L, B, T, mask_arrays is not None, carried, seed, m.name, layout, dtype,
                params, inputs.astype(np.int64), targets.astype(np.int64),
                [(h, c) for h, c in state], mask_arrays)


def cases(*, mode: str | None = "zaremba", layout: str = "torch", dtype: str = "float64"):
    """A Hypothesis strategy of small cases (V 2-8, H 1-4, L 1-3, B 1-3, T 1-4, with and
    without masks, zero and carried state), for a property test of your own."""
    from hypothesis import strategies as st
    m = _mode(mode)
    return st.builds(
        lambda V, H, L, B, T, masks, carried, seed: make_case(
            V, H, L, B, T, masks=masks, carried=carried, seed=seed, mode=m.name,
            layout=layout, dtype=dtype),
        st.integers(2, 8), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
        st.integers(1, 4), st.booleans() if m.has_masks else st.just(False), st.booleans(),
        st.integers(0, 2 ** 31 - 1))


# -- one run: the step's, the reference's ------------------------------------------------------

@dataclass
class Outputs:
    """(loss, grads, final_state) as float64 NumPy, grads keyed like the weights."""

    loss: float
    grads: dict[str, np.ndarray]
    final: list                     # [(h_T, c_T)] * L


def _array(value: Any, what: str, where: str) -> np.ndarray:
    """A NumPy, torch (detached), CuPy or JAX array (or a number) as float64 NumPy."""
    try:
        if value is None:
            raise TypeError("it is None")
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        elif hasattr(value, "get") and not isinstance(value, dict):
            value = value.get()
        return np.asarray(value, dtype=np.float64)
    except Exception as e:
        raise KitError(f"the step's {what} is not an array of numbers: {type(value).__name__}, "
                       f"{_one_line(e)} ({where})") from None


def run_step(step: Callable, case: Case) -> Outputs:
    """Call ``step`` on ``case`` and check what it returns. Raises KitError (one line)
    when it raises or returns the wrong types, keys or shapes."""
    weights, inputs, targets, state, masks = case.args()
    where = f"on the case {case.describe()}"
    try:
        out = step(weights, inputs, targets, state, masks)
    except Exception as e:
        raise KitError(f"the step raised {type(e).__name__}: {_one_line(e)} ({where})") from e
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        n = f" of {len(out)}" if isinstance(out, (tuple, list)) else ""
        raise KitError(f"the step must return (loss, grads, final_state), it returned "
                       f"{type(out).__name__}{n} ({where})")
    loss, grads, final = out
    loss = _array(loss, "loss", where)
    if loss.size != 1:
        raise KitError(f"the step's loss must be a scalar (the mean NLL per token), got shape "
                       f"{loss.shape} ({where})")
    if not isinstance(grads, dict):
        raise KitError(f"the step's grads must be a dict keyed like weights, got "
                       f"{type(grads).__name__} ({where})")
    missing, extra = [k for k in weights if k not in grads], [k for k in grads if k not in weights]
    if missing or extra:
        raise KitError(f"the step's grads must have the keys of weights: missing {missing}, "
                       f"unexpected {extra} ({where})")
    host = {k: _array(grads[k], f"grads[{k!r}]", where) for k in weights}
    for k, w in weights.items():
        if host[k].shape != w.shape:
            raise KitError(f"the step's grads[{k!r}] has shape {host[k].shape}, expected "
                           f"{w.shape} like weights[{k!r}] ({where})")
    rule = (f"final_state must be a list of L={case.L} (h, c) pairs, one per layer, each "
            f"(B, H) = {(case.B, case.H)}")
    if not isinstance(final, (tuple, list)) or len(final) != case.L:
        n = f"{len(final)} entries" if isinstance(final, (tuple, list)) else "no list"
        raise KitError(f"the step's {rule}; it returned {type(final).__name__}, {n} ({where})")
    pairs = []
    for l, pair in enumerate(final):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise KitError(f"the step's {rule}; final_state[{l}] is {type(pair).__name__}, "
                           f"not an (h, c) pair ({where})")
        pairs.append(tuple(_array(a, f"final_state[{l}][{j}]", where)
                           for j, a in enumerate(pair)))
        for which, a in zip("hc", pairs[-1]):
            if a.shape != (case.B, case.H):
                raise KitError(f"the step's {rule}; final_state[{l}] {which} has shape "
                               f"{a.shape} ({where})")
    return Outputs(float(loss.reshape(())), host, pairs)


_AS_CASE = object()     # "the case's own masks" (None means no masks)


def _reference(case: Case, params: dict | None = None, masks: Any = _AS_CASE,
               mode: str | None = None, state: list | None = None):
    """loss_and_grads on the case (float64, our layout), with any argument replaced."""
    masks = case.mask_arrays if masks is _AS_CASE else masks
    mode = mode or MODES[case.mode].model_mode
    loss, grads, final = loss_and_grads(case.params if params is None else params,
                                        case.inputs, case.targets,
                                        case.state if state is None else state, masks,
                                        mode=mode)
    return loss, {k: v for k, v in grads.items() if k != "state"}, final


def _theirs(case: Case, loss: float, grads: dict, final: list) -> Outputs:
    """Our float64 results as Outputs in the case's layout."""
    return Outputs(float(loss), {k: np.asarray(v, dtype=np.float64)
                                 for k, v in LAYOUTS[case.layout].to(grads).items()},
                   [(np.array(h), np.array(c)) for h, c in final])


def reference(case: Case) -> Outputs:
    """The reference's loss, gradients (in the case's layout) and final state."""
    return _theirs(case, *_reference(case))


# -- comparison -----------------------------------------------------------------------------

@dataclass
class Row:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    ok: bool


def _quantities(case: Case, out: Outputs) -> list[tuple[str, np.ndarray]]:
    """Every compared quantity in dependency order: forward (loss, final state from the
    top layer down, h before c), then backward (the softmax's gradients, the layers from
    the top down, the embedding)."""
    L, lay = case.L, LAYOUTS[case.layout]
    q = [("loss", np.asarray(out.loss))]
    for l in range(L, 0, -1):
        h, c = out.final[l - 1]
        q += [(f"final h, layer {l}", h), (f"final c, layer {l}", c)]
    order = ["softmax.W", "softmax.b"] + [f"l{l}.{n}" for l in range(L, 0, -1)
                                          for n in ("W_x", "W_h", "b_x", "b_h")] + ["embedding"]
    return q + [(f"grad {lay.key(k, L)}", out.grads[lay.key(k, L)]) for k in order]


def compare(case: Case, theirs: Outputs, ref: Outputs) -> list[Row]:
    """One row per quantity: max |theirs - ref|, that over max |ref|, and whether it is
    within the dtype's tolerance (max abs <= atol + rtol max |ref|; NaN never is)."""
    rtol, atol = TOLERANCE[case.dtype]
    rows = []
    for (name, a), (_, b) in zip(_quantities(case, theirs), _quantities(case, ref)):
        diff = np.abs(a - b)
        max_abs = float(diff.max()) if diff.size else 0.0
        if np.isnan(max_abs) or (diff.size and np.isnan(diff).any()):
            max_abs = float("inf")
        scale = float(np.abs(b).max()) if b.size else 0.0
        max_rel = 0.0 if max_abs == 0 else (max_abs / scale if scale > 0 else float("inf"))
        rows.append(Row(name, a.shape, max_abs, max_rel, max_abs <= atol + rtol * scale))
    return rows


def _agrees(case: Case, theirs: Outputs, expected: Outputs | None) -> bool:
    return expected is not None and all(r.ok for r in compare(case, theirs, expected))


def format_rows(rows: list[Row]) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"  {'quantity':<{width}}  {'shape':<10}  {'max abs err':>11}  {'max rel err':>11}"]
    for r in rows:
        lines.append(f"  {r.name:<{width}}  {str(r.shape):<10}  {r.max_abs:>11.2e}  "
                     f"{r.max_rel:>11.2e}  {'ok' if r.ok else 'OFF'}")
    return "\n".join(lines)


# -- the known mistakes, as hypotheses -----------------------------------------------------------

@dataclass
class Hypothesis:
    """A known mistake: ``expect(case)`` is the reference run with it made (Outputs in
    the case's layout), or None where it says nothing about the case."""

    key: str                         # one of MISTAKES
    text: str                        # what is wrong, and where
    expect: Callable[[Case], Outputs | None]


MISTAKES = {
    "gate_order": "gates in another order",
    "recurrent_dropout": "dropout on the recurrent connection",
    "missing_mask": "a dropout mask missing on a vertical connection",
    "forget_bias": "a constant forget-gate bias offset",
    "loss_summed": "the loss summed rather than averaged",
    "truncated_bptt": "gradients not carried through h_{t-1} and c_{t-1}",
    "transposed": "weights transposed",
    "bias_without_gradient": "a bias that receives no gradient",
    "state_swapped": "the state read as (c, h)",
}


def _blocks(a: np.ndarray, src: list[int]) -> np.ndarray:
    """The four H-row blocks of ``a`` (4H, ...) rearranged: block k <- block src[k]."""
    H = a.shape[0] // 4
    return np.concatenate([a[j * H:(j + 1) * H] for j in src])


def _block_transpose(W: np.ndarray) -> np.ndarray:
    """Each gate's (H, H) block of W (4H, H) transposed: what ``x @ W_k`` computes
    when ``x @ W_k.T`` was meant."""
    H = W.shape[1]
    return np.concatenate([W[k * H:(k + 1) * H].T for k in range(4)])


def _with_params(case: Case, forward: Callable[[dict], dict],
                 backward: Callable[[dict], dict]) -> Outputs:
    """The reference on params forward(P); the grads mapped back by backward (the
    adjoint of the linear map ``forward``) to the weights the step was given."""
    loss, grads, final = _reference(case, params=forward(case.params))
    return _theirs(case, loss, backward(grads), final)


def _gate_order(read_as: str, layout: Layout) -> Hypothesis:
    """The step reads block k of the layout as gate read_as[k] (the layout holds gate
    layout.gates[k] there)."""
    pos = OUR_GATES.index
    fwd = [0] * 4                    # effective params: our gate read_as[k] <- gate gates[k]
    bwd = [0] * 4
    for k in range(4):
        fwd[pos(read_as[k])] = pos(layout.gates[k])
        bwd[pos(layout.gates[k])] = pos(read_as[k])
    gated = lambda k: k.split(".")[-1] in ("W_x", "W_h", "b_x", "b_h")  # noqa: E731
    move = lambda d, src: {k: _blocks(v, src) if gated(k) else v  # noqa: E731
                           for k, v in d.items()}
    who = ORDER_NAMES.get(read_as)
    text = (f"your step reads the 4H gate rows of every LSTM weight and bias in the order "
            f"{', '.join(read_as)}{f' ({who})' if who else ''}, but layout "
            f"{layout.name!r} holds them as {', '.join(layout.gates)}; with the rows read as "
            f"{', '.join(read_as)} the reference matches")
    return Hypothesis("gate_order", text,
                      lambda case: _with_params(case, lambda p: move(p, fwd),
                                                lambda g: move(g, bwd)))


def _transposed(which: tuple[str, ...], layer: int | None, layout: Layout) -> Hypothesis:
    """Each gate block of ``which`` (W_x, W_h) used transposed, in every layer or one."""
    def on(case, d):
        ls = range(1, case.L + 1) if layer is None else [layer]
        return {k: _block_transpose(v) if k in {f"l{l}.{w}" for l in ls for w in which}
                else v for k, v in d.items()}
    names = " and ".join(layout.pattern(w) if layer is None else layout.key(f"l{layer}.{w}", layer)
                         for w in which)
    where = "in every layer" if layer is None else f"(layer {layer})"
    text = (f"each gate's (H, H) block of {names} {where} is used transposed (x @ W_k where "
            f"x @ W_k.T is meant: the layout's weights are (out, in))")
    return Hypothesis("transposed", text,
                      lambda case: None if layer and layer > case.L else
                      _with_params(case, lambda p: on(case, p), lambda g: on(case, g)))


def _forget_bias(case: Case, theirs: Outputs) -> Hypothesis | None:
    """Fit the offset c in f = sigm(z_f + c) to the step's loss on ``case`` (Newton's
    method on the reference's loss), then state it as a hypothesis to be tested on
    every quantity."""
    H = case.H

    def shifted(params, c):                            # c added to our b_x's f rows
        return {k: v + np.repeat([0.0, c, 0.0, 0.0], len(v) // 4) if k.endswith(".b_x")
                else v for k, v in params.items()}

    c = 1.0                                            # TensorFlow's forget_bias default
    for _ in range(20):
        loss, grads, _ = _reference(case, params=shifted(case.params, c))
        gap = loss - theirs.loss
        if abs(gap) <= 1e-13 * max(1.0, abs(loss)):
            break
        slope = sum(float(g[H:2 * H].sum()) for k, g in grads.items() if k.endswith(".b_x"))
        if slope == 0 or not np.isfinite(gap):
            return None
        c -= gap / slope
    if not np.isfinite(c) or abs(c) < 1e-6:
        return None
    shown = "+1 (TensorFlow's forget_bias default)" if abs(c - 1) < 1e-6 else f"{c:+.6g}"
    text = (f"a constant {shown} is added to the forget gate's pre-activation in every "
            f"layer, f = sigm(z_f + c), besides the biases you were given")
    return Hypothesis("forget_bias", text,
                      lambda k: _theirs(k, *_reference(k, params=shifted(k.params, c))))


def _recurrent_dropout(kind: str) -> Hypothesis:
    """Dropout on h_{t-1} into W_h, as the reference's naive mode with masks taken
    from the step's own: ``input`` (layer l's input mask on h_{t-1} too), or
    ``output``/``output_final`` (layer l's output mask applied to h_t inside the loop,
    so that the dropped h_t enters step t+1; the final h dropped too, or not)."""
    def expect(case):
        if case.mask_arrays is None:
            return None
        m = case.mask_arrays
        if kind == "input":
            rec = [m[l - 1] for l in range(1, case.L + 1)]
        else:
            rec = [np.concatenate([np.ones_like(m[l][:, :1]), m[l][:, :-1]], axis=1)
                   for l in range(1, case.L + 1)]
        loss, grads, final = _reference(case, masks=list(m) + rec, mode="naive")
        if kind == "output_final":
            final = [(h * m[l][:, -1], c) for l, (h, c) in enumerate(final, start=1)]
        return _theirs(case, loss, grads, final)
    text = {"input": "each layer's input mask (D on h^{l-1}_t) is applied to h^l_{t-1} on "
                     "its way into W_h too",
            "output": "each layer's output mask is applied to h^l_t inside the time loop, so "
                      "h^l_{t-1} enters W_h dropped",
            "output_final": "each layer's output mask is applied to h^l_t inside the time "
                            "loop, so h^l_{t-1} enters W_h dropped (and the final h is the "
                            "dropped one)"}[kind]
    return Hypothesis("recurrent_dropout", text, expect)


def _missing_mask(k: int | None) -> Hypothesis:
    """Mask k (None: the top one, mask L, whatever L is) is never applied."""
    def expect(case):
        if case.mask_arrays is None or (k is not None and k > case.L):
            return None
        j = case.L if k is None else k
        masks = [np.ones_like(m) if i == j else m for i, m in enumerate(case.mask_arrays)]
        return _theirs(case, *_reference(case, masks=masks))
    if k is None:
        text = ("masks[L] is never applied: no dropout on the connection from the top "
                "layer into the softmax, D(h^L_t)")
    elif k == 0:
        text = ("masks[0] is never applied: no dropout on the connection from the embedding "
                "into layer 1, D(h^0_t)")
    else:
        text = (f"masks[{k}] is never applied: no dropout on the connection from layer {k} "
                f"into layer {k + 1} (or into the softmax when L = {k}), D(h^{k}_t)")
    return Hypothesis("missing_mask", text, expect)


def _loss_summed(over: str) -> Hypothesis:
    def expect(case):
        s = {"batch": case.B, "time": case.T, "both": case.B * case.T}[over]
        loss, grads, final = _reference(case)
        return _theirs(case, s * loss, {k: s * v for k, v in grads.items()}, final)
    text = {"batch": "the loss is summed over the batch and averaged over time: it and every "
                     "gradient are B times the mean NLL per token's (factor B)",
            "time": "the loss is summed over time and averaged over the batch: it and every "
                    "gradient are T times the mean NLL per token's (factor T)",
            "both": "the loss is summed over batch and time, not averaged: it and every "
                    "gradient are B*T times the mean NLL per token's (factor B*T)"}[over]
    return Hypothesis("loss_summed", text, expect)


def _truncated(case: Case) -> Outputs:
    """Backpropagation cut at every step: the window as T windows of one step each, the
    state carried forward, dL/dh_{t-1} and dL/dc_{t-1} dropped at every step."""
    state, total, grads = case.state, 0.0, None
    for t in range(case.T):
        masks = None if case.mask_arrays is None else [m[:, t:t + 1] for m in case.mask_arrays]
        loss, g, state = loss_and_grads(case.params, case.inputs[:, t:t + 1],
                                        case.targets[:, t:t + 1], state, masks,
                                        mode=MODES[case.mode].model_mode)
        total += loss / case.T
        g = {k: v / case.T for k, v in g.items() if k != "state"}
        grads = g if grads is None else {k: grads[k] + g[k] for k in g}
    return _theirs(case, total, grads, state)


def _bias_without_gradient(which: str, layer: int | None, layout: Layout) -> Hypothesis:
    """The gradient of b_x (or b_h) left at zero, in every layer or one."""
    def expect(case):
        if layer is not None and layer > case.L:
            return None
        ls = range(1, case.L + 1) if layer is None else [layer]
        loss, grads, final = _reference(case)
        grads = {k: np.zeros_like(v) if k in {f"l{l}.{which}" for l in ls} else v
                 for k, v in grads.items()}
        return _theirs(case, loss, grads, final)
    other = layout.pattern({"b_x": "b_h", "b_h": "b_x"}[which])
    name = layout.pattern(which) if layer is None else layout.key(f"l{layer}.{which}", layer)
    where = "in every layer" if layer is None else f"(layer {layer})"
    text = (f"the bias {name} {where} receives no gradient (yours is all zeros); it adds into "
            f"the same pre-activation as {other}, so its gradient is that one's")
    return Hypothesis("bias_without_gradient", text, expect)


def _state_swapped() -> Hypothesis:
    def expect(case):
        loss, grads, final = _reference(case, state=[(c, h) for h, c in case.state])
        return _theirs(case, loss, grads, [(c, h) for h, c in final])
    return Hypothesis("state_swapped",
                      "your step reads each layer's state as (c, h) and returns it so; the "
                      "kit's state is a list over layers of (h, c)", expect)


def hypotheses(layout: str, mode: str | None, num_layers: int) -> list[Hypothesis]:
    """Every known mistake as a testable hypothesis, for cases of up to ``num_layers``
    layers (the forget-gate offset is fitted per failing case, see diagnose)."""
    lay, m, L = LAYOUTS[layout], _mode(mode), num_layers
    hs = [_gate_order("".join(p), lay) for p in itertools.permutations(OUR_GATES)
          if "".join(p) != lay.gates]
    hs += [_loss_summed(over) for over in ("batch", "time", "both")]
    hs += [Hypothesis("truncated_bptt", "backpropagation through time is cut at every step "
                      "in every layer: no gradient flows back through h_{t-1} and c_{t-1}",
                      _truncated)]
    for which in (("W_h",), ("W_x",), ("W_x", "W_h")):
        hs += [_transposed(which, layer, lay) for layer in [None, *range(1, L + 1)]]
    for which in ("b_x", "b_h"):
        hs += [_bias_without_gradient(which, layer, lay) for layer in [None, *range(1, L + 1)]]
    if m.mask_mistakes:
        hs += [_recurrent_dropout(kind) for kind in ("input", "output", "output_final")]
        hs += [_missing_mask(None)] + [_missing_mask(k) for k in range(L)]
    hs += [_state_swapped()]
    return hs


# -- diagnosis and the report ---------------------------------------------------------------------

@dataclass
class Report:
    """What check_implementation found; ``str(report)`` is the readable text."""

    ok: bool
    layout: str
    dtype: str
    mode: str
    cases_run: int
    case: Case | None = None          # the first failing case, shrunk to the smallest
    rows: list[Row] = field(default_factory=list)   # its comparison, in dependency order
    departs_first: str | None = None
    mistakes: list[str] = field(default_factory=list)     # keys of MISTAKES, tested
    findings: list[str] = field(default_factory=list)     # what is wrong and where
    probes: list[str] = field(default_factory=list)
    probe_tested: bool = False        # the mistakes were tested on the probe case too
    text: str = ""

    @property
    def mistake(self) -> str | None:
        """The named mistake (a key of MISTAKES), or None: it matches, or none fits."""
        return self.mistakes[0] if self.mistakes else None

    def __str__(self) -> str:
        return self.text


def _probe(case: Case, how: str) -> Case:
    """The case changed one way: all masks ones, a zero state, or its first step alone."""
    if how == "ones":
        return replace(case, mask_arrays=[np.ones_like(m) for m in case.mask_arrays])
    if how == "zero":
        return replace(case, carried=False,
                       state=[(np.zeros_like(h), np.zeros_like(c)) for h, c in case.state])
    masks = None if case.mask_arrays is None else [m[:, :1] for m in case.mask_arrays]
    return replace(case, inputs=case.inputs[:, :1], targets=case.targets[:, :1], T=1,
                   mask_arrays=masks)


def diagnose(step: Callable, case: Case, theirs: Outputs, seed: int = 0
             ) -> tuple[list[Hypothesis], list[str], bool]:
    """The hypotheses (known mistakes) that explain the step on ``case`` and on a probe
    case of other shapes; the probes' findings (does the step match with all-ones masks,
    from a zero state, over one step?); whether the step ran on the probe case."""
    probe = make_case(**PROBE_SHAPES, masks=MODES[case.mode].has_masks, carried=True,
                      seed=10_007 + seed, mode=case.mode, layout=case.layout, dtype=case.dtype)
    try:
        theirs_probe = run_step(step, probe)
    except KitError:
        theirs_probe = None
    hs = hypotheses(case.layout, case.mode, max(case.L, probe.L))
    fitted = _forget_bias(case, theirs)
    hs += [fitted] if fitted else []
    found = [h for h in hs if _agrees(case, theirs, h.expect(case))
             and (theirs_probe is None or _agrees(probe, theirs_probe, h.expect(probe)))]
    notes = []
    if theirs_probe is None:
        notes.append(f"the step raises on the probe case {probe.describe()}")
        return found, notes, False
    if all(r.ok for r in compare(probe, theirs_probe, reference(probe))):
        notes.append(f"on the probe case ({probe.describe()}) the step matches: the "
                     f"mistake shows only in some shapes")
        return found, notes, True
    probes = []
    for how, what in (("ones", "all masks ones"), ("zero", "zero state"), ("one", "T = 1")):
        if how == "ones" and probe.mask_arrays is None:
            continue
        p = _probe(probe, how)
        try:
            agrees = _agrees(p, run_step(step, p), reference(p))
        except KitError as e:
            probes.append(f"{what} -> the step raises ({e})")
            continue
        probes.append(f"{what} -> {'matches' if agrees else 'differs'}")
    notes.append(f"your step on {probe.describe()}, changed one way at a time: "
                 + "; ".join(probes))
    return found, notes, True


def _where(rows: list[Row], L: int) -> str:
    forward = [r for r in rows if not r.name.startswith("grad ")]
    backward = [r for r in rows if r.name.startswith("grad ")]
    fwd_off = [r.name for r in forward if not r.ok]
    bwd_off = [r.name for r in backward if not r.ok]
    first = next(r.name for r in rows if not r.ok)
    if not fwd_off:
        return (f"the forward pass agrees (loss and final state); the backward pass departs "
                f"first at {first} ({len(bwd_off)} of {len(backward)} gradients differ)")
    state = ("the final state agrees in every layer" if fwd_off == ["loss"] else
             f"{len(fwd_off) - ('loss' in fwd_off)} of {2 * L} final-state arrays differ")
    return (f"the forward pass departs first at {first} ({state}); "
            f"{len(bwd_off)} of {len(backward)} gradients differ")


def _header(ok: bool, layout: str, dtype: str, mode: str) -> str:
    what = f"layout {layout!r}, {dtype}, mode {mode!r}"
    return (f"OK: your step matches the reference ({what})" if ok else
            f"MISMATCH: your step does not match the reference ({what})")


def check_implementation(step: Callable, *, layout: str = "torch", dtype: str = "float64",
                         mode: str | None = "zaremba", examples: int = 50,
                         seed: int = 0) -> Report:
    """Check ``step(weights, inputs, targets, state, masks) -> (loss, grads, final_state)``
    (see the module docstring) against the reference on ``examples`` cases drawn by
    Hypothesis from ``seed``, and diagnose the first failing case.

    layout: ``torch``, ``torch7`` or ``zaremba_ref`` (``LAYOUTS``); dtype: ``float64``
    or ``float32`` (what the step receives; tolerances per ``TOLERANCE``); mode:
    ``zaremba`` (the paper's L+1 masks, in part of the cases) or None (no dropout).
    Raises KitError when the step raises or returns the wrong keys or shapes.
    """
    m = _check_args(mode, layout, dtype)
    if examples < 1:
        raise KitError(f"examples must be >= 1, got {examples}")
    try:
        from hypothesis import HealthCheck, Phase, find, settings
        from hypothesis.errors import NoSuchExample
    except ImportError:
        raise KitError("drawing cases needs Hypothesis: pip install hypothesis") from None
    seen: list[Case] = []
    worst: list[Row] = []

    def fails(case: Case) -> bool:
        theirs = run_step(step, case)
        rows = compare(case, theirs, reference(case))
        seen.append(case)
        worst.append(max(rows, key=lambda r: r.max_rel))
        return not all(r.ok for r in rows)

    config = settings(max_examples=examples, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck),
                      phases=[Phase.generate, Phase.shrink])
    try:
        case = find(cases(mode=m.name, layout=layout, dtype=dtype), fails, settings=config,
                    random=random.Random(seed))
    except NoSuchExample:
        return _ok_report(seen, worst, layout, dtype, m.name)
    theirs = run_step(step, case)
    rows = compare(case, theirs, reference(case))
    found, notes, probe_tested = diagnose(step, case, theirs, seed)
    report = Report(False, layout, dtype, m.name, len(seen), case, rows,
                    next(r.name for r in rows if not r.ok), [h.key for h in found],
                    [h.text for h in found], notes, probe_tested)
    report.text = _mismatch_text(report)
    return report


def _ok_report(seen: list[Case], worst: list[Row], layout: str, dtype: str, mode: str) -> Report:
    def span(a):
        return f"{min(getattr(c, a) for c in seen)}-{max(getattr(c, a) for c in seen)}"
    n_masks = sum(c.masks for c in seen)
    n_carried = sum(c.carried for c in seen)
    top = max(worst, key=lambda r: r.max_rel)
    text = (f"{_header(True, layout, dtype, mode)} on {len(seen)} cases: "
            f"V {span('V')}, H {span('H')}, L {span('L')}, B {span('B')}, T {span('T')}; "
            f"{n_masks} with masks, {len(seen) - n_masks} without; {n_carried} from a carried "
            f"state, {len(seen) - n_carried} from zeros. Largest relative error "
            f"{top.max_rel:.1e} ({top.name}).")
    return Report(True, layout, dtype, mode, len(seen), text=text)


def _mismatch_text(r: Report) -> str:
    case = r.case
    lines = [_header(False, r.layout, r.dtype, r.mode)]
    if r.findings:
        first, *more = r.findings
        lines.append(f"Diagnosis: {MISTAKES[r.mistakes[0]]}: {first}.")
        lines += [f"  also consistent: {MISTAKES[k]}: {t}."
                  for k, t in zip(r.mistakes[1:], more)]
        lines.append("  (tested: the reference run with this mistake made matches your step on "
                     "every quantity, on the failing case" +
                     (" and on a probe case)" if r.probe_tested else ")"))
    else:
        lines.append(f"Diagnosis: none of the {len(MISTAKES)} known mistakes "
                     "(zaremba_ref.testing.MISTAKES), each made in the reference in turn, "
                     "matches your step.")
    lines.append(f"Where: {_where(r.rows, case.L)}.")
    lines += [f"Probes: {p}." for p in r.probes]
    lines.append(f"Failing case (after {r.cases_run} drawn, shrunk to the smallest): "
                 f"{case.describe()}")
    lines.append(f"  replay: step(*{case.replay()}.args())")
    lines.append(format_rows(r.rows))
    return "\n".join(lines)


def assert_implementation_matches(step: Callable, **kwargs: Any) -> Report:
    """check_implementation for a test suite: raises AssertionError with the report's
    text when the step does not match; returns the report when it does."""
    report = check_implementation(step, **kwargs)
    if not report.ok:
        raise AssertionError(report.text)
    return report


# -- the command line: python -m zaremba_ref check-impl FILE.py:FUNCTION -----------------------

def load_step(spec: str) -> Callable:
    """The function FUNCTION of the Python file FILE, from ``FILE:FUNCTION``. Raises
    KitError (one line) for a bad spec, a missing or unimportable file, or no such
    function."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise KitError(f"expected FILE.py:FUNCTION (e.g. my_lstm.py:step), got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise KitError(f"{path}: no such file")
    module_name = "_zaremba_ref_check_impl_" + re.sub(r"\W", "_", file.stem)
    loader = importlib.machinery.SourceFileLoader(module_name, str(file))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(module_name, loader))
    sys.modules[module_name] = module                   # dataclasses and pickle look here
    sys.path.insert(0, str(file.resolve().parent))      # its sibling modules import
    try:
        loader.exec_module(module)
    except SystemExit as e:
        raise KitError(f"{path} exited while being imported: {e.code}") from None
    except Exception as e:
        raise KitError(f"cannot import {path}: {type(e).__name__}: {_one_line(e)}") from None
    finally:
        sys.path.remove(str(file.resolve().parent))
    fn = getattr(module, name, None)
    if not callable(fn):
        defined = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                   and getattr(v, "__module__", None) == module_name]
        raise KitError(f"{path} has no function {name!r} (it defines: "
                       f"{', '.join(defined) or 'no functions'})")
    return fn


def cli_check_impl(args: Any) -> int:
    """``check-impl``: 0 when the step matches, 1 with the report when it does not;
    bad input raises KitError (the CLI prints one line and exits with 2)."""
    step = load_step(args.target)
    start = time.perf_counter()
    report = check_implementation(step, layout=args.layout, dtype=args.dtype,
                                  mode=None if args.mode == "none" else args.mode,
                                  examples=args.examples, seed=args.seed)
    print(report.text)
    print(f"check-impl: {report.cases_run} cases in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    return 0 if report.ok else 1
