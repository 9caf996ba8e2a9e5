"""The README and its pages keep their promises: the oracle API's example (docs/oracle.md)
runs, and CI runs the README's test command. Links, anchors and shown commands:
tests/test_docs.py."""

from __future__ import annotations

import json
import re

from conftest import REPO


def test_the_oracle_api_example_runs():
    text = (REPO / "docs" / "oracle.md").read_text()
    block = re.search(r"```python\n(import numpy as np\nimport zaremba_ref as z\n.*?)```",
                      text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "docs/oracle.md", "exec"), namespace)
    assert namespace["loss"] > 0 and max(namespace["errors"].values()) < 1e-6
    assert "lstm.weight_ih_l1" in namespace["torch_sd"]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    command = re.search(r"^(python -m pytest -q)\s+# the test suite", readme, re.M).group(1)
    ci_lines = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()]
    assert ci_lines[-1] == command


# Table 1's rows, in the README and in results.md, each with the file its run wrote
PAGES = ("README.md", "docs/results.md")
NOT_MEASURED = ("running", "not run", "blocked")
SINGLE_ROWS = {"non-regularized LSTM (small, 2 x 200)": "small_cpu_metrics.jsonl",
               "medium regularized LSTM (2 x 650, p 0.5)": "medium_cpu_metrics.jsonl",
               "large regularized LSTM (2 x 1500, p 0.65)": "large_cpu_metrics.jsonl"}
ENSEMBLE_ROWS = {"2 non-regularized LSTMs (small, averaged)": "small_ensemble.json",
                 "5 non-regularized LSTMs (small, averaged)": "small_ensemble_5.json",
                 "10 non-regularized LSTMs (small, averaged)": "small_ensemble_10.json",
                 "2 medium regularized LSTMs (averaged)": "medium_ensemble_2.json"}


def table_rows(page: str) -> dict[str, list[str]]:
    """A page's table rows by their first cell, each as its stripped cells."""
    return {cells[0]: cells for cells in
            ([c.strip() for c in line.strip("|").split("|")]
             for line in (REPO / page).read_text().splitlines() if line.startswith("| "))}


def measured_rows(files: dict[str, str]):
    """(page, row, valid cell, test cell, file) for each row of ``files`` on each page
    whose file is committed; a row without its file must say running, not run or blocked
    in both columns."""
    for page in PAGES:
        rows = table_rows(page)
        for name, file in files.items():
            valid, test = rows[name][3], rows[name][4]
            path = REPO / "docs" / "results" / file
            if not path.exists():
                assert valid == test and valid in NOT_MEASURED, (page, name, valid, test)
                continue
            yield page, name, valid, test, path


def test_table_1s_single_model_rows_are_what_their_runs_wrote():
    """Each single-model row with figures shows, to two decimals, the last validation
    row's valid and the test row's test perplexity of its committed metrics file (the
    valid may carry the Torch formula's figure after it, in brackets); a row without its
    file says it is running, not run or blocked, in both columns."""
    for page, name, valid, test, path in measured_rows(SINGLE_ROWS):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        last_valid = [r for r in records if "valid_ppl" in r][-1]["valid_ppl"]
        last_test = [r for r in records if "test_ppl" in r][-1]["test_ppl"]
        assert valid.split(" (")[0] == f"**{last_valid:.2f}**", (page, name, valid)
        assert test == f"**{last_test:.2f}**", (page, name, test)


def test_table_1s_averaging_rows_are_what_their_runs_wrote():
    """Each averaging row with figures shows, to two decimals, the valid and test
    perplexity of the average in its committed file, in the README and in results.md;
    a row without its file says it is running, not run or blocked."""
    for page, name, valid, test, path in measured_rows(ENSEMBLE_ROWS):
        avg = json.loads(path.read_text())["ensemble"]
        assert (valid, test) == (f"**{avg['valid_ppl']:.2f}**",
                                 f"**{avg['test_ppl']:.2f}**"), (page, name)
