"""Running the real ``kedit`` command line in tests: in a fresh interpreter (``kedit``), or in this
process (``kedit_here``, fast, for the many small cases), and comparing a folder's files byte for byte."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

PY = os.environ.get("KEDIT_PYTHON", sys.executable)
EXAMPLE = REPO / "sessions" / "example"


def kedit(*args, env=None, timeout=600, input=None) -> subprocess.CompletedProcess:
    """The real entry point (``kedit.cli:main``) in a fresh interpreter; never raises on a non-zero exit."""
    argv = [PY, "-c", "from kedit.cli import main; main()", *map(os.fsdecode, args)]
    return subprocess.run(argv, capture_output=True, text=True, env=env or os.environ.copy(), timeout=timeout,
                          stdin=subprocess.DEVNULL if input is None else None, input=input)


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def kedit_here(capsys, *args) -> Ran:
    """The same command line run in this process (``kedit.cli.run``): no interpreter start-up."""
    from kedit.cli import run

    capsys.readouterr()
    code = run([str(a) for a in args])
    out = capsys.readouterr()
    return Ran(code, out.out, out.err)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every data file under ``folder`` (relative name → bytes); {} when it does not exist. The
    session's empty lock files (``.journal.lock``, ``.folder.lock``) hold no data and are left out."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".lock"))}


def copy_example(dst: Path) -> Path:
    shutil.copytree(EXAMPLE, dst)
    return dst


def one_error_line(stderr: str) -> str:
    """The ``error:`` line of a user error (asserting there is no traceback and at most a hint after it)."""
    assert "Traceback" not in stderr, stderr
    lines = [l for l in stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error: ")]
    assert len(errors) == 1, stderr
    after = lines[lines.index(errors[0]) + 1:]
    assert all(l.startswith("hint: ") for l in after), stderr
    return errors[0]
