#!/usr/bin/env python
"""How much of an LSTM training step is inherently sequential? One training step timed
whole and in its sequential part, for the paper's presets and window lengths T.

Only the recurrence waits for step t-1. Per layer and step: forward, the product W_h
h_{t-1} and the cell; backward, the cell's backward and dz_t W_h. The input
projections, the softmax and its loss, the dropout masks and the weight gradients are
each one product or one pass over the whole window. In one process, per row (preset,
T), interleaved over R rounds (the order alternating), this script times:

  step        zaremba_ref.train.train_step: forward, backward through time, clipping
              and the SGD update, with the preset's dropout, the state carried, an arena
              backend (as train() and bench.py run it), on random token windows (B, T)
  sequential  the per-step loops of lstm.lstm_forward and lstm.lstm_backward alone,
              for the L layers, on buffers of the step's shapes, calling the same
              functions the same way: for t = 1..T, z_t += W_h h_{t-1} and
              lstm_cell_forward; for t = T..1, dh = dh_out_t + dh_{t+1},
              lstm_cell_backward and dh_t = dz_t W_h

and reports the median of the rounds, per row:

  step_ms, sequential_ms   the two times, in milliseconds
  sequential_fraction s    sequential_ms / step_ms
  amdahl_bound 1/s         the largest speed-up that more parallel hardware could give
                           this step if it ran everything but the sequential part in
                           no time, and the sequential part no faster (Amdahl's law)
  words_per_sec            B T / step time
  critical_path_cell_steps T + L - 1: the longest chain of dependent cell steps of an
                           L-layer LSTM over T steps, with the layers run as a
                           wavefront (layer l at step t beside layer l+1 at step t-1);
                           this implementation runs layer after layer, L T steps
  transformer_layers       L: a Transformer's forward pass has L dependent layers,
                           however long the window (for comparison)

The batch is the preset's (20). Writes ``--out-json`` (``{"rows": [...], "machine":
{...}, "command": ...}``, the BLAS and its kernel, and the GPU, in "machine") and ``--out-png``
(needs matplotlib). ``--quick``: tiny sizes, for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench.py, beside this script
import bench  # noqa: E402  (sets up the working tree's package on sys.path too)

QUICK = {"hidden_size": 16, "batch_size": 4, "vocab_size": 50}   # --quick: tiny models
QUICK_STEPS = "3,6"


def build_parser() -> argparse.ArgumentParser:
    """The options, each with its rule (type and range, shown in --help)."""
    rules = bench._rules_module()
    TEXT, ArgumentParser, add_option = rules.TEXT, rules.ArgumentParser, rules.add_option
    count, one_of, real = rules.count, rules.one_of, rules.real
    p = ArgumentParser(prog="sequential_path.py", description=__doc__,
                       epilog="See docs/studies.md, 'The sequential-path study'.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_option(p, "--configs", TEXT, default="small,medium,large",
               help="comma-separated presets among small, medium, large "
                    "(default: small,medium,large)")
    add_option(p, "--num-steps", TEXT, default="5,10,20,35,70,140,280",
               help="comma-separated window lengths T, integers >= 1 "
                    "(default: 5,10,20,35,70,140,280)")
    add_option(p, "--repeats", count(1), default=5, help="R, rounds; the median is "
                                                         "reported (default: 5)")
    add_option(p, "--steps", count(1), default=1, help="timed calls per round (default: 1)")
    add_option(p, "--warmup", count(0), default=1,
               help="untimed calls of each before the rounds (default: 1)")
    add_option(p, "--device", one_of("cpu", "gpu"), default="cpu",
               help="gpu: CuPy and the CUDA kernels, synchronized before each clock "
                    "reading (default: cpu)")
    add_option(p, "--dtype", one_of("float32", "float64"), default="float32",
               help="floating type (default: float32, as training)")
    add_option(p, "--threads", count(1), help="threads for NumPy's BLAS (default: "
               "OPENBLAS/OMP_NUM_THREADS if set, else the CPUs this process may use)")
    add_option(p, "--settle", real(0, 60), default=0.3,
               help="seconds of pause before each timed call, so that the previous "
                    "one's spinning BLAS threads do not steal its cores (default: 0.3)")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny sizes for a smoke test: H, B, V = {QUICK['hidden_size']}, "
                        f"{QUICK['batch_size']}, {QUICK['vocab_size']}; T in {QUICK_STEPS} "
                        "unless --num-steps is given; no pauses")
    add_option(p, "--out-json", TEXT, default="runs/sequential_path.json",
               help="where the rows go (default: runs/sequential_path.json)")
    add_option(p, "--out-png", TEXT, default="runs/sequential_path.png",
               help="where the figure goes, if matplotlib is installed (default: "
                    "runs/sequential_path.png)")
    return p


def parse_args(argv) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    count = bench._rules_module().count
    if args.quick and "--num-steps" not in argv:
        args.num_steps = QUICK_STEPS
    try:
        args.num_steps = [count(1).check("--num-steps", int(v))
                          for v in args.num_steps.split(",")]
    except ValueError as e:
        p.error(str(e) if "--num-steps" in str(e) else
                f"--num-steps must be comma-separated integers >= 1, got {args.num_steps!r}")
    args.configs = [c.strip() for c in args.configs.split(",")]
    bad = [c for c in args.configs if c not in ("small", "medium", "large")]
    if bad or not args.configs:
        p.error(f"--configs takes some of small, medium, large, got {bad or args.configs}")
    return args


# -- The sequential part: the per-step loops of lstm.py, nothing else ----------------------

def sequential_forward(z, h, c, W_h, backend) -> None:
    """The loop of ``lstm.lstm_forward`` (no recurrent dropout), the input projection
    already in ``z`` (T, B, 4H): for t = 1..T, z_t += W_h h_{t-1}, then the cell, which
    overwrites z_t with the gates and writes c_t, h_t into c, h (T+1, B, H)."""
    for t in range(1, z.shape[0] + 1):
        z[t - 1] += (W_h @ h[t - 1].T).T                          # (B, 4H)
        backend.lstm_cell_forward(z[t - 1], c[t - 1], c[t], h[t])


def sequential_backward(gates, c, dh_out, W_h, dh_T, dc_T, dz, backend):
    """The loop of ``lstm.lstm_backward`` (no recurrent dropout): for t = T..1, the
    cell's backward into dz (T, B, 4H) and dh_{t-1} = dz_t W_h. Returns dh_0, dc_0."""
    dh_next = dh_T
    dc_next, dc_prev = dc_T.copy(), backend.xp.empty_like(dc_T)
    for t in range(gates.shape[0], 0, -1):
        dh = dh_out[t - 1] + dh_next                              # (B, H)
        backend.lstm_cell_backward(gates[t - 1], c[t - 1], c[t], dh, dc_next,
                                   dz[t - 1], dc_prev)
        dc_next, dc_prev = dc_prev, dc_next
        dh_next = dz[t - 1] @ W_h                                 # (B, H)
    return dh_next, dc_next


