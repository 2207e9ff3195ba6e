"""Every reference in the repository can be followed from a clone: no text file names notes kept outside it, a
sibling folder, or a path on one person's machine. The facts such notes held live in `docs/notes/`.

Scans the files git tracks plus untracked ones it does not ignore (binary files skipped). The patterns are
assembled from pieces so that this file does not match itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_NOTES = "|".join(["RAY" + "_NOTES", "SEARCH" + "_VALIDITY", "DATA" + "_FORMATS", "PERF" + "_NOTES"])
_BARE_MD = "|".join(["PA" + "PER", "ST" + "YLE"])
FORBIDDEN = [
    (re.compile(r"\b(" + _NOTES + r")\b"), "a notes file outside the repository (use docs/notes/)"),
    (re.compile(r"\b(" + _BARE_MD + r")\.md\b"), "a notes file outside the repository (use docs/notes/)"),
    (re.compile(re.escape(".." + "/shared")), "a folder beside the repository"),
    (re.compile("/" + "(work|home|root|Users)/"), "an absolute path on one machine"),
]


def _repository_files() -> list[Path]:
    def git(*args: str) -> list[str]:
        out = subprocess.run(["git", "ls-files", "-z", *args], cwd=ROOT, check=True, capture_output=True).stdout
        return [name for name in out.decode("utf-8").split("\0") if name]

    names = sorted(set(git() + git("--others", "--exclude-standard")))
    return [ROOT / name for name in names if (ROOT / name).is_file() and not (ROOT / name).is_symlink()]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _outside_references(path: Path, text: str) -> list[str]:
    where = path.relative_to(ROOT)
    return [f"{where}:{number}: {match.group(0)!r}, {why}"
            for number, line in enumerate(text.splitlines(), start=1)
            for pattern, why in FORBIDDEN for match in pattern.finditer(line)]


def test_the_scan_sees_the_repository():
    names = {p.relative_to(ROOT).as_posix() for p in _repository_files()}
    assert {"pyproject.toml", "tests/test_no_outside_references.py"} <= names


def test_the_patterns_catch_what_they_should_and_not_the_notes_pages():
    caught = ["see " + "RAY" + "_NOTES.md", "(" + "PA" + "PER.md)", ".." + "/shared/x", "/" + "work/main",
              "/" + "home/me/data", "/" + "root/.cache"]
    allowed = ["docs/notes/ray.md", "docs/notes/paper.md", "the paper", "~/.ray/auth_token", "/data/cityscapes"]
    assert all(_outside_references(ROOT / "x", line) for line in caught)
    assert not any(_outside_references(ROOT / "x", line) for line in allowed)


def test_no_text_file_points_outside_the_repository():
    found = [hit for path in _repository_files() if (text := _text(path)) is not None
             for hit in _outside_references(path, text)]
    assert not found, "references a reader of the repository cannot follow:\n" + "\n".join(found)
