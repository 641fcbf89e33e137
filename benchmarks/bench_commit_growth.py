"""Does a commit get slower as a session remembers more facts?

    .venv/bin/python benchmarks/bench_commit_growth.py --records VAL_RECORDS [--remembered 1000] [--batch 16] [--method memit]

In one run on the default model (the method's preset, EMMET on layer 1 by default; remembered
facts' keys cached per commit): the session's first commit of ``--batch`` facts, then ``--remembered`` facts pushed as
earlier commits of ``--batch`` (with zero deltas, so the weights stay the base model's and the
value optimisation of the next commits has the same work as the first's), then two more commits
of new facts. The first of those computes the earlier commits' keys once, as a session reopened
after many commits does; the second is the steady state the target is about: commit time at
1,000 remembered facts ≤ 1.5× the first commit's. With several layers (MEMIT) the remembered keys
above the lowest layer are recomputed on every commit, from what earlier passes kept; a last commit
recomputes them from the embeddings instead (nothing kept, as before restarts existed), for the
same-run comparison. Prints each commit's time per phase, its mean value steps, and
the ratio of the non-value phases and of the whole commit to the first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, required=True)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--remembered", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: auto)")
    ap.add_argument("--method", default="emmet", help="emmet | memit | rome (the preset of the default model)")
    args = ap.parse_args()

    import torch

    from kedit.editing import Editor, load_model, model_fingerprint, preset, sample_prefixes
    from kedit.editing.delta import Delta
    from kedit.eval.records import load_records
    from kedit.paths import cache_dir
    from kedit.session.engine import EditStack

    n_pushed = args.remembered - args.batch  # the first commit is remembered too
    several = len(preset("default", args.method).layers) > 1
    needed = args.remembered + (3 if several else 2) * args.batch
    recs = load_records(args.records, offset=args.offset, limit=needed)
    if len(recs) < needed:
        raise SystemExit(f"{args.records} has {len(recs)} records from {args.offset}; {needed} are needed")
    facts = [r.fact for r in recs]
    lm = load_model("default", device="cpu", dtype=args.dtype)
    m, tok = lm.model, lm.tokenizer
    hp = preset("default", args.method)
    prefixes = tuple(sample_prefixes(m, tok, hp.n_prefixes, hp.prefix_len, seed=0))
    ed = Editor(m, tok, hp, prefixes, model_fingerprint(m), cache_dir=cache_dir())
    ed.factors()  # C0 read (or computed) before the clock starts
    stack = EditStack.around(ed)
    print(f"default model ({lm.dtype}, {torch.get_num_threads()} threads), {hp.method.upper()} layers {list(hp.layers)}, "
          f"batches of {args.batch}", file=sys.stderr)

    rows = []

    def commit(name: str, batch) -> None:
        t = time.perf_counter()
        res = stack.edit(batch, hp)
        stack.push(res.deltas, res.facts)
        total = time.perf_counter() - t
        steps = sum(res.value_steps) / len(res.value_steps)
        rows.append((name, stack.depth - 1, total, res.timings, steps))
        print(f"{name}: {total:.1f} s", file=sys.stderr)

    b = args.batch
    commit("first commit", facts[:b])
    zero = [Delta(d.layer, d.module, torch.zeros_like(d.U), torch.zeros_like(d.V)) for d in stack.weights.pop()]
    stack.weights.apply(zero)  # the first commit stays remembered, its change is taken back
    for i in range(b, b + n_pushed, b):
        stack.push(zero, facts[i : i + b])
    commit("first commit after reopening", facts[b + n_pushed : 2 * b + n_pushed])
    commit("next commit (steady)", facts[2 * b + n_pushed : 3 * b + n_pushed])
    if several:
        kept_mb = ed.remembered.kept_bytes / 2**20
        ed.remembered.limit(0)
        commit("steady, nothing kept", facts[3 * b + n_pushed : 4 * b + n_pushed])

    phases = sorted({k for r in rows for k in r[3]} - {"statistics"})
    print(f"{'':<30}{'remembered':>11}{'total s':>9}" + "".join(f"{p + ' s':>10}" for p in phases) + f"{'steps':>7}")
    for name, remembered, total, timings, steps in rows:
        print(f"{name:<30}{remembered * b:>11}{total:>9.1f}" + "".join(f"{timings.get(p, 0.0):>10.2f}" for p in phases)
              + f"{steps:>7.1f}")
    first, steady = rows[0], rows[2]
    other = lambda r: r[2] - r[3].get("values", 0.0)  # noqa: E731
    print(f"steady commit at {steady[1] * b} remembered vs the first: {steady[2] / first[2]:.2f}x in all, "
          f"{other(steady) / other(first):.2f}x outside the value optimisation (target ≤ 1.5x)")
    if several:
        whole = rows[3]
        print(f"remembered keys restarted from what earlier passes kept vs from the embeddings, same run: "
              f"{steady[3]['keys']:.1f} s vs {whole[3]['keys']:.1f} s ({whole[3]['keys'] / steady[3]['keys']:.2f}x faster); "
              f"{kept_mb:,.0f} MiB kept for the restarts")


if __name__ == "__main__":
    main()
