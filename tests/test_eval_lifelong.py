"""The lifelong experiment (``kedit lifelong``) and the health figures, on a tiny random Llama."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from conftest import make_tiny_llama
from test_eval_cli import kedit_env, tiny_env, tiny_model_dir  # noqa: F401  (fixture)
from kedit.editing import Editor, HParams, ValueConfig
from kedit.editing.delta import fingerprint
from kedit.editing.health import generation_entropy, heldout_nll, heldout_paragraphs, ngram_entropy
from kedit.eval.lifelong import run_lifelong
from kedit.eval.records import EvalRecord
from kedit.eval.runner import Tick

SUBJECTS = ["Ames", "Bree", "Colm", "Dunn", "Eddy", "Fenn"]


def records_json(path, n=6):
    recs = [{"case_id": i, "subject": s, "prompt": f"The river of {s} is the", "target_new": "Tarn",
             "ground_truth": "Ouse", "rephrase_prompt": f"People say the river of {s} is the",
             "locality_prompt": "The river of Gale is the", "locality_ground_truth": "Wey"}
            for i, s in enumerate(SUBJECTS[:n])]
    path.write_text(json.dumps(recs))
    return path


def test_lifelong_command_end_to_end(tmp_path, tiny_model_dir):  # noqa: F811
    model, corpus = tiny_model_dir
    png = tmp_path / "lifelong.png"
    proc = kedit_env(tiny_env(tmp_path), "lifelong", "--model", model, "--records", records_json(tmp_path / "r.json"),
                     "--total", 6, "--batch-size", 2, "--checkpoints", "2,6", "--corpus", corpus, "--plot", png,
                     "--json", "--set", "values.steps=2", "--set", "stats_tokens=1500", "--set", "null_space=1e6",
                     "--set", "norm_penalty=10", "--set", "remember_by_commit=true", "--guard", 10)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # a guard no commit reaches (+1000% perplexity) keeps the run's batching
    assert out["guard"] == 10 and out["undone_commits"] == 0 and out["refused_records"] == []
    assert out["commit_sizes"] == [2, 2, 2]
    assert [c["edits"] for c in out["checkpoints"]] == [2, 6]
    assert len(out["commit_seconds"]) == 3 and not out["interrupted"]
    # the held-out NLL after every commit; a checkpoint's is its commit's
    assert len(out["commit_heldout_nll"]) == 3 and len(out["commit_perplexity_change"]) == 3
    assert [c["heldout_nll"] for c in out["checkpoints"]] == [out["commit_heldout_nll"][i] for i in (0, 2)]
    # and each fact's value steps, so a slower late commit can be told from one that needed more steps
    assert [len(s) for s in out["commit_value_steps"]] == [2, 2, 2]
    assert all(1 <= n <= 2 for s in out["commit_value_steps"] for n in s)
    # and the time of each phase, which together make up most of the commit
    for phases, seconds in zip(out["commit_phase_seconds"], out["commit_seconds"]):
        assert {"values", "keys", "solve"} <= set(phases) and "statistics" not in phases
        assert all(v >= 0 for v in phases.values()) and sum(phases.values()) <= seconds
    c = out["checkpoints"][-1]
    assert c["metrics"]["n"] == 6 and c["baseline"]["n"] == 6 and 0 <= c["first_batch_ES"] <= 100
    assert math.isfinite(c["heldout_nll"]) and c["weight_norm"] > 0
    assert out["settings"]["hparams"]["null_space"] == 1e6 and out["settings"]["hparams"]["values"]["steps"] == 2
    assert out["plot"] == str(png) and png.stat().st_size > 1000
    assert "commit 3 · perplexity now " in proc.stderr and " · at 2 edits: ES " in proc.stderr  # as they come


def tiny_editor(tokenizer, tmp_path, seed: int):
    """A tiny random Llama and an EMMET editor on its layer 1 that remembers commits (2 value steps)."""
    model = make_tiny_llama(seed=seed)
    corpus = tmp_path / "c.txt"
    corpus.write_text(" ".join(f"Line {i}: the river runs past the mill." for i in range(150)))
    hp = HParams(method="emmet", layers=(1,), lam=0.0, values=ValueConfig(steps=2), stats_tokens=1500,
                 stats_seq_len=64, preserve=1.0, remember_by_commit=True)
    return model, Editor(model, tokenizer, hp, ("A prefix.",), "tiny", corpus=str(corpus), cache_dir=tmp_path / "cache")


def test_ctrl_c_keeps_the_checkpoints_reached_and_restores_the_weights(tokenizer, tmp_path):
    model, ed = tiny_editor(tokenizer, tmp_path, seed=2)
    recs = [EvalRecord(s, s, "The river of {} is the", "Tarn", "Ouse", (), ("The river of Gale is the",), "Wey",
                       "counterfact") for s in SUBJECTS]
    before = fingerprint(model, [0, 1, 2, 3])

    seen: list[str] = []

    def progress(t: Tick) -> None:
        if t.stage == "edit":
            seen.append(t.detail)
            if t.detail.startswith("commit 3"):
                raise KeyboardInterrupt

    run = run_lifelong(model, tokenizer, ed, recs, 2, [2, 4, 6], progress=progress)
    assert run.interrupted and [c.edits for c in run.checkpoints] == [2, 4] and len(run.commit_seconds) == 2
    # the held-out NLL is measured after each commit (the first edit moved it), a checkpoint's is its commit's
    assert len(run.commit_nll) == 2 and run.commit_nll[0] != run.base_nll
    assert [c.heldout_nll for c in run.checkpoints] == list(run.commit_nll)
    # each commit's progress line carries the perplexity now and the last checkpoint's figures
    last = run.checkpoints[-1]
    now = f"perplexity now {100 * run.commit_perplexity()[0]:+.1f}%"
    assert seen[0] == "commit 1" and seen[1].startswith(f"commit 2 · {now} · at 2 edits: ES ")
    num = r"(?:[\d.]+|—)"  # these records have no paraphrases: PS is shown as a dash, not as 0
    assert re.fullmatch(rf"commit 3 · perplexity now [+-][\d.]+% · at 4 edits: ES {num}, PS —, NS {num} "
                        rf"\(unedited {num}\), first batch {num}%, perplexity [+-][\d.]+%", seen[2])
    assert f"ES {last.metrics.ES:.1f}," in seen[2] and f"first batch {last.first_batch:.1f}%" in seen[2]
    assert fingerprint(model, [0, 1, 2, 3]) == before


def test_generation_entropy_is_the_published_weighting():
    text = "the cat sat on the mat . the cat sat on the hat ."
    h2, h3 = ngram_entropy(text, 2), ngram_entropy(text, 3)
    assert generation_entropy([text]) == pytest.approx(100 * (h2 / 3 + 2 * h3 / 3))
    # 4 distinct bigrams of equal count: H₂ = 2 bits
    assert ngram_entropy("a b c d e", 2) == pytest.approx(2.0)
    assert generation_entropy(["a a a a a a a a"]) == 0.0  # pure repetition
    assert generation_entropy([text, "a a a a"]) == pytest.approx(generation_entropy([text]) / 2)


def test_heldout_nll_is_the_mean_token_nll(tokenizer):
    model = make_tiny_llama(seed=1)
    text = heldout_paragraphs()[0]
    ids = torch.tensor([tokenizer(text).input_ids])
    with torch.no_grad():
        logp = model(input_ids=ids).logits.float().log_softmax(-1)[0, :-1]  # (T-1, V)
    direct = float(-logp.gather(1, ids[0, 1:, None]).mean())
    assert heldout_nll(model, tokenizer, [text]) == pytest.approx(direct, rel=1e-5)
    assert len(heldout_paragraphs()) >= 8


def test_eval_reports_fluency_and_heldout_perplexity(tmp_path, tiny_model_dir):  # noqa: F811
    model, corpus = tiny_model_dir
    recs = records_json(tmp_path / "r.json", n=2)
    env = tiny_env(tmp_path)
    proc = kedit_env(env, "eval", "--model", model, "--records", recs, "--batch-size", 1, "--corpus", corpus,
                     "--json", "--set", "values.steps=2", "--set", "stats_tokens=1500")
    assert proc.returncode == 0, proc.stderr
    h = json.loads(proc.stdout)["health"]
    for state in ("edited", "unedited"):
        assert math.isfinite(h[state]["heldout_nll"]) and 0 <= h[state]["fluency"] < 2000
    proc = kedit_env(env, "eval", "--model", model, "--records", recs, "--corpus", corpus, "--set", "values.steps=2",
                     "--set", "stats_tokens=1500")
    assert proc.returncode == 0 and "fluency" in proc.stdout and "held-out ppl" in proc.stdout, proc.stderr


def test_commit_time_per_fact_counts_the_short_last_batch():
    from kedit.eval.lifelong import LifelongRun, commit_seconds_per_fact

    run = LifelongRun(batch_size=16, n_records=40, base_nll=3.0, base_weight_norm=1.0, checkpoints=(),
                      commit_seconds=(32.0, 48.0, 16.0), interrupted=False)
    assert commit_seconds_per_fact(run) == ([16, 32, 40], [2.0, 3.0, 2.0])
    cut = LifelongRun(16, 40, 3.0, 1.0, (), (32.0,), True)  # Ctrl-C after the first commit
    assert commit_seconds_per_fact(cut) == ([16], [2.0])


def test_perplexity_per_commit_is_against_the_edits_after_each_commit():
    from kedit.eval.lifelong import LifelongRun, perplexity_per_commit

    nll = (3.0, 3.0 + math.log(1.5), 3.0 + math.log(3.0))  # perplexity ×1, ×1.5, ×3 the base model's
    run = LifelongRun(16, 40, 3.0, 1.0, (), (32.0, 48.0, 16.0), False, commit_nll=nll)
    ends, ppl = perplexity_per_commit(run)
    assert ends == [16, 32, 40] and ppl == pytest.approx([0.0, 50.0, 200.0])
    assert run.to_dict()["commit_perplexity_change"] == pytest.approx([0.0, 0.5, 2.0])


def test_the_guard_takes_back_a_flagged_commit_and_retries_its_facts_in_halves(tokenizer, tmp_path, monkeypatch):
    """The edits and the stack are real; the held-out NLL is scripted (a tiny random model's perplexity
    moves at random): every applied edit of "Colm" raises it by 10%, anything else by nothing."""
    import kedit.eval.lifelong as lifelong
    from kedit.session.engine import EditStack

    applied: list[tuple] = []
    push, pop, reset = EditStack.push, EditStack.pop, EditStack.reset
    monkeypatch.setattr(EditStack, "push", lambda self, d, facts: (push(self, d, facts), applied.append(tuple(facts))))
    monkeypatch.setattr(EditStack, "pop", lambda self: (applied.pop(), pop(self))[1])
    monkeypatch.setattr(EditStack, "reset", lambda self: (applied.clear(), reset(self)))
    colm = lambda: sum(f.subject == "Colm" for facts in applied for f in facts)  # noqa: E731
    monkeypatch.setattr(lifelong, "heldout_nll", lambda model, tok: 3.0 + math.log(1.1) * colm())

    model, ed = tiny_editor(tokenizer, tmp_path, seed=3)
    recs = [EvalRecord(str(i), s, "The river of {} is the", "Tarn", "Ouse", (), ("The river of Gale is the",),
                       "Wey", "counterfact") for i, s in enumerate(SUBJECTS[:5])]
    before = fingerprint(model, [0, 1, 2, 3])

    run = run_lifelong(model, tokenizer, ed, recs, 4, [4, 5], guard=0.02)
    # [Ames Bree Colm Dunn] flagged → [Ames Bree] kept, [Colm Dunn] flagged → [Colm] flagged alone, [Dunn] kept
    assert run.commit_sizes == (2, 1, 1) and run.refused == ("2",) and run.undone == 3
    assert run.commit_nll == (3.0, 3.0, 3.0) and len(run.commit_seconds) == len(run.commit_steps) == 3
    assert [(c.edits, c.refused) for c in run.checkpoints] == [(3, 1), (4, 1)]
    assert run.checkpoints[0].metrics.n == 3  # the kept edits are scored, the one left out is not
    assert lifelong.perplexity_per_commit(run)[0] == [2, 3, 4]
    out = run.to_dict()
    assert out["commit_sizes"] == [2, 1, 1] and out["refused_records"] == ["2"] and out["undone_commits"] == 3
    assert "1 left out by the guard" in run.checkpoints[-1].line(run.base_nll)
    assert lifelong.table_rows(run)[0][0] == "3 (1 left out)"
    assert fingerprint(model, [0, 1, 2, 3]) == before and applied == []

    # a threshold no commit reaches keeps the run's batching
    plain = run_lifelong(model, tokenizer, ed, recs, 4, [5], guard=0.5)
    assert plain.undone == 0 and plain.refused == () and plain.sizes() == [4, 1]
