"""``export --format gguf`` in parts, on small GGUF files written here with the ``gguf`` package:
the rewrite copies metadata and unedited tensors byte for byte, edited tensors round-trip in their
new type, damaged or non-Llama files and non-GGUF bases are refused clearly, and the Ollama
``Modelfile`` carries the chat template. The whole export on the default model is in
``test_cli_export.py``."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kedit.errors import ExportError
from kedit.session.export_gguf import GgufSource, check_source, decode, encode, open_gguf, write_gguf_file
from kedit.session.modelfile import modelfile
from test_session_tiny import FACTS, corpus, private_cache, start, tiny_dir  # noqa: F401

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
          "You are a helpful assistant<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def small_gguf(path, arch="llama", layers=2):
    """A GGUF with Llama-style names: metadata of every kind, Q4_1 ``ffn_down``, F32 norms, a Q8_0 embedding."""
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), arch)
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(64)])
    w.add_token_scores([0.5] * 64)
    w.add_chat_template(CHATML)
    w.add_name("small")
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_tensor("token_embd.weight", quantize(rng.standard_normal((64, 64)).astype(np.float32), Q.Q8_0), raw_dtype=Q.Q8_0)
    for l in range(layers):
        w.add_tensor(f"blk.{l}.ffn_norm.weight", rng.standard_normal(64).astype(np.float32))
        down = rng.standard_normal((64, 128)).astype(np.float32)  # (d_out, d_in)
        w.add_tensor(f"blk.{l}.ffn_down.weight", quantize(down, Q.Q4_1), raw_dtype=Q.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_rewrite_copies_everything_but_the_replaced_tensor_byte_for_byte(tmp_path):
    from gguf import GGMLQuantizationType as Q

    src = small_gguf(tmp_path / "src.gguf")
    reader = check_source(src, [0, 1]).reader
    write_gguf_file(reader, tmp_path / "copy.gguf", {})
    assert (tmp_path / "copy.gguf").read_bytes() == src.read_bytes()  # nothing replaced: the very same file

    t = {x.name: x for x in reader.tensors}["blk.1.ffn_down.weight"]
    new = decode(t.data, t.tensor_type) + 0.01 * torch.randn(64, 128)  # (d_out, d_in)
    write_gguf_file(reader, tmp_path / "out.gguf", {"blk.1.ffn_down.weight": (encode(new, Q.Q8_0), Q.Q8_0)})
    out = open_gguf(tmp_path / "out.gguf")
    assert [f.name for f in out.fields.values()] == [f.name for f in reader.fields.values()]
    for a, b in zip(reader.fields.values(), out.fields.values()):
        assert a.name.startswith("GGUF.") or (a.types == b.types and a.contents() == b.contents()), a.name
    for a, b in zip(reader.tensors, out.tensors):
        assert a.name == b.name and list(a.shape) == list(b.shape)
        if a.name == "blk.1.ffn_down.weight":
            assert b.tensor_type == Q.Q8_0
            assert float((decode(b.data, b.tensor_type) - new).abs().max()) < 0.01 * float(new.abs().max())
        else:
            assert a.tensor_type == b.tensor_type and a.data.tobytes() == b.data.tobytes(), a.name


def test_f16_and_q8_round_trip_keeps_the_layout():
    from gguf import GGMLQuantizationType as Q

    w = torch.randn(8, 64)
    assert encode(w, Q.F16).shape == (8, 64) and torch.allclose(decode(encode(w, Q.F16), Q.F16), w, atol=1e-2)
    assert torch.allclose(decode(encode(w, Q.Q8_0), Q.Q8_0), w, atol=0.05)


def test_damaged_and_non_llama_files_are_refused_clearly(tmp_path):
    src = small_gguf(tmp_path / "src.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(src.read_bytes()[:300])
    with pytest.raises(ExportError, match="not a readable GGUF file"):
        check_source(cut, [0])
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ExportError, match="not a readable GGUF file"):
        check_source(junk, [0])
    with pytest.raises(ExportError, match="architecture 'qwen2'"):
        check_source(small_gguf(tmp_path / "qwen.gguf", arch="qwen2"), [0])
    with pytest.raises(ExportError, match="no tensor blk.5.ffn_down.weight"):
        check_source(src, [5])
    assert isinstance(check_source(src, [1]), GgufSource)


def test_a_session_on_a_safetensors_base_says_how_to_get_a_gguf(tmp_path, tiny_dir, corpus):
    s = start(tmp_path / "s", tiny_dir, corpus)
    s.add(FACTS[0])
    s.commit()
    with pytest.raises(ExportError, match="not read from a GGUF file") as err:
        s.export(tmp_path / "g", format="gguf")
    assert "convert_hf_to_gguf.py" in err.value.hint
    assert not (tmp_path / "g").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_modelfile_converts_chatml_and_llama3_and_passes_others_through():
    chatml = modelfile(CHATML)
    assert chatml.startswith("FROM ./model.gguf\n")
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>" in chatml and 'PARAMETER stop "<|im_end|>"' in chatml
    assert 'SYSTEM """You are a helpful assistant"""' in chatml
    llama3 = modelfile("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                       "{{ m['content'] }}<|eot_id|>{% endfor %}")
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>" in llama3 and 'PARAMETER stop "<|eot_id|>"' in llama3
    assert "SYSTEM" not in llama3
    other = modelfile("[INST] {{ messages[0]['content'] }} [/INST]")
    assert 'TEMPLATE """' not in other and "#   [INST] {{ messages[0]['content'] }} [/INST]" in other
    assert "no chat template" in modelfile(None)


