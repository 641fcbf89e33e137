"""Which stopping rule of the value optimisation generalises best for its steps?

    .venv/bin/python benchmarks/tune_values.py --records ../shared/data/counterfact/counterfact-val.json \
        --limit 64 --rules "argmax;p=0.5;p=0.8;p=0.9;m=1;m=2;pat=2;p=0.8,pat=2;full" --out tune.json

One optimisation per batch runs every step (no early stop) and records, before each update, every
fact's δ and per rewrite prompt its target probability, its smallest log-probability lead over the
best other token and whether the target is the argmax everywhere. A fact's δ does not depend on
when the other facts stop (its loss and Adam's update are its own), so each rule's result is read
off the same trajectory: the δ of the first step where the rule held (for ``pat`` steps in a row),
solved and scored like an edit (batches on fresh weights). Rules: ``argmax`` (kedit's rule before),
``p=`` every prompt's probability ≥ p, ``m=`` lead ≥ m nats at every target token, ``pat=`` steps
in a row, ``full`` all steps; joined with commas. The mean number of steps is the cost: the value
phase is ~98% of an edit. Measured choices belong in the presets only after ``bench_edit.py
--presets`` confirms them on records not used here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    min_prob: float = 0.0
    margin: float = 0.0
    patience: int = 1
    full: bool = False

    @classmethod
    def parse(cls, text: str) -> "Rule":
        kw: dict = {}
        for part in text.split(","):
            part = part.strip()
            if part == "full":
                kw["full"] = True
            elif part.startswith("p="):
                kw["min_prob"] = float(part[2:])
            elif part.startswith("m="):
                kw["margin"] = float(part[2:])
            elif part.startswith("pat="):
                kw["patience"] = int(part[4:])
            elif part != "argmax":
                raise SystemExit(f"unknown rule part {part!r}")
        return cls(name=text, **kw)

    def holds(self, seen) -> bool:
        """``seen``: one fact's per-prompt (probability, lead, argmax) at one step."""
        return all(a and p >= self.min_prob and m >= self.margin for p, m, a in seen)

    def stop_step(self, history: list, last: int) -> int:
        if self.full:
            return last
        streak = 0
        for step, seen in enumerate(history):
            streak = streak + 1 if self.holds(seen) else 0
            if streak >= self.patience:
                return step
        return last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: auto, bf16 only where the CPU has it natively)")
    ap.add_argument("--rules", default="argmax;p=0.5;p=0.8;m=1;m=2;pat=2;full")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from kedit.editing import Editor, load_model, model_fingerprint, preset, sample_prefixes
    from kedit.editing.delta import Delta, apply_deltas
    from kedit.editing.keys import compute_keys
    from kedit.editing.values import optimize_values
    from kedit.editing import arch
    from kedit.eval.metrics import summarize
    from kedit.eval.records import load_records
    from kedit.eval.runner import batches_of, score_records
    from kedit.paths import cache_dir

    rules = [Rule.parse(r) for r in args.rules.split(";")]
    recs = load_records(args.records, offset=args.offset, limit=args.limit)
    lm = load_model("default", device="cpu", dtype=args.dtype)
    m, tok = lm.model, lm.tokenizer
    hp = preset("default", "emmet")
    (layer,) = hp.layers
    prefixes = tuple(sample_prefixes(m, tok, hp.n_prefixes, hp.prefix_len, seed=0))
    ed = Editor(m, tok, hp, prefixes, model_fingerprint(m), cache_dir=cache_dir())
    factor = ed.factors()[layer]
    weight = arch.weight_param(m, layer)
    saved = weight.detach().clone()  # the unedited projection, restored after every rule
    base = score_records(m, tok, recs)
    edited: dict[str, list] = {r.name: [] for r in rules}
    steps: dict[str, list[int]] = {r.name: [] for r in rules}
    cfg = dataclasses.replace(hp.values, early_stop=False)
    t0 = time.perf_counter()
    for b, batch in enumerate(batches_of(recs, args.batch)):
        facts = [r.fact for r in batch]
        deltas, history = [], []

        def observe(step, delta, seen):
            deltas.append(delta)
            history.append(seen)

        optimize_values(m, tok, facts, layer, prefixes, cfg, observer=observe)
        K = compute_keys(m, tok, facts, [layer], prefixes)[layer]  # (d_in, E)
        last = len(deltas) - 1
        for rule in rules:
            at = [rule.stop_step([h[e] for h in history], last) for e in range(len(facts))]
            delta = torch.stack([deltas[s][e] for e, s in enumerate(at)])  # (E, d_model)
            U, V = ed.solve_layer(K, delta.T, factor, layer, [f.label for f in facts], None)
            apply_deltas(m, [Delta(layer, arch.mlp_out_name(m, layer), U.float(), V.float())])
            edited[rule.name] += score_records(m, tok, batch)
            with torch.no_grad():
                weight.copy_(saved)
            steps[rule.name] += at
        print(f"batch {b + 1}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    rows = []
    for rule in rules:
        mt = summarize(edited[rule.name], base)
        rows.append({"rule": rule.name, "ES": mt.ES, "PS": mt.PS, "NS": mt.NS, "S": mt.S,
                     "mean_steps": sum(steps[rule.name]) / len(recs), "max_steps": max(steps[rule.name])})
    b = summarize(base, base)
    print(f"{'rule':<16}{'ES':>7}{'PS':>7}{'NS':>7}{'S':>7}{'steps':>8}")
    print(f"{'unedited':<16}{b.ES:>7.1f}{b.PS:>7.1f}{b.NS:>7.1f}{b.S:>7.1f}")
    for r in rows:
        print(f"{r['rule']:<16}{r['ES']:>7.1f}{r['PS']:>7.1f}{r['NS']:>7.1f}{r['S']:>7.1f}{r['mean_steps']:>8.1f}")
    if args.out:
        args.out.write_text(json.dumps({"records": str(args.records), "offset": args.offset, "n": len(recs),
                                        "unedited": b.to_dict(), "rules": rows}, indent=1))


if __name__ == "__main__":
    main()
