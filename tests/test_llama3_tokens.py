"""The real Llama-3 tokenizer (built from quicktok-v1's BPE ranks, see ``llama3_tokenizer``) through
kedit's token, key, value and scoring code, and a whole commit on a tiny random-init Llama with
Llama-3's 128,256-entry vocabulary.

Llama-3 adds ``<|begin_of_text|>`` (SmolLM2 adds nothing) and splits text with a tiktoken-style
pattern; every id checked here is compared with quicktok's own encoder, whose ids are
byte-identical to Meta's reference.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from llama3_tokenizer import VOCAB_SIZE, build_llama3_tokenizer, make_tiny_llama3, quicktok_encoder
from test_session_tiny import TEXT

from kedit.editing import load_model, preset, score_targets, tokens
from kedit.editing.keys import compute_keys
from kedit.facts import Fact

BOS, PARIS = 128000, 12366  # " Paris" is rank 12366 in Llama-3's BPE


@pytest.fixture(scope="module")
def llama3():
    return build_llama3_tokenizer()


@pytest.fixture(scope="module")
def qt():
    return quicktok_encoder()


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory, llama3):
    """A tiny Llama-3-vocabulary model and the real tokenizer, saved as a model folder."""
    folder = tmp_path_factory.mktemp("llama3") / "model"
    make_tiny_llama3(seed=1).save_pretrained(folder)
    llama3.save_pretrained(folder)
    return folder


def test_ids_match_the_reference_encoder_with_one_bos(llama3, qt):
    for text in ["The Eiffel Tower is located in the city of", " Paris", "Ünïcödé naïve café 12345 — done",
                 "I'm sure it's 1984's   spacing\n\nnew lines", "Rio de Janeiro"]:
        assert tokens.ids(llama3, text) == [BOS, *qt.encode(text)], text
    assert tokens.target_ids(llama3, "Paris") == [PARIS]  # " " + target, no BOS
    assert tokens.target_ids(llama3, "Rio de Janeiro") == qt.encode(" Rio de Janeiro")
    assert len(tokens.target_ids(llama3, "Rio de Janeiro")) > 1


def test_subject_index_counts_the_bos(llama3, qt):
    for template, subject in [("The {} is located in the city of", "Eiffel Tower"), ("{} is located in", "Eiffel Tower"),
                              ("The capital of {} is", "Japan"), ("Where is the {}? In", "Colosseum")]:
        ids = tokens.ids(llama3, template.replace("{}", subject))
        i = tokens.subject_last_index(llama3, template, subject)
        before = template[: template.index("{}")] + subject
        assert i == len(qt.encode(before))  # the BOS shifts every position by one
        assert llama3.decode(ids[: i + 1], skip_special_tokens=True) == before


def test_rewrite_row_reads_the_target_after_the_prompt(llama3, qt):
    row = tokens.rewrite_row(llama3, "The {} is located in the city of", "Eiffel Tower", "Rio de Janeiro")
    target = qt.encode(" Rio de Janeiro")
    prompt = [BOS, *qt.encode("The Eiffel Tower is located in the city of")]
    assert row.input_ids == tuple(prompt + target[:-1]) and row.target_ids == tuple(target)
    # position p predicts token p + 1: the first target position is the prompt's last token
    assert row.target_positions == tuple(range(len(prompt) - 1, len(prompt) - 1 + len(target)))
    assert [row.input_ids[p + 1] for p in row.target_positions[:-1]] == target[:-1]


def test_chat_template_special_tokens_and_a_single_bos(llama3, qt):
    messages = [{"role": "user", "content": "Where is the {}?"}]
    template = llama3.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + "It is in"
    assert template.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    text = template.replace("{}", "Eiffel Tower")
    ids = tokens.ids(llama3, text)
    head = [128006, *qt.encode("user"), 128007]  # <|start_header_id|>user<|end_header_id|>: one id each
    assert ids[:1 + len(head)] == [BOS, *head] and ids.count(BOS) == 1  # the template's own BOS, not a second one
    assert 128009 in ids and ids[-len(qt.encode("It is in")):] == qt.encode("It is in")
    i = tokens.subject_last_index(llama3, template, "Eiffel Tower")
    assert llama3.decode([ids[i]]) == " Tower"
    row = tokens.rewrite_row(llama3, template, "Eiffel Tower", "Paris")
    assert row.input_ids == tuple(ids) and row.target_ids == (PARIS,)


def test_keys_and_scores_through_the_llama3_vocabulary(llama3, llama3_dir):
    model = load_model(str(llama3_dir), device="cpu", dtype="float32").model
    assert model.get_output_embeddings().weight.shape[0] == VOCAB_SIZE
    fact = Fact("Eiffel Tower", "The {} is located in the city of", "Paris")
    keys = compute_keys(model, llama3, [fact], [1], prefixes=("Therefore it rained.",))[1]  # (d_in, 1)
    # the key is the down_proj input at " Tower", averaged ½ bare + ½ prefixed
    got = {}

    def grab(module, inputs, output):
        got["x"] = inputs[0]  # (1, T, d_in)

    handle = model.model.layers[1].mlp.down_proj.register_forward_hook(grab)
    row = tokens.plain_row(llama3, fact.prompt, fact.subject)
    with torch.no_grad():
        model(torch.tensor([row.input_ids]))
    handle.remove()
    bare = got["x"][0, row.subject_index]  # (d_in,)
    assert keys.shape == (128, 1) and not torch.allclose(keys[:, 0], bare)  # the prefix counts
    s = score_targets(model, llama3, [fact.prompt.format(fact.subject)], [fact.target])[0]
    with torch.no_grad():
        logits = model(torch.tensor([row.input_ids])).logits[0, -1].float()  # (V,)
    assert s.first_prob == pytest.approx(float(logits.softmax(-1)[PARIS]), rel=1e-4)
    assert s.predicted == (int(logits.argmax()),)


def test_a_whole_commit_with_the_llama3_tokenizer(tmp_path, llama3_dir, qt):
    from kedit.session import Session

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    lm = load_model(str(llama3_dir), device="cpu", dtype="float32")
    assert lm.tokenizer("x").input_ids[0] == BOS and lm.tokenizer.pad_token_id is not None
    hp = preset(str(llama3_dir), "emmet", num_layers=4)
    hp = dataclasses.replace(hp, layers=(1,), stats_tokens=1500, stats_seq_len=64, n_prefixes=1, prefix_len=3,
                             values=dataclasses.replace(hp.values, steps=20))
    s = Session.attach(tmp_path / "s", lm, corpus=str(corpus), hparams=hp)
    # On a random-init model δ reaches later positions only through near-random attention, so
    # these prompts end with the subject: δ sits where the target is read.
    facts = [Fact("Eiffel Tower", "Visit the {}", "Paris"), Fact("Japan", "The capital of {}", "Rome")]
    prompts, targets = [f.prompt.format(f.subject) for f in facts], [f.target for f in facts]
    assert not any(b.argmax for b in score_targets(lm.model, lm.tokenizer, prompts, targets))
    s.add_many(facts)
    c = s.commit()
    assert [e.argmax for e in c.efficacy] == [True, True]
    after = score_targets(lm.model, lm.tokenizer, prompts, targets)
    assert [a.predicted for a in after] == [(PARIS,), tuple(qt.encode(" Rome"))]
    s.undo()
    assert not any(b.argmax for b in score_targets(lm.model, lm.tokenizer, prompts, targets))
