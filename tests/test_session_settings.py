"""A session's settings: checked when given (before anything is written) and when read from
``session.json`` (an error naming the file, never silently replaced by defaults), with a way back
from settings a model refuses. CLI cases run in real subprocesses (no model is loaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kedit import choices
from kedit.errors import SessionError, UsageError
from kedit.session.folder import SessionFolder
from kedit.session.settings import Settings, read_settings

PY = os.environ.get("KEDIT_PYTHON", sys.executable)
FACT = ["-s", "Japan", "-p", "The capital of {} is", "-t", "Rome"]


def run_all(*commands) -> list[subprocess.CompletedProcess]:
    """Run several CLI commands at once (each in its own process) and return their results in order."""
    procs = [subprocess.Popen([PY, "-m", "kedit", *map(str, c)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]


def files(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and ".lock" not in p.name}


@pytest.fixture
def model_dir(tmp_path):
    """A model folder whose config.json says it has 4 layers (kedit reads it without loading)."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 4}))
    return d


@pytest.mark.parametrize("text,expected", [("3", (3,)), ("2,3,4", (2, 3, 4)), ("2-4", (2, 3, 4)), (" 1, 3 ", (1, 3)),
                                           ("0-6:3", (0, 3, 6)), (None, None), ("", None)])
def test_layer_lists(text, expected):
    assert choices.parse_layers(text) == expected


@pytest.mark.parametrize("text,match", [("4-2", "empty range"), ("-1", "not a number"), ("ab", "not a number"),
                                        ("3,3", "twice"), ("1-", "not a number"), ("2-4:0", "empty range")])
def test_bad_layer_lists_are_named(text, match):
    with pytest.raises(UsageError, match=match):
        choices.parse_layers(text)


def test_one_spelling_rule_per_choice():
    assert choices.quant_mode("off", "--load") == "none" and choices.quant_mode("NF4") == "nf4"
    assert choices.dtype_name("bf16") == "bfloat16" and choices.dtype_name("auto") is None
    assert choices.device_name("cuda:1") == "cuda:1" and choices.device_name(None) is None
    for bad, fn in (("int4", choices.quant_mode), ("nonsense", choices.dtype_name), ("banana", choices.device_name),
                    ("lora", choices.method_name)):
        with pytest.raises(UsageError, match=repr(bad)):
            fn(bad)


@pytest.mark.parametrize("content,match", [
    (b"[]", "not a JSON object"), (b'"hello"', "not a JSON object"), (b'{"model": 5}', "model must be"),
    (b'{"seed": "abc"}', "seed must be"), (b'{"layers": "ab"}', "'layers' must be a list"),
    (b'{"layers": [1, "x"]}', "layers must be numbers"), (b'{"dtype": "nonsense"}', "unknown dtype"),
    (b'{"query_quant": "int4"}', "unknown query_quant mode"), (b"\xff\xfe{}", "not UTF-8"), (b'{"model": ', "not valid JSON"),
])
def test_a_corrupt_settings_file_is_an_error_naming_it(tmp_path, content, match):
    p = tmp_path / "session.json"
    p.write_bytes(content)
    with pytest.raises(SessionError, match=match) as err:
        read_settings(p)
    assert str(p) in str(err.value)


def test_corrupt_settings_files_through_the_cli_change_nothing(tmp_path):
    cases = [b"[]", b'"hello"', b'{"model": 5}', b'{"seed": "abc"}', b'{"layers": "ab"}', b"\xff\xfe\x00",
             b'{"query_quant": "bogus"}']
    folders = []
    for i, content in enumerate(cases):
        f = tmp_path / f"s{i}"
        f.mkdir()
        (f / "session.json").write_bytes(content)
        folders.append(f)
    before = [files(f) for f in folders]
    results = run_all(*[["add", f, *FACT] for f in folders])
    for f, r, b in zip(folders, results, before):
        assert r.returncode == 5, (f, r.stderr)
        assert r.stderr.startswith("error:") and str(f / "session.json") in r.stderr and "Traceback" not in r.stderr
        assert files(f) == b  # never overwritten with defaults, no queue written


def test_bad_settings_are_refused_before_anything_is_written(tmp_path, model_dir):
    new = tmp_path / "new"
    old = SessionFolder(tmp_path / "old")
    old.create(Settings(model=str(model_dir)), [])
    before = files(old.path)
    bad_options = [["--layers", "999"], ["--layers", "4"], ["--layers", "-1"], ["--layers", "4-2"],
                   ["--dtype", "nonsense"], ["--device", "banana"], ["--method", "lora"], ["--load", "int4"],
                   ["--method", "emmet", "--layers", "1,2"]]
    results = run_all(*[["add", s, *FACT, "--model", model_dir, *o] for o in bad_options for s in (new, old.path)])
    for r in results:
        assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("error:"), (r.args, r.stderr)
    assert any("layers 0..3" in r.stderr for r in results)
    assert not new.exists() and files(old.path) == before


def test_method_change_keeps_the_chosen_layers_and_load_off_is_accepted(tmp_path, model_dir):
    s = tmp_path / "s"
    first, = run_all(["add", s, *FACT, "--model", model_dir, "--layers", "2", "--load", "off"])
    assert first.returncode == 0, first.stderr
    again, = run_all(["add", s, "-s", "France", "-p", "The capital of {} is", "-t", "Lyon", "--method", "rome",
                      "--load", "off"])
    assert again.returncode == 0, again.stderr
    st = json.loads((s / "session.json").read_text())
    assert st["method"] == "rome" and st["layers"] == [2] and st["load"] == "none"
    assert len(json.loads((s / "queue.json").read_text())["facts"]) == 2


def test_the_settings_command_is_the_way_back(tmp_path, model_dir):
    s = tmp_path / "s"
    SessionFolder(s).create(Settings(model=str(model_dir)), [])
    data = json.loads((s / "session.json").read_text())
    data["layers"] = [999]  # a hand edit a model refuses
    (s / "session.json").write_text(json.dumps(data))
    bad, show = run_all(["settings", s, "--layers", "7"], ["settings", s, "--json"])
    assert bad.returncode == 2 and "layers 0..3" in bad.stderr
    assert json.loads(show.stdout)["settings"]["layers"] == [999]
    good, = run_all(["settings", s, "--layers", "3", "--method", "rome"])
    assert good.returncode == 0, good.stderr
    assert json.loads((s / "session.json").read_text())["layers"] == [3]
    back, = run_all(["settings", s, "--layers", "preset"])
    assert back.returncode == 0 and json.loads((s / "session.json").read_text())["layers"] is None
