"""The GPU benchmark: kedit on a model with Llama-3-8B's shapes, bf16 on CUDA, in one run.

    .venv/bin/python benchmarks/bench_gpu.py [--device cuda] [--json results.json]
    .venv/bin/python benchmarks/bench_gpu.py --tiny        # a small config on the CPU (smoke run)

The model is random-init with Llama-3-8B's config (32 blocks, d_model 4096, MLP 14336, GQA 32/8
heads, vocabulary 128,256): no download, and shapes are what matter for time and memory. It is
saved once to a temporary folder with the real Llama-3 tokenizer (built from the ``quicktok-v1``
dev dependency, see ``tests/llama3_tokenizer.py``), so ``--load nf4`` reads a real checkpoint.
Facts are synthetic: subjects of two real single-token words of the tokenizer, targets one such
word, in four CounterFact-like prompt templates. Measured:

1. statistics (C0) for the edit layer: time and peak memory;
2. one commit of 16, 64 and 1,024 facts: time per phase and peak memory;
3. the same with ``--load nf4`` (every linear layer 4-bit except the edit layer's projection);
4. query latency (greedy continuation + next-token top-k) on the bf16 model and on a
   ``--query-quant nf4`` copy;
5. a 10-commit sequential session (each commit remembers the earlier ones): time per commit.

Targets, printed beside the figures: 16 facts < 10 s, 1,024 facts < 5 min, ``--load nf4``
editing < 10 GB peak. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the
process's peak resident set on the CPU. ``--tiny`` runs every step with a 4-block model of
d_model 64 (same vocabulary) and fewer facts, so the script itself is tested on any machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the Llama-3 tokenizer built from quicktok's ranks

TEMPLATES = ("{} is located in the city of", "The capital of {} is", "{} was created by",
             "The native language of {} is")
FULL = {"sizes": (16, 64, 1024), "session": (10, 16), "stats_tokens": 150_000, "steps": 25}
TINY = {"sizes": (2, 4, 8), "session": (10, 1), "stats_tokens": 1_000, "steps": 2}
TARGETS = {"commit_16_s": 10.0, "commit_1024_s": 300.0, "nf4_peak_gb": 10.0}
PROMPTS = ("The Eiffel Tower is located in the city of", "The capital of Japan is", "Marble Harbor was created by")


# -- the model and the facts ---------------------------------------------------------------------


def model_config(tiny: bool):
    from transformers import LlamaConfig

    from llama3_tokenizer import VOCAB_SIZE

    shapes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2) if tiny else dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
    return LlamaConfig(**shapes, vocab_size=VOCAB_SIZE, max_position_embeddings=8192, rope_theta=500000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128009)


def build_model_folder(folder: Path, tiny: bool, device: str, dtype) -> Path:
    """Random-init weights of the config, initialised on ``device``, saved with the tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    from llama3_tokenizer import build_llama3_tokenizer

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(model_config(tiny)).to(dtype)
    model.save_pretrained(folder)
    del model
    build_llama3_tokenizer().save_pretrained(folder)
    _free()
    return folder


def vocabulary_words(tok) -> list[str]:
    """Real words that are one token with a leading space (" Harbor"), sorted."""
    words = set()
    for piece, _ in tok.get_vocab().items():
        text = tok.convert_tokens_to_string([piece])
        w = text[1:]
        if text.startswith(" ") and w.isascii() and w.isalpha() and w[0].isupper() and 4 <= len(w) <= 9:
            words.add(w)
    return sorted(words)


def synthetic_facts(words: list[str], n: int, seed: int):
    """``n`` facts with distinct two-word subjects and one-word targets."""
    from kedit.facts import Fact

    rng = random.Random(seed)
    subjects: set[str] = set()
    facts = []
    while len(facts) < n:
        subject = f"{rng.choice(words)} {rng.choice(words)}"
        if subject in subjects:
            continue
        subjects.add(subject)
        facts.append(Fact(subject, TEMPLATES[len(facts) % len(TEMPLATES)], rng.choice(words)))
    return facts


