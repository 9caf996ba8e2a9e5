"""Tests for zaremba_ref.data: batching, vocabulary, verified download and data lookup."""

from __future__ import annotations

import hashlib
import http.server
import os
import pathlib
import socket
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from zaremba_ref import data
from zaremba_ref.data import DataError

# A toy corpus with the same layout as PTB.  "the" and "<eos>" tie at 2 in train.
TOY = {
    "ptb.train.txt": b" the cat sat \n the dog \n",
    "ptb.valid.txt": b" the dog sat \n",
    "ptb.test.txt": b" cat \n",
}
TOY_SHA = {name: hashlib.sha256(body).hexdigest() for name, body in TOY.items()}


def write_toy(directory: pathlib.Path, names=tuple(TOY)) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(TOY[name])
    return directory


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Isolated environment: cache under tmp_path, no ZAREMBA_REF_DATA, toy digests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "PTB_SHA256", dict(TOY_SHA))
    return tmp_path


# ----------------------------------------------------------------------------- batching

def test_batchify_and_windows_by_hand():
    batched = data.batchify(np.arange(23), 2)
    np.testing.assert_array_equal(batched, [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21],
    ])
    assert batched.dtype == np.int32
    assert data.num_windows(batched, 3) == 3
    got = list(data.windows(batched, 3))
    expected = [
        ([[0, 1, 2], [11, 12, 13]], [[1, 2, 3], [12, 13, 14]]),
        ([[3, 4, 5], [14, 15, 16]], [[4, 5, 6], [15, 16, 17]]),
        ([[6, 7, 8], [17, 18, 19]], [[7, 8, 9], [18, 19, 20]]),
    ]
    assert len(got) == len(expected)
    for (x, y), (ex, ey) in zip(got, expected):
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
        for a in (x, y):
            assert a.dtype == np.int32 and a.flags.c_contiguous and a.shape == (2, 3)
    resumed = list(data.windows(batched, 3, start=2))
    assert len(resumed) == 1
    np.testing.assert_array_equal(resumed[0][0], expected[2][0])
    assert list(data.windows(batched, 3, start=3)) == []


@settings(max_examples=150, deadline=None)
@given(length=st.integers(1, 400), batch_size=st.integers(1, 12), num_steps=st.integers(1, 15),
       seed=st.integers(0, 2**32 - 1))
def test_windows_cover_stream_once(length, batch_size, num_steps, seed):
    stream = np.random.default_rng(seed).permutation(length)  # distinct tokens
    if length < batch_size:
        with pytest.raises(ValueError, match="batch_size"):
            data.batchify(stream, batch_size)
        return
    batched = data.batchify(stream, batch_size)
    cols = length // batch_size
    assert batched.shape == (batch_size, cols)
    for b in range(batch_size):
        np.testing.assert_array_equal(batched[b], stream[b * cols:(b + 1) * cols])
    n = data.num_windows(batched, num_steps)
    assert n == (cols - 1) // num_steps
    if n == 0:
        with pytest.raises(ValueError, match="num_steps"):
            data.windows(batched, num_steps)
        return
    pairs = list(data.windows(batched, num_steps))
    assert len(pairs) == n
    inputs = np.concatenate([x for x, _ in pairs], axis=1)
    targets = np.concatenate([y for _, y in pairs], axis=1)
    used = n * num_steps
    np.testing.assert_array_equal(inputs, batched[:, :used])
    np.testing.assert_array_equal(targets, batched[:, 1:used + 1])
    # each token of the used columns is an input exactly once; nothing else is
    counts = np.bincount(inputs.ravel(), minlength=length)
    assert set(counts[batched[:, :used].ravel()]) == {1}
    assert counts.sum() == batched[:, :used].size
    if (cols - 1) % num_steps == 0:  # then everything but the last column is used
        assert used == cols - 1
    start = (seed % (n + 1))
    resumed = list(data.windows(batched, num_steps, start=start))
    assert len(resumed) == n - start
    for (x, y), (ex, ey) in zip(resumed, pairs[start:]):
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)


