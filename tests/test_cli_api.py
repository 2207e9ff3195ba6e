"""The Python API (`orchestrator`'s public names): the example of the docs runs as written and without Ray,
``import orchestrator`` stays light, and every public name resolves to what it documents."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT

import orchestrator

MARKERS = re.compile(r"<!-- api-example -->\s*```python\n(.*?)```\s*<!-- /api-example -->", re.S)


def api_example() -> str:
    """The ```python block between the api-example markers in the README."""
    for page in (ROOT / "README.md",):
        found = MARKERS.search(page.read_text(encoding="utf-8"))
        if found:
            return found.group(1)
    raise AssertionError("no <!-- api-example --> block in README.md")


def test_the_documented_example_runs_without_ray():
    code = api_example() + "\nimport sys\nassert 'ray' not in sys.modules, 'the example imported Ray'\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two threads spin on a busy machine
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mIoU" in proc.stdout


def test_import_orchestrator_imports_neither_torch_nor_ray():
    code = "import sys, orchestrator; sys.exit(any(m in sys.modules for m in ('torch', 'ray')))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


def test_every_public_name_resolves_and_unknown_names_do_not():
    from orchestrator.inference.evaluate import evaluate_run
    from orchestrator.inference.run import load_run

    assert orchestrator.__all__ == sorted(orchestrator._API)
    for name in orchestrator.__all__:
        assert getattr(orchestrator, name) is not None and name in dir(orchestrator)
    assert orchestrator.evaluate is evaluate_run and orchestrator.load_run is load_run
    assert callable(orchestrator.run_experiment) and orchestrator.run_experiment.__doc__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        orchestrator.nope  # noqa: B018
