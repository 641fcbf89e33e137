"""CPU threads shared fairly between the kedit processes of one machine.

torch runs its CPU kernels on OpenMP threads that spin while they wait for each other. Two
processes that each start a thread per core therefore steal each other's time slices: on a 2-core
machine, two value optimisations side by side each took 4.0× their time alone with 2 threads
apiece, and 1.75× with 1 thread apiece (``docs/results.md``, "Two kedit processes on one machine").

So a kedit process that computes announces it: a file per process in the machine's registry,
``kedit-busy`` in the system's temp folder (``KEDIT_BUSY_DIR`` elsewhere), not in the cache, so
processes with different caches or users still see each other. Each file holds the process id's
start time, so a file left by a killed process is recognised and removed.
While inside ``computing()``, torch uses ``cores // processes computing`` threads (at least 1).

* ``computing(dynamic=True)`` (evaluations, benchmarks): ``rebalance()``, called between steps
  and batches, follows processes that come and go, at most once a second.
* ``computing(dynamic=False)`` (a commit): the count is chosen once and kept for the whole
  commit, because the last bit of a CPU matrix product depends on how its sums are split between
  threads; the commit records it (``CommitEntry.threads``) and ``replay --recompute`` uses it.
* ``fix_threads(n)`` (``--threads N``) or ``OMP_NUM_THREADS`` in the environment: the user's
  count is kept as it is, and the process only announces itself to the others.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch


_RECHECK_S = 1.0  # rebalance() looks at the other processes at most this often
_REGISTRY_ENV = "KEDIT_BUSY_DIR"  # the registry's folder where the machine's shared one is not wanted


class _State:
    fixed: int | None = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() else None
    depth = 0  # nested computing() blocks
    dynamic = False
    last_check = 0.0
    restore: int | None = None


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def fix_threads(n: int) -> None:
    """The user's thread count: kept for the rest of the process, whoever else computes."""
    _State.fixed = n
    torch.set_num_threads(n)


def busy_dir() -> Path:
    """The machine's registry of kedit processes that compute (one file each)."""
    own = os.environ.get(_REGISTRY_ENV)
    return Path(own) if own else Path(tempfile.gettempdir()) / "kedit-busy"


def fair_share() -> int:
    """Threads for this process now: the user's count, or this machine's cores split evenly among
    the kedit processes computing (this one included)."""
    if _State.fixed:
        return _State.fixed
    others = sum(1 for pid in _live_pids() if pid != os.getpid())
    return max(1, cores() // (others + 1))


@contextlib.contextmanager
def computing(dynamic: bool = True):
    """Announce that this process computes, and use its fair share of threads meanwhile.
    ``dynamic``: follow other processes while inside (see the module docstring)."""
    if _State.depth == 0:
        _State.restore = torch.get_num_threads()
        _State.dynamic = dynamic
        _announce()
        _set(fair_share())
        _State.last_check = time.monotonic()
    _State.depth += 1
    try:
        yield torch.get_num_threads()
    finally:
        _State.depth -= 1
        if _State.depth == 0:
            _withdraw()
            if _State.restore is not None:
                torch.set_num_threads(_State.restore)


@contextlib.contextmanager
def threads(n: int | None):
    """Exactly ``n`` threads inside (None: as they are), whatever the share: to recompute a commit
    with the count it was made with."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rebalance() -> None:
    """Inside ``computing(dynamic=True)``: take the fair share again if a second has passed."""
    if _State.depth == 0 or not _State.dynamic or _State.fixed:
        return
    now = time.monotonic()
    if now - _State.last_check < _RECHECK_S:
        return
    _State.last_check = now
    _set(fair_share())


def _set(n: int) -> None:
    if n != torch.get_num_threads():
        torch.set_num_threads(n)


def _my_file() -> Path:
    return busy_dir() / str(os.getpid())


def _announce() -> None:
    folder = busy_dir()
    try:
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            if _REGISTRY_ENV not in os.environ:
                # Every user's processes write here, as in /tmp; each can remove only its own files.
                with contextlib.suppress(OSError):
                    folder.chmod(0o1777)
        # O_NOFOLLOW: in a folder others can write to, a link planted under this name is refused.
        fd = os.open(_my_file(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(_start_time(os.getpid()))
    except OSError:  # a registry this process cannot write to: it just does not announce itself
        pass


def _withdraw() -> None:
    with contextlib.suppress(OSError):
        _my_file().unlink()


def _live_pids() -> list[int]:
    """Processes with a file in the registry that still run (files of dead ones are removed; on
    systems without POSIX signals only this process is counted)."""
    if os.name != "posix":
        return []
    try:
        entries = list(busy_dir().iterdir())
    except OSError:
        return []
    pids = []
    for f in entries:
        if not f.name.isdigit():
            continue
        pid = int(f.name)
        try:
            started = f.read_text()
        except OSError:
            continue
        if _alive(pid, started):
            pids.append(pid)
        else:
            with contextlib.suppress(OSError):
                f.unlink()
    return pids


def _alive(pid: int, started: str) -> bool:
    if os.name != "posix":  # os.kill there would end the process; such a file is left to its owner
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return not started or _start_time(pid) == started  # a reused pid is another process


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]
