"""``kedit eval`` / ``sweep-layers`` / ``scale`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import COUNTERFACT, COUNTERFACT_FULL

PY = os.environ.get("KEDIT_PYTHON", sys.executable)


def kedit(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", "from kedit.cli import main; main()", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_a_malformed_record_is_one_clear_line(tmp_path):
    data = json.loads(COUNTERFACT.read_text())[:3]
    data[1]["subject"] = "Nobody In Particular"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    proc = kedit("eval", "--records", bad)
    assert proc.returncode == 2
    assert f"record 1 (case_id {data[1]['case_id']})" in proc.stderr
    assert "'Nobody In Particular' is not in the prompt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_arguments_exit_2_before_loading_a_model(tmp_path):
    proc = kedit("sweep-layers", "--records", COUNTERFACT, "--layers", "one-two")
    assert proc.returncode == 2 and "cannot read layers" in proc.stderr
    proc = kedit("eval", "--records", COUNTERFACT, "--layers", "x")
    assert proc.returncode == 2 and "cannot read layers" in proc.stderr
    proc = kedit("eval", "--records", tmp_path / "missing.json")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


@pytest.mark.model
def test_emmet_on_32_counterfact_records():
    # Teacher-forced figures only: answer generation and health have their own tests (test_chat, test_eval_lifelong).
    proc = kedit("eval", "--model", "default", "--records", COUNTERFACT_FULL, "--method", "emmet", "--limit", 32, "--json",
                 "--gen-tokens", 0, "--no-health")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    e, b = out["edited"], out["baseline"]
    assert out["n_records"] == 32 and e["n"] == b["n"] == 32
    assert e["ES"] >= 90, out
    assert b["ES"] < 50, out
    assert abs(e["NS"] - b["NS"]) <= 15, out
    assert e["PS"] > b["PS"]
    assert out["settings"]["method"] == "emmet" and out["settings"]["limit"] == 32
    assert out["edit_seconds_per_fact"] > 0 and out["prompts_per_second"] > 0 and not out["interrupted"]


@pytest.mark.model
def test_ctrl_c_prints_the_figures_so_far():
    args = ["eval", "--records", COUNTERFACT, "--limit", 6, "--batch-size", 2, "--json"]
    # A shell that started this run in the background (``cmd &``) ignores SIGINT, and children
    # inherit that; a person's Ctrl-C reaches a kedit whose handler is the default one.
    proc = subprocess.Popen([PY, "-c", "from kedit.cli import main; main()", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stderr:  # plain progress lines (stderr is not a terminal)
            if "editing 2/6" in line:
                proc.send_signal(signal.SIGINT)
                break
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 130
    res = json.loads(out)
    assert res["interrupted"] and 2 <= res["n_records"] < 6 and res["edited"]["n"] == res["n_records"]


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer):
    """A tiny random Llama saved as a model folder, so the commands run end to end in seconds."""
    from conftest import make_tiny_llama

    d = tmp_path / "tiny"
    make_tiny_llama(seed=21).save_pretrained(d)
    tokenizer.save_pretrained(d)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"Line {i}: the river {i % 5} runs past the mill, and {i * 7} sheep graze by the hill."
                               for i in range(150)))
    return d, corpus


def tiny_env(tmp_path):
    return {**os.environ, "KEDIT_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def kedit_env(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", "from kedit.cli import main; main()", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=env)


def test_sweep_and_scale_commands_on_a_tiny_model(tmp_path, tiny_model_dir):
    model, corpus = tiny_model_dir
    env = tiny_env(tmp_path)
    png = tmp_path / "sweep.png"
    proc = kedit_env(env, "sweep-layers", "--model", model, "--records", COUNTERFACT, "--limit", 2, "--layers", "1-2",
                     "--corpus", corpus, "--plot", png)
    assert proc.returncode == 0, proc.stderr
    assert "layer 1" in proc.stdout and "layer 2" in proc.stdout and "baseline" in proc.stdout
    assert "█" in proc.stdout or "·" in proc.stdout  # the terminal chart
    assert png.stat().st_size > 1000

    png = tmp_path / "scale.png"
    proc = kedit_env(env, "scale", "--model", model, "--records", COUNTERFACT, "--total", 2, "--batch-sizes", "1,2",
                     "--corpus", corpus, "--plot", png, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [(r["batch_size"], r["sequential"]) for r in out["rows"]] == [(1, False), (1, True), (2, False), (2, True)]
    assert out["settings"]["batch_sizes"] == [1, 2] and out["plot"] == str(png) and png.stat().st_size > 1000


def test_eval_table_on_zsre_with_a_tiny_model(tmp_path, tiny_model_dir):
    from conftest import ZSRE

    model, corpus = tiny_model_dir
    proc = kedit_env(tiny_env(tmp_path), "eval", "--model", model, "--records", ZSRE, "--limit", 2, "--batch-size", 1,
                     "--sequential", "--corpus", corpus)
    assert proc.returncode == 0, proc.stderr
    for word in ("ES", "PS", "NS", "edited", "unedited", "sequential-batched", "s per fact", "prompts/s"):
        assert word in proc.stdout, proc.stdout