# -- measuring ---------------------------------------------------------------------------------------


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Meter:
    """Wall time and peak memory (GB) of a block: CUDA allocator peak, or the process's peak RSS."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.seconds = 0.0
        self.peak_gb: float | None = None

    def __enter__(self) -> "Meter":
        import torch

        _free()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_peak_rss()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._t
        self.peak_gb = (torch.cuda.max_memory_allocated() if self.cuda else _peak_rss()) / 1e9


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: peak RSS := current RSS
    except OSError:
        pass


def _peak_rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) * 1024
    return float("nan")


# -- the steps ---------------------------------------------------------------------------------------


def bench_statistics(editor, device: str) -> dict:
    with Meter(device) as m:
        editor.factors()
    return {"seconds": m.seconds, "peak_gb": m.peak_gb, "tokens": editor.hparams.stats_tokens}


def bench_commits(editor, words, sizes, device: str, label: str) -> list[dict]:
    rows = []
    for slot, n in enumerate(sizes):
        facts = synthetic_facts(words, n, seed=n)
        with Meter(device) as m:
            r = editor.edit(facts)
        rows.append({"mode": label, "facts": n, "full_size_facts": FULL["sizes"][slot], "seconds": m.seconds,
                     "peak_gb": m.peak_gb,
                     "phases": {k: round(v, 3) for k, v in r.timings.items()},
                     "efficacy_hint": sum(r.converged) / n})
        print(f"  {label} {n:>5} facts: {m.seconds:8.2f} s, peak {m.peak_gb:6.2f} GB", flush=True)
    return rows


def bench_queries(model, tok, repeats: int = 3) -> float:
    """Median seconds of one query: greedy continuation and the next-token top-5."""
    from kedit.editing import greedy, top_k_next
    from kedit.session.session import MAX_NEW_TOKENS

    times = []
    for _ in range(repeats):
        for p in PROMPTS:
            t = time.perf_counter()
            greedy(model, tok, p, MAX_NEW_TOKENS)
            top_k_next(model, tok, p, 5)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_session(lm, hp, words, commits: int, per_commit: int, corpus: str, folder: Path) -> list[float]:
    from kedit.session import Session

    s = Session.attach(folder, lm, corpus=corpus, hparams=hp)
    times = []
    for i in range(commits):
        s.add_many(synthetic_facts(words, per_commit, seed=10_000 + i))
        t = time.perf_counter()
        s.commit()
        times.append(time.perf_counter() - t)
        print(f"  session commit {i + 1:>2}/{commits}: {times[-1]:.2f} s", flush=True)
    return times


# -- the run -------------------------------------------------------------------------------------------


def run(args) -> dict:
    import os

    import torch

    from kedit.editing import Editor, load_model, model_fingerprint, preset, sample_prefixes
    from kedit.editing.quant import QueryCopy, load_quantized_for_editing, memory_bytes

    sizes = TINY if args.tiny else FULL
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kedit-bench-gpu-"))
    os.environ["KEDIT_CACHE_DIR"] = str(work / "cache")  # statistics of the random model stay here
    folder = work / "llama-3-8b-random"  # the name selects the Llama-3-8B preset
    if not (folder / "config.json").exists():
        print(f"building the random-init model in {folder} ...", flush=True)
        build_model_folder(folder, args.tiny, device, dtype)
    corpus = args.corpus

    out: dict = {"device": device, "dtype": str(dtype).removeprefix("torch."), "tiny": args.tiny,
                 "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None, "targets": TARGETS}
    lm = load_model(str(folder), device=device, dtype=dtype)
    hp = preset(str(folder), "emmet", num_layers=model_config(args.tiny).num_hidden_layers)
    hp = dataclasses.replace(hp, stats_tokens=args.stats_tokens or sizes["stats_tokens"],
                             values=dataclasses.replace(hp.values, steps=sizes["steps"]))
    out["hparams"] = {"layers": hp.layers, "stats_tokens": hp.stats_tokens, "steps": hp.values.steps,
                      "prefixes": hp.n_prefixes}
    words = vocabulary_words(lm.tokenizer)
    fp = model_fingerprint(lm.model)
    prefixes = sample_prefixes(lm.model, lm.tokenizer, hp.n_prefixes, hp.prefix_len, seed=0)
    editor = Editor(lm.model, lm.tokenizer, hp, prefixes, fp, corpus=corpus, cache_dir=work / "cache")
    out["model_gb"] = memory_bytes(lm.model) / 1e9
    print(f"model: {out['model_gb']:.2f} GB in {out['dtype']} on {device}; edit layer {hp.layers}", flush=True)

    out["statistics"] = bench_statistics(editor, device)
    print(f"  statistics: {out['statistics']['seconds']:.2f} s, peak {out['statistics']['peak_gb']:.2f} GB", flush=True)
    out["commits"] = bench_commits(editor, words, sizes["sizes"], device, out["dtype"])

    out["query_s"] = {out["dtype"]: bench_queries(lm.model, lm.tokenizer)}
    qc = QueryCopy(lm, "nf4", device=lm.device)
    out["query_s"]["nf4"] = bench_queries(qc.model, qc.tokenizer)
    out["query_copy_gb"] = qc.memory_bytes() / 1e9
    del qc
    _free()
    print(f"  query: {out['query_s'][out['dtype']] * 1e3:.0f} ms ({out['dtype']}), "
          f"{out['query_s']['nf4'] * 1e3:.0f} ms (nf4 copy, {out['query_copy_gb']:.2f} GB)", flush=True)

    out["session_commit_s"] = bench_session(lm, hp, words, *sizes["session"], corpus, work / "session")
    del editor, lm  # the session edited this model: the nf4 run loads the base checkpoint afresh
    _free()

    nf4 = load_quantized_for_editing(str(folder), "nf4", list(hp.layers), device=device, dtype=dtype)
    out["nf4_model_gb"] = memory_bytes(nf4.model) / 1e9
    nf4_editor = Editor(nf4.model, nf4.tokenizer, hp, prefixes, fp, corpus=corpus, cache_dir=work / "cache")
    out["commits"] += bench_commits(nf4_editor, words, sizes["sizes"], device, "nf4")
    return out


def report(out: dict) -> str:
    """The table: one line per measurement, the target beside it."""
    big = not out["tiny"]
    full = "" if big else "  (targets are for the full-size run)"
    lines = [f"kedit GPU benchmark on {out['gpu'] or out['device']}, {out['dtype']}, "
             f"{'Llama-3-8B shapes' if big else 'tiny config'}{full}",
             f"{'measurement':<34}{'time':>10}{'peak GB':>10}  target"]
    s = out["statistics"]
    lines.append(f"{'statistics, one layer (' + format(s['tokens'], ',') + ' tok)':<34}{s['seconds']:>9.1f}s"
                 f"{s['peak_gb']:>10.2f}")
    for r in out["commits"]:
        target = {16: f"< {TARGETS['commit_16_s']:.0f} s", 1024: f"< {TARGETS['commit_1024_s'] / 60:.0f} min"}.get(
            r["full_size_facts"], "")  # with --tiny: the target of the full-size run's row
        if r["mode"] == "nf4":
            target = (target + ", " if target else "") + f"peak < {TARGETS['nf4_peak_gb']:.0f} GB"
        phases = " ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
        lines.append(f"{'commit ' + str(r['facts']) + ' facts (' + r['mode'] + ')':<34}{r['seconds']:>9.1f}s"
                     f"{r['peak_gb']:>10.2f}  {target}   [{phases}]")
    for mode, sec in out["query_s"].items():
        lines.append(f"{'query latency (' + mode + ')':<34}{sec * 1e3:>8.0f}ms")
    per = out["session_commit_s"]
    lines.append(f"{'session: ' + str(len(per)) + ' commits, per commit':<34}{statistics.mean(per):>9.1f}s"
                 f"{'':>10}  first {per[0]:.1f} s, last {per[-1]:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a small config on the CPU (smoke run)")
    ap.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    ap.add_argument("--corpus", default="wiki-sample", help="statistics corpus (as kedit --corpus)")
    ap.add_argument("--stats-tokens", type=int, default=None, help="tokens for C0 (default 150,000; 1,000 with --tiny)")
    ap.add_argument("--workdir", default=None, help="keep the model and caches here (default: a temp folder)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    out = run(args)
    print(report(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


if __name__ == "__main__":
    main()
