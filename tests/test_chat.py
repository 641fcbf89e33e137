"""Chat turns: rendering prompts through the chat template, the chat rows of the value
optimisation, chat queries on a session, and the generation figures of ``kedit eval``
(tiny random models and the SmolLM2 tokenizer; the default model's chat answers are in
``test_cli_export.py``)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_llama
from kedit.editing import HParams, LoadedModel, greedy, tokens
from kedit.editing.chat import chat_restated, chat_rewrite_template, chat_text
from kedit.editing.values import rewrite_templates
from kedit.errors import UsageError
from kedit.eval.generation import contains, greedy_answers
from kedit.eval.metrics import Pair, RecordScores, summarize
from kedit.facts import Fact

FACT = Fact("Eiffel Tower", "The {} is located in the city of", "London")


def test_a_chat_turn_ends_where_the_assistant_answers(tokenizer):
    text = chat_text(tokenizer, "Where is it?", system="Be brief.")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere is it?<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    assert "You are a helpful AI assistant" in chat_text(tokenizer, "Where is it?")  # the template's own system prompt
    assert chat_restated(tokenizer, "The sky is") == chat_text(tokenizer, "The sky is") + "The sky is"


def test_a_tokenizer_without_a_chat_template_is_refused_clearly(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(UsageError, match="no chat template"):
        chat_text(plain, "Hello")


def test_chat_rows_put_the_target_after_the_restated_prompt(tokenizer):
    bare = rewrite_templates(tokenizer, FACT, ("Some prefix.",), chat=False)
    with_chat = rewrite_templates(tokenizer, FACT, ("Some prefix.",), chat=True)
    assert with_chat[:-1] == bare == [FACT.prompt, "Some prefix. " + FACT.prompt]
    template = with_chat[-1]
    assert template == chat_rewrite_template(tokenizer, FACT.prompt, FACT.subject)
    row = tokens.rewrite_row(tokenizer, template, FACT.subject, FACT.target)
    upto = tokenizer.decode(row.input_ids[: row.subject_index + 1])
    assert upto.endswith("<|im_start|>assistant\nThe Eiffel Tower")  # δ at the subject the answer restates
    assert upto.count("Eiffel Tower") == 2  # the user's question holds the subject too
    assert tokenizer.decode(row.target_ids) == " London"
    assert tokenizer.decode(row.input_ids[: row.target_positions[0] + 1]).endswith("located in the city of")


def test_records_without_the_chat_option_replay_as_before():
    from kedit.editing import preset

    d = preset("some/other-model", "emmet").to_dict()
    del d["values"]["chat"]
    assert HParams.from_dict(d).values.chat is False


def test_batched_greedy_answers_equal_one_at_a_time(tokenizer):
    model = make_tiny_llama(seed=3)
    texts = ["The capital of Japan is", "Music", chat_text(tokenizer, "The Eiffel Tower is located in the city of")]
    one = [tokenizer.decode(model.generate(torch.tensor([tokens.ids(tokenizer, t)]), max_new_tokens=5, do_sample=False,
                                           pad_token_id=tokens.pad_id(tokenizer))[0, len(tokens.ids(tokenizer, t)):],
                            skip_special_tokens=True) for t in texts]
    assert greedy_answers(model, tokenizer, texts, 5, batch_size=3) == one


def test_generation_figures():
    def pair(new, true):
        return Pair(0.1, 0.2, gen_new=new, gen_true=true)

    recs = [RecordScores("a", (pair(True, False),), (pair(True, False), pair(False, True)), (pair(False, True), pair(True, True))),
            RecordScores("b", (pair(False, True),), (pair(False, False),), (pair(False, True),))]
    m = summarize(recs)
    assert (m.GE, m.GP, m.GN) == (50.0, 25.0, 75.0)
    plain = summarize([RecordScores("c", (Pair(0.1, 0.2),), (), ())])
    assert (plain.GE, plain.GP, plain.GN) == (None, None, None)
    assert contains("It is in london, England.", "London") and not contains("Paris", "London")


def test_session_query_as_chat_shows_the_base_answer_after_an_edit(tmp_path, tokenizer, monkeypatch):
    import dataclasses

    from kedit.editing import preset
    from kedit.editing.values import ValueConfig
    from kedit.session import Session

    lm = LoadedModel(make_tiny_llama(seed=1), tokenizer, "tiny-llama", "tiny-llama", torch.device("cpu"), torch.float32)
    hp = dataclasses.replace(preset("tiny", "emmet", num_layers=4), layers=(1,), stats_tokens=1500, stats_seq_len=64,
                             n_prefixes=1, prefix_len=3, values=ValueConfig(steps=2, early_stop=False, chat=True))
    monkeypatch.setenv("KEDIT_CACHE_DIR", str(tmp_path / "cache"))  # C0 of a random model stays out of the user cache
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The city lies on a river and has a long history of trade. " * 200)
    s = Session.attach(tmp_path / "s", lm, corpus=str(corpus), hparams=hp)
    plain = s.query(FACT.text)
    asked = s.query(FACT.text, chat=True, system="Be brief.")
    assert asked.chat and asked.system == "Be brief." and asked.base_continuation is None
    assert asked.continuation == greedy(lm.model, tokenizer, chat_text(tokenizer, FACT.text, "Be brief."), 24)
    assert not plain.chat
    s.add(FACT)
    entry = s.commit()
    assert entry.hparams["values"]["chat"] is True  # recorded in the journal
    after = s.query(FACT.text, chat=True, system="Be brief.")
    assert after.base_continuation == asked.continuation and after.base_top == asked.top


def test_instruct_models_fit_their_facts_as_chat_turns_by_default():
    from kedit.editing import preset

    assert preset("default").values.chat is True
    assert preset("meta-llama/Llama-3.1-8B-Instruct").values.chat is True
    assert preset("path/to/SmolLM2-135M-Instruct.Q4_1.gguf", "memit").values.chat is True
    assert preset("google/gemma-2-2b-it").values.chat is True
    assert preset("gpt2-xl").values.chat is False and preset("HuggingFaceTB/SmolLM2-135M").values.chat is False
    assert preset("meta-llama/Meta-Llama-3-8B").values.chat is False
