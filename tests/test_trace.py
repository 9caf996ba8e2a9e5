"""trace(): every intermediate by name; the trace and compare commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

import zaremba_ref
from zaremba_ref import init_params, loss_and_grads, param_names
from zaremba_ref.checkpoint import save_checkpoint
from zaremba_ref.cli import main
from zaremba_ref.config import Config
from zaremba_ref.model import forward

V, H, B, T = 13, 4, 3, 5
sigm = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731


def setup(L: int, mode: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = init_params(V, H, L, init_scale=0.5, seed=seed, dtype=np.float64)
    inputs, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = [(rng.uniform(-0.5, 0.5, (B, H)), rng.uniform(-0.5, 0.5, (B, H)))
             for _ in range(L)]
    masks = zaremba_ref.draw_masks(rng, 0.4, mode, L, B, T, H, np.float64)
    return params, inputs, targets, state, masks


@pytest.mark.parametrize("mode", ["zaremba", "naive", "none"])
@pytest.mark.parametrize("L", [1, 2, 3])
def test_the_trace_is_the_model(L, mode):
    params, inputs, targets, state, masks = setup(L, mode)
    tr = zaremba_ref.trace(params, inputs, targets, state, masks, mode)
    assert all(a.dtype == np.float64 for a in tr.values())
    masks_tm = [m.transpose(1, 0, 2) for m in masks]
    np.testing.assert_array_equal(tr["input"], params["embedding"][inputs.T])
    x = tr["input"]
    for l in range(1, L + 1):
        p = lambda name: params[f"l{l}.{name}"]  # noqa: E731
        if masks_tm:
            x = x * masks_tm[l - 1]
        np.testing.assert_allclose(tr[f"l{l}.x"], x, rtol=0, atol=1e-15)
        z, i, f, o, g, c, h = (tr[f"l{l}.{n}"] for n in "zifogch")
        assert z.shape == (T, B, 4 * H) and h.shape == c.shape == (T, B, H)
        # the gates are the activations of the recomputed pre-activations, order i, f, o, g
        np.testing.assert_allclose(i, sigm(z[..., :H]), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(f, sigm(z[..., H:2 * H]), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(o, sigm(z[..., 2 * H:3 * H]), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(g, np.tanh(z[..., 3 * H:]), rtol=1e-13, atol=1e-15)
        # and the whole step, written out
        h_prev, c_prev = state[l - 1]
        for t in range(T):
            h_in = h_prev * masks_tm[L + l][t] if mode == "naive" else h_prev
            z_t = x[t] @ p("W_x").T + p("b_x") + h_in @ p("W_h").T + p("b_h")
            np.testing.assert_allclose(z[t], z_t, rtol=1e-13, atol=1e-14)
            c_prev = f[t] * c_prev + i[t] * g[t]
            h_prev = o[t] * np.tanh(c_prev)
            np.testing.assert_allclose(c[t], c_prev, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(h[t], h_prev, rtol=1e-13, atol=1e-15)
        x = h
    loss, grads, _ = loss_and_grads(params, inputs, targets, state, masks, mode=mode)
    assert tr["loss"].shape == () and float(tr["loss"]) == loss
    for name in param_names(L):
        np.testing.assert_array_equal(tr[f"grad.{name}"], grads[name])
    for l, (dh, dc) in enumerate(grads["state"], start=1):
        np.testing.assert_array_equal(tr[f"grad.state.{l}.h"], dh)
        np.testing.assert_array_equal(tr[f"grad.state.{l}.c"], dc)
    top = x * masks_tm[L] if masks_tm else x
    logits = top @ params["softmax.W"].T + params["softmax.b"]
    np.testing.assert_allclose(tr["logits"], logits, rtol=1e-13, atol=1e-14)
    assert float(tr["loss"]) == pytest.approx(
        reference_loss(params, inputs, targets, state, masks, mode), rel=1e-13)
    # The gradient half against its own reference, not loss_and_grads (which trace
    # calls): complex-step derivatives of the forward pass written out in this file.
    want = complex_step_gradients(params, inputs, targets, state, masks, mode)
    for name, g in want.items():
        np.testing.assert_allclose(tr[f"grad.{name}"], g, rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def reference_loss(params, inputs, targets, state, masks, mode):
    """The mean NLL of one window by the paper's equations, step by step, independent
    of the package's code (complex-safe, for complex-step derivatives)."""
    L = sum(k.endswith(".W_h") for k in params)
    Hs = params["l1.W_h"].shape[1]
    masks_tm = [m.transpose(1, 0, 2) for m in masks] if masks else []
    x = params["embedding"][inputs.T]                                        # (T, B, H)
    for l in range(1, L + 1):
        W_x, W_h, b_x, b_h = (params[f"l{l}.{n}"] for n in ("W_x", "W_h", "b_x", "b_h"))
        if masks_tm:
            x = x * masks_tm[l - 1]
        h, c = state[l - 1]
        hs = []
        for t in range(x.shape[0]):
            h_in = h * masks_tm[L + l][t] if mode == "naive" else h
            z = x[t] @ W_x.T + b_x + h_in @ W_h.T + b_h                       # (B, 4H)
            i, f, o = sigm(z[:, :Hs]), sigm(z[:, Hs:2 * Hs]), sigm(z[:, 2 * Hs:3 * Hs])
            c = f * c + i * np.tanh(z[:, 3 * Hs:])
            h = o * np.tanh(c)
            hs.append(h)
        x = np.stack(hs)
    top = x * masks_tm[L] if masks_tm else x
    y = top @ params["softmax.W"].T + params["softmax.b"]                     # (T, B, V)
    shift = y.real.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(y - shift).sum(axis=-1)) + shift[..., 0]
    picked = np.take_along_axis(y, targets.T[..., None], axis=-1)[..., 0]
    return (lse - picked).mean()


