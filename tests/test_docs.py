"""The docs hold what they show: README.md and every page under docs/ (docs/results/
holds data and figures, no pages), read as GitHub renders them.

- **Links.** Every relative link and image resolves to a file or folder of the
  repository; every ``#anchor`` to a heading of the page it points into (GitHub's
  slugs); every image is a file.
- **Line ranges.** A link into a Python file with ``#La-Lb``, whose text names a
  function (``lstm.lstm_forward``) or a module-level name (``LSTM_CELL_FORWARD``), must
  cite exactly that definition's lines as they are now: code that moves fails here,
  with the lines to cite instead, until the link follows it.
- **Commands.** Every command line shown in a fenced code block that runs
  ``python -m zaremba_ref`` (or ``zaremba-ref``), ``python examples/X.py`` or
  ``python benchmarks/X.py`` is parsed, in this process, by that program's own
  argparse parser (a script is run up to the moment it asks its parser to parse: the
  parser is caught there, nothing else runs). A line that shows a synopsis
  (``[--opt X]``, ``a|b``, ``...``) has each ``--option`` checked against the parser
  instead, and so has such a command in inline code. ``bash benchmarks/X.sh --opt``
  needs each ``--opt`` among the script's own ``case`` labels.
- **Illustrations.** A command line ending in the comment ``# illustration`` is shown on
  purpose as it would not parse (an option to come, a mistake to avoid) and is skipped.
- **Names.** Every repository file a page names in code (``docs/results/placement.png``,
  ``zaremba_ref/lstm.py``) exists, and every test it names (``test_model.py::test_x``,
  or ``::test_y`` after it) is a function of that test file.
- **The front page.** README.md stays a front page (at most 250 lines) and links to
  every page under docs/.

Each test collects every failure as ``FILE:LINE: what``, so one run lists them all.
After a change that moves code, ``python tests/test_docs.py`` rewrites every cited line
range to the lines its definition has now.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fnmatch
import functools
import io
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

ILLUSTRATION = re.compile(r"#\s*illustration\s*$")
README_MAX_LINES = 250


# --- Reading the pages -------------------------------------------------------------

def pages() -> list[Path]:
    """README.md and docs/*.md (not docs/results/, which holds data)."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@dataclass
class Page:
    path: Path
    lines: list[str]                       # the text, line by line
    prose: list[str]                       # the same with fenced blocks blanked
    blocks: list[tuple[int, list[str]]]    # fenced blocks: (line number of the fence, lines)


@functools.lru_cache(maxsize=None)
def read(path: Path) -> Page:
    return parse(path, path.read_text())


def parse(path: Path, text: str) -> Page:
    lines = text.splitlines()
    prose, blocks, fence, block = [], [], None, []
    for n, line in enumerate(lines, start=1):
        m = re.match(r"\s*(```+|~~~+)", line)
        if fence is None and m:
            fence, block, start = m.group(1), [], n
            prose.append("")
        elif fence is not None and line.strip().rstrip("`~") == "" \
                and line.strip().startswith(fence):                  # the closing fence
            blocks.append((start, block))
            fence = None
            prose.append("")
        elif fence is not None:
            block.append(line)
            prose.append("")
        else:
            prose.append(line)
    return Page(path, lines, prose, blocks)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text without markup, lower case, with
    everything but letters, digits, spaces, '-' and '_' removed, spaces made '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # [text](url) -> text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a page's headings (a repeated one gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in read(path).prose:
        m = re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_slug(m.group(2))
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return frozenset(out)


LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def paragraphs(page: Page):
    """(line number of its first line, text) of each paragraph outside fenced blocks."""
    start, lines = None, []
    for n, line in enumerate([*page.prose, ""], start=1):
        if line.strip():
            start, lines = start or n, [*lines, line]
        elif lines:
            yield start, "\n".join(lines)
            start, lines = None, []


def links(page: Page):
    """(line number, is an image, text, target) of every inline link outside fenced
    blocks, its text free to run over a line break within its paragraph."""
    for first, text in paragraphs(page):
        for m in LINK.finditer(text):
            n = first + text.count("\n", 0, m.start())
            yield n, m.group(1) == "!", m.group(2), m.group(3)


def inline_code(page: Page):
    """(line number, text) of every `code` span outside fenced blocks, a span that runs
    over a line break joined with a space."""
    for first, text in paragraphs(page):
        for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
            yield first + text.count("\n", 0, m.start()), " ".join(m.group(1).split())


# --- Links, anchors, images, line ranges ------------------------------------------------

def definition_span(path: Path, name: str) -> tuple[int, int] | None:
    """The lines of ``def name`` (at any depth) or of a module-level ``name = ...`` in
    a Python file."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and node.name == name:
            return node.lineno, node.end_lineno
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node.lineno, node.end_lineno
    return None


def check_line_range(target: Path, anchor: str, text: str) -> str | None:
    """None if ``#La-Lb`` into ``target`` cites exactly the lines of the definition
    that the link's text names, else what is wrong."""
    m = re.fullmatch(r"L(\d+)(?:-L(\d+))?", anchor)
    if not m:
        return f"#{anchor} into a Python file is not a line range #La-Lb"
    a, b = int(m.group(1)), int(m.group(2) or m.group(1))
    name = re.sub(r"[`*]|\(\)$", "", text.strip()).split(".")[-1].strip("()")
    span = definition_span(target, name)
    if span is None:
        return f"{rel(target)} defines no {name!r} (the link's text names what it cites)"
    if span != (a, b):
        return (f"{name} is lines {span[0]}-{span[1]} of {rel(target)} now, the link cites "
                f"{a}-{b} (python tests/test_docs.py cites the current lines everywhere)")
    return None


def link_problems(page: Page) -> list[str]:
    path, problems = page.path, []
    for n, image, text, target in links(page):
        where = f"{rel(path)}:{n}: ({target})"
        if re.match(r"[a-z][a-z0-9+.-]*:", target):          # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if REPO not in (dest, *dest.parents):
            problems.append(f"{where} leads out of the repository")
        elif not dest.exists():
            problems.append(f"{where} {'image' if image else 'link'} to a missing "
                            f"{rel(dest)}")
        elif image and not dest.is_file():
            problems.append(f"{where} image is not a file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where} #{anchor} is no heading of {rel(dest)}")
        elif anchor and dest.suffix == ".py":
            problem = check_line_range(dest, anchor, text)
            if problem:
                problems.append(f"{where} {problem}")
        elif anchor and dest.suffix not in (".md", ".py"):
            problems.append(f"{where} #{anchor}: anchors are checked in .md and .py only")
    return problems


def test_every_link_anchor_and_image_resolves():
    problems = [p for path in pages() for p in link_problems(read(path))]
    assert not problems, "broken links:\n" + "\n".join(problems)


# --- Commands --------------------------------------------------------------------------

class _ParserCaught(BaseException):
    """Raised by the patched parse_args: the script's parser and the arguments it was
    about to parse (a BaseException, so that no ``except Exception`` swallows it)."""

    def __init__(self, parser: argparse.ArgumentParser, args):
        super().__init__()
        self.parser, self.argv = parser, args


def parses_arguments(path: Path) -> bool:
    """Whether a script parses a command line: it calls ``parse_args``, or imports a
    module beside it that does (``ptb_medium.py`` runs ``ptb_small.run``)."""
    source = path.read_text()
    if "parse_args" in source:
        return True
    siblings = (path.parent / f"{m}.py" for m in
                re.findall(r"^\s*(?:from|import) (\w+)", source, re.M))
    return any(s.is_file() and s != path and "parse_args" in s.read_text() for s in siblings)


@functools.lru_cache(maxsize=None)
def script_parser(script: str) -> tuple[argparse.ArgumentParser | None, tuple[str, ...]]:
    """The argparse parser of ``script`` (a path under the repository) and the
    arguments its main puts before the command line's (``ptb_small.py`` parses
    ``train --config small ARGV``): the script runs as ``__main__`` with no arguments
    until it calls ``parse_args``, which raises instead of parsing. (None, ()) for a
    script that parses no arguments. PyTorch is hidden meanwhile: no script parses
    later for lack of it, and importing it is slow."""
    path = REPO / script
    if not parses_arguments(path):
        return None, ()

    def caught(self, args=None, namespace=None):
        raise _ParserCaught(self, args)

    saved = {name: sys.modules.get(name) for name in ("torch",)}
    real, argv, syspath = argparse.ArgumentParser.parse_args, sys.argv, list(sys.path)
    argparse.ArgumentParser.parse_args = caught
    sys.argv, sys.path[:0] = [str(path)], [str(path.parent)]
    sys.modules.update(dict.fromkeys(saved))
    try:
        with contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            runpy.run_path(str(path), run_name="__main__")
    except _ParserCaught as c:
        return c.parser, tuple(c.argv or ())
    finally:
        argparse.ArgumentParser.parse_args, sys.argv, sys.path[:] = real, argv, syspath
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    raise AssertionError(f"{script} ran to its end without parsing arguments")


@functools.lru_cache(maxsize=None)
def cli_parser() -> argparse.ArgumentParser:
    from zaremba_ref.cli import build_parser
    return build_parser()


def bash_options(script: str) -> set[str]:
    """The options a shell script's ``case`` accepts (``--data-dir)``, ``-h|--help)``)."""
    text = (REPO / script).read_text()
    return {o for m in re.finditer(r"^\s*(-[-\w]+(?:\|-[-\w]+)*)\)", text, re.M)
            for o in m.group(1).split("|")}


def tokens(line: str) -> list[list[str]]:
    """A shell line as its commands (split at ; && || | & and redirections), each a
    list of words, comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&<>")
    lexer.whitespace_split = True
    commands, current = [], []
    for word in lexer:
        if word == "|" or set(word) <= set(";&<>"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in commands + [current] if c]


def program(words: list[str]) -> tuple[str, str, list[str]] | None:
    """(kind, name, arguments) of the command among ``words`` (after any prefix such as
    ``$``, ``time``, ``VAR=1``, ``taskset -c 1``), or None if it is none of ours."""
    for k, w in enumerate(words):
        rest = words[k + 1:]
        if w in ("python", "python3") and rest[:2] == ["-m", "zaremba_ref"]:
            return "cli", "python -m zaremba_ref", rest[2:]
        if w == "zaremba-ref":
            return "cli", "zaremba-ref", rest
        if w in ("python", "python3") and rest and \
                re.fullmatch(r"(examples|benchmarks)/[\w-]+\.py", rest[0]):
            return "script", rest[0], rest[1:]
        if w == "bash" and rest and re.fullmatch(r"benchmarks/[\w-]+\.sh", rest[0]):
            return "bash", rest[0], rest[1:]
    return None


def is_synopsis(args: list[str]) -> bool:
    return any(re.search(r"[\[\]|]|\.\.\.|…", a) for a in args)


def descend(parser: argparse.ArgumentParser, args: list[str]):
    """The (sub)parser that the options among ``args`` belong to: down through each
    subcommand named (``ensemble train``). Returns (parser, problem or None)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        words = [a for a in args if not a.startswith("-")]
        if not subs or not words:
            return parser, None
        if words[0] not in subs[0].choices:
            return parser, (f"{parser.prog}: no subcommand {words[0]!r} "
                            f"(there are {', '.join(subs[0].choices)})")
        parser, args = subs[0].choices[words[0]], args[args.index(words[0]) + 1:]


def unknown_options(known: set[str], args: list[str]) -> list[str]:
    """The --options among ``args`` (bracketed or not) that ``known`` lacks."""
    found = (re.sub(r"^\[+|[\],]+$", "", a).split("=")[0] for a in args)
    return [o for o in found if re.match(r"--?[A-Za-z]", o) and o not in known]


def check_command(kind: str, name: str, args: list[str], full: bool) -> str | None:
    """None if the command's options are real, else what is wrong. ``full``: parse the
    whole line with the program's parser; else check the --options' names only."""
    if kind == "bash":
        if not (REPO / name).is_file():
            return f"no {name}"
        bad = unknown_options(bash_options(name), args)
        return f"{name} has no option {', '.join(bad)}" if bad else None
    if kind == "cli":
        parser, prefix = cli_parser(), ()
    else:
        if not (REPO / name).is_file():
            return f"no {name}"
        parser, prefix = script_parser(name)
        if parser is None:
            bad = [a for a in args if a.startswith("-")]
            return f"{name} takes no options, the line gives {' '.join(bad)}" if bad else None
    argv = [*prefix, *args]
    sub, problem = descend(parser, argv)
    if problem:
        return problem
    known = {o for action in sub._actions for o in action.option_strings}
    bad = unknown_options(known, argv)            # exact names: argparse would take
    if bad:                                        # an abbreviation, a page should not
        label = sub.prog if kind == "cli" else name if sub.prog == Path(name).name \
            else f"{name} (its parser: {sub.prog})"
        return f"{label} has no option {', '.join(bad)}"
    if full and not is_synopsis(args):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(argv)
        except SystemExit as e:
            if e.code not in (0, None):
                return f"{name}: " + " ".join(err.getvalue().split())
    return None


def shown_commands(page: Page):
    """(line number, logical line) of the fenced blocks' command lines: a line ending
    in a backslash, or followed by indented lines (a synopsis), joined with them."""
    for start, block in page.blocks:
        k = 0
        while k < len(block):
            n, line = start + 1 + k, block[k]
            while line.endswith("\\") and k + 1 < len(block):
                k += 1
                line = line[:-1] + " " + block[k].strip()
            while k + 1 < len(block) and re.match(r"\s+\S", block[k + 1]) \
                    and OURS.search(line):
                k += 1
                line += " " + block[k].strip()
            k += 1
            yield n, line


OURS = re.compile(r"\b(python3? -m zaremba_ref|zaremba-ref|python3? (examples|benchmarks)/"
                  r"|bash benchmarks/)")


def command_problems(page: Page) -> list[str]:
    path, problems = page.path, []
    shown = [(n, line, True) for n, line in shown_commands(page)]
    shown += [(n, span, False) for n, span in inline_code(page)]
    for n, line, full in shown:
        if not OURS.search(line) or full and ILLUSTRATION.search(line):
            continue
        try:
            commands = tokens(line)
        except ValueError as e:
            problems.append(f"{rel(path)}:{n}: cannot read the line as shell ({e}): {line}")
            continue
        for words in commands:
            found = program(words)
            if found is None:
                continue
            problem = check_command(*found, full=full)
            if problem:
                problems.append(f"{rel(path)}:{n}: {problem}\n    in: {line.strip()}")
    return problems


def test_every_shown_command_parses_with_the_current_command_line():
    problems = [p for path in pages() for p in command_problems(read(path))]
    assert not problems, "commands that do not parse:\n" + "\n".join(problems)


# --- Files and tests named ------------------------------------------------------------------

REPO_FILE = re.compile(r"(?:zaremba_ref|tests|examples|benchmarks|docs)/[\w./-]*\w")


def name_problems(page: Page) -> list[str]:
    """Repository files named in inline code that do not exist; tests named
    ``test_x.py::test_y`` (or ``::test_z`` after one) that are not in that file."""
    path, problems = page.path, []
    last_file = None
    for n, span in inline_code(page):
        if REPO_FILE.fullmatch(span) and not (REPO / span).exists():
            problems.append(f"{rel(path)}:{n}: names {span}, which does not exist")
        m = re.fullmatch(r"(?:tests/)?(test_\w+\.py)?::([\w*\[\]-]+)", span)
        if not m:
            m_file = re.fullmatch(r"(?:tests/)?(test_\w+\.py)", span)
            if m_file:
                last_file = m_file.group(1)
            continue
        test_file = m.group(1) or last_file
        last_file = test_file
        if test_file is None or not (REPO / "tests" / test_file).is_file():
            problems.append(f"{rel(path)}:{n}: {span}: no such test file")
            continue
        defined = re.findall(r"^\s*def (test_\w+)", (REPO / "tests" / test_file).read_text(), re.M)
        if not fnmatch.filter(defined, m.group(2)):
            problems.append(f"{rel(path)}:{n}: tests/{test_file} has no {m.group(2)}")
    return problems


def test_every_file_and_test_named_exists():
    problems = [p for path in pages() for p in name_problems(read(path))]
    assert not problems, "names that point nowhere:\n" + "\n".join(problems)


# --- The front page ---------------------------------------------------------------------------

def test_the_readme_is_a_front_page_that_reaches_every_page():
    readme = read(REPO / "README.md")
    assert len(readme.lines) <= README_MAX_LINES, \
        f"README.md has {len(readme.lines)} lines; a front page keeps to {README_MAX_LINES}: " \
        "move the detail to a page under docs/"
    linked = {(REPO / target.partition("#")[0]).resolve()
              for _, _, _, target in links(readme) if not target.startswith("#")}
    unreached = [rel(p) for p in pages()[1:] if p.resolve() not in linked]
    assert not unreached, f"README.md links to no {', '.join(unreached)}"


# --- The checks themselves can fail -----------------------------------------------------------

SCRATCH = """# A page written to fail

A [missing page](missing.md), [no such heading](results.md#no-such-heading), a
[`lstm.lstm_forward`](../zaremba_ref/lstm.py#L1-L2) that moved, ![a missing
figure](results/none.png), and one [good link](results.md#the-small-run-epoch-by-epoch).

```bash
python -m zaremba_ref train --bogus 1
python -m zaremba_ref train --bogus 1                     # illustration
python examples/ptb_small.py --hidden-size 0
python examples/dropout_placement.py --mode naive
python -m zaremba_ref evaluate RUN [--splitt valid|test]
bash benchmarks/gpu_check.sh --gpu
```

Inline, `python -m zaremba_ref sample RUN --word 5`; named, `docs/results/none.txt` and
`test_model.py::test_nothing_of_the_kind`.
"""


def test_the_checks_fail_on_a_page_written_to_fail_them():
    """A scratch page (never written to disk) with one fault of each kind: each is
    reported once, on its line, and the illustration and the good link are not."""
    page = parse(REPO / "docs" / "scratch.md", SCRATCH)
    problems = link_problems(page) + command_problems(page) + name_problems(page)
    lstm = definition_span(REPO / "zaremba_ref" / "lstm.py", "lstm_forward")
    expected = [
        "docs/scratch.md:3: (missing.md) link to a missing docs/missing.md",
        "docs/scratch.md:3: (results.md#no-such-heading) #no-such-heading is no heading "
        "of docs/results.md",
        f"docs/scratch.md:4: (../zaremba_ref/lstm.py#L1-L2) lstm_forward is lines "
        f"{lstm[0]}-{lstm[1]} of zaremba_ref/lstm.py now",
        "docs/scratch.md:4: (results/none.png) image to a missing docs/results/none.png",
        "docs/scratch.md:8: python -m zaremba_ref train has no option --bogus",
        "docs/scratch.md:10: examples/ptb_small.py: error: --hidden-size must be",
        "docs/scratch.md:11: examples/dropout_placement.py has no option --mode",
        "docs/scratch.md:12: python -m zaremba_ref evaluate has no option --splitt",
        "docs/scratch.md:13: benchmarks/gpu_check.sh has no option --gpu",
        "docs/scratch.md:16: python -m zaremba_ref sample has no option --word",
        "docs/scratch.md:16: names docs/results/none.txt, which does not exist",
        "docs/scratch.md:17: tests/test_model.py has no test_nothing_of_the_kind",
    ]
    text = "\n".join(problems)
    missed = [e for e in expected if e not in text]
    assert not missed and len(problems) == len(expected), f"missed {missed} in:\n{text}"
    assert github_slug("Check your own implementation: `python -m zaremba_ref check-impl`") \
        == "check-your-own-implementation-python--m-zaremba_ref-check-impl"
    assert [w for c in tokens("$ A=1 time python -m zaremba_ref x --y 1; ls # c") for w in c] \
        == ["$", "A=1", "time", "python", "-m", "zaremba_ref", "x", "--y", "1", "ls"]


def cite_current_line_ranges() -> list[str]:
    """Rewrite every ``#La-Lb`` link of the pages to the lines its definition has now
    (for after a change to the code moved them); returns the pages changed."""
    changed = []
    for path in pages():
        text = path.read_text()

        def current(m: re.Match) -> str:
            span = definition_span((path.parent / m.group(2)).resolve(),
                                   re.sub(r"[`*]|\(\)$", "", m.group(1)).split(".")[-1])
            if span is None:
                return m.group(0)
            lines = f"L{span[0]}" + (f"-L{span[1]}" if span[1] != span[0] else "")
            return f"[{m.group(1)}]({m.group(2)}#{lines})"

        new = re.sub(r"\[([^\]]+)\]\(([^)#\s]+\.py)#L\d+(?:-L\d+)?\)", current, text)
        if new != text:
            path.write_text(new)
            changed.append(rel(path))
    return changed


if __name__ == "__main__":   # python tests/test_docs.py: cite the lines the code has now
    print("\n".join(cite_current_line_ranges()) or "every cited line range is current")
