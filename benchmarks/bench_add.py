"""``kedit add --file`` at scale: time for 50,000 facts, that it grows linearly, and all-or-nothing.

    .venv/bin/python benchmarks/bench_add.py [--facts 50000]

1. Time of ``kedit add S --file facts.jsonl`` (the real command line, a fresh interpreter) for
   N/4, N/2 and N facts, into a session whose queue already holds 1,000 facts. Linear means each
   doubling about doubles the time (the ratios are printed); the old pairwise check took 20.7 s
   for 8,000 facts.
2. All or nothing: the same N facts plus one bad line at the end into that session: exit 2, the
   error names the bad line, and ``queue.json`` is byte-identical afterwards.

No model is loaded (``add`` never loads one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kedit(*args) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", "from kedit.cli import main; main()", *map(str, args)],
                       capture_output=True, text=True, cwd=REPO)
    return p, time.perf_counter() - t


def write_facts(path: Path, n: int, start: int = 0, bad_last: bool = False) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"subject": f"Entity {i}", "prompt": "The {} is located in the city of",
                                "target": f"City {i % 997}"}) + "\n")
        if bad_last:
            f.write(json.dumps({"subject": "Entity 0", "prompt": "no subject here", "target": "x"}) + "\n")
    return path


def session_with_queue(root: Path, name: str, queued: int) -> Path:
    s = root / name
    p, _ = kedit("add", s, "--file", write_facts(root / f"{name}-queued.jsonl", queued, start=10_000_000))
    assert p.returncode == 0, p.stderr
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facts", type=int, default=50_000)
    args = ap.parse_args()
    n = args.facts
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, startup = kedit("--help")
        print(f"interpreter start-up + import (kedit --help): {startup:.2f} s")
        times = {}
        for k in (n // 4, n // 2, n):
            s = session_with_queue(root, f"s{k}", 1_000)
            p, t = kedit("add", s, "--file", write_facts(root / f"f{k}.jsonl", k))
            assert p.returncode == 0, p.stderr
            assert len(json.loads((s / "queue.json").read_text())["facts"]) == 1_000 + k
            times[k] = t
            print(f"add --file {k:>7,} facts (queue of 1,000): {t:6.2f} s  ({p.stderr.strip()[:60]}…)")
        ks = sorted(times)
        for a, b in zip(ks, ks[1:]):
            ratio = (times[b] - startup) / max(1e-9, times[a] - startup)
            print(f"  {b:,} vs {a:,} facts, time beyond start-up: x{ratio:.2f} (linear: x{b / a:.2f})")

        s = session_with_queue(root, "all-or-nothing", 1_000)
        before = (s / "queue.json").read_bytes()
        bad = write_facts(root / "bad.jsonl", n, bad_last=True)
        p, t = kedit("add", s, "--file", bad)
        same = (s / "queue.json").read_bytes() == before
        print(f"add --file {n:,} facts + a bad last line: exit {p.returncode} in {t:.2f} s; "
              f"queue.json byte-identical: {same}")
        print(f"  {p.stderr.strip().splitlines()[0]}")
        assert p.returncode == 2 and f"bad.jsonl:{n + 1}:" in p.stderr and same
        assert sorted(os.listdir(s)) == ["queue.json", "session.json"]


if __name__ == "__main__":
    main()
