"""A progress line for long loops: in place on a terminal, periodic lines in a log."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Report ``done`` of ``total`` units with extra fields.

    On a terminal the line is redrawn in place at most every ``tty_every`` seconds;
    otherwise (a CI log, a file) a plain line is printed every ``log_every`` seconds
    and at each tenth of the way.
    """

    def __init__(self, total: int, prefix: str = "", stream: TextIO | None = None,
                 tty_every: float = 0.2, log_every: float = 60.0, start: int = 0):
        self.total, self.prefix = total, prefix
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every = tty_every if self.tty else log_every
        self.t0 = time.perf_counter()
        self.start = start               # units already done before this run (resume)
        self.last_print = -1e9
        self.last_tenth = start * 10 // max(total, 1)

    def update(self, done: int, **fields: object) -> None:
        now = time.perf_counter()
        tenth = done * 10 // max(self.total, 1)
        if now - self.last_print < self.every and tenth == self.last_tenth and done < self.total:
            return
        self.last_print, self.last_tenth = now, tenth
        elapsed = now - self.t0
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        parts = [f"{self.prefix}{100.0 * done / max(self.total, 1):5.1f}%"]
        parts += [f"{k} {v}" for k, v in fields.items()]
        parts += [f"elapsed {_clock(elapsed)}", f"eta {_clock(eta)}"]
        line = " | ".join(parts)
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
