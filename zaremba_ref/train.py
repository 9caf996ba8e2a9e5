"""The training loop of the paper: truncated BPTT over PTB, SGD with a clipped global
norm and a decaying learning rate, validation after each epoch, test at the end.

Data flows one way: data -> model (loss_and_grads) -> optim (sgd_step) -> here.
This module adds what a user needs around the loop: progress, metrics, checkpoints
(at each epoch end, every ``save_every`` steps, and on SIGINT/SIGTERM), exact resume,
and a clean stop on a NaN or Inf.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .backend import CPU, Backend
from . import machine, resources
from .checkpoint import (CheckpointError, checkpoint_path, load_checkpoint, reason_of,
                         save_checkpoint)
from .config import Config
from .data import (Corpus, batchify, evaluation_windows, num_evaluation_windows,
                   num_windows, windows)
from .loss import perplexity
from .model import init_params, loss_and_grads, loss_only, zero_state
from .optim import learning_rate, sgd_step
from .progress import Progress


class TrainingError(Exception):
    """Training cannot go on (NaN/Inf, a mismatched checkpoint); the message says why."""


def evaluation_nll(params: dict, stream: np.ndarray, batch_size: int, num_steps: int,
                   backend: Backend = CPU, progress_prefix: str | None = None,
                   out: TextIO | None = None) -> tuple[float, float, int]:
    """One evaluation pass the paper's way: in order, the state carried from window to
    window, no dropout. Every word after the first of each of the ``batch_size`` rows is
    predicted once (the last, shorter window included). Returns the summed NLL over the
    full windows, the summed NLL over the shorter last one (0 if none), and the number
    of words predicted."""
    data = batchify(stream, batch_size)
    n = num_evaluation_windows(data, num_steps)
    backend = backend.with_arena()        # each window reuses the last one's arrays
    full = num_windows(data, num_steps)
    state = None                          # loss_only starts the pass from the zero state
    total, tail, count = 0.0, 0.0, 0
    progress = Progress(n, progress_prefix, out) if progress_prefix else None
    for k, (x, y) in enumerate(evaluation_windows(data, num_steps), start=1):
        backend.arena.reset()
        loss, state = loss_only(params, backend.asarray(x), backend.asarray(y), state,
                                backend=backend)
        if k <= full:
            total += loss * y.size
        else:                                # the one shorter window, at the end
            tail = loss * y.size
        count += y.size
        if progress:
            progress.update(k, ppl=f"{perplexity((total + tail) / count):.2f}")
    if progress:
        progress.close()
    return total, tail, count


def evaluate(params: dict, stream: np.ndarray, batch_size: int, num_steps: int,
             backend: Backend = CPU, progress_prefix: str | None = None,
             out: TextIO | None = None) -> float:
    """Perplexity of ``stream``: exp of the mean NLL over every word predicted by one
    pass of :func:`evaluation_nll`."""
    full, tail, count = evaluation_nll(params, stream, batch_size, num_steps, backend,
                                       progress_prefix, out)
    return perplexity((full + tail) / count)


def torch7_perplexity(full: float, count: int) -> float:
    """The validation perplexity as the paper's Torch code prints it (main.lua,
    ``run_valid``): the NLL of the full windows only, divided by all the words, since
    its ``len = (N - 1) / T`` is not rounded down while its loop runs the full windows.
    About 1% (small) to 1.5% (medium) below :func:`evaluate` on PTB valid."""
    return perplexity(full / count)


def train_step(params: dict, inputs: Any, targets: Any, state: list, config: Config,
               lr: float, rng: Any, backend: Backend = CPU) -> tuple[float, float, list]:
    """One step of the paper's SGD on one window: forward and backward through time
    (dropout as configured), clip the global norm of the objective's gradient, update.
    Returns (mean NLL of the window, gradient norm before clipping, final state).
    With an arena backend (``backend.with_arena()``, as ``train`` passes) the step reuses
    the previous step's arrays."""
    if backend.arena:
        backend.arena.reset()
    loss, grads, state = loss_and_grads(params, inputs, targets, state,
                                        dropout=config.dropout, mode=config.mode, rng=rng,
                                        weight_drop=config.weight_drop, backend=backend)
    # dL/dE is zero outside the rows of the window's words (tied: E is W_s too, dense), so
    # the CPU updates those rows only; on a GPU the dense update is one fused kernel at
    # memory speed, and the gather would only add launches
    rows = ({"embedding": backend.xp.unique(inputs)}
            if backend.name == "cpu" and not config.tie_weights else None)
    norm = sgd_step(params, grads, lr, config.max_grad_norm, config.loss_scale, backend, rows)
    return loss, norm, state


