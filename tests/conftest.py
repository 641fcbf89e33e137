"""Shared fixtures.

* All user data (sessions) goes to a temp dir per test (``KEDIT_SESSIONS_DIR``).
* The model cache (converted default model, C0 statistics) is shared: ``KEDIT_CACHE_DIR`` if
  set, else the user's cache dir, so the default model is converted once per machine.
* ``default_lm``: the real embedded SmolLM2-135M (session-scoped; tests must not leave it edited).
* ``tiny_llama``: a tiny random-init Llama with the SmolLM2 tokenizer, for fast unit tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The project's own fact sets (examples/make/ writes them): 48 counterfactual records in both
# CounterFact layouts and 8 zsRE-style records. The suite needs nothing outside the repository.
FACTS = REPO / "examples" / "facts"
COUNTERFACT = FACTS / "counterfact-kedit-48-flat.json"  # flattened layout (one paraphrase, one neighbour)
COUNTERFACT_FULL = FACTS / "counterfact-kedit-48.json"  # original layout (two paraphrases, three neighbours)
ZSRE = FACTS / "zsre-kedit-8.json"


@pytest.fixture(autouse=True)
def kedit_home(tmp_path, monkeypatch):
    """Point every user-data path of kedit at a temp dir."""
    sessions = tmp_path / "sessions"
    monkeypatch.setenv("KEDIT_SESSIONS_DIR", str(sessions))
    return tmp_path


@pytest.fixture(scope="session")
def default_lm():
    """The embedded default model, loaded once (float32 on CPU for exact, stable numbers)."""
    from kedit.editing import load_model

    return load_model("default", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tokenizer():
    """The SmolLM2 tokenizer alone (no weights loaded)."""
    from transformers import AutoTokenizer

    from kedit.editing.models import default_model_dir

    tok = AutoTokenizer.from_pretrained(default_model_dir())
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (benchmarks are scripts, not a package). It is
    registered in ``sys.modules`` first, as dataclasses defined in it need."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_tiny_llama(seed: int = 0, layers: int = 4, hidden: int = 64, inter: int = 128, vocab: int = 49152, dtype=None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    if dtype is not None:
        model.to(dtype)
    return model


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2", "gptj"]


def make_tiny(family: str, seed: int = 0):
    """A random-init 3-block model of one supported family (d_model 32, MLP width 64 or 128)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    small = dict(vocab_size=49152)
    if family == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=128, **small)).eval()
    if family == "gptj":
        return tf.GPTJForCausalLM(tf.GPTJConfig(n_embd=32, n_layer=3, n_head=4, rotary_dim=4, n_positions=128, **small)).eval()
    cfgs = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM),  # alternating sliding-window blocks, soft-capping
    }
    cfg_cls, model_cls = cfgs[family]
    cfg = cfg_cls(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=128, **small)
    return model_cls(cfg).eval()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


def pytest_configure(config):
    # Subprocess tests run the CLI from this interpreter's environment.
    os.environ.setdefault("KEDIT_PYTHON", sys.executable)