def sequential_part(cfg, backend, dtype, seed=0):
    """One call = the sequential part of one training step of ``cfg``: the forward loop
    of each of the L layers, then the backward loop of each, top layer first, on
    buffers of the step's shapes (drawn once; the loops keep their values bounded)."""
    import numpy as np
    xp, rng = backend.xp, np.random.default_rng(seed)
    L, H, B, T = cfg.num_layers, cfg.hidden_size, cfg.batch_size, cfg.num_steps
    a = lambda *shape: xp.asarray(rng.uniform(-1, 1, shape), dtype=dtype)  # noqa: E731
    layers = [dict(W_h=a(4 * H, H) * cfg.init_scale, z=a(T, B, 4 * H), h=a(T + 1, B, H),
                   c=a(T + 1, B, H), dz=a(T, B, 4 * H), dh_out=a(T, B, H),
                   zero=xp.zeros((B, H), dtype)) for _ in range(L)]

    def run():
        for m in layers:
            sequential_forward(m["z"], m["h"], m["c"], m["W_h"], backend)
        for m in reversed(layers):
            sequential_backward(m["z"], m["c"], m["dh_out"], m["W_h"], m["zero"], m["zero"],
                                m["dz"], backend)
    return run


def training_step(cfg, params, backend, dtype):
    """One call = one ``train_step`` of ``cfg``, the state carried from call to call."""
    from zaremba_ref.model import zero_state
    from zaremba_ref.train import train_step
    arena = backend.with_arena()                    # as train() runs its steps
    wins, rng = bench.random_windows(backend.xp, cfg), backend.rng(0)
    s = {"state": zero_state(params, cfg.batch_size, backend), "k": 0}

    def run():
        x, y = wins[s["k"] % len(wins)]
        s["k"] += 1
        _, _, s["state"] = train_step(params, x, y, s["state"], cfg, cfg.lr, rng, arena)
    return run


def time_row(name, cfg, params, args, backend, dtype) -> dict:
    """Median over the rounds of the step and of its sequential part, interleaved."""
    sync = (backend.xp.cuda.get_current_stream().synchronize if backend.name == "gpu"
            else (lambda: None))
    fns = {"step": training_step(cfg, params, backend, dtype),
           "sequential": sequential_part(cfg, backend, dtype)}
    times = bench.interleaved({k: (fn, sync) for k, fn in fns.items()}, args.repeats,
                              args.steps, args.settle, args.warmup)  # the order alternates
    times = {k: [t / args.steps for t in v] for k, v in times.items()}   # s a step
    step, seq = (statistics.median(times[k]) for k in ("step", "sequential"))
    L, T, B = cfg.num_layers, cfg.num_steps, cfg.batch_size
    return {"config": name, "num_steps": T, "num_layers": L,
            "hidden_size": cfg.hidden_size, "batch_size": B, "vocab_size": cfg.vocab_size,
            "dropout": cfg.dropout, "step_ms": 1e3 * step, "sequential_ms": 1e3 * seq,
            "rest_ms": 1e3 * (step - seq), "sequential_fraction": seq / step,
            "amdahl_bound": step / seq, "words_per_sec": B * T / step,
            "critical_path_cell_steps": T + L - 1, "cell_steps_as_run": L * T,
            "transformer_layers": L,
            "round_ms": {k: [round(1e3 * t, 4) for t in v] for k, v in times.items()}}


