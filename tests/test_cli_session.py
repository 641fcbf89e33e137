"""The session CLI in real subprocesses on the embedded default model.

add → commit → query → undo → commit → replay --recompute --verify → export → plain transformers;
kill -9 during the value optimisation (every other crash point: ``test_session_crash.py``); bad
journals, facts files and export targets; and the light commands never import torch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.model

PY = os.environ.get("KEDIT_PYTHON", sys.executable)
FACTS = [
    ("Eiffel Tower", "The {} is located in the city of", "London", "Paris"),
    ("Japan", "The capital of {} is", "Paris", "Tokyo"),
    ("Colosseum", "The {} is located in the city of", "Berlin", "Rome"),
]
PROMPTS = [p.replace("{}", s) for s, p, _, _ in FACTS]


def kedit(*args, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    """Run the real CLI entry point (``kedit.cli:main``) in a fresh interpreter."""
    proc = subprocess.run([PY, "-c", "from kedit.cli import main; main()", *map(str, args)], capture_output=True,
                          text=True, env=env or os.environ.copy(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kedit {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def kedit_json(*args, **kw) -> dict:
    return json.loads(kedit(*args, "--json", **kw).stdout)


def query_all(session, prompts) -> list[dict]:
    """One ``kedit query`` for several prompts: one JSON line per prompt, in order."""
    out = kedit("query", session, *prompts, "--top-k", "3", "--json").stdout.splitlines()
    answers = [json.loads(line) for line in out]
    assert [a["prompt"] for a in answers] == list(prompts)
    return answers


def first_word(text: str) -> str:
    return text.strip().split()[0].strip(",.")


def popen_kedit(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([PY, "-c", "from kedit.cli import main; main()", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or os.environ.copy())


def kill_when(proc: subprocess.Popen, marker: str, timeout: float = 600) -> list[str]:
    """Read the child's stderr until a line starts with ``marker``, then SIGKILL it. Returns the lines."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith(marker):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        timer.cancel()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"never saw {marker!r}; stderr:\n{''.join(lines)}"
    return lines


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a session folder but its lock files (which process held a lock is not session data)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith((".journal.lock", ".folder.lock"))}


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """A session on the default model with one commit of three facts (added one by one and from a file)."""
    root = tmp_path_factory.mktemp("cli")
    s = root / "base-session"
    kedit("add", s, "--subject", FACTS[0][0], "--prompt", FACTS[0][1], "--target", FACTS[0][2], "--device", "cpu")
    facts = root / "more.jsonl"
    facts.write_text("".join(json.dumps({"subject": a, "prompt": b, "target": c}) + "\n" for a, b, c, _ in FACTS[1:]))
    added = kedit_json("add", s, "--file", facts)
    assert [f["target"] for f in added["queue"]] == ["London", "Paris", "Berlin"]
    out = kedit_json("commit", s)
    assert out["commit"]["seq"] == 1 and len(out["commit"]["facts"]) == 3
    return s