@contextmanager
def _stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step."""
    received: list[int] = []
    handler = lambda signum, frame: received.append(signum)  # noqa: E731
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def prepare_run_dir(run_dir: str | Path, resume: bool) -> Path:
    """Make sure ``run_dir`` can take this run before anything is computed: it is a
    directory (created if missing) that can be written, and, unless resuming, it holds
    no checkpoint of another run (resuming checks that the checkpoint's configuration
    is the command line's). Raises CheckpointError naming the directory and the fix;
    nothing is written there but a probe file, removed at once. (A run stopped before
    its first checkpoint left only log lines: it starts again there, as ``ensemble
    train`` and ``sweep`` expect of their members.)"""
    run_dir = Path(run_dir)
    fix = "choose another --out"
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"--out {run_dir} is a file, not a directory; {fix}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(f"--out {run_dir} cannot be written ({reason_of(e)}); {fix}") \
            from None
    ckpt = checkpoint_path(run_dir)
    if not resume and ckpt.exists():
        raise CheckpointError(f"{ckpt} exists: pass --resume to continue that run, or {fix}")
    return run_dir


def _append_line(path: Path, record: dict) -> None:
    """Append one JSON line, whole or not at all: a write that fails (disk full) is
    cut back to the file's previous end and raised as CheckpointError."""
    data = (json.dumps(record) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write ({reason_of(e)})") from None
    try:
        end = os.fstat(fd).st_size
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            try:
                os.ftruncate(fd, end)
            except OSError:
                pass
            raise CheckpointError(f"{path}: cannot write ({reason_of(e)}); free space or "
                                  "choose another --out") from None
    finally:
        os.close(fd)


def _write_metrics(run_dir: Path, record: dict) -> None:
    _append_line(run_dir / "metrics.jsonl", record)


def _trim_metrics(run_dir: Path, global_step: int) -> None:
    """Drop metrics rows written after the checkpoint we resume from (a kill between an
    epoch's row and its checkpoint): the resumed run writes them again, once."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    try:
        keep = [line for line in lines
                if line.strip() and json.loads(line)["step"] <= global_step]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: a line is not a metrics record ({e}); move the file "
                              "away to resume") from None
    if len(keep) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        try:
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):  # on a read-only filesystem unlink fails too
                tmp.unlink()
            raise CheckpointError(f"{path}: cannot rewrite ({reason_of(e)})") from None


def params_digest(params: dict, backend: Backend = CPU) -> str:
    """A short SHA-256 of every parameter's bytes (sorted by name): equal digests, equal
    models. Logged at each segment's start so a resumed run can be matched to its save."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(np.ascontiguousarray(backend.to_numpy(params[name])).tobytes())
    return h.hexdigest()[:12]


def _log_segment(run_dir: Path, record: dict) -> None:
    """One line per start and per end of a process training this run (segments.jsonl)."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
    _append_line(run_dir / "segments.jsonl", record)


def _rng_state(rng: Any) -> dict | None:
    """NumPy's generator state (a JSON-able dict); None for CuPy's (device state)."""
    state = getattr(getattr(rng, "bit_generator", None), "state", None)
    return state if isinstance(state, dict) else None


def _check_resumable(path: Path, meta: dict, config: Config, dtype: str, seed: int) -> None:
    """The command line must ask for the checkpoint's run. A field that a later version
    added is missing from an older checkpoint and counts as its default (the paper's
    behaviour), so runs started before the field existed still resume."""
    saved = dict(Config().to_dict(), **meta["config"], dtype=meta["dtype"], seed=meta["seed"])
    wanted = dict(config.to_dict(), dtype=dtype, seed=seed)
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs command line {v!r}"
            for k, v in wanted.items() if saved.get(k) != v]
    if diff:
        raise CheckpointError(f"{path}: configuration does not match ({'; '.join(diff)}); "
                              "resume with the original settings or use another --out")


def _resume(ckpt: Path, config: Config, dtype: str, seed: int,
            backend: Backend) -> tuple[dict, list, Any, tuple]:
    """Load ``ckpt`` for ``--resume``: the parameters, the LSTM state, the dropout
    generator and the counters (epoch, step, global_step, loss_sum, words), as saved.

    The CPU generator continues exactly where it was (its state is in the meta); the GPU
    generator's state is not saved, so a resumed GPU run draws fresh masks, seeded by
    (seed, global_step)."""
    params, state, meta, _ = load_checkpoint(ckpt)
    missing = [k for k in ("dtype", "seed", "epoch", "step", "global_step", "loss_sum",
                           "words", "rng") if k not in meta]
    if missing:
        raise CheckpointError(f"{ckpt}: its meta lacks {missing}; it cannot be resumed")
    _check_resumable(ckpt, meta, config, dtype, seed)
    params = {k: backend.asarray(v) for k, v in params.items()}
    state = [(backend.asarray(h), backend.asarray(c)) for h, c in state]
    rng = backend.rng([seed, meta["global_step"]])           # fresh masks, if no state
    if isinstance(meta["rng"], dict) and backend.name == "cpu":
        rng.bit_generator.state = meta["rng"]                # exact resume
    counters = (meta["epoch"], meta["step"], meta["global_step"], meta["loss_sum"],
                meta["words"])
    return params, state, rng, counters


def _save(ckpt: Path, params: dict, state: list, rng: Any, vocab: list, backend: Backend,
          *, config: Config, dtype: str, seed: int, epoch: int, step: int, global_step: int,
          loss_sum: float, words: int) -> None:
    """Write the checkpoint that ``_resume`` reads: everything needed to continue the
    run bit for bit. Refuses (TrainingError) to write parameters holding NaN or Inf over
    the last good checkpoint."""
    if not all(bool(backend.xp.isfinite(p).all()) for p in params.values()):
        raise TrainingError(f"the parameters hold NaN or Inf at epoch {epoch}, step "
                            f"{step}; not saving over {ckpt}; try a lower --lr")
    meta = {"config": config.to_dict(), "dtype": dtype, "seed": seed, "epoch": epoch,
            "step": step, "global_step": global_step, "loss_sum": loss_sum,
            "words": words, "rng": _rng_state(rng),
            "lr": learning_rate(epoch, config.lr, config.decay_start, config.lr_decay)}
    save_checkpoint(ckpt, {k: backend.to_numpy(v) for k, v in params.items()},
                    [(backend.to_numpy(h), backend.to_numpy(c)) for h, c in state],
                    meta, vocab)


def check_before_training(config: Config, corpus: Corpus, dtype: str = "float32",
                          backend: Backend = CPU) -> None:
    """Refuse, before anything is allocated, a run that cannot go through: a batch size
    and window that leave no full window in a split (train and validation at
    batch_size, test at test_batch_size), or a peak memory (``resources``) above what
    is available. Raises ResourceError (a ValueError) with the numbers and the fix."""
    B, T = config.batch_size, config.num_steps
    resources.check_windows("the training data (ptb.train.txt)", len(corpus.train), B, T,
                            "lower --batch-size or --num-steps")
    resources.check_windows("the validation data (ptb.valid.txt)", len(corpus.valid), B, T,
                            "lower --batch-size or --num-steps")
    resources.check_windows("the test data (ptb.test.txt)", len(corpus.test),
                            config.test_batch_size, T, "lower --test-batch-size or --num-steps")
    resources.check_training(config, np.dtype(dtype).itemsize, corpus.vocab_size, backend)


def train(config: Config, corpus: Corpus, run_dir: str | Path, *, backend: Backend = CPU,
          dtype: str = "float32", seed: int = 0, resume: bool = False,
          max_steps: int | None = None, save_every: int = 1000,
          out: TextIO | None = None) -> dict:
    """Train ``config`` on ``corpus``, writing checkpoints and metrics to ``run_dir``.

    Returns a summary dict (``status`` is "done", "max_steps" or "interrupted", with
    the last train, valid and test perplexities measured).
    """
    out = out or sys.stdout
    config.validate()
    step_backend = backend.with_arena()                # the steps reuse their arrays
    run_dir = prepare_run_dir(run_dir, resume)         # a directory we may write, no other run
    check_before_training(config, corpus, dtype, backend)
    if corpus.vocab_size != config.vocab_size:
        config = config.replace(vocab_size=corpus.vocab_size)
    ckpt = checkpoint_path(run_dir)
    if resume:
        params, state, rng, counters = _resume(ckpt, config, dtype, seed, backend)
        epoch, step, global_step, loss_sum, words = counters
        _trim_metrics(run_dir, global_step)
        print(f"resuming {ckpt} at epoch {epoch}, step {step}", file=out)
    else:
        if ckpt.exists():
            raise CheckpointError(f"{ckpt} exists: pass --resume to continue that run, or "
                                  "choose another --out")
        params = init_params(config.vocab_size, config.hidden_size, config.num_layers,
                             config.init_scale, seed=seed, dtype=np.dtype(dtype),
                             backend=backend, tie_weights=config.tie_weights)
        state = zero_state(params, config.batch_size, backend)
        rng = backend.rng(seed)                        # dropout masks, owned here
        epoch, step, global_step, loss_sum, words = 1, 0, 0, 0.0, 0

    def save(epoch: int, step: int) -> None:
        _save(ckpt, params, state, rng, corpus.vocab, backend, config=config, dtype=dtype,
              seed=seed, epoch=epoch, step=step, global_step=global_step,
              loss_sum=loss_sum, words=words)

    data = batchify(corpus.train, config.batch_size)
    n = num_windows(data, config.num_steps)
    B, T = config.batch_size, config.num_steps
    summary: dict[str, Any] = {"status": "done", "run_dir": str(run_dir)}
    t_start = time.perf_counter()
    first_step = global_step
    blas = machine.blas_info() if backend.name == "cpu" else {}
    note = machine.forced_kernel_note() if backend.name == "cpu" else None
    if note:
        print(note, file=out)
    _log_segment(run_dir, {"event": "start", "resume": resume, "epoch": epoch, "step": step,
                           "global_step": global_step, "params": params_digest(params, backend),
                           "blas": {k: blas.get(k) for k in ("library", "version", "kernel",
                                                             "threads")} if blas else None})
    try:
        with _stop_on_signals() as signals:
            while epoch <= config.max_epoch:
                lr = learning_rate(epoch, config.lr, config.decay_start, config.lr_decay)
                if step == 0:
                    state = zero_state(params, B, backend)  # each pass starts from zeros
                    loss_sum, words = 0.0, 0
                progress = Progress(n, f"epoch {epoch}/{config.max_epoch} ", out, start=step)
                t0, words0 = time.perf_counter(), words
                for x, y in windows(data, T, start=step):
                    loss, norm, state = train_step(params, backend.asarray(x),
                                                   backend.asarray(y), state, config, lr, rng,
                                                   step_backend)
                    for what, value in (("loss", loss), ("gradient norm", norm)):
                        if not math.isfinite(value):  # stop before any save: keep the last
                            kept = (f"the last good checkpoint {ckpt} is intact"
                                    if ckpt.exists() else "no checkpoint was written")
                            raise TrainingError(f"{what} is {value} at epoch {epoch}, step "
                                                f"{step + 1}; {kept}; try a lower --lr, "
                                                "--max-grad-norm or --init-scale")
                    step, global_step = step + 1, global_step + 1
                    loss_sum, words = loss_sum + loss * x.size, words + x.size
                    wps = (words - words0) / (time.perf_counter() - t0)
                    progress.update(step, ppl=f"{perplexity(loss_sum / words):.2f}",
                                    wps=f"{wps:,.0f}", lr=f"{lr:.4g}", norm=f"{norm:.2f}")
                    stop = "interrupted" if signals else (
                        "max_steps" if max_steps is not None and global_step >= max_steps
                        else None)
                    if stop or (save_every and global_step % save_every == 0):
                        save(epoch, step)
                    if stop:
                        progress.close()
                        summary.update(status=stop, train_ppl=perplexity(loss_sum / words))
                        _write_metrics(run_dir, {"epoch": epoch, "step": global_step, "lr": lr,
                                                 "train_ppl": summary["train_ppl"],
                                                 "words_per_sec": wps, "status": stop})
                        print(f"{stop}: checkpoint saved to {ckpt} at epoch {epoch}, "
                              f"step {step}", file=out)
                        summary["signal"] = signals[0] if signals else None
                        return summary
                progress.close()
                valid_ppl = evaluate(params, corpus.valid, B, T, backend)
                record = {"epoch": epoch, "step": global_step, "lr": lr,
                          "train_ppl": perplexity(loss_sum / max(words, 1)),
                          "words_per_sec": (words - words0) / (time.perf_counter() - t0),
                          "valid_ppl": valid_ppl}
                _write_metrics(run_dir, record)
                print(f"epoch {epoch}: train ppl {record['train_ppl']:.2f}, valid ppl "
                      f"{valid_ppl:.2f}, lr {lr:.4g}", file=out)
                summary.update(train_ppl=record["train_ppl"], valid_ppl=valid_ppl)
                epoch, step = epoch + 1, 0
                save(epoch, step)
        test_ppl = evaluate(params, corpus.test, config.test_batch_size, T, backend,
                            progress_prefix="test ", out=out)   # batch 1: the longest pass
        _write_metrics(run_dir, {"epoch": config.max_epoch, "step": global_step,
                                 "lr": learning_rate(config.max_epoch, config.lr,
                                                     config.decay_start, config.lr_decay),
                                 "train_ppl": summary.get("train_ppl"), "words_per_sec": None,
                                 "test_ppl": test_ppl})
        summary.update(test_ppl=test_ppl, seconds=time.perf_counter() - t_start)
        return summary
    except BaseException:
        summary["status"] = "error"
        raise
    finally:   # also on an exception; a SIGKILL leaves only the start line
        seconds = time.perf_counter() - t_start
        try:
            _log_segment(run_dir, {"event": "end", "status": summary.get("status"),
                                   "global_step": global_step,
                                   "steps": global_step - first_step,
                                   "seconds": round(seconds, 1),
                                   "words_per_sec": round((global_step - first_step) * B * T
                                                          / max(seconds, 1e-9), 1)})
        except CheckpointError:
            if summary["status"] != "error":   # else the first error is the one to tell
                raise

