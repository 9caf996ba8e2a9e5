#!/usr/bin/env python
"""Where one training step's time goes: the step of ``loss_and_grads`` + ``sgd_step``
cut into its sections and timed one by one (ms per step, mean over N steps).

    python benchmarks/profile_step.py [--config small|medium|large] [--steps N]

The sections call the same functions as the model (``lstm_forward``, the softmax
products, ``softmax_nll_and_grad``, ``lstm_backward``, the embedding gradient,
``sgd_step`` on the used rows), on an arena backend as the trainer's, without dropout,
so that their sum is one training step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working tree's package

from zaremba_ref import CPU, init_params, sgd_step, zero_state  # noqa: E402
from zaremba_ref.config import PRESETS  # noqa: E402
from zaremba_ref.loss import softmax_nll_and_grad  # noqa: E402
from zaremba_ref.machine import blas_info  # noqa: E402
from zaremba_ref.lstm import lstm_backward, lstm_forward  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("small", "medium", "large"), default="small")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    cfg = PRESETS[args.config]
    V, H, L, B, T = cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.batch_size, cfg.num_steps
    p = init_params(V, H, L, cfg.init_scale, seed=1)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = zero_state(p, B)
    spent: dict[str, float] = {}

    def timed(name, f):
        t0 = time.perf_counter()
        result = f()
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        return result

    be = CPU.with_arena()                                  # as the trainer's steps
    for step in range(args.steps + 3):
        if step == 3:
            spent.clear()                                  # 3 warm-up steps
        be.arena.reset()
        h, caches = p["embedding"][x.T], []
        for l in range(1, L + 1):
            args_l = (p[f"l{l}.W_x"], p[f"l{l}.W_h"], p[f"l{l}.b_x"], p[f"l{l}.b_h"])
            cache = timed("LSTM forward (products + cells)",
                          lambda: lstm_forward(*args_l, h, *state[l - 1], be))
            caches.append(cache)
            h = cache.h[1:]
        hD = h.reshape(T * B, H)
        logits = timed("softmax product y = h W_s^T", lambda: np.matmul(
            hD, p["softmax.W"].T, out=be.empty((T * B, V), hD.dtype)))
        timed("softmax bias add", lambda: np.add(logits, p["softmax.b"], out=logits))
        _, dy = timed("log-softmax, NLL and dL/dy (elementwise)",
                      lambda: softmax_nll_and_grad(logits, y.T.reshape(-1), be))
        grads = {"softmax.W": timed("softmax product dW_s", lambda: np.matmul(
                     dy.T, hD, out=be.empty((V, H), hD.dtype))),
                 "softmax.b": timed("softmax bias gradient", lambda: np.ones(len(dy), dy.dtype) @ dy)}
        dx = timed("softmax product dh", lambda: np.matmul(
            dy, p["softmax.W"], out=be.empty((T * B, H), dy.dtype)).reshape(T, B, H))
        zeros = np.zeros((B, H), np.float32)
        for l in range(L, 0, -1):
            dx, dW_x, dW_h, db, _, _ = timed(
                "LSTM backward through time (products + cells)",
                lambda: lstm_backward(caches[l - 1], p[f"l{l}.W_x"], p[f"l{l}.W_h"], dx, zeros,
                                      zeros, be))
            grads.update({f"l{l}.W_x": dW_x, f"l{l}.W_h": dW_h, f"l{l}.b_x": db, f"l{l}.b_h": db})

        def embedding_grad():
            dE = be.zeros(p["embedding"].shape, p["embedding"].dtype)
            CPU.scatter_add(dE, x.T.reshape(-1), dx.reshape(-1, H))
            return dE
        grads["embedding"] = timed("embedding gradient (zeros + the used rows)", embedding_grad)
        timed("global norm + SGD update", lambda: sgd_step(
            p, grads, 0.0, cfg.max_grad_norm, cfg.loss_scale, rows={"embedding": np.unique(x)}))
    total = sum(spent.values())
    blas = blas_info()
    print(f"{args.config}: ms per training step, mean of {args.steps}; BLAS {blas['library']} "
          f"{blas['version']}, kernel {blas['kernel']}, {blas['threads']} threads")
    for name, seconds in spent.items():
        print(f"  {name:48s} {seconds / args.steps * 1e3:7.2f}  {seconds / total:6.1%}")
    print(f"  {'total':48s} {total / args.steps * 1e3:7.2f}  ({B * T * args.steps / total:,.0f} words/s)")


if __name__ == "__main__":
    main()
