"""Two kedit processes on one machine: value-optimisation-shaped steps alone and two at once.

    .venv/bin/python benchmarks/bench_share.py [--steps 3] [--rows 16]

Runs, one after another: one process with every core; two processes at once with every core each
(what happened before kedit shared the cores); two at once with kedit's share
(``kedit/editing/cpu.py``: cores ÷ processes computing). Each step is a forward and backward pass
of the default model over ``--rows`` rows of 40 tokens (float32), like a value-optimisation step.
Prints seconds per step and the slow-down against the process alone (ideal: 2× for two).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time


def worker(steps: int, rows: int, share: bool) -> None:
    import torch

    from kedit.editing import cpu, load_model

    lm = load_model("default", device="cpu", dtype="float32")
    m = lm.model
    ids = torch.randint(0, m.config.vocab_size, (rows, 40), generator=torch.Generator().manual_seed(0))
    emb = m.get_input_embeddings()
    with cpu.computing() if share else contextlib.nullcontext():
        print("ready", flush=True)
        sys.stdin.readline()  # start together, each announced (with --share) before either starts
        t = time.perf_counter()
        for _ in range(steps):
            cpu.rebalance()  # as the value optimisation does before every step
            x = emb(ids).detach().requires_grad_(True)
            m(inputs_embeds=x).logits.logsumexp(-1).mean().backward()
        print(f"{(time.perf_counter() - t) / steps:.3f} {torch.get_num_threads()}", flush=True)


def run(n: int, steps: int, rows: int, share: bool) -> list[tuple[float, int]]:
    cmd = [sys.executable, __file__, "--worker", "--steps", str(steps), "--rows", str(rows)] + (["--share"] if share else [])
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    out = []
    for p in procs:
        sec, threads = p.stdout.readline().split()
        out.append((float(sec), int(threads)))
        p.wait()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--share", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.steps, args.rows, args.share)
    ((alone, t1),) = run(1, args.steps, args.rows, share=True)
    print(f"{'':<34}{'s/step':>8}{'threads':>9}{'vs alone':>10}")
    print(f"{'alone':<34}{alone:>8.2f}{t1:>9}{1:>9.2f}x")
    for label, share in (("two at once, every core each", False), ("two at once, kedit's share", True)):
        res = run(2, args.steps, args.rows, share)
        sec = max(s for s, _ in res)
        print(f"{label:<34}{sec:>8.2f}{res[0][1]:>9}{sec / alone:>9.2f}x")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
