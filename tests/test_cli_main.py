"""The command line's own errors: one message and an exit code, never a traceback."""

import subprocess
import sys


def _kedit(*args):
    return subprocess.run([sys.executable, "-m", "kedit", *args], capture_output=True, text=True, timeout=60)


def test_unknown_command_and_missing_argument_are_usage_errors():
    r = _kedit("nosuch")
    assert r.returncode == 2 and "No such command 'nosuch'" in r.stderr and "Traceback" not in r.stderr
    r = _kedit("add")
    assert r.returncode == 2 and "Missing argument" in r.stderr and "Traceback" not in r.stderr


def test_kedit_errors_map_to_their_exit_code():
    r = _kedit("log", "/nonexistent/session")
    assert r.returncode == 5, r.stderr
    assert r.stderr.startswith("error: no session at") and "hint:" in r.stderr and "Traceback" not in r.stderr
