"""``kedit eval`` / ``sweep-layers`` / ``scale`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import COUNTERFACT

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
    proc = kedit("eval", "--model", "default", "--records", COUNTERFACT, "--method", "emmet", "--limit", 32, "--json")
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
    proc = subprocess.Popen([PY, "-c", "from kedit.cli import main; main()", "eval", "--records", COUNTERFACT,
                             "--limit", 6, "--batch-size", 2, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
