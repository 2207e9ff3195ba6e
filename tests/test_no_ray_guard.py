"""The fast run's guard against Ray (tests/conftest.py, `ray_sessions` and ``pytest_sessionfinish``): it must find
a session folder where the installed Ray puts one, and a no-Ray pytest session that leaves one must exit with a
failure. No Ray is started: the session folders are made by hand, named as Ray names them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ray_sessions

SESSION = "session_2026-01-02_03-04-05_678901_4242"
"""``session_<date>_<pid>``, as ``ray._private.node.Node`` names a new session."""

CONFTEST = Path(__file__).with_name("conftest.py")


def test_no_session_folder_is_no_ray(tmp_path: Path):
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("")
    (tmp_path / "not_a_session_x").mkdir()
    assert ray_sessions(tmp_path) == []


@pytest.mark.parametrize("where", ["ray", "."], ids=["ray-subfolder", "temp-dir-itself"])
def test_a_session_folder_is_found(tmp_path: Path, where: str):
    (tmp_path / where / SESSION).mkdir(parents=True)
    assert ray_sessions(tmp_path) == [(Path(where) / SESSION).as_posix()]


def test_the_guard_looks_where_the_installed_ray_puts_its_sessions(tmp_path: Path, monkeypatch):
    """Ray's own rule, not a copy of it: the temp dir it derives from RAY_TMPDIR holds the session folders."""
    from ray._common.utils import get_default_ray_temp_dir

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (Path(get_default_ray_temp_dir()) / SESSION).mkdir(parents=True)
    assert ray_sessions(tmp_path) == [f"ray/{SESSION}"]


@pytest.mark.parametrize("leaves", [f"ray/{SESSION}", None], ids=["a-session", "nothing"])
def test_a_no_ray_session_that_leaves_a_ray_session_fails(pytester: pytest.Pytester, monkeypatch, leaves):
    """A pytest run in a new process with this suite's ``pytest_sessionfinish`` and ``ADL_TESTS_NO_RAY=1``, whose
    one (passing) test leaves a session folder in its RAY_TMPDIR, exits 1 with the guard's message; without the
    folder it exits 0."""
    pytester.makeconftest(f"""
        import importlib.util

        spec = importlib.util.spec_from_file_location("suite_conftest", {str(CONFTEST)!r})
        suite = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(suite)
        pytest_sessionfinish = suite.pytest_sessionfinish
        """)
    pytester.makepyfile(f"""
        import os
        from pathlib import Path

        def test_passes():
            if {leaves!r} is not None:
                (Path(os.environ["RAY_TMPDIR"]) / {leaves!r}).mkdir(parents=True)
        """)
    monkeypatch.setenv("ADL_TESTS_NO_RAY", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1)
    if leaves is None:
        assert result.ret == pytest.ExitCode.OK
        assert "started Ray" not in result.stdout.str()
    else:
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines([f"ERROR: the no-Ray test run started Ray ({leaves}): *"])