def needed_bytes(cfg, itemsize: int) -> int:
    """Parameters, a training step's buffers and the sequential part's, in bytes."""
    from zaremba_ref import resources as r
    V, H, L, B, T = (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.batch_size,
                     cfg.num_steps)
    seq = L * (4 * H * H + 2 * T * B * 4 * H + (3 * T + 2) * B * H + B * H)
    return (r.param_elements(V, H, L) + r.step_elements(V, H, L, B, T, cfg.dropout, cfg.mode)
            + seq) * itemsize


def table(rows) -> str:
    lines = ["| config | T | step ms | sequential ms | s | 1/s | words/s | T+L-1 | "
             "Transformer layers |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['num_steps']} | {r['step_ms']:.2f} | "
                     f"{r['sequential_ms']:.2f} | {r['sequential_fraction']:.3f} | "
                     f"{r['amdahl_bound']:.2f} | {r['words_per_sec']:,.0f} | "
                     f"{r['critical_path_cell_steps']} | {r['transformer_layers']} |")
    return "\n".join(lines)


def plot(rows, path: Path, title: str) -> bool:
    """s and words/s against T, one line per preset."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == config]
        T = [r["num_steps"] for r in mine]
        left.plot(T, [r["sequential_fraction"] for r in mine], "o-", label=config)
        right.plot(T, [r["words_per_sec"] for r in mine], "o-", label=config)
    Ts = sorted({r["num_steps"] for r in rows})
    for ax in (left, right):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(Ts, [str(t) for t in Ts])
        ax.set_xlabel("window length T (steps)")
        ax.legend()
    left.set_ylabel("sequential fraction s of a training step")
    left.set_ylim(0, 1)
    right.set_ylabel("training words/s")
    right.set_yscale("log")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    threads = bench.blas_threads(args)                 # before numpy is imported
    import numpy as np

    from zaremba_ref.backend import BackendUnavailable, get_backend
    from zaremba_ref.config import PRESETS
    from zaremba_ref.model import init_params
    from zaremba_ref.resources import ResourceError, require_memory
    try:
        backend = get_backend(args.device)
    except BackendUnavailable as e:
        print(f"sequential_path.py: {e}", file=sys.stderr)
        return 2
    dtype = np.dtype(args.dtype)
    if args.quick:
        args.settle = 0.0
    presets = {name: PRESETS[name].replace(**(QUICK if args.quick else {}))
               for name in args.configs}
    try:
        for name, cfg in presets.items():
            big = cfg.replace(num_steps=max(args.num_steps))
            require_memory(needed_bytes(big, dtype.itemsize), f"the {name} preset at T = "
                           f"{big.num_steps} ({args.dtype})", "lower --num-steps or leave "
                           "out the larger --configs", backend)
    except ResourceError as e:
        print(f"sequential_path.py: error: {e}", file=sys.stderr)
        return 2
    if backend.name == "cpu":
        from zaremba_ref.machine import forced_kernel_note
        note = forced_kernel_note()
        if note:
            print(note, file=sys.stderr)
    rows = []
    for name, base in presets.items():
        params = init_params(base.vocab_size, base.hidden_size, base.num_layers,
                             base.init_scale, seed=0, dtype=dtype, backend=backend)
        for T in args.num_steps:
            row = time_row(name, base.replace(num_steps=T), params, args, backend, dtype)
            rows.append(row)
            print(f"{name} T={T}: step {row['step_ms']:.2f} ms, sequential "
                  f"{row['sequential_ms']:.2f} ms (s = {row['sequential_fraction']:.3f})",
                  file=sys.stderr)
    machine = bench.machine(threads, backend)
    out = {"rows": rows, "machine": machine,
           "settings": {"device": args.device, "dtype": args.dtype, "repeats": args.repeats,
                        "steps": args.steps, "warmup": args.warmup, "settle": args.settle,
                        "quick": args.quick, "statistic": "median"},
           "command": shlex.join(["python", "benchmarks/sequential_path.py", *argv])}
    blas, gpu = machine["blas"], machine["gpu"]
    where = (f"GPU {gpu['name']} (CUDA {gpu['cuda_runtime']})" if gpu else
             f"{threads} threads, BLAS {blas['library']} {blas['version']} ({blas['kernel']})")
    title = f"{args.device}, {args.dtype}, {where}; median of {args.repeats} rounds"
    print(f"One training step and its sequential part, {title}\n")
    print(table(rows))
    path = Path(args.out_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nrows: {path}")
    png = Path(args.out_png)
    png.parent.mkdir(parents=True, exist_ok=True)
    if plot(rows, png, title):
        print(f"figure: {png}")
    else:
        print("figure: skipped, matplotlib is not installed (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
