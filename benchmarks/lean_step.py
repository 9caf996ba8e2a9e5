#!/usr/bin/env python
"""How close to the GEMM floor a NumPy training step can come: the leanest step we can
write in NumPy, timed in one run with the GEMM floor and with ours.

    python benchmarks/lean_step.py --config small|medium|large [--repeats R] [--steps N]

The **lean step** is one training step of the preset (dropout included) written as a
flat sequence of NumPy calls, in the order the step needs them, with nothing a NumPy
step could leave out:

- the floor's own matrix products, on the floor's own operands (``bench.gemm_floor``'s
  layouts: every transpose contiguous beforehand, which a real step cannot have for
  free), each into a preallocated output;
- beside them, each elementwise equation once: the embedding gather; the dropout masks
  drawn in place and applied forward and backward; z += b; the recurrent product added
  into z (matmul cannot accumulate); the cell forward as ``kernels.py`` writes it and
  the backward cell with every intermediate in a preallocated buffer
  (``cell_backward_least``, the same bits as ``kernels.lstm_cell_backward``, tested);
  the logits' passes (+ b_s, row max, - max, exp, row sums by BLAS, the scale to
  dL/dy) and the bias gradients by BLAS; dh = dh_out + dh_next; the embedding's
  gradient on its used rows only; sum(g^2) by BLAS and the update
  (``kernels.sgd_update``) over the dense parameters and the embedding's used rows;
- no function calls of the model, no checks, no arena, no dense embedding gradient.

Interleaved round by round with the GEMM floor and with ours (``bench.ours``: the
trainer's ``train_step``), so that all three see the same machine. lean / floor is
then what the arithmetic of a NumPy step allows beside these products on this machine;
ours / lean is what our readable step costs on top. The last line printed is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))                  # the working tree's package
sys.path.insert(0, str(HERE))                         # bench.py: the floor and ours


def dense_shapes(cfg) -> list[tuple]:
    """The shapes of every parameter but the embedding (whose gradient is zero outside
    the window's words): W_s, b_s, and per layer W_x, W_h, b_x, b_h."""
    L, H, V = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    return [(V, H), (V,)] + [s for _ in range(L)
                             for s in ((4 * H, H), (4 * H, H), (4 * H,), (4 * H,))]


def cell_backward_least(gates, c_prev, c, dh, dc_next, dz, dc_prev, scratch) -> None:
    """kernels.lstm_cell_backward's equations, to the same bits, with every
    intermediate in preallocated ``scratch`` (no temporaries, no copy for g's
    derivative): the least NumPy calls the backward cell needs."""
    H = c.shape[1]
    i, f, o, g = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    tanh_c, d_tanh_c, dc, d = scratch
    np.tanh(c, out=tanh_c)
    np.multiply(tanh_c, tanh_c, out=d_tanh_c)
    np.subtract(1, d_tanh_c, out=d_tanh_c)               # 1 - tanh(c)^2
    np.multiply(dh, o, out=dc)
    np.multiply(dc, d_tanh_c, out=dc)
    np.add(dc, dc_next, out=dc)                          # dL/dc_t
    np.multiply(dc, g, out=dz[:, :H])
    np.multiply(dc, c_prev, out=dz[:, H:2 * H])
    np.multiply(dh, tanh_c, out=dz[:, 2 * H:3 * H])
    np.multiply(dc, i, out=dz[:, 3 * H:])
    np.subtract(1, gates, out=d)
    np.multiply(d, gates, out=d)                         # y (1 - y)
    np.multiply(g, g, out=d[:, 3 * H:])
    np.subtract(1, d[:, 3 * H:], out=d[:, 3 * H:])       # 1 - g^2
    np.multiply(dz, d, out=dz)
    np.multiply(dc, f, out=dc_prev)


def lean_step(cfg, dtype):
    """One call = one lean training step of ``cfg`` on a random window (see above)."""
    from zaremba_ref import kernels
    from zaremba_ref.backend import scatter_add_rows
    from zaremba_ref.dropout import _masks, num_masks
    L, H, T, B, V = cfg.num_layers, cfg.hidden_size, cfg.num_steps, cfg.batch_size, cfg.vocab_size
    N, r = T * B, np.random.default_rng(2)
    a = lambda *shape: r.uniform(-0.1, 0.1, shape).astype(dtype)  # noqa: E731
    mm = np.matmul
    words, targets = r.integers(0, V, (T, B)), r.integers(0, V, N)
    used = np.unique(words)
    rows_of = np.searchsorted(used, words.ravel())       # each word's row among the used
    p = cfg.dropout
    count = num_masks(cfg.mode, L) if p else 0
    gen = np.random.default_rng(0)

    E = a(V, H)
    x0 = np.empty((T, B, H), dtype)
    layers = [dict(Wx=a(4 * H, H), WxT=a(H, 4 * H), Wh=a(4 * H, H), WhT=a(H, 4 * H),
                   b=a(4 * H), x=a(T, B, H), z=a(T, B, 4 * H), zr=a(B, 4 * H),
                   h=a(T + 1, B, H), c=a(T + 1, B, H), dz=a(T, B, 4 * H),
                   dZT=a(4 * H, N), dWx=a(4 * H, H), dWh=a(4 * H, H), db=a(4 * H),
                   dx=a(T, B, H))
              for _ in range(L)]
    Ws, WsT, bs, hD = a(V, H), a(H, V), a(V), a(T, B, H)
    Y, dYT, dWs, dbs, dhs = a(N, V), a(V, N), a(V, H), a(V), a(T, B, H)
    ones_V, ones_N = np.ones(V, dtype), np.ones(N, dtype)
    dh, dh_next, dc_next, dc_prev = a(B, H), a(B, H), a(B, H), a(B, H)
    scratch = (a(B, H), a(B, H), a(B, H), a(B, 4 * H))
    dE_used = np.empty((len(used), H), dtype)
    # the dense parameters' gradients (b_x and b_h share theirs, as in model.py) and the
    # embedding's used rows, for the norm and the update
    grads = [dWs, dbs] + [g for m in layers for g in (m["dWx"], m["dWh"], m["db"], m["db"])]
    grads.append(dE_used)
    params = [a(*g.shape) for g in grads]

    def step():
        masks = _masks(gen, p, (T, B, H), dtype, count) if count else []
        np.take(E, words, axis=0, out=x0)                # h^0_t: the embedding   (T, B, H)
        inp = x0
        for l, m in enumerate(layers):                   # forward
            x = kernels.dropout(inp, masks[l], m["x"]) if count else inp  # D(h^{l-1}_t)
            m["xin"] = x
            mm(x.reshape(N, H), m["WxT"], out=m["z"].reshape(N, 4 * H))
            np.add(m["z"], m["b"], out=m["z"])           # + b_x + b_h
            z, h, c, zr = m["z"], m["h"], m["c"], m["zr"]
            for t in range(T):
                mm(h[t], m["WhT"], out=zr)               # W_h h_{t-1}
                np.add(z[t], zr, out=z[t])
                kernels.lstm_cell_forward(z[t], c[t], c[t + 1], h[t + 1])
            inp = h[1:]
        hN = (kernels.dropout(inp, masks[L], hD) if count else inp).reshape(N, H)
        mm(hN, WsT, out=Y)                               # y = W_s D(h^L) (+ b_s)  (N, V)
        np.add(Y, bs, out=Y)
        Y[np.arange(N), targets]                         # the targets' logits (the loss)
        mx = Y.max(axis=1, keepdims=True)
        np.subtract(Y, mx, out=Y)
        np.exp(Y, out=Y)
        sums = (Y @ ones_V)[:, None]
        kernels.softmax_cross_entropy_grad(Y, sums, targets, 1.0 / N)
        np.matmul(ones_N, Y, out=dbs)                    # db_s
        mm(dYT, hN, out=dWs)                             # dW_s (the floor's operands)
        mm(Y, Ws, out=dhs.reshape(N, H))                 # dL/dD(h^L)
        dh_out = dhs
        if count:
            kernels.dropout(dh_out, masks[L], dh_out)
        for l in range(L - 1, -1, -1):                   # backward through time
            m = layers[l]
            z, c, dz = m["z"], m["c"], m["dz"]
            dh_next[...] = 0
            dcn, dcp = dc_next, dc_prev
            dcn[...] = 0
            for t in range(T - 1, -1, -1):
                np.add(dh_out[t], dh_next, out=dh)
                cell_backward_least(z[t], c[t], c[t + 1], dh, dcn, dz[t], dcp, scratch)
                dcn, dcp = dcp, dcn                      # dL/dc_{t-1} is carried back
                mm(dz[t], m["Wh"], out=dh_next)          # through W_h h_{t-1}
            mm(m["dZT"], m["xin"].reshape(N, H), out=m["dWx"])
            mm(m["dZT"], m["h"][:-1].reshape(N, H), out=m["dWh"])
            np.matmul(ones_N, dz.reshape(N, 4 * H), out=m["db"])
            mm(dz.reshape(N, 4 * H), m["Wx"], out=m["dx"].reshape(N, H))
            dh_out = m["dx"]
            if count:
                kernels.dropout(dh_out, masks[l], dh_out)
        dE_used[...] = 0                                 # dL/dE on the used rows only
        scatter_add_rows(dE_used, rows_of, dh_out.reshape(N, H))
        sq = sum(np.vdot(g.ravel(), g.ravel()) for g in grads)
        s = 1e-6 / max(float(np.sqrt(sq)), 1e-30)        # a small step: the values stay put
        for w, g in zip(params, grads):
            kernels.sgd_update(w, g, s)
    step.grads, step.params = grads, params              # for the tests
    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("small", "medium", "large"), default="medium")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds (median)")
    ap.add_argument("--steps", type=int, default=2, help="steps a round")
    args = ap.parse_args(argv)
    import bench
    from zaremba_ref.backend import CPU
    from zaremba_ref.config import PRESETS
    from zaremba_ref.machine import blas_info, forced_kernel_note
    note = forced_kernel_note()
    if note:
        print(note, file=sys.stderr)
    cfg = PRESETS[args.config]
    dtype = np.float32
    train, _ = bench.ours(cfg, CPU, dtype)
    contenders = {"floor": bench.gemm_floor(cfg, np, dtype), "lean": lean_step(cfg, dtype),
                  "ours": train}
    nosync = lambda: None  # noqa: E731  (the CPU: every call returns when done)
    times = bench.interleaved({k: (f, nosync) for k, f in contenders.items()},
                              args.repeats, args.steps, settle=0.05, warmup=2)
    times = {k: [1e3 * t / args.steps for t in v] for k, v in times.items()}  # ms a step
    ms = {k: statistics.median(v) for k, v in times.items()}
    order = list(contenders)
    blas = blas_info()
    res = {"config": args.config, "steps": args.steps, "repeats": args.repeats,
           "step_ms": ms, "lean_vs_floor": ms["floor"] / ms["lean"],
           "ours_vs_floor": ms["floor"] / ms["ours"], "ours_vs_lean": ms["lean"] / ms["ours"],
           "blas": blas, "round_ms": {k: [round(t, 3) for t in v] for k, v in times.items()}}
    print(f"{args.config}: L={cfg.num_layers} H={cfg.hidden_size} T={cfg.num_steps} "
          f"B={cfg.batch_size} V={cfg.vocab_size} dropout={cfg.dropout} float32; BLAS "
          f"{blas['library']} {blas['version']} kernel {blas['kernel']}, {blas['threads']} "
          f"threads; median of {args.repeats} interleaved rounds x {args.steps} steps")
    print(f"  {'':12}{'ms/step':>10}{'vs floor':>10}")
    for k in order:
        print(f"  {k:12}{ms[k]:10.2f}{ms['floor'] / ms[k]:10.3f}")
    print(f"  lean / floor = {res['lean_vs_floor']:.3f}: what a NumPy step can reach here; "
          f"ours / lean = {res['ours_vs_lean']:.3f}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
