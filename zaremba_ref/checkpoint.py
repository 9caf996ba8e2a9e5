"""Checkpoints: one ``.npz`` holding everything needed to resume bit for bit.

Contents (all plain arrays, loaded with ``allow_pickle=False``; never pickle):

    param/<name>        every parameter, as in ``init_params``
    state/<l>/h, /c     the LSTM state carried into the next window (B, H)
    meta                a JSON string: format, config, epoch, step, lr, the random
                        generator's state, running sums for the epoch's train ppl
    vocab               the vocabulary (id -> word), for ``sample``

Writing is atomic: a temporary file in the same directory, flushed and fsynced,
then ``os.replace`` over the old checkpoint, so the previous good checkpoint stays
until the new one is complete. A write that fails (disk full, a read-only or
unwritable directory) removes the temporary file and raises CheckpointError.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .checks import check_params
from .config import Config

FORMAT = "zaremba_ref.checkpoint.v1"
FILENAME = "checkpoint.npz"


class CheckpointError(Exception):
    """A checkpoint, or a run directory, that cannot be used or written (the message
    names the file and the problem)."""


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    p = Path(path)
    return p / FILENAME if p.is_dir() else p


def save_checkpoint(path: str | os.PathLike, params: dict[str, np.ndarray],
                    state: list, meta: dict[str, Any], vocab: list[str] | None = None) -> Path:
    """Write the checkpoint atomically to ``path`` (a file, or a directory + FILENAME)."""
    path = checkpoint_path(path)
    arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    for l, (h, c) in enumerate(state, start=1):
        arrays[f"state/{l}/h"], arrays[f"state/{l}/c"] = np.asarray(h), np.asarray(c)
    arrays["meta"] = np.array(json.dumps({"format": FORMAT, **meta}))
    if vocab is not None:
        arrays["vocab"] = np.array(vocab)
    return atomic_savez(path, arrays)


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                 what: str = "checkpoint") -> Path:
    """``np.savez`` to a temporary file beside ``path``, fsynced, then renamed over it:
    ``path`` is either the old file, untouched, or the complete new one. A write that
    fails (disk full, read-only, no permission) removes the temporary file and raises
    CheckpointError naming the file and the cause."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        kept = "the previous one is intact" if path.exists() else "nothing was written"
        raise CheckpointError(f"{path}: cannot write the {what} ({reason_of(e)}); {kept}; "
                              "free space or choose another place") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def reason_of(e: OSError) -> str:
    """'No space left on device (ENOSPC)' from an OSError, on one line."""
    name = errno.errorcode.get(e.errno or 0)
    text = e.strerror or " ".join(str(e).split())
    return f"{text} ({name})" if name else text


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, list, dict, list[str] | None]:
    """Read a checkpoint -> (params, state, meta, vocab). Raises CheckpointError."""
    path = checkpoint_path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint there; train first, or pass the run "
                              "directory that holds checkpoint.npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint ({e}); "
                              "delete it to start over, or point to a good one") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    try:
        params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
        check_params(params)
        dtypes = {str(v.dtype) for v in params.values()}
        if not dtypes <= {"float32", "float64"} or len(dtypes) != 1:
            raise ValueError(f"parameters of dtype {sorted(dtypes)}, not float32 or float64")
        if not isinstance(meta.get("config"), dict):
            raise ValueError("its meta holds no configuration")
        Config.from_dict(dict(Config().to_dict(), **meta["config"])).validate()
        L = sum(1 for k in arrays if k.startswith("state/") and k.endswith("/h"))
        state = [(arrays[f"state/{l}/h"], arrays[f"state/{l}/c"]) for l in range(1, L + 1)]
        vocab = [str(w) for w in arrays["vocab"]] if "vocab" in arrays else None
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: not a usable checkpoint ({e}); point to one "
                              "written by zaremba_ref") from None
    return params, state, meta, vocab