@pytest.mark.model
def test_a_gguf_file_loads_as_a_model_and_names_its_source(default_lm):
    from kedit.editing import load_model
    from kedit.editing.models import default_gguf, gguf_source, model_fingerprint

    path = default_gguf()
    lm = load_model(str(path), device="cpu", dtype="float32")  # converted once into the cache dir
    assert gguf_source(str(path)) == path and gguf_source("default") == path and gguf_source(lm.path) is None
    assert model_fingerprint(lm.model) == model_fingerprint(default_lm.model)


# One process of several started together on an empty cache: it reports each time it writes a
# converted model, waits for the go file, converts, then reads the copy it got back.
_CONVERT_TOGETHER = """
import os, sys, time
from pathlib import Path
from transformers import AutoTokenizer, PreTrainedModel
from kedit.editing.models import default_gguf, gguf_model_dir
save = PreTrainedModel.save_pretrained
def counted(self, *a, **k):
    print("wrote a converted model", flush=True)
    return save(self, *a, **k)
PreTrainedModel.save_pretrained = counted
Path(sys.argv[1], f"ready{os.getpid()}").touch()
while not Path(sys.argv[1], "go").exists():
    time.sleep(0.01)
d = gguf_model_dir(default_gguf())
AutoTokenizer.from_pretrained(d)
print("inode", os.stat(d).st_ino, flush=True)
"""


@pytest.mark.model
def test_processes_loading_a_gguf_together_convert_it_once(tmp_path):
    """A TUI and a CLI started together on a fresh machine: before the conversion lock the second
    conversion replaced the folder while the first process was reading its tokenizer."""
    env = {**os.environ, "KEDIT_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", _CONVERT_TOGETHER, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready*"))) < 2 and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    out = "".join(o for o, _ in outs)
    assert out.count("wrote a converted model") == 1  # the second process waited and used the first's copy
    assert len({line for line in out.splitlines() if line.startswith("inode")}) == 1
    assert not list((tmp_path / "cache").rglob("*.tmp*"))


def test_candidate_types_start_with_the_source_type_when_numpy_can_write_it():
    from gguf import GGMLQuantizationType as Q

    from kedit.session.export_gguf import candidates, plan_name

    assert [plan_name(p) for p in candidates({1: Q.Q4_1, 2: Q.Q4_1})] == ["Q4_1", "Q8_0", "F16", "F32"]
    assert [plan_name(p) for p in candidates({1: Q.Q8_0})] == ["Q8_0", "F16", "F32"]
    assert [plan_name(p) for p in candidates({1: Q.Q6_K, 2: Q.Q4_1})] == ["Q8_0", "F16", "F32"]  # no numpy Q6_K writer


def test_a_damaged_gguf_model_is_one_clear_error(tmp_path, monkeypatch):
    from kedit.editing import load_model
    from kedit.errors import ModelNotFoundError

    monkeypatch.setenv("KEDIT_CACHE_DIR", str(tmp_path / "cache"))
    junk = tmp_path / "broken.gguf"
    junk.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelNotFoundError, match="cannot read .*broken.gguf as a GGUF model"):
        load_model(str(junk), device="cpu", dtype="float32")
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing half-converted is cached
