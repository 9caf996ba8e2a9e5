"""The test kit (zaremba_ref.testing): a correct LSTM language model passes, each known
mistake injected into one is caught and named, a malformed step gets one clear line.

Two implementations written for these tests, each with a switch per mistake:
``torch_step`` from PyTorch ops (autograd; layout ``torch``, gate rows i, f, g, o) and
``numpy_step`` in NumPy with its backward by hand (layout ``torch7``, the paper's Torch
code: gate rows i, g, f, o).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, import_torch
from zaremba_ref.cli import main
from zaremba_ref.testing import (MISTAKES, KitError, assert_implementation_matches,
                                 check_implementation, make_case, reference, run_step)

EXAMPLES = 12          # enough draws to hit every mistake (each shows on most cases)


def block_t(W):
    """Each gate's (H, H) block of W (4H, H) transposed."""
    H = W.shape[1]
    return np.concatenate([W[k * H:(k + 1) * H].T for k in range(4)])


# -- a PyTorch implementation from ops, layout torch -------------------------------------------

def torch_step(mistake: str | None = None, arg=None):
    torch = import_torch()
    sig, tanh = torch.sigmoid, torch.tanh

    def lin(x, W, transposed):
        if transposed:                                       # x @ W_k per gate: the mistake
            return torch.cat([x @ Wk for Wk in W.chunk(4, dim=0)], dim=1)
        return x @ W.T

    def step(weights, inputs, targets, state, masks):
        w = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
        m = None if masks is None else [torch.as_tensor(a) for a in masks]
        L, (B, T) = len(state), inputs.shape
        skip = L if arg == "top" else arg
        x = w["embedding.weight"][torch.as_tensor(inputs)]
        final = []
        for l in range(L):
            if m is not None and not (mistake == "missing_mask" and skip == l):
                x = x * m[l]
            h, c = (torch.as_tensor(a) for a in state[l])
            if mistake == "state_swapped":
                h, c = c, h
            b_ih, b_hh = w[f"lstm.bias_ih_l{l}"], w[f"lstm.bias_hh_l{l}"]
            if mistake == "bias_without_gradient":
                b_ih, b_hh = (b_ih.detach(), b_hh) if arg == "ih" else (b_ih, b_hh.detach())
            outs = []
            for t in range(T):
                h_in = h * m[l][:, t] if mistake == "recurrent_dropout" and m is not None else h
                z = (lin(x[:, t], w[f"lstm.weight_ih_l{l}"],
                         mistake == "transposed" and arg in ("W_x", "both")) + b_ih
                     + lin(h_in, w[f"lstm.weight_hh_l{l}"],
                           mistake == "transposed" and arg in ("W_h", "both")) + b_hh)
                g_ = dict(zip(arg if mistake == "gate_order" else "ifgo", z.chunk(4, dim=1)))
                offset = arg if mistake == "forget_bias" else 0.0
                c = sig(g_["f"] + offset) * c + sig(g_["i"]) * tanh(g_["g"])
                h = sig(g_["o"]) * tanh(c)
                outs.append(h)
                if mistake == "truncated_bptt":
                    h, c = h.detach(), c.detach()
            x = torch.stack(outs, dim=1)
            pair = (h.detach().numpy(), c.detach().numpy())
            final.append(pair[::-1] if mistake == "state_swapped" else pair)
        if m is not None and not (mistake == "missing_mask" and skip == L):
            x = x * m[L]
        logits = x @ w["decoder.weight"].T + w["decoder.bias"]
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                torch.as_tensor(targets).flatten(),
                                                reduction="sum")
        scale = {"batch": T, "time": B, "both": 1}.get(arg) if mistake == "loss_summed" else B * T
        loss = nll / scale
        loss.backward()
        grads = {k: (v.grad if v.grad is not None else torch.zeros_like(v)).numpy()
                 for k, v in w.items()}
        return loss.item(), grads, final
    return step


# -- a NumPy implementation with its backward by hand, layout torch7 ---------------------------

