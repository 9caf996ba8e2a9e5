#!/usr/bin/env python
"""Training throughput of zaremba_ref against its GEMM floor and against PyTorch.

In one process, interleaved round-robin (R rounds of N steps each, the order rotated
every round, so that machine drift hits every contender alike), it times:

  ours train  zaremba_ref.train.train_step: forward, backward through time, clipping and
              the SGD update, with the preset's dropout, the state carried
  ours eval   zaremba_ref.model.loss_only: the forward pass only, no dropout, state carried
  GEMM floor  only the matrix products one training step must do, with the backend's xp,
              preallocated outputs (out=) and contiguous operands
  eval floor  the same for an evaluation step: the forward products only
  torch       the same model in PyTorch: nn.Embedding, nn.LSTM, nn.Dropout, nn.Linear, the
              paper's objective, clip_grad_norm_, SGD (cuDNN with --device gpu)

on random token windows (B, T), vocabulary config.vocab_size. words/s = B*T*N / (time of
a round); the MEDIAN over the rounds is reported (the best round too, in the JSON).
The last line printed is one JSON object. ``--scaling`` prints a markdown table of the
training words/s as T and H grow, with the JSON of all its rows as the last line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working tree's package
NAMES = ("train", "eval", "floor", "eval_floor", "torch")
LABELS = {"train": "ours train", "eval": "ours eval", "floor": "GEMM floor",
          "eval_floor": "eval floor", "torch": "torch"}


def _rules_module():
    """zaremba_ref/rules.py (stdlib only), loaded by its path: importing the package
    would import numpy, whose BLAS fixes its thread count at import, before --threads."""
    import importlib.util
    name = "zaremba_ref_rules_for_bench"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "zaremba_ref" / "rules.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def build_parser() -> argparse.ArgumentParser:
    """The options, each with its rule (type and range, shown in --help); a bad value is
    one line on stderr naming it, exit code 2."""
    rules = _rules_module()
    TEXT, ArgumentParser, add_option = rules.TEXT, rules.ArgumentParser, rules.add_option
    count, one_of, real = rules.count, rules.one_of, rules.real
    p = ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_option(p, "--config", one_of("small", "medium", "large"), default="small",
               help="the paper's preset (layers, sizes, dropout, clipping)")
    add_option(p, "--steps", count(1), default=10, help="training steps per round (N)")
    add_option(p, "--repeats", count(1), default=5, help="rounds (R); median reported")
    add_option(p, "--warmup", count(0), default=2, help="untimed steps per contender first")
    add_option(p, "--device", one_of("cpu", "gpu"), default="cpu",
               help="gpu: zaremba_ref's GPU backend and torch on CUDA")
    add_option(p, "--dtype", one_of("float32", "float64"), default="float32",
               help="floating type of every parameter and activation (all contenders)")
    add_option(p, "--num-steps", count(1), help="override the preset's T (window)")
    add_option(p, "--hidden-size", count(1), help="override the preset's H")
    add_option(p, "--batch-size", count(1), help="override the preset's B")
    add_option(p, "--threads", count(1), help="threads for NumPy's BLAS and torch (default: "
               "OPENBLAS/OMP_NUM_THREADS if set, else the CPUs this process may use); "
               "on a busy machine 1 avoids oversubscription of the two thread pools")
    add_option(p, "--settle", real(0, 60), default=0.3,
               help="seconds of pause (untimed) before each contender's round, so that "
                    "the previous one's worker threads, which spin for a while after "
                    "their work (OpenBLAS ~0.1 s, OpenMP), do not steal its cores")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch contender")
    p.add_argument("--json-only", action="store_true", help="print only the JSON line")
    p.add_argument("--scaling", action="store_true", help="sweep T over --scaling-steps "
                   "(H from the preset) and H over --scaling-hidden (T = --num-steps or 20)")
    add_option(p, "--scaling-steps", TEXT, default="10,20,35,70,140",
               help="comma-separated T values of the --scaling sweep, integers >= 1")
    add_option(p, "--scaling-hidden", TEXT, default="200,650,1500",
               help="comma-separated H values of the --scaling sweep, integers >= 1")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    count = _rules_module().count
    for name in ("scaling_steps", "scaling_hidden"):
        flag = "--" + name.replace("_", "-")
        try:
            values = [count(1).check(flag, int(v)) for v in getattr(args, name).split(",")]
        except ValueError as e:
            p.error(str(e) if flag in str(e) else
                    f"{flag} must be comma-separated integers >= 1, got {getattr(args, name)!r}")
        setattr(args, name, values)
    return args


def needed_bytes(cfg, args) -> int:
    """An estimate of the benchmark's peak memory (zaremba_ref.resources): our model
    (parameters, a step's buffers), the GEMM floor's operands, and PyTorch's copy of
    the model with its gradients and a step's activations."""
    from zaremba_ref import resources as r
    import numpy as np
    V, H, L, B, T = (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.batch_size,
                     cfg.num_steps)
    N, P = B * T, r.param_elements(V, H, L)
    ours = P + r.step_elements(V, H, L, B, T, cfg.dropout, cfg.mode)
    floor = L * (24 * H * H + 25 * N * H) + 3 * V * H + 3 * N * V + 2 * N * H
    torch = 0 if args.no_torch else 2 * P + r.step_elements(V, H, L, B, T, cfg.dropout)
    return (ours + floor + torch) * np.dtype(args.dtype).itemsize


def blas_threads(args) -> int:
    """The thread count NumPy's BLAS will use; --threads sets it (before numpy loads)."""
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
        return args.threads
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def peak_rss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024   # bytes on macOS, else KiB


def rss_mib() -> float:
    """The resident set size now (Linux /proc), else the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mib()


def random_windows(xp, cfg, count=8, seed=0):
    """``count`` consecutive (x, y) windows (B, T) int32 of a random token stream."""
    import numpy as np
    B, T = cfg.batch_size, cfg.num_steps
    data = np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, count * T + 1),
                                                dtype=np.int32)
    data = xp.asarray(data)
    return [(data[:, k * T:(k + 1) * T], data[:, k * T + 1:(k + 1) * T + 1])
            for k in range(count)]


def ours(cfg, backend, dtype):
    """(train step, eval step) of zaremba_ref, each carrying its own state."""
    from zaremba_ref.model import init_params, loss_only, zero_state
    from zaremba_ref.train import train_step
    params = init_params(cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.init_scale,
                         seed=0, dtype=dtype, backend=backend)
    # each with an arena of its own, as train() and evaluation_nll() run their steps
    train_backend, eval_backend = backend.with_arena(), backend.with_arena()
    wins, rng = random_windows(backend.xp, cfg), backend.rng(0)
    s = {"train": zero_state(params, cfg.batch_size, backend),
         "eval": zero_state(params, cfg.batch_size, backend), "k": 0}

    def train():
        x, y = wins[s["k"] % len(wins)]
        s["k"] += 1
        _, _, s["train"] = train_step(params, x, y, s["train"], cfg, cfg.lr, rng, train_backend)

    def evaluate():
        x, y = wins[s["k"] % len(wins)]
        s["k"] += 1
        eval_backend.arena.reset()
        _, s["eval"] = loss_only(params, x, y, s["eval"], backend=eval_backend)
    return train, evaluate


def gemm_floor(cfg, xp, dtype, forward_only=False):
    """One call = every matrix product of one training step (``forward_only``: of one
    evaluation step), nothing else."""
    import numpy as np
    L, H, T, B, V = cfg.num_layers, cfg.hidden_size, cfg.num_steps, cfg.batch_size, cfg.vocab_size
    N, r = T * B, np.random.default_rng(1)
    a = lambda *shape: xp.asarray(r.uniform(-0.1, 0.1, shape), dtype=dtype)  # noqa: E731
    layers = [dict(X=a(N, H), WxT=a(H, 4 * H), Z=a(N, 4 * H), Hr=a(T, B, H), WhT=a(H, 4 * H),
                   Zr=a(T, B, 4 * H), dZT=a(4 * H, N), HrN=a(N, H), dWx=a(4 * H, H),
                   dWh=a(4 * H, H), dZ=a(N, 4 * H), Wx=a(4 * H, H), dX=a(N, H),
                   dz=a(T, B, 4 * H), Wh=a(4 * H, H), dh=a(T, B, H)) for _ in range(L)]
    Hs, WsT, Y, dYT, dWs, dY, Ws, dHs = (a(N, H), a(H, V), a(N, V), a(V, N), a(V, H),
                                         a(N, V), a(V, H), a(N, H))
    mm = xp.matmul

    def step():
        for m in layers:                                  # forward
            mm(m["X"], m["WxT"], out=m["Z"])              # input projection, all T at once
            for t in range(T):
                mm(m["Hr"][t], m["WhT"], out=m["Zr"][t])  # recurrent, step by step
        mm(Hs, WsT, out=Y)                                # softmax layer
        if forward_only:
            return
        mm(dYT, Hs, out=dWs)                              # its dW and dh
        mm(dY, Ws, out=dHs)
        for m in reversed(layers):                        # backward through time
            for t in range(T - 1, -1, -1):
                mm(m["dz"][t], m["Wh"], out=m["dh"][t])   # recurrent, step by step
            mm(m["dZT"], m["X"], out=m["dWx"])            # dW_x over the window
            mm(m["dZT"], m["HrN"], out=m["dWh"])          # dW_h over the window
            mm(m["dZ"], m["Wx"], out=m["dX"])             # dx, all T at once
    return step


def torch_step(cfg, device, dtype_name, threads):
    """The same model's training step in PyTorch, or (None, reason)."""
    import numpy as np
    try:
        import torch
        import torch.nn.functional as F
        from torch import nn
    except ImportError:
        return None, "torch is not installed"
    if device == "gpu" and not torch.cuda.is_available():
        return None, "torch has no CUDA device"
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    V, H, L, T, p = cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_steps, cfg.dropout
    emb, drop, lin = nn.Embedding(V, H), nn.Dropout(p), nn.Linear(H, V)
    lstm = nn.LSTM(H, H, L, batch_first=True, dropout=p if L > 1 else 0.0)
    model = nn.ModuleList([emb, lstm, drop, lin]).to(dev, getattr(torch, dtype_name)).train()
    for w in model.parameters():
        nn.init.uniform_(w, -cfg.init_scale, cfg.init_scale)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    wins = [(torch.as_tensor(x, dtype=torch.long, device=dev).contiguous(),
             torch.as_tensor(y, dtype=torch.long, device=dev).contiguous())
            for x, y in random_windows(np, cfg)]
    zeros = torch.zeros(L, cfg.batch_size, H, device=dev, dtype=getattr(torch, dtype_name))
    s = {"state": (zeros, zeros.clone()), "k": 0}

    def step():
        x, y = wins[s["k"] % len(wins)]
        s["k"] += 1
        out, state = lstm(drop(emb(x)), s["state"])
        loss = F.cross_entropy(lin(drop(out)).reshape(-1, V), y.reshape(-1)) * cfg.loss_scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        s["state"] = tuple(h.detach() for h in state)
        loss.item()                                       # as ours: the loss is read each step
    return (step, torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)), None


