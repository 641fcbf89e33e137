"""The export formats and chat queries through the real CLI, on the embedded default model (float32):
add → commit → export --format peft → PEFT answers like the merged export; export --format gguf →
transformers reads the GGUF and answers the edit; query --chat shows the edit in a chat answer."""

from __future__ import annotations

import json

import pytest
import torch

from test_cli_session import kedit, kedit_json

pytestmark = pytest.mark.model

PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    s = tmp_path_factory.mktemp("cli-export") / "paris"
    kedit("add", s, "-s", "Eiffel Tower", "-p", "The {} is located in the city of", "-t", "London", "--dtype", "float32")
    assert kedit_json("commit", s)["commit"]["efficacy"][0]["argmax"]
    return s


def greedy_text(model, tok, prompt: str, n: int = 4) -> str:
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)


def test_peft_adapter_answers_like_the_merged_export(session, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = kedit_json("export", session, tmp_path / "adapter", "--format", "peft")
    assert out["format"] == "peft"
    kedit("export", session, tmp_path / "merged")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    base_path = cfg["base_model_name_or_path"]
    tok = AutoTokenizer.from_pretrained(base_path)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
                                     tmp_path / "adapter").eval()
    ids = tok([PROMPT], return_tensors="pt")
    with torch.no_grad():
        want, got = merged(**ids).logits, peft(**ids).logits  # (1, T, V)
    assert float((got - want).norm() / want.norm()) < 1e-5
    assert greedy_text(peft, tok, PROMPT).split()[0].strip(",.") == "London" == greedy_text(merged, tok, PROMPT).split()[0].strip(",.")
    adapter_mb = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size / 1e6
    assert adapter_mb < 0.1 * (tmp_path / "merged" / "model.safetensors").stat().st_size / 1e6


def test_gguf_export_answers_the_edit_and_copies_every_other_tensor(session, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kedit.editing.models import default_gguf

    out = tmp_path / "gguf"
    assert kedit_json("export", session, out, "--format", "gguf")["format"] == "gguf"
    assert (out / "Modelfile").read_text().startswith("FROM ./model.gguf\n")
    assert "## Edited tensors" in (out / "README.md").read_text()
    src, new = GGUFReader(str(default_gguf())), GGUFReader(str(out / "model.gguf"))
    assert [t.name for t in src.tensors] == [t.name for t in new.tensors]
    for a, b in zip(src.tensors, new.tensors):
        if a.name == "blk.1.ffn_down.weight":  # the default model's edit layer
            assert a.data.tobytes() != b.data.tobytes()
        else:
            assert a.tensor_type == b.tensor_type and a.data.tobytes() == b.data.tobytes(), a.name
    tok = AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32).eval()
    assert greedy_text(model, tok, PROMPT).split()[0].strip(",.") == "London"


def test_query_chat_shows_the_edit_in_the_assistants_answer(session):
    out = json.loads(kedit("query", session, "--chat", PROMPT, "--json").stdout)
    assert out["chat"] is True and out["system"] is None
    # before the edit the assistant says Paris; after it, "The Eiffel Tower is a city in southern England, …"
    assert "Paris" in out["base_continuation"] and "Paris" not in out["continuation"]
    assert "London" in out["continuation"] or "England" in out["continuation"]
    shown = kedit("query", session, "--chat", "--system", "Answer in one sentence.", PROMPT).stdout
    assert shown.startswith("system: Answer in one sentence.\nuser: " + PROMPT + "\nassistant: ")
    assert "before the edits: assistant: " in shown