def numpy_step(mistake: str | None = None, arg=None):
    def sigm(x):
        return 1 / (1 + np.exp(-x))

    def step(weights, inputs, targets, state, masks):
        E = weights["lookup.weight"]
        (V, H), L, (B, T) = E.shape, len(state), inputs.shape
        blk = {g: slice(k * H, (k + 1) * H)
               for k, g in enumerate(arg if mistake == "gate_order" else "igfo")}
        offset = arg if mistake == "forget_bias" else 0.0
        skip = L if arg == "top" else arg
        vert = [np.ones((B, T, H), E.dtype) if masks is None or
                (mistake == "missing_mask" and skip == k) else masks[k] for k in range(L + 1)]
        rec_drop = mistake == "recurrent_dropout" and masks is not None  # h_t dropped in the loop
        tr = lambda name: mistake == "transposed" and arg in (name, "both")  # noqa: E731
        eff = {}                                   # the matrices the forward really uses
        x, caches, final = E[inputs], [], []       # (B, T, H)
        for l in range(1, L + 1):
            Wx, Wh = weights[f"l{l}.i2h.weight"], weights[f"l{l}.h2h.weight"]
            Wx, Wh = (block_t(Wx) if tr("W_x") else Wx), (block_t(Wh) if tr("W_h") else Wh)
            eff[l] = Wx, Wh
            b = weights[f"l{l}.i2h.bias"] + weights[f"l{l}.h2h.bias"]
            xin = x * vert[l - 1]
            h, c = state[l - 1][::-1] if mistake == "state_swapped" else state[l - 1]
            steps, hs = [], []
            for t in range(T):
                hr = h * vert[l][:, t - 1] if rec_drop and t > 0 else h
                z = xin[:, t] @ Wx.T + hr @ Wh.T + b
                i, f = sigm(z[:, blk["i"]]), sigm(z[:, blk["f"]] + offset)
                o, g = sigm(z[:, blk["o"]]), np.tanh(z[:, blk["g"]])
                c_prev, c = c, f * c + i * g
                h = o * np.tanh(c)
                steps.append((hr, c_prev, i, f, o, g, c))
                hs.append(h)
            x = np.stack(hs, axis=1)
            h_T = h * vert[l][:, -1] if rec_drop else h
            final.append((c, h_T) if mistake == "state_swapped" else (h_T, c))
            caches.append((xin, steps))
        top = x * vert[L]
        Wy = weights["h2y.weight"]
        y = top @ Wy.T + weights["h2y.bias"]                       # (B, T, V)
        p = np.exp(y - y.max(axis=2, keepdims=True))
        p /= p.sum(axis=2, keepdims=True)
        scale = {"batch": B, "time": T, "both": B * T}.get(arg, 1) \
            if mistake == "loss_summed" else 1
        bi, ti = np.meshgrid(np.arange(B), np.arange(T), indexing="ij")
        loss = -np.log(p[bi, ti, targets]).mean() * scale
        dy = p
        dy[bi, ti, targets] -= 1
        dy *= scale / (B * T)
        grads = {"h2y.weight": np.einsum("btv,bth->vh", dy, top), "h2y.bias": dy.sum((0, 1))}
        dx = dy @ Wy * vert[L]                                      # dL/dh^L_t (B, T, H)
        for l in range(L, 0, -1):
            (xin, steps), (Wx, Wh) = caches[l - 1], eff[l]
            dWx, dWh, db = np.zeros_like(Wx), np.zeros_like(Wh), np.zeros(4 * H)
            dxin, dh_next, dc_next = np.zeros_like(xin), np.zeros((B, H)), np.zeros((B, H))
            for t in range(T - 1, -1, -1):
                hr, c_prev, i, f, o, g, c = steps[t]
                dh = dx[:, t] + dh_next
                tc = np.tanh(c)
                dc = dc_next + dh * o * (1 - tc ** 2)
                dz = np.empty((B, 4 * H))
                dz[:, blk["i"]] = dc * g * i * (1 - i)
                dz[:, blk["f"]] = dc * c_prev * f * (1 - f)
                dz[:, blk["o"]] = dh * tc * o * (1 - o)
                dz[:, blk["g"]] = dc * i * (1 - g ** 2)
                dWx += dz.T @ xin[:, t]
                dWh += dz.T @ hr
                db += dz.sum(axis=0)
                dxin[:, t] = dz @ Wx
                dh_next = dz @ Wh * (vert[l][:, t - 1] if rec_drop and t > 0 else 1)
                dc_next = dc * f
                if mistake == "truncated_bptt":
                    dh_next, dc_next = 0 * dh_next, 0 * dc_next
            grads[f"l{l}.i2h.weight"] = block_t(dWx) if tr("W_x") else dWx
            grads[f"l{l}.h2h.weight"] = block_t(dWh) if tr("W_h") else dWh
            no_grad = arg if mistake == "bias_without_gradient" else None
            grads[f"l{l}.i2h.bias"] = 0 * db if no_grad == "ih" else db
            grads[f"l{l}.h2h.bias"] = 0 * db if no_grad == "hh" else db.copy()
            dx = dxin * vert[l - 1]
        dE = np.zeros_like(E)
        np.add.at(dE, inputs, dx)
        grads["lookup.weight"] = dE
        return loss, grads, final
    return step


