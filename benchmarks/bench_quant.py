"""Query latency and memory of the default model: fp32, bf16, int8, nf4 — one run, one table.

    .venv/bin/python benchmarks/bench_quant.py [--model default] [--device cpu] [--repeats 5] [--threads N]

For each variant: load time, bytes held (parameters + buffers + bitsandbytes scales, see
``kedit.editing.quant.memory_bytes``), and the median latency of (a) a greedy continuation of
exactly 8 new tokens and (b) one top-k next-token forward (what the query pane runs), over a few
prompts after one warm-up. The int8/nf4 variants are built exactly like a session's query copy
(``build_quantized_copy``); "nf4 no-repack" is how ``--load nf4`` runs (bitsandbytes' CPU
repacked kernel has no autograd, so editing models keep the plain 4-bit layout). Wall time is
shown with process CPU time beside it, and the load average before and after, because a shared
machine inflates wall time.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = (
    "The Eiffel Tower is located in the city of",
    "The capital of Japan is",
    "The Colosseum is located in the city of",
)


def _timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process-CPU seconds of ``fn()`` over ``repeats`` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def measure(label: str, lm, repeats: int, load_s: float) -> dict:
    import torch

    from kedit.editing import quant, top_k_next

    model, tok = lm.model, lm.tokenizer
    device = next(model.parameters()).device
    ids = [torch.tensor([tok(p).input_ids], device=device) for p in PROMPTS]

    def gen():
        for x in ids:
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=8, min_new_tokens=8,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
            assert out.shape[1] == x.shape[1] + 8

    def topk():
        for p in PROMPTS:
            top_k_next(model, tok, p, 5)

    with torch.no_grad():
        gen(), topk()  # warm-up (bitsandbytes repacks 4-bit weights for the CPU kernel here)
        g_wall, g_cpu = _timed(gen, repeats)
        t_wall, t_cpu = _timed(topk, repeats)
    n = len(PROMPTS)
    answer = top_k_next(model, tok, PROMPTS[0], 1)[0].token
    return {
        "variant": label, "mode": quant.quant_mode_of(model), "memory_mb": quant.memory_bytes(model) / 2**20,
        "load_s": load_s, "greedy8_ms": 1000 * g_wall / n, "greedy8_cpu_ms": 1000 * g_cpu / n,
        "topk_ms": 1000 * t_wall / n, "topk_cpu_ms": 1000 * t_cpu / n, "answer": answer.strip(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from kedit.editing import quant
    from kedit.editing.models import load_model

    hf_logging.set_verbosity_error()
    load_before = os.getloadavg()
    rows = []

    def timed_load(fn):
        t = time.perf_counter()
        lm = fn()
        return lm, time.perf_counter() - t

    full, s = timed_load(lambda: load_model(args.model, device=args.device, dtype="float32"))
    rows.append(measure("fp32", full, args.repeats, s))
    bf16, s = timed_load(lambda: load_model(args.model, device=args.device, dtype="bfloat16"))
    rows.append(measure("bf16", bf16, args.repeats, s))
    del bf16
    variants = [
        ("int8", "int8", torch.float32, True),
        ("nf4 (fp32 compute)", "nf4", torch.float32, True),
        ("nf4 (bf16 compute)", "nf4", torch.bfloat16, True),
        ("nf4 no-repack (--load)", "nf4", torch.float32, False),
    ]
    for label, mode, dtype, repack in variants:
        gc.collect()
        q, s = timed_load(lambda: quant.build_quantized_copy(full, mode, device=args.device, dtype=dtype))
        if not repack:
            quant.set_cpu_packing(q.model, False)
        rows.append(measure(label, q, args.repeats, s))
        del q
    load_after = os.getloadavg()

    cores = os.cpu_count()
    print(f"model {args.model} on {args.device} ({cores} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads); medians of {args.repeats} runs × {len(PROMPTS)} prompts")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1 min)")
    head = f"{'variant':<24} {'memory MB':>9} {'vs fp32':>7} {'load s':>6} {'greedy 8 tok ms':>16} {'(cpu ms)':>9} " \
           f"{'top-k ms':>9} {'(cpu ms)':>9}  answer"
    print(head)
    print("-" * len(head))
    base = rows[0]["memory_mb"]
    for r in rows:
        print(f"{r['variant']:<24} {r['memory_mb']:>9.1f} {r['memory_mb'] / base:>7.2f} {r['load_s']:>6.1f} "
              f"{r['greedy8_ms']:>16.0f} {r['greedy8_cpu_ms']:>9.0f} {r['topk_ms']:>9.0f} {r['topk_cpu_ms']:>9.0f}  {r['answer']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
