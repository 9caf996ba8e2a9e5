"""The rules of every value a user can type: its type and its range, declared once.

A :class:`Rule` sits beside what it guards: the fields of ``Config`` in ``config.py``
(``FIELD_RULES``), each command's own options in ``cli.py``. One rule serves three
readers, so they cannot drift apart:

* argparse: :func:`add_option` makes the rule the option's ``type``, so the text is
  parsed and range-checked before any command runs, and a bad value is one line naming
  the flag (``--hidden-size must be an integer >= 1, got -1``);
* ``Config.validate``: the same check, naming the field (``hidden_size must be >= 1``);
* ``--help``: the range is appended to the option's help text.

:class:`ArgumentParser` turns every argparse error into that one line (no usage
block) and exit code 2. ``tests/test_faults.py`` walks every subcommand and fails on
an option that takes a value without a rule.
"""

from __future__ import annotations

import argparse
import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any, NoReturn


@dataclass(frozen=True)
class Rule:
    """What a value may be: ``kind`` int, float, str or bool; for numbers an interval
    [lo, hi] (either end open, either one absent); for str the allowed ``choices``
    (None: any text, e.g. a path). Floats must also be finite."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] | None = None

    def describe(self) -> str:
        """The range as --help and the errors write it: ">= 1", "in [0, 1)", ...."""
        if self.kind is bool:
            return "true or false"
        if self.choices:
            c = list(self.choices)
            return c[0] if len(c) == 1 else ", ".join(c[:-1]) + " or " + c[-1]
        f = (lambda v: str(int(v))) if self.kind is int else (lambda v: f"{v:g}")  # noqa: E731
        if self.lo is not None and self.hi is not None:
            return (f"in {'(' if self.lo_open else '['}{f(self.lo)}, {f(self.hi)}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {f(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {f(self.hi)}"
        return "any text" if self.kind is str else "any number"

    def _in_range(self, v: Any) -> bool:
        if self.choices is not None:
            return v in self.choices
        if self.lo is not None and not (v > self.lo if self.lo_open else v >= self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def check(self, name: str, value: Any) -> Any:
        """``value`` if it obeys the rule, else ValueError "NAME must be ..., got ..."."""
        got = repr(value) if isinstance(value, str) else value
        if self.kind is int and (isinstance(value, bool)
                                 or not isinstance(value, numbers.Integral)):
            raise ValueError(f"{name} must be an integer {self.describe()}, got {got}")
        if self.kind is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number {self.describe()}, got {got}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number {self.describe()}, "
                                 f"got {got}")
        if self.kind is bool:
            if not isinstance(value, (bool, np_bool_types())):
                raise ValueError(f"{name} must be true or false, got {got}")
            return value
        if self.kind is str and not isinstance(value, str):
            raise ValueError(f"{name} must be {self.describe()}, got {got!r}")
        if not self._in_range(value):
            raise ValueError(f"{name} must be {self.describe()}, got {got}")
        return value

    def parse(self, name: str, text: str) -> Any:
        """The value typed on the command line, converted and checked."""
        if self.kind is str:
            return self.check(name, text)
        if self.kind is bool:
            word = text.strip().lower()
            if word not in _BOOL_WORDS:
                raise ValueError(f"{name} must be true or false, got {text!r}")
            return _BOOL_WORDS[word]
        try:
            value = self.kind(text)
        except (ValueError, OverflowError):
            what = "an integer" if self.kind is int else "a number"
            raise ValueError(f"{name} must be {what} {self.describe()}, got {text!r}") \
                from None
        return self.check(name, value)


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}


def np_bool_types() -> tuple:
    """NumPy's bool type, if NumPy is loaded (a checkpoint's JSON gives plain bools)."""
    np = sys.modules.get("numpy")
    return (np.bool_,) if np is not None else ()


def count(lo: int = 1, hi: int | None = None) -> Rule:
    """An integer in [lo, hi] (hi None: no upper bound)."""
    return Rule(int, lo, hi)


def real(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         hi_open: bool = False) -> Rule:
    """A finite float in the given interval."""
    return Rule(float, lo, hi, lo_open, hi_open)


def one_of(*choices: str) -> Rule:
    """One of the given words."""
    return Rule(str, choices=tuple(choices))


def switch() -> Rule:
    """A bool: on the command line a switch, ``--flag`` / ``--no-flag`` (add_option);
    in a configuration, true or false."""
    return Rule(bool)


TEXT = Rule(str)          # free text: a path, a prime, V,H,L (checked where used)
SEED = count(0, 2**32 - 1)      # NumPy's legacy seeds; default_rng takes them all


class RuleType:
    """argparse's ``type=`` for a rule: parses and checks the text, naming the flag."""

    def __init__(self, flag: str, rule: Rule):
        self.flag, self.rule = flag, rule
        self.__name__ = rule.kind.__name__        # argparse prints it in some errors

    def __call__(self, text: str) -> Any:
        try:
            return self.rule.parse(self.flag, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None


def add_option(parser: Any, flag: str, rule: Rule, help: str | None = None,
               **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(flag, ...)`` with ``rule`` as its type, its choices and
    its range in the help (``help=argparse.SUPPRESS`` stays hidden)."""
    if rule.kind is bool:       # a switch that takes no value: --tie-weights / --no-...
        kwargs.pop("metavar", None)
        return parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help,
                                   **kwargs)
    if help is not argparse.SUPPRESS and rule.choices is None and rule.kind is not str:
        kind = "integer" if rule.kind is int else "number"
        help = f"{help + '; ' if help else ''}{kind} {rule.describe()}"
    if rule.choices is not None:
        kwargs.setdefault("choices", rule.choices)
    name = flag if flag.startswith("-") else kwargs.get("metavar", flag)
    return parser.add_argument(flag, type=RuleType(name, rule), help=help, **kwargs)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but an error is ONE line on stderr naming the argument (no usage
    block; ``--help`` has it), and exit code 2. Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        # "argument --hidden-size: --hidden-size must be ..." -> "--hidden-size must be ..."
        prefix, _, rest = message.partition(": ")
        if prefix.startswith("argument ") and rest.startswith(prefix[len("argument "):]):
            message = rest
        self.exit(2, f"error: {one_line(message)} (see {self.prog} --help)\n")


_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"     # what str.splitlines() breaks at


def one_line(message: object) -> str:
    """``str(message)`` with every line break escaped (``\\n``, ``\\x1e``...), so that a
    path or a value holding one stays on the error's line."""
    return "".join(c.encode("unicode_escape").decode() if c in _BREAKS else c
                   for c in str(message))


def print_error(message: object) -> None:
    """``error: MESSAGE`` on stderr, on one line whatever the message holds."""
    print(f"error: {one_line(message)}", file=sys.stderr)