def interleaved(contenders: dict, repeats: int, steps: int, settle: float, warmup: int = 0,
                after_round=None) -> dict[str, list[float]]:
    """Seconds of each round of each contender ({name: (step, sync)}): ``warmup`` steps
    each first, then ``repeats`` rounds of ``steps`` steps each, the order rotated every
    round (so that machine drift hits every contender alike), an untimed ``settle``
    pause before each contender; ``after_round()`` after each round."""
    for fn, sync in contenders.values():
        for _ in range(warmup):
            fn()
        sync()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    order = list(contenders)
    for r in range(repeats):
        for k in order[r % len(order):] + order[:r % len(order)]:
            fn, sync = contenders[k]
            time.sleep(settle)  # let the last contender's spinning BLAS/OpenMP threads idle
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            times[k].append(time.perf_counter() - t0)
        if after_round:
            after_round()
    return times


def bench(cfg, args, backend, threads) -> dict:
    """Time the contenders interleaved; words/s (median and best of the rounds) and RSS."""
    import numpy as np
    xp, dtype = backend.xp, np.dtype(args.dtype)
    sync = (xp.cuda.get_current_stream().synchronize if backend.name == "gpu"
            else (lambda: None))
    train, evaluate = ours(cfg, backend, dtype)
    steps = {"train": (train, sync), "eval": (evaluate, sync),
             "floor": (gemm_floor(cfg, xp, dtype), sync),
             "eval_floor": (gemm_floor(cfg, xp, dtype, forward_only=True), sync)}
    torch_reason = "--no-torch"
    if not args.no_torch:
        t, torch_reason = torch_step(cfg, args.device, args.dtype, threads)
        if t:
            steps["torch"] = t
    rss = []
    times = interleaved(steps, args.repeats, args.steps, args.settle, args.warmup,
                        after_round=lambda: rss.append(round(rss_mib(), 1)))
    words = cfg.batch_size * cfg.num_steps * args.steps
    med = {k: words / statistics.median(times[k]) if k in times else None for k in NAMES}
    best = {k: words / min(times[k]) if k in times else None for k in NAMES}
    ratio = lambda a, b: a / b if a and b else None  # noqa: E731
    return {"words_per_sec": med["train"], "eval_words_per_sec": med["eval"],
            "gemm_floor_words_per_sec": med["floor"], "torch_words_per_sec": med["torch"],
            "ratio_vs_torch": ratio(med["train"], med["torch"]),
            "ratio_vs_floor": ratio(med["train"], med["floor"]),
            "eval_ratio": ratio(med["eval"], med["train"]),
            "eval_floor_words_per_sec": med["eval_floor"],
            "eval_ratio_vs_floor": ratio(med["eval"], med["eval_floor"]),
            "best_words_per_sec": best,
            "round_seconds": {k: [round(t, 6) for t in v] for k, v in times.items()},
            "torch_skipped": None if "torch" in steps else torch_reason,
            "rss_after_round_mib": rss, "peak_rss_mib": round(peak_rss_mib(), 1)}


