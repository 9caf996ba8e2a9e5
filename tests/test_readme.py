"""The README and its pages keep their promises: the oracle API's example (docs/oracle.md)
runs, and CI runs the README's test command. Links, anchors and shown commands:
tests/test_docs.py."""

from __future__ import annotations

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


# Table 1's averaging rows and the file each one's run wrote (ensemble.json's format)
ENSEMBLE_ROWS = {"2 non-regularized LSTMs (small, averaged)": "small_ensemble.json",
                 "5 non-regularized LSTMs (small, averaged)": "small_ensemble_5.json",
                 "10 non-regularized LSTMs (small, averaged)": "small_ensemble_10.json",
                 "2 medium regularized LSTMs (averaged)": "medium_ensemble_2.json"}


def test_table_1s_averaging_rows_are_what_their_runs_wrote():
    """Each averaging row with figures shows, to two decimals, the valid and test
    perplexity of the average in its committed file, in the README and in results.md;
    a row without its file still says it is running or not run."""
    import json
    for page in (REPO / "README.md", REPO / "docs" / "results.md"):
        rows = {cells[0]: cells for cells in
                ([c.strip() for c in line.strip("|").split("|")]
                 for line in page.read_text().splitlines() if line.startswith("| "))}
        for name, file in ENSEMBLE_ROWS.items():
            valid, test = rows[name][3], rows[name][4]
            path = REPO / "docs" / "results" / file
            if not path.exists():
                assert valid == test and valid in ("running", "not run"), (page.name, name)
                continue
            avg = json.loads(path.read_text())["ensemble"]
            assert (valid, test) == (f"**{avg['valid_ppl']:.2f}**",
                                     f"**{avg['test_ppl']:.2f}**"), (page.name, name)
