#!/usr/bin/env python
"""How close to the GEMM floor a NumPy step can come: the time of the elementwise
work a training step cannot skip, each pass at its least, against the budget a
target ratio leaves beside the matrix products.

    python benchmarks/nongemm_floor.py --config small|medium|large [--repeats R] [--target F]

A step at ``F`` x the GEMM floor has ``floor * (1/F - 1)`` ms for everything that is
not a matrix product. This script measures, in one process and interleaved with the
floor itself (``bench.gemm_floor``), the least that everything else costs when written
as NumPy calls, each call one pass over its arrays, preallocated, nothing counted
that the step could skip:

  logits      over the (N, V) logits after y = h W_s^T: + b_s, the row max, - max,
              exp, the row sums (a BLAS matrix-vector product), the scale to dL/dy;
              and the bias gradient (another matrix-vector product)
  norm+sgd    sum(g^2) over every dense gradient and the embedding's used rows only
              (by BLAS dot), then p <- p - a g over the same (``kernels.sgd_update``)
  cells       the LSTM cell forward (``kernels.lstm_cell_forward``) and backward (its
              equations with no temporaries, ``cell_backward_least``), a dozen ufunc
              calls each on (B, 4H) rows, L*T times each, plus the per-step
              dh = dh_out + dh_next and the window's z += b_x + b_h and db
  dropout     the preset's masks drawn in place (``dropout._masks``) and applied
              forward and backward (``kernels.dropout``)
  embedding   the forward gather E[x] and the gradient's used rows
              (``backend.scatter_add`` into a zeroed (B*T, H) block, not the dense E)

Python's own cost per call (the glue between them) is not counted, so the sum is a
lower bound for a NumPy implementation that runs them on one core. If the sum is over
the budget, no arrangement of NumPy calls reaches the target on this machine: what is
left needs fused compiled loops (the GPU path's kernels) or more cores than OpenBLAS
leaves idle. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))                  # the working tree's package
sys.path.insert(0, str(HERE))                         # bench.py, for its floor


def dense_shapes(cfg) -> list[tuple]:
    """The shapes of every parameter but the embedding (whose gradient is zero outside
    the window's words): W_s, b_s, and per layer W_x, W_h, b_x, b_h."""
    L, H, V = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    return [(V, H), (V,)] + [s for _ in range(L)
                             for s in ((4 * H, H), (4 * H, H), (4 * H,), (4 * H,))]


def cell_backward_least(gates, c_prev, c, dh, dc_next, dz, dc_prev, scratch):
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


def sections(cfg, dtype):
    """{name: callable doing that section's least work for one step}."""
    from zaremba_ref import kernels
    from zaremba_ref.backend import scatter_add_rows
    from zaremba_ref.dropout import _masks, num_masks
    L, H, T, B, V = cfg.num_layers, cfg.hidden_size, cfg.num_steps, cfg.batch_size, cfg.vocab_size
    N, r = T * B, np.random.default_rng(2)
    a = lambda *shape: r.uniform(-0.1, 0.1, shape).astype(dtype)  # noqa: E731
    words = r.integers(0, V, N)
    targets = r.integers(0, V, N)

    y, b_s, ones_V, ones_N = a(N, V), a(V), np.ones(V, dtype), np.ones(N, dtype)

    def logits():                                     # (y stays finite round after round)
        np.add(y, b_s, out=y)                         # + b_s
        m = y.max(axis=1, keepdims=True)
        np.subtract(y, m, out=y)
        np.exp(y, out=y)
        sums = (y @ ones_V)[:, None]
        kernels.softmax_cross_entropy_grad(y, sums, targets, 1.0 / N)
        ones_N @ y                                    # db_s

    used = len(np.unique(words))
    shapes = dense_shapes(cfg) + [(used, H)]          # + the embedding's used rows
    params, grads = [a(*s) for s in shapes], [a(*s) * 1e-3 for s in shapes]

    def norm_sgd():
        sq = sum(np.vdot(g.ravel(), g.ravel()) for g in grads)
        s = 1e-6 / max(float(np.sqrt(sq)), 1e-30)     # a small step: the values stay put
        for p, g in zip(params, grads):
            kernels.sgd_update(p, g, s)

    z = a(T, B, 4 * H)
    c, h = a(T + 1, B, H), a(T + 1, B, H)
    dh_out, dh_next, dc_next, dc_prev = a(T, B, H), a(B, H), a(B, H), a(B, H)
    dz, b4 = a(T, B, 4 * H), a(4 * H)
    ones_TB = np.ones(N, dtype)
    scratch = (a(B, H), a(B, H), a(B, H), a(B, 4 * H))

    def cells():
        for _ in range(L):
            np.add(z, b4, out=z)                      # z += b_x + b_h (one sum, as lstm.py)
            for t in range(T):
                kernels.lstm_cell_forward(z[t], c[t], c[t + 1], h[t + 1])
            for t in range(T - 1, -1, -1):
                dh = dh_out[t] + dh_next
                cell_backward_least(z[t], c[t], c[t + 1], dh, dc_next, dz[t], dc_prev,
                                    scratch)
            ones_TB @ dz.reshape(N, 4 * H)            # db

    p_drop = cfg.dropout
    count = num_masks(cfg.mode, L) if p_drop else 0
    xs = [a(B, T, H) for _ in range(count)]
    outs = [a(B, T, H) for _ in range(count)]
    gen = np.random.default_rng(0)

    def dropout():
        masks = _masks(gen, p_drop, (B, T, H), dtype, count)
        for x, m, o in zip(xs, masks, outs):
            kernels.dropout(x, m, o)                  # forward
            kernels.dropout(o, m, o)                  # backward: the same product

    E, dE_rows, ex = a(V, H), np.zeros((N, H), dtype), a(N, H)

    def embedding():
        E[words]                                      # the forward gather (N, H)
        dE_rows[:used] = 0
        scatter_add_rows(dE_rows, np.searchsorted(np.unique(words), words), ex)

    out = {"logits": logits, "norm+sgd": norm_sgd, "cells": cells, "embedding": embedding}
    if count:
        out["dropout"] = dropout
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("small", "medium", "large"), default="medium")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved rounds (median)")
    ap.add_argument("--target", type=float, default=None,
                    help="the target ratio to the floor (default: 0.75 small, 0.90 else)")
    args = ap.parse_args(argv)
    import bench
    from zaremba_ref.config import PRESETS
    from zaremba_ref.machine import blas_info, forced_kernel_note
    note = forced_kernel_note()
    if note:
        print(note, file=sys.stderr)
    cfg = PRESETS[args.config]
    target = args.target or (0.75 if args.config == "small" else 0.90)
    dtype = np.float32
    steps = {"GEMM floor": bench.gemm_floor(cfg, np, dtype)}
    steps.update(sections(cfg, dtype))
    for f in steps.values():                          # warm-up: pages, caches, BLAS threads
        f(), f()
    times = {k: [] for k in steps}
    order = list(steps)
    for rep in range(args.repeats):
        for k in order[rep % len(order):] + order[:rep % len(order)]:
            time.sleep(0.05)                          # let OpenBLAS's spinning workers idle
            t0 = time.perf_counter()
            steps[k]()
            times[k].append(1e3 * (time.perf_counter() - t0))
    ms = {k: statistics.median(v) for k, v in times.items()}
    floor = ms.pop("GEMM floor")
    least = sum(ms.values())
    budget = floor * (1 / target - 1)
    best = floor / (floor + least)
    blas = blas_info()
    print(f"{args.config}: L={cfg.num_layers} H={cfg.hidden_size} T={cfg.num_steps} "
          f"B={cfg.batch_size} V={cfg.vocab_size} float32; BLAS {blas['library']} "
          f"{blas['version']} kernel {blas['kernel']}, {blas['threads']} threads; "
          f"median of {args.repeats} interleaved rounds")
    print(f"  {'GEMM floor':34}{floor:9.2f} ms")
    for k, v in ms.items():
        print(f"  {'least ' + k:34}{v:9.2f} ms")
    print(f"  {'least non-GEMM, sum':34}{least:9.2f} ms")
    print(f"  {f'budget at {target:.2f}x the floor':34}{budget:9.2f} ms")
    print(f"  best ratio a NumPy step can reach: floor / (floor + least) = {best:.3f}")
    print(json.dumps({"config": args.config, "target": target, "floor_ms": floor,
                      "least_ms": ms, "least_sum_ms": least, "budget_ms": budget,
                      "best_ratio": best, "blas": blas,
                      "round_ms": {k: [round(t, 3) for t in v] for k, v in times.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
