"""``benchmarks/bench_gpu.py --tiny``: the GPU benchmark's every step on a small config on the CPU,
so the script cannot rot on machines without a GPU. (The full-size run needs CUDA; here the
CUDA-only parts, ``torch.cuda`` peak memory and synchronisation, are not executed.)"""

from __future__ import annotations

import json

from conftest import load_benchmark


def test_bench_gpu_tiny_runs_every_step(tmp_path, capsys):
    bench = load_benchmark("bench_gpu")
    out = bench.main(["--tiny", "--device", "cpu", "--workdir", str(tmp_path), "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["tiny"] is True
    assert out["statistics"]["seconds"] > 0 and out["statistics"]["peak_gb"] > 0
    runs = {(r["mode"], r["facts"]) for r in out["commits"]}
    assert runs == {(mode, n) for mode in ("float32", "nf4") for n in bench.TINY["sizes"]}
    assert all(set(r["phases"]) >= {"values", "keys", "solve"} for r in out["commits"])
    assert set(out["query_s"]) == {"float32", "nf4"} and out["query_copy_gb"] < out["model_gb"]
    assert len(out["session_commit_s"]) == 10 and out["nf4_model_gb"] < out["model_gb"]
    table = capsys.readouterr().out
    assert "commit 8 facts (nf4)" in table and "< 10 s" in table and "peak < 10 GB" in table
    # the synthetic facts: real single-token words of the Llama-3 vocabulary, distinct subjects
    from transformers import AutoTokenizer

    from kedit.editing import tokens
    from kedit.facts import validate_batch

    tok = AutoTokenizer.from_pretrained(tmp_path / "llama-3-8b-random")
    words = bench.vocabulary_words(tok)
    assert len(words) > 5000 and "Paris" in words
    facts = bench.synthetic_facts(words, 300, seed=1)
    validate_batch(facts)
    for f in facts[:50]:
        assert len(tokens.target_ids(tok, f.target)) == 1
        assert tokens.ids(tok, " " + f.subject)[0] == 128000 and len(tokens.ids(tok, " " + f.subject)) == 3