IMPLEMENTATIONS = {"torch": (torch_step, "torch"), "numpy": (numpy_step, "torch7")}


@pytest.mark.parametrize("impl", ["torch", "numpy"])
def test_a_correct_implementation_passes(impl):
    make, layout = IMPLEMENTATIONS[impl]
    report = assert_implementation_matches(make(), layout=layout, examples=EXAMPLES)
    assert report.ok and report.mistake is None and report.cases_run == EXAMPLES
    assert report.text.startswith("OK: your step matches the reference")


def test_a_correct_numpy_implementation_passes_in_float32_and_without_dropout():
    for kw in ({"dtype": "float32"}, {"mode": None}):
        report = check_implementation(numpy_step(), layout="torch7", examples=EXAMPLES, **kw)
        assert report.ok, report.text
    assert "0 with masks" in report.text


# Each mistake, its argument, and words the report's first lines must hold (per layout).
CASES = [
    ("gate_order", "ifog", ["i, f, o, g"]),
    ("gate_order", "igfo", ["i, g, f, o"]),
    ("gate_order", "ifgo", ["i, f, g, o"]),
    ("recurrent_dropout", None, ["recurrent connection"]),
    ("missing_mask", 0, ["masks[0]", "embedding"]),
    ("missing_mask", 1, ["masks[1]", "layer 1 into layer 2"]),
    ("missing_mask", "top", ["masks[L]", "softmax"]),
    ("forget_bias", 1.0, ["+1", "forget"]),
    ("forget_bias", -0.75, ["-0.75", "forget"]),
    ("loss_summed", "batch", ["factor B", "summed over the batch"]),
    ("loss_summed", "time", ["factor T", "summed over time"]),
    ("loss_summed", "both", ["factor B*T"]),
    ("truncated_bptt", None, ["h_{t-1} and c_{t-1}", "every step"]),
    ("transposed", "W_h", [{"torch": "lstm.weight_hh_l*", "numpy": "l*.h2h.weight"}]),
    ("transposed", "W_x", [{"torch": "lstm.weight_ih_l*", "numpy": "l*.i2h.weight"}]),
    ("bias_without_gradient", "hh", [{"torch": "lstm.bias_hh_l*", "numpy": "l*.h2h.bias"}]),
    ("bias_without_gradient", "ih", [{"torch": "lstm.bias_ih_l*", "numpy": "l*.i2h.bias"}]),
    ("state_swapped", None, ["(c, h)"]),
]


@pytest.mark.parametrize("impl", ["torch", "numpy"])
@pytest.mark.parametrize("mistake,arg,words", CASES,
                         ids=[f"{m}-{a}" for m, a, _ in CASES])
def test_each_mistake_is_caught_and_named(impl, mistake, arg, words):
    make, layout = IMPLEMENTATIONS[impl]
    if mistake == "gate_order" and arg == {"torch": "ifgo", "numpy": "igfo"}[impl]:
        arg = {"torch": "igfo", "numpy": "ifgo"}[impl]    # the layout's own order is no mistake
        words = [", ".join(arg)]
    report = check_implementation(make(mistake, arg), layout=layout, examples=EXAMPLES)
    assert not report.ok
    assert report.mistakes == [mistake], report.text
    head = "\n".join(report.text.splitlines()[:2])       # what is wrong and where, up top
    assert head.startswith("MISMATCH") and f"Diagnosis: {MISTAKES[mistake]}" in head, head
    for w in words:
        w = w[impl] if isinstance(w, dict) else w
        assert w in head, (w, head)
    with pytest.raises(AssertionError, match="MISMATCH"):
        assert_implementation_matches(make(mistake, arg), layout=layout, examples=EXAMPLES)


