"""Run the kedit CLI with a pause at one crash point, for tests that SIGKILL it there.

    python tests/crash_driver.py POINT kedit-args...
    python tests/crash_driver.py --serve

``--serve`` imports kedit, torch and transformers once and then forks one child per request
(JSON lines on stdin: ``{"run": [kedit args], "point": P or null, "out": FILE, "env": {...}}``
answers ``{"pid": N}``; ``{"wait": N}`` answers ``{"status": S}``, negative for a signal). Each
child is a real process that runs the CLI's ``main()``; the tests SIGKILL it themselves. Forking
saves every child the seconds of importing torch, which keeps a dozen crash tests fast.

In this subprocess only, the function at POINT is wrapped (monkeypatched) to print
``kedit-test: paused at POINT`` on stderr and then wait: until the file named by
``KEDIT_TEST_RESUME`` exists (the test lets it go on), or for ten minutes (the test kills it).
Nothing in kedit itself knows about these points: a user cannot trigger them.

Points: ``editing`` (a commit's edit is being computed, the journal lock held), ``delta-tmp``
(the delta's temp file is written, not yet renamed), ``delta-renamed`` (the delta file is in
place, no journal line names it), ``journal-written`` (a commit's or an undo's journal line is
written), ``queue-tmp`` (the new queue.json is written to its temp file, not yet renamed),
``queue-written`` (queue.json is rewritten: after a commit, the committed facts are gone),
``query-copy-sync`` (a commit or undo is on disk; the quantised query copy is being updated).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

POINTS = ("editing", "delta-tmp", "delta-renamed", "journal-written", "queue-tmp", "queue-written", "query-copy-sync")


def pause(point: str) -> None:
    print(f"kedit-test: paused at {point}", file=sys.stderr, flush=True)
    resume = os.environ.get("KEDIT_TEST_RESUME")
    end = time.monotonic() + 600
    while time.monotonic() < end:
        if resume and Path(resume).exists():
            return
        time.sleep(0.02)


def once(point: str, fn, before: bool = False, when=lambda *a, **k: True):
    """``fn`` wrapped to pause at ``point`` the first time ``when(args)`` holds (before or after the call)."""
    fired = []

    def wrapper(*args, **kwargs):
        hit = not fired and when(*args, **kwargs)
        if hit:
            fired.append(True)
            if before:
                pause(point)
        out = fn(*args, **kwargs)
        if hit and not before:
            pause(point)
        return out

    return wrapper


def install(point: str) -> None:
    from kedit.session import engine, folder, session, store

    if point == "editing":
        engine.EditStack.edit = once(point, engine.EditStack.edit, before=True)
    elif point == "delta-tmp":
        os.replace = once(point, os.replace, before=True, when=lambda src, dst: str(dst).endswith(".safetensors"))
    elif point == "delta-renamed":
        store.write_deltas = once(point, store.write_deltas)
    elif point == "journal-written":
        session.append_entry = once(point, session.append_entry)
    elif point == "queue-tmp":
        os.replace = once(point, os.replace, before=True, when=lambda src, dst: str(dst).endswith("queue.json"))
    elif point == "queue-written":
        folder.write_queue = once(point, folder.write_queue)
    elif point == "query-copy-sync":
        session.Session._sync_query_copy = once(point, session.Session._sync_query_copy, before=True)
    else:
        raise SystemExit(f"unknown crash point {point!r}; one of {', '.join(POINTS)}")


def run_cli(args: list[str]) -> int:
    from kedit.cli import main

    sys.argv = ["kedit", *args]
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def serve() -> None:
    import json

    import torch  # noqa: F401  (imported once, shared by every child)
    import transformers.models.llama.modeling_llama  # noqa: F401

    import kedit.cli  # noqa: F401
    import kedit.session.session  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if "wait" in req:
            _, status = os.waitpid(req["wait"], 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            print(json.dumps({"status": code}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:  # the child: output to a file, the point installed, the CLI run
            fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(req.get("env") or {})
            if req.get("point"):
                install(req["point"])
            code = run_cli(req["run"])
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve()
    else:
        install(sys.argv[1])
        sys.exit(run_cli(sys.argv[2:]))
