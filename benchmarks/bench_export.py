"""Exports on the default model: time and size of each format, and what the GGUF's edited tensors keep.

A session (float32 unless told) commits ``--facts`` CounterFact facts in batches of ``--batch``,
then is exported as a checkpoint, a LoRA adapter and a GGUF, each timed in the same run (ratios
to the checkpoint export are what to compare across machines). The GGUF export's model card lists,
for each type it tried for the edited tensors (the source's Q4_1 first), how many of the edited
facts the weights still answer; those lines are printed.

    .venv/bin/python benchmarks/bench_export.py [--records FILE] [--facts 32] [--batch 8] [--dtype float32] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_RECORDS = REPO.parent / "shared" / "data" / "counterfact" / "counterfact-val.json"


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "deltas" not in p.parts
               and p.name != "journal.jsonl") / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default=str(DEFAULT_RECORDS), help="records file (CounterFact or zsRE)")
    ap.add_argument("--facts", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from kedit.eval.records import load_records
    from kedit.session import Session

    facts = [r.fact for r in load_records(args.records, limit=args.facts)]
    root = Path(tempfile.mkdtemp(prefix="kedit-bench-export-"))
    s = Session.create(root / "session", model="default", device="cpu", dtype=args.dtype)
    t = time.perf_counter()
    for i in range(0, len(facts), args.batch):
        s.add_many(facts[i : i + args.batch])
        s.commit()
    edit_s = time.perf_counter() - t
    rows = {}
    for fmt in ("checkpoint", "peft", "gguf"):
        t = time.perf_counter()
        out = s.export(root / fmt, format=fmt)
        rows[fmt] = {"seconds": round(time.perf_counter() - t, 2), "megabytes": round(size_mb(out), 3)}
    card = (root / "gguf" / "README.md").read_text().splitlines()
    trials = [line[2:] for line in card if line.startswith("- ") and "edited facts still answered" in line]
    report = {"facts": len(facts), "batch": args.batch, "dtype": args.dtype, "edit_seconds": round(edit_s, 1),
              "exports": rows, "gguf_edited_tensor_types": trials, "folder": str(root)}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{len(facts)} facts in batches of {args.batch} ({args.dtype}), edited in {edit_s:.1f} s; exports in {root}")
    base = rows["checkpoint"]["seconds"]
    for fmt, r in rows.items():
        print(f"  {fmt:>10}: {r['seconds']:6.1f} s ({r['seconds'] / base:4.1f}x the checkpoint's)  {r['megabytes']:9.3f} MB")
    for line in trials:
        print(f"  GGUF edited tensors, {line}")


if __name__ == "__main__":
    main()