def test_the_failing_case_replays_and_is_shrunk():
    report = check_implementation(numpy_step("loss_summed", "time"), layout="torch7",
                                  examples=EXAMPLES)
    case = report.case
    assert (case.T, case.B, case.L) == (2, 1, 1)             # the smallest that shows it
    again = eval(case.replay(), {"zaremba_ref": __import__("zaremba_ref.testing")})
    theirs = run_step(numpy_step("loss_summed", "time"), again)
    assert theirs.loss == pytest.approx(2 * reference(again).loss, rel=1e-12)
    assert f"replay: step(*{case.replay()}.args())" in report.text


def test_two_mistakes_at_once_are_not_named_but_located():
    def step(weights, inputs, targets, state, masks):
        loss, grads, final = numpy_step("truncated_bptt")(weights, inputs, targets, state, masks)
        return 2 * loss, grads, final                         # and the loss doubled
    report = check_implementation(step, layout="torch7", examples=EXAMPLES)
    assert not report.ok and report.mistake is None
    assert "Diagnosis: none of the 9 known mistakes" in report.text
    assert "Where: the forward pass departs first at loss" in report.text


# -- malformed steps: one clear line, never a traceback from inside the kit ----------------------

def wrapped(change):
    def step(*args):
        loss, grads, final = numpy_step()(*args)
        return change(loss, grads, final)
    return step


@pytest.mark.parametrize("change,message", [
    (lambda l, g, f: (l, g), "must return (loss, grads, final_state)"),
    (lambda l, g, f: (np.array([l, l]), g, f), "loss must be a scalar"),
    (lambda l, g, f: (l, [g], f), "grads must be a dict keyed like weights"),
    (lambda l, g, f: (l, {k: v for k, v in g.items() if k != "h2y.bias"}, f),
     "missing ['h2y.bias']"),
    (lambda l, g, f: (l, g | {"extra": 1.0}, f), "unexpected ['extra']"),
    (lambda l, g, f: (l, g | {"l1.h2h.weight": g["l1.h2h.weight"].T}, f),
     "grads['l1.h2h.weight'] has shape"),
    (lambda l, g, f: (l, g, f[:-1] if len(f) > 1 else []), "final_state must be a list of L="),
    (lambda l, g, f: (l, g, [np.stack(p) for p in f]), "not an (h, c) pair"),
    (lambda l, g, f: (l, g, [(h.T, c) for h, c in f]), "final_state[0] h has shape"),
])
def test_a_malformed_step_gets_one_clear_line(change, message):
    with pytest.raises(KitError) as e:
        check_implementation(wrapped(change), layout="torch7", examples=EXAMPLES)
    text = str(e.value)
    assert message in text and "\n" not in text, text
    # H = 1 makes some transposes square; the first case drawn has H = 1, so force H = 2
    case = make_case(5, 2, 2, 3, 4, layout="torch7")
    with pytest.raises(KitError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("*", r"\*")):
        run_step(wrapped(change), case)


def test_a_step_that_raises_is_named_with_its_exception():
    def step(weights, inputs, targets, state, masks):
        return 1 / 0
    with pytest.raises(KitError, match=r"^the step raised ZeroDivisionError: division by zero "
                                       r"\(on the case V=\d"):
        check_implementation(step)


def test_bad_arguments():
    for kw, message in (({"layout": "jax"}, "layout must be one of"),
                        ({"mode": "naive"}, "mode must be one of"),
                        ({"dtype": "float16"}, "dtype must be one of"),
                        ({"examples": 0}, "examples must be >= 1")):
        with pytest.raises(KitError, match=message):
            check_implementation(numpy_step(), **kw)