def machine(threads, backend=None) -> dict:
    """The host (CPU, NumPy, BLAS) and, for a GPU backend, the device ("gpu")."""
    import numpy as np
    from zaremba_ref.machine import blas_info, cuda_device, numpy_simd
    try:                            # without importing torch (its RSS would count)
        tv = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        tv = None
    return {"platform": platform.platform(), "processor": platform.processor() or None,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "threads": threads, "numpy_version": np.__version__, "numpy_simd": numpy_simd(),
            "blas": blas_info(), "torch_version": tv,
            "gpu": cuda_device(backend.xp) if backend and backend.name == "gpu" else None}


def table(res, cfg, args) -> str:
    ms = lambda w: 1e3 * cfg.batch_size * cfg.num_steps / w if w else None  # noqa: E731
    f = lambda v, spec: format(v, spec) if v else "-"                       # noqa: E731
    keys = dict(train="words_per_sec", eval="eval_words_per_sec",
                floor="gemm_floor_words_per_sec", eval_floor="eval_floor_words_per_sec",
                torch="torch_words_per_sec")
    floor, tw = res["gemm_floor_words_per_sec"], res["torch_words_per_sec"]
    lines = [f"zaremba_ref bench: {args.config} L={cfg.num_layers} H={cfg.hidden_size} "
             f"T={cfg.num_steps} B={cfg.batch_size} V={cfg.vocab_size} dropout={cfg.dropout} "
             f"{args.dtype} {args.device}, {res['threads']} threads, BLAS "
             f"{res['blas']['library']} {res['blas']['version']} kernel {res['blas']['kernel']}"
             + (f", GPU {res['gpu']['name']} (CUDA {res['gpu']['cuda_runtime']})"
                if res.get("gpu") else ""),
             f"{args.repeats} rounds x {args.steps} steps, interleaved, warmup {args.warmup}; "
             "median over rounds",
             f"{'':12}{'words/s':>12}{'ms/step':>10}{'vs floor':>10}{'vs torch':>10}"]
    for k in NAMES:
        w = res[keys[k]]
        base = res["eval_floor_words_per_sec"] if k.startswith("eval") else floor
        lines.append(f"{LABELS[k]:12}{f(w, ',.0f'):>12}{f(ms(w), '.2f'):>10}"
                     f"{f(w and base and w / base, '.3f'):>10}"
                     f"{f(w and tw and w / tw, '.3f'):>10}")
    lines.append("vs floor: training against the GEMM floor, evaluation against the eval floor")
    if res["torch_skipped"]:
        lines.append(f"torch: skipped ({res['torch_skipped']})")
    lines.append(f"peak RSS {res['peak_rss_mib']} MiB; RSS after each round (MiB): "
                 f"{res['rss_after_round_mib']}")
    return "\n".join(lines)


