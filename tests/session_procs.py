"""Helpers for tests that run kedit in real processes on a tiny-model session: a template
session, the CLI as a subprocess, and ``Forker`` (``crash_driver.py --serve``) that starts CLI
processes without paying torch's import time for each."""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, make_tiny_llama

PY = os.environ.get("KEDIT_PYTHON", sys.executable)
DRIVER = str(REPO / "tests" / "crash_driver.py")
TEXT = (
    "The city lies on a river and has a long history of trade. Its old town was built in the middle ages, "
    "and many of the houses still stand. Today the region is known for its wine, its universities and its "
    "museums, which attract visitors from many countries every year. "
) * 40


def make_template(root: Path, tokenizer) -> Path:
    """A session on a tiny saved Llama (fast hyper-parameters), with one commit of one fact."""
    from kedit.editing import load_model, preset
    from kedit.editing.values import ValueConfig
    from kedit.facts import Fact
    from kedit.session import Session

    model_dir = root / "model"
    make_tiny_llama().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    hp = dataclasses.replace(preset(str(model_dir), "emmet", num_layers=4), layers=(1,), stats_tokens=1500,
                             stats_seq_len=64, n_prefixes=1, prefix_len=3, values=ValueConfig(steps=2, early_stop=False))
    lm = load_model(str(model_dir), device="cpu", dtype="float32")
    s = Session.attach(root / "template", lm, corpus=str(corpus), hparams=hp)
    s.add(Fact("Eiffel Tower", "The {} is located in the city of", "London"))
    s.commit()
    return s.path


def fact_args(i: int) -> list[str]:
    return ["-s", f"Tower {i}", "-p", "The {} is located in the city of", "-t", f"City{i}"]


def kedit(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    """The real CLI in a fresh interpreter."""
    return subprocess.run([PY, "-m", "kedit", *map(str, args)], capture_output=True, text=True, env=env or os.environ.copy(),
                          timeout=timeout)


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file of a session folder except the lock files (who held a lock is not session data)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith((".journal.lock", ".folder.lock"))}


class Child:
    def __init__(self, forker: "Forker", pid: int, out: Path) -> None:
        self.forker, self.pid, self.out = forker, pid, out
        self.status: int | None = None

    def text(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def wait_for(self, marker: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while marker not in self.text():
            if time.monotonic() > end:
                raise AssertionError(f"pid {self.pid} never printed {marker!r}:\n{self.text()}")
            time.sleep(0.02)

    def kill(self) -> int:
        os.kill(self.pid, signal.SIGKILL)
        return self.wait()

    def wait(self) -> int:
        if self.status is None:
            self.status = self.forker.wait(self.pid)
        return self.status


class Forker:
    """``crash_driver.py --serve``: forks a CLI process per ``run`` (see there)."""

    def __init__(self, tmp: Path, env: dict) -> None:
        self.tmp, self.n = tmp, 0
        self.proc = subprocess.Popen([PY, DRIVER, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def _ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def run(self, *args, point: str | None = None, env: dict | None = None) -> Child:
        self.n += 1
        out = self.tmp / f"child-{self.n}.out"
        return Child(self, self._ask({"run": [str(a) for a in args], "point": point, "out": str(out), "env": env or {}})["pid"],
                     out)

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})["status"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def copy_session(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst, ignore=shutil.ignore_patterns(".journal.lock*", ".folder.lock*"))
    return dst


# -- shared by every test module of a run (building the template and starting the forker take
#    seconds: once per run, as tui_support shares its tiny session) --------------------------

_SHARED: dict = {}


def shared_env(tmp_path_factory) -> tuple[Path, dict]:
    """A root folder and the environment of every process: a private statistics cache, one thread."""
    if "env" not in _SHARED:
        root = tmp_path_factory.mktemp("procs")
        _SHARED["env"] = (root, dict(os.environ, KEDIT_CACHE_DIR=str(root / "cache"), OMP_NUM_THREADS="1",
                                     MKL_NUM_THREADS="1"))
    return _SHARED["env"]


def shared_template(tmp_path_factory, tokenizer) -> Path:
    if "template" not in _SHARED:
        root, e = shared_env(tmp_path_factory)
        old = os.environ.get("KEDIT_CACHE_DIR")
        os.environ["KEDIT_CACHE_DIR"] = e["KEDIT_CACHE_DIR"]
        try:
            _SHARED["template"] = make_template(root, tokenizer)
        finally:
            if old is None:
                os.environ.pop("KEDIT_CACHE_DIR")
            else:
                os.environ["KEDIT_CACHE_DIR"] = old
    return _SHARED["template"]


def shared_forker(tmp_path_factory) -> Forker:
    if "forker" not in _SHARED:
        root, e = shared_env(tmp_path_factory)
        _SHARED["forker"] = Forker(root, e)
        atexit.register(_SHARED["forker"].close)
    return _SHARED["forker"]


# fixtures for the test modules to import (``from session_procs import env, forker, template``)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shared_env(tmp_path_factory)


@pytest.fixture(scope="module")
def template(tmp_path_factory, tokenizer):
    return shared_template(tmp_path_factory, tokenizer)


@pytest.fixture(scope="module")
def forker(tmp_path_factory, template):
    return shared_forker(tmp_path_factory)
