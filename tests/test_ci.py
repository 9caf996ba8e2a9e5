"""CI refuses silent skips: skip_or_fail (under CI=true a missing PTB folder or torch is a
failure), the `pytest -m gpu` check (nothing ran: exit 1 and say why), and .ci/run
setting CI=true. Each runs the real conftest.py in a scratch pytest session."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

INI = "[pytest]\nmarkers =\n    gpu: needs a GPU\n    slow: long\n"


def scratch_pytest(tmp_path, name, test_source, *args, ci=False):
    d = tmp_path / name
    d.mkdir()
    (d / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (d / "pytest.ini").write_text(INI)
    (d / f"test_{name}.py").write_text(test_source)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ZAREMBA_REF_DATA")}
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
               **({"CI": "true"} if ci else {}))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *args], cwd=d, env=env, capture_output=True, text=True,
                          timeout=120)


NEEDS_PTB = "def test_needs_ptb(ptb_dir):\n    pass\n"
NEEDS_TORCH = ("import sys\nfrom conftest import import_torch\n\n"
               "def test_needs_torch():\n    sys.modules['torch'] = None  # not installed\n"
               "    import_torch()\n")


def test_a_missing_ptb_folder_or_torch_skips_locally_and_fails_under_ci(tmp_path):
    for name, source in (("ptb", NEEDS_PTB), ("torch", NEEDS_TORCH)):
        local = scratch_pytest(tmp_path, name + "_local", source)
        assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
        ci = scratch_pytest(tmp_path, name + "_ci", source, ci=True)
        assert ci.returncode == 1 and ("1 failed" in ci.stdout or "1 error" in ci.stdout)
        assert "(CI=true: a skip here is a failure)" in ci.stdout


GPU_SKIPS = ("import pytest\n\n@pytest.mark.gpu\ndef test_on_gpu():\n"
             "    pytest.skip('no CUDA device')\n\ndef test_on_cpu():\n    pass\n")


def test_pytest_m_gpu_that_runs_nothing_exits_1_and_says_why(tmp_path):
    skipped = scratch_pytest(tmp_path, "skipped", GPU_SKIPS, "-m", "gpu")
    assert skipped.returncode == 1, skipped.stdout
    assert "pytest -m gpu ran no GPU test" in skipped.stdout
    assert "no CUDA device" in skipped.stdout                     # the reason
    none = scratch_pytest(tmp_path, "none", "def test_on_cpu():\n    pass\n", "-m", "gpu")
    assert none.returncode == 1 and "no test selected by -m 'gpu'" in none.stdout
    ran = scratch_pytest(tmp_path, "ran", "import pytest\n\n@pytest.mark.gpu\n"
                         "def test_on_gpu():\n    pass\n", "-m", "gpu")
    assert ran.returncode == 0 and "ran no GPU test" not in ran.stdout
    cpu = scratch_pytest(tmp_path, "cpu", GPU_SKIPS, "-m", "not gpu")   # not a GPU run
    assert cpu.returncode == 0 and "ran no GPU test" not in cpu.stdout


def test_ci_script_sets_ci_true_and_installs_torch():
    lines = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()]
    assert 'export CI="${CI:-true}"' in lines
    assert any(line.startswith("python -m pip install") and "torch" in line for line in lines)