def run_one(cfg, args, backend, threads) -> dict:
    res = {"config": args.config, "device": args.device, "dtype": args.dtype,
           "num_layers": cfg.num_layers, "num_steps": cfg.num_steps,
           "hidden_size": cfg.hidden_size, "batch_size": cfg.batch_size,
           "vocab_size": cfg.vocab_size, "dropout": cfg.dropout, "steps": args.steps,
           "repeats": args.repeats, "warmup": args.warmup, "statistic": "median"}
    res.update(machine(threads, backend))
    res.update(bench(cfg, args, backend, threads))
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = blas_threads(args)                       # before numpy is imported
    from zaremba_ref.backend import BackendUnavailable, get_backend
    from zaremba_ref.config import PRESETS
    try:
        backend = get_backend(args.device)
    except BackendUnavailable as e:
        print(f"bench.py: {e}", file=sys.stderr)
        return 2
    over = {k: v for k, v in (("num_steps", args.num_steps), ("hidden_size", args.hidden_size),
                              ("batch_size", args.batch_size)) if v}
    base = PRESETS[args.config].replace(**over).validate()
    from zaremba_ref.resources import ResourceError, require_memory
    sweep = [base] if not args.scaling else (
        [base.replace(num_steps=t) for t in args.scaling_steps]
        + [base.replace(hidden_size=h, num_steps=args.num_steps or 20)
           for h in args.scaling_hidden])
    try:
        for cfg in sweep:
            require_memory(needed_bytes(cfg, args), f"benchmarking H={cfg.hidden_size}, "
                           f"B={cfg.batch_size}, T={cfg.num_steps} ({args.dtype})",
                           "lower --hidden-size, --batch-size or --num-steps (or the "
                           "--scaling lists)", backend)
    except ResourceError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 2
    if backend.name == "cpu":                          # one line, before any timing
        from zaremba_ref.machine import forced_kernel_note
        note = forced_kernel_note()
        if note:
            print(note, file=sys.stderr)
    if not args.scaling:
        res = run_one(base, args, backend, threads)
        if not args.json_only:
            print(table(res, base, args))
        print(json.dumps(res))
        return 0
    cfgs = [("num_steps", base.replace(num_steps=t)) for t in args.scaling_steps]
    cfgs += [("hidden_size", base.replace(hidden_size=h, num_steps=args.num_steps or 20))
             for h in args.scaling_hidden]
    rows = []
    for sweep, cfg in cfgs:
        rows.append(dict(run_one(cfg, args, backend, threads), sweep=sweep))
        if not args.json_only:
            print(f"done {sweep}: T={cfg.num_steps} H={cfg.hidden_size}", file=sys.stderr)
    if not args.json_only:
        g = lambda v, spec=",.0f": format(v, spec) if v else "-"  # noqa: E731
        print(f"Training words/s, {args.config} preset, B={base.batch_size}, {args.dtype} "
              f"{args.device}, {threads} threads, median of {args.repeats} x {args.steps} steps\n")
        print("| sweep | T | H | ours | GEMM floor | torch | ours/floor | ours/torch | eval |")
        print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for r in rows:
            print(f"| {r['sweep']} | {r['num_steps']} | {r['hidden_size']} "
                  f"| {g(r['words_per_sec'])} | {g(r['gemm_floor_words_per_sec'])} "
                  f"| {g(r['torch_words_per_sec'])} | {g(r['ratio_vs_floor'], '.3f')} "
                  f"| {g(r['ratio_vs_torch'], '.3f')} | {g(r['eval_words_per_sec'])} |")
    print(json.dumps({"scaling": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