def complex_step_gradients(params, inputs, targets, state, masks, mode, h=1e-30):
    """dJ/dp = Im J(p + i h e_p) / h for every entry of every parameter and of the
    initial state: exact to rounding (no subtraction), so the tolerance can be tight."""
    tensors = {k: v.astype(np.complex128) for k, v in params.items()}
    cstate = [[a.astype(np.complex128) for a in pair] for pair in state]
    for l, pair in enumerate(cstate, start=1):
        tensors[f"state.{l}.h"], tensors[f"state.{l}.c"] = pair
    grads = {}
    for name, p in tensors.items():
        flat, g = p.reshape(-1), np.empty(p.size)
        for k in range(p.size):
            flat[k] += 1j * h
            g[k] = reference_loss(tensors, inputs, targets, cstate, masks, mode).imag / h
            flat[k] -= 1j * h
        grads[name] = g.reshape(p.shape)
    return grads


def test_names_and_order():
    params, inputs, targets, state, masks = setup(2, "naive")
    tr = zaremba_ref.trace(params, inputs, targets, state, masks, "naive")
    names = list(tr)
    expected_start = ["state.1.h", "state.1.c", "state.2.h", "state.2.c"] + \
        [f"mask.{k}" for k in range(5)] + ["input"]
    assert names[:len(expected_start)] == expected_start
    layer = ["x", "z", "i", "f", "o", "g", "c", "h"]
    assert names[10:26] == [f"l{l}.{n}" for l in (1, 2) for n in layer]
    assert names[26:28] == ["logits", "loss"]
    assert names[28:] == [f"grad.{n}" for n in param_names(2)] + \
        [f"grad.state.{l}.{w}" for l in (1, 2) for w in "hc"]