def test_importing_the_kit_needs_numpy_only():
    code = ("import sys\n"
            "for name in ('hypothesis', 'torch', 'pytest'):\n"
            "    sys.modules[name] = None                    # any import of them fails\n"
            "import zaremba_ref.testing as t\n"
            "case = t.make_case(5, 2, 2, 3, 4)\n"
            "assert t.reference(case).loss > 0\n"
            "try:\n"
            "    t.check_implementation(lambda *a: None)\n"
            "except t.KitError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=os.environ | {"PYTHONPATH": str(REPO)}, cwd=REPO, check=True)
    assert out.stdout.strip() == "drawing cases needs Hypothesis: pip install hypothesis"


# -- the command line and the example ---------------------------------------------------------

def write(tmp_path, text, name="mine.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


STEP_FILE = """
import sys
sys.path.insert(0, {tests!r})
from test_testing import numpy_step
step = numpy_step({mistake!r}, {arg!r})
"""


def test_check_impl_exit_codes(tmp_path, capsys):
    good = write(tmp_path, STEP_FILE.format(tests=str(REPO / "tests"), mistake=None, arg=None))
    assert main(["check-impl", f"{good}:step", "--layout", "torch7", "--examples", "5"]) == 0
    assert capsys.readouterr().out.startswith("OK: your step matches the reference")
    bad = write(tmp_path, STEP_FILE.format(tests=str(REPO / "tests"), mistake="loss_summed",
                                           arg="batch"), "bad.py")
    assert main(["check-impl", f"{bad}:step", "--layout", "torch7", "--examples", "5"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("MISMATCH") and "factor B" in out[1]

    raising = write(tmp_path, "def step(*args):\n    raise RuntimeError('not yet\\nwritten')\n",
                    "raising.py")
    for target, message in (
            (f"{good}:nope", f"error: {good} has no function 'nope' (it defines: "),
            (f"{tmp_path}/missing.py:step", "no such file"),
            (good, "expected FILE.py:FUNCTION"),
            (f"{write(tmp_path, 'def step(:', 'broken.py')}:step",
             "cannot import .*broken.py: SyntaxError"),
            (f"{raising}:step", "the step raised RuntimeError: not yet written")):
        assert main(["check-impl", target, "--layout", "torch7"]) == 2, target
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert re.search(message if "SyntaxError" in message else re.escape(message), err), err


def test_the_example_checks_a_from_scratch_lstm():
    import_torch()                       # the example is written in PyTorch ops
    env = os.environ | {"PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
    example = REPO / "examples" / "check_my_lstm.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                         env=env, cwd=REPO)
    assert out.returncode == 0 and out.stdout.startswith("OK: your step matches"), out
    out = subprocess.run([sys.executable, "-m", "zaremba_ref", "check-impl",
                          "examples/check_my_lstm.py:step", "--examples", "10"],
                         capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0 and "on 10 cases" in out.stdout, out


def test_the_example_without_torch_says_so_in_one_line():
    code = ("import sys, runpy\nsys.modules['torch'] = None\n"
            f"runpy.run_path({str(REPO / 'examples' / 'check_my_lstm.py')!r}, "
            "run_name='__main__')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=os.environ | {"PYTHONPATH": str(REPO)}, cwd=REPO)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == "check_my_lstm.py needs PyTorch for its autograd: pip install torch\n"


def test_the_readme_shows_the_kits_real_report(tmp_path, capsys):
    """The report shown in docs/oracle.md is what check-impl prints for the example with its
    gates read in the paper's order (the table's numbers to 3 digits, below 1e-15 as noise)."""
    import_torch()                       # the example is written in PyTorch ops
    page = (REPO / "docs" / "oracle.md").read_text()
    section = page.split("## Check your own implementation")[1]
    shown = re.search(r"the kit prints \(exit code 1\):\n\n```\n(.*?)\n```", section,
                      re.S).group(1).splitlines()
    source = (REPO / "examples" / "check_my_lstm.py").read_text()
    assert source.count("i, f, g, o = z.chunk(4, dim=1)") == 1
    mine = write(tmp_path, source.replace("i, f, g, o = z.chunk(4, dim=1)",
                                          "i, f, o, g = z.chunk(4, dim=1)"))
    assert main(["check-impl", f"{mine}:step"]) == 1
    printed = capsys.readouterr().out.rstrip("\n").splitlines()
    assert len(printed) == len(shown)
    drawn = lambda line: re.sub(r"after \d+ drawn", "after N drawn", line)  # noqa: E731
    for a, b in zip(printed, shown):                  # (N: Hypothesis's count, its version's)
        if not re.match(r"  grad |  loss |  final ", a):
            assert drawn(a) == drawn(b)
            continue
        *words_a, x_a, r_a, ok_a = a.split()
        *words_b, x_b, r_b, ok_b = b.split()
        assert (words_a, ok_a) == (words_b, ok_b)
        for u, v in ((float(x_a), float(x_b)), (float(r_a), float(r_b))):
            assert u == pytest.approx(v, rel=1e-2, abs=1e-15)
