"""Sharing the CPU between kedit processes (``kedit/editing/cpu.py``), with real processes: a
process that computes announces itself, and each one then takes cores // processes threads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from kedit.editing import cpu

needs_two_cores = pytest.mark.skipif(cpu.cores() < 2, reason="a fair share of one core is the whole core")


@pytest.fixture(autouse=True)
def own_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("KEDIT_BUSY_DIR", str(tmp_path / "busy"))
    monkeypatch.setattr(cpu._State, "fixed", None)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def other():
    """A real other process (it sleeps; what it computes does not matter here)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p
    p.kill()
    p.wait()


def announce(proc, started: str | None = None) -> None:
    cpu.busy_dir().mkdir(parents=True, exist_ok=True)
    (cpu.busy_dir() / str(proc.pid)).write_text(cpu._start_time(proc.pid) if started is None else started)


@needs_two_cores
def test_a_second_process_computing_halves_the_share_until_it_ends(other):
    assert cpu.fair_share() == cpu.cores()
    announce(other)
    half = max(1, cpu.cores() // 2)
    assert cpu.fair_share() == half
    with cpu.computing() as n:
        assert n == half == torch.get_num_threads()
        assert (cpu.busy_dir() / str(os.getpid())).exists()
    assert not (cpu.busy_dir() / str(os.getpid())).exists()
    other.kill()
    other.wait()
    assert cpu.fair_share() == cpu.cores()  # a killed process's file no longer counts, and is removed
    assert not (cpu.busy_dir() / str(other.pid)).exists()


def test_a_reused_process_id_does_not_count(other):
    announce(other, started="1")  # the same pid, another start time: another process
    assert cpu.fair_share() == cpu.cores()
    assert not (cpu.busy_dir() / str(other.pid)).exists()


@needs_two_cores
def test_an_evaluation_follows_processes_that_come_and_a_commit_keeps_its_count(other, monkeypatch):
    monkeypatch.setattr(cpu, "_RECHECK_S", 0.0)
    with cpu.computing(dynamic=False) as n:
        announce(other)
        cpu.rebalance()
        assert torch.get_num_threads() == n == cpu.cores()  # a commit's arithmetic stays as it began
    (cpu.busy_dir() / str(other.pid)).unlink()
    with cpu.computing(dynamic=True) as n:
        assert n == cpu.cores()
        announce(other)
        cpu.rebalance()
        assert torch.get_num_threads() == max(1, cpu.cores() // 2)


def test_the_users_count_is_kept(other, monkeypatch):
    announce(other)
    monkeypatch.setattr(cpu._State, "fixed", 3)
    with cpu.computing() as n:
        assert n == 3


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without a thread count of the user's (OMP_NUM_THREADS), plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, **extra}


def _threads_in_a_new_process(env=None) -> int:
    env = env or _env()
    code = "from kedit.editing import cpu\nwith cpu.computing() as n:\n    print(n)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    return int(out.stdout.split()[-1])


@needs_two_cores
def test_two_real_kedit_processes_split_the_cores():
    with cpu.computing():
        assert _threads_in_a_new_process() == max(1, cpu.cores() // 2)
    assert _threads_in_a_new_process() == cpu.cores()
    assert _threads_in_a_new_process(_env(OMP_NUM_THREADS="3")) == 3  # the user's count


@needs_two_cores
def test_processes_with_different_caches_share_the_machines_registry(tmp_path, monkeypatch):
    """The registry belongs to the machine (the temp folder), not to a cache: a process using
    another KEDIT_CACHE_DIR (another user, a test run) still counts."""
    monkeypatch.delenv("KEDIT_BUSY_DIR")
    monkeypatch.setenv("KEDIT_CACHE_DIR", str(tmp_path / "cache-a"))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))  # this process's temp folder, read once
    env = _env(TMPDIR=str(temp), KEDIT_CACHE_DIR=str(tmp_path / "cache-b"))
    with cpu.computing():
        assert cpu.busy_dir() == temp / "kedit-busy"
        assert oct((temp / "kedit-busy").stat().st_mode & 0o7777) == oct(0o1777)  # every user may announce
        assert _threads_in_a_new_process(env) == max(1, cpu.cores() // 2)
    assert _threads_in_a_new_process(env) == cpu.cores()


def test_a_link_planted_under_the_processes_name_is_not_followed(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep")
    cpu.busy_dir().mkdir(parents=True)
    (cpu.busy_dir() / str(os.getpid())).symlink_to(target)
    with cpu.computing():
        pass
    assert target.read_text() == "keep"
