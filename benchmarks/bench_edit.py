"""Edit speed on the default model: batched value optimisation vs a one-fact-at-a-time loop.

    .venv/bin/python benchmarks/bench_edit.py [--facts 16] [--dtype bfloat16] [--layer N]

Edits the first N CounterFact records (by default from ../shared/data, or --records FILE) on the
embedded SmolLM2-135M and prints the time of each phase (statistics, keys, values, solve) and
facts per second, first for the whole batch at once, then for the same facts edited one at a
time (the reference implementations' loop), and the ratio. Statistics are computed fresh in a
temporary cache for the first run and then reused, so the two runs compare the edit itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECORDS = REPO.parent / "shared" / "data" / "counterfact" / "counterfact-edit-1k.json"


def load_facts(path: Path, n: int):
    from kedit.facts import Fact

    recs = json.loads(path.read_text())[:n]
    return [Fact.from_text(r["subject"], r["prompt"], r["target_new"]) for r in recs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facts", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--records", type=Path, default=DEFAULT_RECORDS)
    args = ap.parse_args()

    import torch

    from kedit.editing import Editor, load_model, model_fingerprint, preset, sample_prefixes, score_targets
    from kedit.editing.delta import apply_deltas
    from kedit.editing import arch

    facts = load_facts(args.records, args.facts)
    lm = load_model("default", device="cpu", dtype=args.dtype)
    m, tok = lm.model, lm.tokenizer
    hp = preset("default", "emmet")
    if args.layer is not None:
        hp = dataclasses.replace(hp, layers=(args.layer,))
    prefixes = sample_prefixes(m, tok, hp.n_prefixes, hp.prefix_len, seed=0)
    fp = model_fingerprint(m)
    print(f"model default ({lm.dtype}, {torch.get_num_threads()} threads), EMMET layer {hp.layers}, "
          f"{len(facts)} CounterFact facts, {hp.stats_tokens:,} statistics tokens", file=sys.stderr)

    with tempfile.TemporaryDirectory() as cache:
        ed = Editor(m, tok, hp, prefixes, fp, cache_dir=Path(cache))
        t = time.perf_counter()
        ed.factors()
        t_stats = time.perf_counter() - t

        t = time.perf_counter()
        batched = ed.edit(facts)
        t_batched = time.perf_counter() - t

        loop_timings = {"keys": 0.0, "values": 0.0, "solve": 0.0}
        loop_steps = []
        t = time.perf_counter()
        for f in facts:
            r = ed.edit([f])
            for k in loop_timings:
                loop_timings[k] += r.timings[k]
            loop_steps += list(r.value_steps)
        t_loop = time.perf_counter() - t

    w0 = arch.weight_param(m, hp.layers[0]).detach().clone()
    apply_deltas(m, list(batched.deltas))
    scores = score_targets(m, tok, [f.text for f in facts], [f.target for f in facts])
    efficacy = sum(s.argmax for s in scores) / len(scores)
    with torch.no_grad():
        arch.weight_param(m, hp.layers[0]).copy_(w0)

    rows = [
        ("statistics (C0, once)", t_stats, None),
        ("keys", batched.timings["keys"], loop_timings["keys"]),
        ("values", batched.timings["values"], loop_timings["values"]),
        ("solve", batched.timings["solve"], loop_timings["solve"]),
        ("edit total", t_batched, t_loop),
    ]
    print(f"{'phase':<24}{'batched s':>12}{'loop s':>12}")
    for name, b, l in rows:
        print(f"{name:<24}{b:>12.2f}{(f'{l:.2f}' if l is not None else '-'):>12}")
    print(f"{'facts/s':<24}{len(facts) / t_batched:>12.2f}{len(facts) / t_loop:>12.2f}")
    print(f"value steps (mean)      {sum(batched.value_steps) / len(facts):>12.1f}{sum(loop_steps) / len(facts):>12.1f}")
    print(f"speed-up batched/loop: {t_loop / t_batched:.2f}x   efficacy of the batch: {efficacy:.0%}")


if __name__ == "__main__":
    main()