@settings(max_examples=100, deadline=None)
@given(length=st.integers(2, 300), batch_size=st.integers(1, 8), num_steps=st.integers(1, 12))
def test_evaluation_windows_predict_every_word_once(length, batch_size, num_steps):
    """The evaluation pass: the full windows, then one shorter window with the words left
    over, so that every word after the first of each row is predicted exactly once
    (and num_evaluation_windows counts them)."""
    stream = np.random.default_rng(length).permutation(length)   # distinct tokens
    if length // batch_size < num_steps + 1:
        return                                   # too short for one window: windows() raises
    batched = data.batchify(stream, batch_size)
    pairs = list(data.evaluation_windows(batched, num_steps))
    assert len(pairs) == data.num_evaluation_windows(batched, num_steps)
    full = data.num_windows(batched, num_steps)
    assert len(pairs) == full + (batched.shape[1] - 1 > full * num_steps)
    for x, y in pairs:
        assert x.dtype == y.dtype == np.int32 and x.flags.c_contiguous and y.flags.c_contiguous
        assert x.shape == y.shape and 1 <= x.shape[1] <= num_steps
    np.testing.assert_array_equal(np.concatenate([x for x, _ in pairs], axis=1), batched[:, :-1])
    np.testing.assert_array_equal(np.concatenate([y for _, y in pairs], axis=1), batched[:, 1:])


def test_windows_are_int32_whatever_the_input():
    """The model indexes with int32 ids on both devices: windows of an int64 array (a
    user's own batching) come out int32 too, the evaluation tail included."""
    batched = np.arange(2 * 8, dtype=np.int64).reshape(2, 8)
    for x, y in [*data.windows(batched, 3), *data.evaluation_windows(batched, 3)]:
        assert x.dtype == np.int32 and y.dtype == np.int32
    assert data.num_evaluation_windows(batched, 3) == 3        # 3 + 3 + a tail of 1


def test_batching_argument_errors():
    stream = np.arange(10)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_size"):
            data.batchify(stream, bad)
    with pytest.raises(ValueError, match="batch_size"):
        data.batchify(stream, 11)
    with pytest.raises(ValueError, match="stream"):
        data.batchify(np.zeros((2, 5), dtype=int), 1)
    with pytest.raises(ValueError, match="stream"):
        data.batchify(np.linspace(0, 1, 10), 1)
    batched = data.batchify(stream, 2)  # 2 x 5
    with pytest.raises(ValueError, match="num_steps"):
        data.windows(batched, 0)
    with pytest.raises(ValueError, match="num_steps"):
        data.num_windows(batched, 0)
    with pytest.raises(ValueError, match=r"num_steps=5 \(needs at least 6\)"):
        data.windows(batched, 5)  # needs 6 columns
    assert len(list(data.windows(batched, 4))) == 1
    for bad in (-1, 2):
        with pytest.raises(ValueError, match="start"):
            data.windows(batched, 4, start=bad)
    # the messages name the argument and the value, exactly
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1, got 0$"):
        data.batchify(stream, 0)
    with pytest.raises(ValueError, match=r"^num_steps must be >= 1, got 0$"):
        data.num_windows(batched, 0)
    with pytest.raises(ValueError, match=r"^batched must be 2-D \(batch_size, length\), "
                                         r"got shape \(10,\)$"):
        data.num_windows(stream, 2)


# ---------------------------------------------------------------------- words and vocab