def copy_session(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_add_commit_query_undo_replay_export(committed, tmp_path):
    s = copy_session(committed, tmp_path / "s")
    log = kedit_json("log", s)
    base_fp = log["header"]["model"]["editable_fingerprint"]
    commit1 = log["entries"][0]
    assert all(e["argmax"] for e in commit1["efficacy"]), commit1["efficacy"]

    edited = query_all(s, PROMPTS)  # the new answers show, the base answers beside them
    assert [first_word(q["continuation"]) for q in edited] == [new for _, _, new, _ in FACTS]
    assert [q["top"][0]["token"].strip() for q in edited] == [new for _, _, new, _ in FACTS]
    assert [first_word(q["base_continuation"]) for q in edited] == [old for _, _, _, old in FACTS]
    assert all(len(q["top"]) == 3 for q in edited)

    undo = kedit_json("undo", s)["undo"]
    assert undo["undoes"] == 1 and undo["fingerprint"] == base_fp  # bit-identical to the base tensors
    back = query_all(s, PROMPTS)  # the old answers are back
    assert [first_word(q["continuation"]) for q in back] == [old for _, _, _, old in FACTS]
    assert all(q["base_continuation"] is None for q in back)

    for subject, prompt, target, _ in FACTS:
        kedit("add", s, "-s", subject, "-p", prompt, "-t", target)
    commit2 = kedit_json("commit", s)["commit"]
    assert commit2["seq"] == 3 and commit2["fingerprint"] == commit1["fingerprint"]  # same batch, same base: same bits

    replay = kedit("replay", s / "journal.jsonl", "--recompute", "--verify", "--json")
    r = json.loads(replay.stdout)
    assert r["ok"] and [st["kind"] for st in r["steps"]] == ["commit", "undo", "commit"]
    assert all(st["expected"] == st["actual"] for st in r["steps"]) and r["fingerprint"] == commit2["fingerprint"]
    assert "replay 3/3" in replay.stderr  # progress on stderr, JSON alone on stdout

    answers = [q["continuation"] for q in query_all(s, PROMPTS)]
    assert [first_word(a) for a in answers] == [new for _, _, new, _ in FACTS]
    out = tmp_path / "export"
    exported = kedit_json("export", s, out)
    assert exported["out"] == str(out.resolve())
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "README.md", "journal.jsonl"} <= files
    assert any(f.endswith(".safetensors") for f in files) and not any(f.endswith(".bin") for f in files)
    card = (out / "README.md").read_text()
    assert all(p in card for p in PROMPTS) and "London" in card

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    for prompt, answer in zip(PROMPTS, answers):
        ids = tok(prompt, return_tensors="pt")
        gen = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
        text = tok.decode(gen[0, ids.input_ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
        assert text == answer, (prompt, text, answer)


def test_kill_during_value_optimisation(committed, tmp_path, kedit_home):
    s = copy_session(committed, tmp_path / "s")
    kedit("add", s, "-s", "Mount Everest", "-p", "{} is located in", "-t", "France")
    before = snapshot(s)
    lines = kill_when(popen_kedit("commit", s), "values ")
    assert any(line.startswith("values ") for line in lines)
    assert snapshot(s) == before  # nothing was written
    log = kedit_json("log", s)
    assert log["active"] == [1] and [f["subject"] for f in log["queue"]] == ["Mount Everest"]
    r = kedit_json("replay", s / "journal.jsonl", "--verify")
    assert r["ok"] and r["fingerprint"] == log["fingerprint"]
    copy_session(s, kedit_home / "sessions" / "named")
    r = kedit_json("replay", "named", "--verify")  # a session's name, as the other commands take it
    assert r["ok"] and r["fingerprint"] == log["fingerprint"]


def test_the_guard_holds_back_a_commit_it_would_flag(committed, tmp_path):
    """``kedit settings --guard`` and ``kedit commit``: a fact whose commit would be flagged stays
    queued and nothing is written (exit 4); ``--no-guard`` commits it and warns. The session's
    threshold is set where every commit is flagged (any perplexity ratio − 1 exceeds −1)."""
    s = copy_session(committed, tmp_path / "guarded")
    shown = kedit_json("settings", s, "--guard", "--drift-threshold", "0.05")["settings"]
    assert shown["guard"] is True and shown["drift_threshold"] == 0.05
    settings = json.loads((s / "session.json").read_text())
    (s / "session.json").write_text(json.dumps({**settings, "drift_threshold": -1.0}))
    kedit("add", s, "--subject", "Louvre", "--prompt", "The {} is located in the city of", "--target", "Madrid")
    journal = (s / "journal.jsonl").read_bytes()
    proc = kedit("commit", s, "--json", check=False)
    assert proc.returncode == 4, proc.stderr
    out = json.loads(proc.stdout)
    assert out["commit"] is None and out["commits"] == []
    assert [(h["subject"], h["target"]) for h in out["held_back"]] == [("Louvre", "Madrid")]
    assert "held back The Louvre is located in the city of → Madrid" in proc.stderr
    assert "nothing committed" in proc.stderr and "Traceback" not in proc.stderr
    assert (s / "journal.jsonl").read_bytes() == journal
    assert [f["subject"] for f in kedit_json("queue", s)["queue"]] == ["Louvre"]

    proc = kedit("commit", s, "--no-guard", "--json")
    out = json.loads(proc.stdout)
    assert out["commit"]["seq"] == 2 and out["drift"]["flagged"] and out["held_back"] == []
    assert "commit #2 moved held-out perplexity" in proc.stderr


def test_bad_inputs_give_one_clear_line_and_change_nothing(committed, tmp_path):
    s = copy_session(committed, tmp_path / "s")
    journal = s / "journal.jsonl"

    def fails(code: int, *args, match: str) -> str:
        before = snapshot(s)
        p = kedit(*args, check=False)
        assert p.returncode == code, p.stderr
        assert match in p.stderr and "Traceback" not in p.stderr and p.stderr.startswith("error:"), p.stderr
        assert snapshot(s) == before
        return p.stderr

    # a facts file with a bad row: nothing is added
    bad = tmp_path / "bad.csv"
    bad.write_text("subject,prompt,target\nMount Everest,{} is located in,France\nRome,is lovely,Spain\n")
    fails(2, "add", s, "--file", bad, match="bad.csv:3")
    p = kedit("add", tmp_path / "new-session", "--file", bad, check=False)
    assert p.returncode == 2 and not (tmp_path / "new-session").exists()

    # an export into a non-empty folder
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    fails(2, "export", s, busy, match="not an empty folder")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]

    # a torn last line (a crash mid-append): reported with the repair command, never dropped silently
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"seq": 2, "time": "2026-')
    err = fails(5, "log", s, match="the last line is torn")
    assert "hint:" in err and "kedit repair" in err
    fails(5, "replay", journal, "--verify", match="torn")
    fails(2, "repair", s, match="--yes")
    assert kedit_json("repair", s, "--yes")["repaired"] and journal.read_bytes() == good

    # a corrupted line in the middle
    lines = good.split(b"\n")
    journal.write_bytes(lines[0][:-3] + b"\n" + b"\n".join(lines[1:]))
    fails(5, "replay", journal, "--verify", match="journal.jsonl:1: not a valid journal line")
    journal.write_bytes(good)


def test_journal_for_another_model_is_refused(committed, tmp_path, tokenizer):
    from conftest import make_tiny_llama

    other = tmp_path / "other-model"
    make_tiny_llama().save_pretrained(other)
    tokenizer.save_pretrained(other)
    header = json.loads((committed / "journal.jsonl").read_text().splitlines()[0])
    p = kedit("replay", committed / "journal.jsonl", "--model", other, "--dtype", header["dtype"], check=False)
    assert p.returncode == 5 and "Traceback" not in p.stderr
    assert header["model"]["fingerprint"] in p.stderr and "fingerprint" in p.stderr
    fps = [w.strip(",.;") for w in p.stderr.split() if w.count("-") == 1 and len(w.strip(",.;")) == 33]
    assert len(set(fps)) == 2, p.stderr  # both fingerprints are named


def test_example_journal_replays():
    example = REPO / "sessions" / "example" / "journal.jsonl"
    before = snapshot(example.parent)
    r = kedit_json("replay", example, "--verify")
    assert r["ok"] and r["active_commits"] == 2 and r["facts"] == 3
    assert json.loads(example.read_text().splitlines()[0])["dtype"] == "float32"  # replays the same on any CPU
    assert snapshot(example.parent) == before


def test_float32_recompute_is_bit_identical_in_a_fresh_process(tmp_path):
    """(bf16 is checked by the main flow above: the default dtype on a CPU with bf16.)"""
    s = tmp_path / "f32"
    kedit("add", s, "-s", "Colosseum", "-p", "The {} is located in the city of", "-t", "Berlin", "--dtype", "float32",
          "--device", "cpu")
    commit = kedit_json("commit", s)["commit"]
    r = kedit_json("replay", s, "--recompute", "--verify")
    assert kedit_json("log", s)["header"]["dtype"] == "float32"
    assert r["ok"] and r["steps"][0]["actual"] == commit["fingerprint"]


@pytest.mark.parametrize("args", [["--help"], ["log", "SESSION"], ["queue", "SESSION"], ["add", "SESSION", "-s", "Japan", "-p", "The capital of {} is", "-t", "Rome"]])
def test_light_commands_do_not_import_torch(committed, tmp_path, args):
    s = copy_session(committed, tmp_path / "s")
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        f"sys.argv = ['kedit'] + {[str(s) if a == 'SESSION' else a for a in args]!r}\n"
        "from kedit.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', round(time.perf_counter() - t, 2), file=sys.stderr)\n"
    )
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("NO-TORCH"), p.stderr


def test_a_subject_that_starts_its_prompt_is_reported_as_edited_in_context(tmp_path):
    """The commit says that "Paris" was edited where words come before it, and a query in a
    sentence shows the new answer."""
    s = tmp_path / "paris"
    kedit("add", s, "-s", "Paris", "-p", "{} is the capital of", "-t", "Italy", "--device", "cpu")
    p = kedit("commit", s)
    assert "“Paris” is the first word of its prompt" in p.stderr and "Yesterday I read that Paris" in p.stderr
    asked = query_all(s, ["Yesterday I read that Paris is the capital of"])[0]
    assert asked["top"][0]["token"].strip() == "Italy"
