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