def test_read_words_and_vocab(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(TOY["ptb.train.txt"])
    words = data.read_words(path)
    assert words == ["the", "cat", "sat", "<eos>", "the", "dog", "<eos>"]
    assert data.build_vocab(words) == ["<eos>", "the", "cat", "dog", "sat"]


def test_load_ptb_toy(env):
    corpus = data.load_ptb(write_toy(env / "toy"))
    assert corpus.vocab == ["<eos>", "the", "cat", "dog", "sat"]
    assert corpus.vocab_size == 5
    assert corpus.word_to_id == {w: i for i, w in enumerate(corpus.vocab)}
    np.testing.assert_array_equal(corpus.train, [1, 2, 4, 0, 1, 3, 0])
    np.testing.assert_array_equal(corpus.valid, [1, 3, 4, 0])
    np.testing.assert_array_equal(corpus.test, [2, 0])
    for split in data.SPLITS:
        assert getattr(corpus, split).dtype == np.int32


def test_load_ptb_unknown_word(env, monkeypatch):
    toy = write_toy(env / "toy")
    (toy / "ptb.test.txt").write_bytes(b" cat zebra \n")
    monkeypatch.setitem(data.PTB_SHA256, "ptb.test.txt",
                        hashlib.sha256(b" cat zebra \n").hexdigest())
    with pytest.raises(DataError) as err:
        data.load_ptb(toy)
    assert_one_line(err, "ptb.test.txt", "'zebra'", "vocabulary")


# ------------------------------------------------------------------------- data lookup

def test_explicit_dir_missing_files(env, monkeypatch):
    partial = write_toy(env / "partial", names=["ptb.train.txt"])
    with pytest.raises(DataError) as err:
        data.find_data_dir(partial)
    assert_one_line(err, str(partial), "ptb.valid.txt, ptb.test.txt", "--data-dir",
                    data.ENV_VAR)
    assert "ptb.train.txt" not in str(err.value).split("):")[1].split(";")[0]
    with pytest.raises(DataError) as err:
        data.find_data_dir(env / "nowhere")
    assert_one_line(err, "nowhere", "ptb.train.txt, ptb.valid.txt, ptb.test.txt")
    monkeypatch.setenv(data.ENV_VAR, str(partial))
    with pytest.raises(DataError) as err:
        data.find_data_dir()
    assert_one_line(err, str(partial), f"given by {data.ENV_VAR}")
    assert not (env / "xdg").exists()  # never falls back to downloading


def test_explicit_dir_corrupt_file(env):
    toy = write_toy(env / "toy")
    (toy / "ptb.valid.txt").write_bytes(b" the dog ran \n")
    with pytest.raises(DataError) as err:
        data.find_data_dir(toy)
    assert_one_line(err, str(toy / "ptb.valid.txt"), "sha256 mismatch", TOY_SHA["ptb.valid.txt"])


def test_lookup_order(env, monkeypatch):
    arg_dir, env_dir = write_toy(env / "arg"), write_toy(env / "envdir")
    cache = write_toy(data.default_cache_dir())
    assert cache == env / "xdg" / "zaremba_ref" / "ptb"
    monkeypatch.setenv(data.ENV_VAR, str(env_dir))
    assert data.find_data_dir(arg_dir, download=False) == arg_dir
    assert data.find_data_dir(str(arg_dir), download=False) == arg_dir
    assert data.find_data_dir(download=False) == env_dir
    monkeypatch.setenv(data.ENV_VAR, "")  # empty counts as unset
    assert data.find_data_dir(download=False) == cache
    monkeypatch.delenv(data.ENV_VAR)
    assert data.find_data_dir(download=False) == cache


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.default_cache_dir() == tmp_path / "zaremba_ref" / "ptb"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "zaremba_ref" / "ptb"


def test_cache_without_download(env):
    with pytest.raises(DataError) as err:
        data.find_data_dir(download=False)
    assert_one_line(err, "ptb.train.txt", "missing", "downloading is off", "--data-dir")


# -------------------------------------------------------------- downloads (local server)

class Server:
    """A real HTTP server on 127.0.0.1 serving ``routes``: path -> bytes or a behaviour."""

    def __init__(self):
        self.routes: dict[str, object] = {}
        self.hits: list[str] = []
        routes, hits = self.routes, self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                body = routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                kind, body = body if isinstance(body, tuple) else ("ok", body)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if kind == "ok":
                    self.wfile.write(body)
                elif kind == "short":  # declare N bytes, send half, hang up
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif kind == "stall":  # send half, then go quiet past the client's timeout
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    time.sleep(1.0)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def listing(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


BODY = b"some bytes\n" * 5000  # 55 kB: several read chunks
BODY_SHA = hashlib.sha256(BODY).hexdigest()


def test_download_good_file_with_progress(server, tmp_path):
    server.routes["/f.txt"] = BODY
    calls = []
    data.download_file(server.url + "f.txt", tmp_path / "f.txt", BODY_SHA,
                       progress=lambda done, total: calls.append((done, total)))
    assert (tmp_path / "f.txt").read_bytes() == BODY
    assert listing(tmp_path) == ["f.txt"]
    assert calls[-1] == (len(BODY), len(BODY))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.parametrize("case", ["corrupt", "short", "stall", "404", "refused", "bad-url"])
def test_download_failures_leave_nothing(server, tmp_path, case):
    dest = tmp_path / "f.txt"
    url = server.url + "f.txt"
    expect = {
        "corrupt": ["sha256 mismatch", BODY_SHA],
        "short": ["short read", f"of {len(BODY)} bytes"],
        "stall": ["could not download", "timed out"],
        "404": ["could not download", "HTTP 404"],
        "refused": ["could not download"],
        "bad-url": ["could not download"],
    }[case]
    if case == "corrupt":
        server.routes["/f.txt"] = BODY[:-1] + b"X"
    elif case in ("short", "stall"):
        server.routes["/f.txt"] = (case, BODY)
    elif case == "refused":
        with socket.socket() as s:  # a port that was free a moment ago: nobody listens
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}/f.txt"
    elif case == "bad-url":
        url = "nosuchscheme://x/f.txt"
    with pytest.raises(DataError) as err:
        data.download_file(url, dest, BODY_SHA, timeout=0.3)
    assert_one_line(err, "f.txt", url, "--data-dir", *expect)
    assert listing(tmp_path) == []


def test_download_keeps_old_file_on_failure(server, tmp_path):
    dest = tmp_path / "f.txt"
    dest.write_bytes(b"old")
    server.routes["/f.txt"] = b"wrong"
    with pytest.raises(DataError):
        data.download_file(server.url + "f.txt", dest, BODY_SHA)
    assert listing(tmp_path) == ["f.txt"] and dest.read_bytes() == b"old"


def test_find_data_dir_fetches_into_cache(env, server):
    for name, body in TOY.items():
        server.routes["/ptb/" + name] = body
    base = server.url + "ptb/"
    root = data.find_data_dir(base_url=base)
    assert root == env / "xdg" / "zaremba_ref" / "ptb"
    assert listing(root) == sorted(TOY)
    assert all((root / n).read_bytes() == b for n, b in TOY.items())
    assert sorted(server.hits) == sorted("/ptb/" + n for n in TOY)
    # second time: verified from the cache, no request
    server.hits.clear()
    assert data.load_ptb(base_url=base).vocab_size == 5
    assert server.hits == []
    # a corrupted cached file is fetched again; a missing one too
    (root / "ptb.valid.txt").write_bytes(b"garbage")
    (root / "ptb.test.txt").unlink()
    with pytest.raises(DataError) as err:
        data.find_data_dir(download=False)
    assert_one_line(err, "ptb.valid.txt", "corrupt")
    assert data.find_data_dir(base_url=base) == root
    assert sorted(server.hits) == ["/ptb/ptb.test.txt", "/ptb/ptb.valid.txt"]
    assert (root / "ptb.valid.txt").read_bytes() == TOY["ptb.valid.txt"]


def test_find_data_dir_download_failure_names_file(env, server):
    server.routes["/ptb/ptb.train.txt"] = TOY["ptb.train.txt"]
    server.routes["/ptb/ptb.valid.txt"] = b"tampered"
    with pytest.raises(DataError) as err:
        data.find_data_dir(base_url=server.url + "ptb/")
    assert_one_line(err, "ptb.valid.txt", "sha256 mismatch", "--data-dir", data.ENV_VAR)
    assert listing(data.default_cache_dir()) == ["ptb.train.txt"]


# ------------------------------------------------------------------------ real PTB files

REAL = os.environ.get(data.ENV_VAR)
needs_real = pytest.mark.skipif(not REAL, reason=f"set {data.ENV_VAR}=DIR (the real PTB files)")


@pytest.fixture(scope="module")
def ptb():
    return data.load_ptb(REAL)


@needs_real
def test_real_ptb(ptb):
    assert ptb.vocab_size == 10000
    assert (len(ptb.train), len(ptb.valid), len(ptb.test)) == (929589, 73760, 82430)
    assert ptb.vocab[:3] == ["the", "<unk>", "<eos>"]  # same ids as the TF reader
    assert ptb.word_to_id["<eos>"] == 2
    np.testing.assert_array_equal(ptb.train[:3], [9970, 9971, 9972])
    for split in data.SPLITS:
        ids = getattr(ptb, split)
        assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 10000
        assert ids[-1] == ptb.word_to_id["<eos>"]
    # the paper's small config: batch 20, 20 steps -> 2323 windows per epoch
    assert data.num_windows(data.batchify(ptb.train, 20), 20) == 2323


@needs_real
def test_real_digests():
    root = data.find_data_dir(REAL, download=False)
    for split in data.SPLITS:
        name = f"ptb.{split}.txt"
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == data.PTB_SHA256[name]
