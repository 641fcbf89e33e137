"""Scoring throughput of ``kedit eval`` on the default model: prompts per second.

A "prompt" is one teacher-forced (prompt, object) pair, the unit ``kedit eval`` scores (each
CounterFact prompt is scored with both the new and the true object). The prompts are those of
the first ``--records`` CounterFact records; each (dtype, batch size) is timed ``--repeat`` times
after one warm-up pass and the best time is kept. Batch size 1 is the one-prompt-at-a-time
reference.

    .venv/bin/python benchmarks/bench_eval.py [--dtypes bfloat16,float32] [--batch-sizes 1,8,32,64,128]
                                             [--records 32] [--repeat 2] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_RECORDS = REPO / "examples" / "facts" / "counterfact-kedit-48-flat.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=str(DEFAULT_RECORDS), help="records file (CounterFact or zsRE)")
    ap.add_argument("--records", type=int, default=32)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--batch-sizes", default="1,8,32,64,128")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from kedit.editing import load_model
    from kedit.eval.records import load_records
    from kedit.eval.runner import count_prompts, score_records

    if args.threads:
        torch.set_num_threads(args.threads)
    recs = load_records(args.file, limit=args.records)
    n = count_prompts(recs)
    rows = []
    for dtype in args.dtypes.split(","):
        lm = load_model("default", device="cpu", dtype=dtype)
        score_records(lm.model, lm.tokenizer, recs[:4], batch_size=8)  # warm-up
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                score_records(lm.model, lm.tokenizer, recs, batch_size=bs)
                best = min(best, time.perf_counter() - t)
            rows.append({"dtype": dtype, "batch_size": bs, "prompts": n, "seconds": best, "prompts_per_second": n / best})
            if not args.json:
                print(f"{dtype:>9}  batch {bs:>4}  {n} prompts in {best:6.2f} s  →  {n / best:7.1f} prompts/s", flush=True)
        del lm
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    info = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average_1min": load,
            "records": len(recs), "file": args.file}
    if args.json:
        print(json.dumps({"settings": info, "rows": rows}))
    else:
        print(f"torch threads {info['torch_threads']}, {info['cpu_count']} CPUs, load average {load}")


if __name__ == "__main__":
    main()