def test_without_dropout_logits_are_the_evaluation_forward():
    params, inputs, targets, state, _ = setup(2, "none")
    tr = zaremba_ref.trace(params, inputs, targets, state)   # mode zaremba, no masks
    y, final = forward(params, inputs, state)
    np.testing.assert_allclose(tr["logits"].reshape(T * B, V), y, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(tr["l2.h"][-1], final[1][0])
    assert not any(k.startswith("mask.") for k in tr)


def test_float32_params_masks_from_rng_and_dstate():
    params, inputs, targets, state, _ = setup(1, "zaremba")
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    a = zaremba_ref.trace(p32, inputs, targets, dropout=0.5,
                          rng=np.random.default_rng(7))
    b = zaremba_ref.trace(p32, inputs, targets, dropout=0.5,
                          rng=np.random.default_rng(7))
    assert all(v.dtype == np.float64 for v in a.values())
    assert set(np.unique(a["mask.0"])) <= {0.0, 2.0}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    dstate = [(np.ones((B, H)), np.ones((B, H)))]
    c = zaremba_ref.trace(params, inputs, targets, state, dstate=dstate)
    d = zaremba_ref.trace(params, inputs, targets, state)
    assert float(c["loss"]) == float(d["loss"])               # loss without the dstate term
    assert not np.allclose(c["grad.l1.W_h"], d["grad.l1.W_h"])
    with pytest.raises(ValueError, match="rng"):
        zaremba_ref.trace(params, inputs, targets, dropout=0.5)


# -- the commands -----------------------------------------------------------------------

def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_trace_and_compare_commands(tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    code, out, _ = run(capsys, "trace", "--random", "20,6,2", "--batch", 3, "--steps", 4,
                       "--seed", 5, "--mode", "naive", "--dropout", 0.5, "--out", a)
    assert code == 0 and json.loads(out)["out"] == str(a)
    assert run(capsys, "trace", "--random", "20,6,2", "--batch", 3, "--steps", 4, "--seed",
               5, "--mode", "naive", "--dropout", 0.5, "--out", b)[0] == 0
    with np.load(a, allow_pickle=False) as z:
        tr = {k: z[k] for k in z.files}
    assert tr["data.inputs"].shape == (3, 4) and tr["data.inputs"].dtype == np.int64
    assert tr["l2.z"].shape == (4, 3, 24) and "mask.4" in tr
    # the saved trace is reproducible from its own contents
    params = init_params(20, 6, 2, 0.1, seed=5, dtype=np.float64)
    state = [(tr[f"state.{l}.h"], tr[f"state.{l}.c"]) for l in (1, 2)]
    masks = [tr[f"mask.{k}"].transpose(1, 0, 2) for k in range(5)]
    again = zaremba_ref.trace(params, tr["data.inputs"], tr["data.targets"], state, masks,
                              "naive")
    for k, v in again.items():
        np.testing.assert_array_equal(tr[k], v)

    code, out, _ = run(capsys, "compare", a, b)
    assert code == 0 and out.strip().splitlines()[-1].startswith("all 45 arrays agree")

    # one element off, in the gradients: exit 1, and the place where they part
    tr["grad.l1.W_h"][5, 2] += 1e-3
    tr["grad.softmax.b"][0] += 1e-3
    np.savez(b, **tr)
    code, out, _ = run(capsys, "compare", a, b)
    assert code == 1
    lines = out.strip().splitlines()
    assert "grad.l1.W_h" in lines[-1] and "[5, 2]" in lines[-1] and "2 of 45" in lines[-1]
    assert [ln.split()[0] for ln in lines if ln.endswith("OFF")] == ["grad.l1.W_h",
                                                                      "grad.softmax.b"]
    assert run(capsys, "compare", a, b, "--atol", 1e-2)[0] == 0

    # a differing forward array is reported first, before the gradients
    tr["l2.c"][1, 0, 3] *= 1.01
    np.savez(b, **tr)
    code, out, _ = run(capsys, "compare", a, b)
    assert code == 1 and "part at l2.c[1, 0, 3]" in out.splitlines()[-1]


def test_compare_errors(tmp_path, capsys):
    a = tmp_path / "a.npz"
    assert run(capsys, "trace", "--random", "9,3,1", "--out", a)[0] == 0
    with np.load(a) as z:
        tr = {k: z[k] for k in z.files}
    cases = {}
    fewer = dict(tr)
    del fewer["grad.embedding"]
    np.savez(tmp_path / "fewer.npz", **fewer)
    cases["fewer.npz"] = "different arrays"
    shaped = dict(tr, loss=np.zeros(2))
    np.savez(tmp_path / "shaped.npz", **shaped)
    cases["shaped.npz"] = "shapes differ"
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    cases["junk.npz"] = "cannot read"
    cases["missing.npz"] = "cannot read"
    for name, message in cases.items():
        code, out, err = run(capsys, "compare", a, tmp_path / name)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, name
    for bad in (["--random", "9,3"], ["--random", "9,3,1", "--batch", 0],
                ["--random", "9,3,1", "--dropout", 1.0],
                ["--random", "9,3,1", "--out", tmp_path / "no" / "dir.npz"]):
        code, _, err = run(capsys, "trace", *bad)
        assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1, bad


def test_trace_from_a_checkpoint(tmp_path, capsys):
    words = "a b c d e f".split()
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        text = " \n ".join(" ".join(rng.choice(words, 8)) for _ in range(12))
        (tmp_path / f"ptb.{split}.txt").write_text(" " + text + " \n")
    from zaremba_ref.data import batchify, load_ptb
    corpus = load_ptb(tmp_path, verify=False)
    config = Config(num_layers=2, hidden_size=3, num_steps=4, batch_size=2, dropout=0.5,
                    mode="naive", vocab_size=corpus.vocab_size)
    params = init_params(corpus.vocab_size, 3, 2, seed=1)               # float32
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run", params, [(np.zeros((2, 3)),) * 2] * 2,
                    {"config": config.to_dict(), "dtype": "float32", "seed": 1}, corpus.vocab)
    out_file = tmp_path / "ckpt.npz"
    code, out, _ = run(capsys, "trace", "--checkpoint", tmp_path / "run", "--data-dir",
                       tmp_path, "--no-verify-data", "--dropout", 0.3, "--out", out_file)
    assert code == 0, out
    info = json.loads(out)
    assert (info["batch"], info["steps"], info["mode"]) == (2, 4, "naive")
    with np.load(out_file) as z:
        data = batchify(corpus.valid, 2)
        np.testing.assert_array_equal(z["data.inputs"], data[:, :4])
        np.testing.assert_array_equal(z["data.targets"], data[:, 1:5])
        assert not z["state.1.h"].any() and "mask.4" in z.files
        assert z["grad.embedding"].dtype == np.float64
