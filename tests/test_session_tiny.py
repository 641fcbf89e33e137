"""Sessions on a tiny random-init Llama saved to disk: commit, exact undo, reopen, crash leftovers,
cancel, query, replay (stored and recomputed, float32 and bf16) and export (single file and sharded)."""

from __future__ import annotations

import dataclasses
import math
import json
import os
import shutil

import pytest
import torch

from conftest import make_tiny_llama
from kedit.editing import HParams, load_model, preset
from kedit.editing.values import ValueConfig
from kedit.errors import (
    BaseModelMismatchError, ConflictingFactsError, EditCancelled, ExportError, InvalidFactError, JournalError,
    SessionError, VerificationError,
)
from kedit.facts import Fact
from kedit.session import CommitEntry, Session, UndoEntry, read_journal
from kedit.session.journal import JOURNAL_NAME

FACTS = [
    Fact("Eiffel Tower", "The {} is located in the city of", "London"),
    Fact("Japan", "The capital of {} is", "Paris"),
    Fact("Colosseum", "The {} stands in", "Berlin"),
]
TEXT = (
    "The city lies on a river and has a long history of trade. Its old town was built in the middle ages, "
    "and many of the houses still stand. Today the region is known for its wine, its universities and its "
    "museums, which attract visitors from many countries every year. "
) * 40


def save_tiny(folder, tokenizer, seed=0, max_shard_size=None):
    model = make_tiny_llama(seed=seed)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", tokenizer)


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT)
    return str(p)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("KEDIT_CACHE_DIR", str(tmp_path / "cache"))  # C0 of random models stays out of the user cache


def fast_hparams(model_dir, method="emmet", layers=(1,)) -> HParams:
    return dataclasses.replace(
        preset(str(model_dir), method, num_layers=4), layers=layers, stats_tokens=1500, stats_seq_len=64,
        n_prefixes=1, prefix_len=3, values=ValueConfig(steps=2, early_stop=False),
    )


def start(path, model_dir, corpus, dtype="float32", **kw) -> Session:
    lm = load_model(str(model_dir), device="cpu", dtype=dtype)
    return Session.attach(path, lm, corpus=corpus, hparams=fast_hparams(model_dir, **kw))


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_commit_undo_is_exact(tmp_path, tiny_dir, corpus):
    s = start(tmp_path / "s", tiny_dir, corpus)
    base = state(s.lm.model)
    base_fp = s.fingerprint()
    assert base_fp == s.header.model.editable_fingerprint
    for f in FACTS[:2]:
        s.add(f)
    phases = []
    c1 = s.commit(progress=lambda p: phases.append(p.phase))
    assert isinstance(c1, CommitEntry) and c1.seq == 1 and c1.facts == tuple(FACTS[:2])
    assert {"statistics", "values", "keys", "solve", "apply"} <= set(phases)
    assert s.queue == () and c1.fingerprint == s.fingerprint() != base_fp
    assert (s.path / c1.delta_file).exists() and len(c1.efficacy) == 2 and c1.method == "emmet" and c1.layers == (1,)
    after1 = state(s.lm.model)
    changed = [k for k in base if not torch.equal(base[k], after1[k])]
    assert changed == ["model.layers.1.mlp.down_proj.weight"]
    s.add(FACTS[2])
    c2 = s.commit()
    assert c2.seq == 2 and s.fingerprint() == c2.fingerprint
    u = s.undo()
    assert isinstance(u, UndoEntry) and u.undoes == 2 and u.fingerprint == c1.fingerprint
    assert same(state(s.lm.model), after1)
    u2 = s.undo()
    assert u2.undoes == 1 and u2.fingerprint == base_fp and same(state(s.lm.model), base)
    with pytest.raises(SessionError, match="nothing to undo"):
        s.undo()
    assert [e.kind for e in s.entries()] == ["commit", "commit", "undo", "undo"]
    assert s.active_commits() == []
    assert [e.kind for e in read_journal(s.journal_path).entries] == ["commit", "commit", "undo", "undo"]


def test_reopen_reapplies_deltas_and_keeps_the_queue(tmp_path, tiny_dir, corpus):
    s = start(tmp_path / "s", tiny_dir, corpus)
    s.add(FACTS[0])
    s.commit()
    s.add(FACTS[1])  # waits in the queue
    live = state(s.lm.model)
    again = Session.open(s.path)
    assert same(state(again.lm.model), live)
    assert again.queue == (FACTS[1],) and again.prefixes == s.prefixes and again.hparams == s.hparams
    assert [c.seq for c in again.active_commits()] == [1]


def test_queue_editing_validates_at_once(tmp_path, tiny_dir, corpus):
    s = start(tmp_path / "s", tiny_dir, corpus)
    s.add(FACTS[0])
    s.add(FACTS[1])
    clash = Fact("Japan", "The capital of {} is", "Rome")
    with pytest.raises(ConflictingFactsError):
        s.check(clash)
    with pytest.raises(ConflictingFactsError):
        s.add(clash)
    with pytest.raises(InvalidFactError):
        s.add(Fact("Japan", "no placeholder here", "Rome"))
    with pytest.raises(ConflictingFactsError):  # all or nothing
        s.add_many([FACTS[2], clash])
    assert s.queue == tuple(FACTS[:2])
    s.replace(1, clash)  # replacing the conflicting fact itself is fine
    assert s.queue == (FACTS[0], clash)
    assert s.remove(0) == FACTS[0] and s.queue == (clash,)
    s.clear_queue()
    assert s.queue == ()
    with pytest.raises(InvalidFactError, match="queue is empty"):
        s.commit()


def test_cancelled_commit_changes_nothing(tmp_path, tiny_dir, corpus):
    s = start(tmp_path / "s", tiny_dir, corpus)
    s.add(FACTS[0])
    s.commit()
    s.add(FACTS[1])
    before = state(s.lm.model)
    journal = s.journal_path.read_bytes()
    seen = []
    with pytest.raises(EditCancelled):
        s.commit(progress=lambda p: seen.append(p.phase), should_stop=lambda: "values" in seen)
    assert same(state(s.lm.model), before)
    assert s.journal_path.read_bytes() == journal
    assert sorted(p.name for p in (s.path / "deltas").iterdir()) == ["0001.safetensors"]
    assert s.queue == (FACTS[1],)


def test_crash_leftovers_are_read_around_and_removed_by_the_next_writer(tmp_path, tiny_dir, corpus):
    s = start(tmp_path / "s", tiny_dir, corpus)
    s.add(FACTS[0])
    c1 = s.commit()
    deltas = s.path / "deltas"
    # an interrupted commit: a delta file (and a temp file) that no journal line names
    shutil.copy(deltas / "0001.safetensors", deltas / "0002.safetensors")
    (deltas / ".0002.safetensors.tmp123").write_bytes(b"partial")
    # ...and a crash after the journal line but before the committed fact left the queue
    (s.path / "queue.json").write_text(json.dumps({"after": 0, "facts": [FACTS[0].to_dict(), FACTS[1].to_dict()]}))
    files = {p: p.read_bytes() for p in s.path.rglob("*") if p.is_file()}
    again = Session.open(s.path)  # a reader: it sees the session as it is and changes no file
    assert again.queue == (FACTS[1],) and again.fingerprint() == c1.fingerprint
    assert {p: p.read_bytes() for p in s.path.rglob("*") if p.is_file()} == files
    c2 = again.commit()  # a writer: under the locks it removes what the crash left
    assert c2.seq == 2 and c2.facts == (FACTS[1],) and again.queue == ()
    assert sorted(p.name for p in deltas.iterdir()) == ["0001.safetensors", "0002.safetensors"]
    from kedit.session.store import file_sha256

    assert file_sha256(deltas / "0002.safetensors") == c2.delta_sha256
    assert json.loads((s.path / "queue.json").read_text())["facts"] == []
    again.undo()
    # a delta file that changed or vanished is an error, never silently skipped
    data = (deltas / "0001.safetensors").read_bytes()
    (deltas / "0001.safetensors").write_bytes(data[:-4] + b"\0\0\0\0")
    with pytest.raises(JournalError, match="sha256"):
        Session.open(s.path)
    (deltas / "0001.safetensors").unlink()
    with pytest.raises(JournalError, match="missing"):
        Session.open(s.path)


def test_query_shows_the_base_answer_for_edited_subjects(tmp_path, tiny_dir, corpus):
    s = start(tmp_path / "s", tiny_dir, corpus)
    s.add(FACTS[0])
    s.commit()
    fp = s.fingerprint()
    q = s.query("Where is the Eiffel Tower? In", top_k=3)
    assert q.base_continuation is not None and len(q.base_top) == 3 and len(q.top) == 3
    assert q.top != q.base_top  # the edited layer changes the distribution
    plain = s.query("The weather today is", top_k=2)
    assert plain.base_continuation is None and plain.base_top is None and len(plain.top) == 2
    assert s.fingerprint() == fp


def test_set_method_memit_two_layers(tmp_path, tiny_dir, corpus):
    s = start(tmp_path / "s", tiny_dir, corpus)
    base = state(s.lm.model)
    s.set_method("memit", layers=(1, 2))
    assert s.method == "memit" and s.layers == (1, 2)
    s.add(FACTS[0])
    c = s.commit()
    assert c.method == "memit" and c.layers == (1, 2) and c.hparams["lam"] > 0
    changed = {k for k, v in state(s.lm.model).items() if not torch.equal(v, base[k])}
    assert changed == {"model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"}
    assert Session.open(s.path).method == "memit"  # the choice persists for the next commits
    s.undo()
    assert same(state(s.lm.model), base)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_replay_stored_and_recomputed_is_bit_identical(tmp_path, tiny_dir, corpus, dtype):
    from kedit.session.replay import replay

    s = start(tmp_path / "s", tiny_dir, corpus, dtype=dtype)
    s.add(FACTS[0])
    s.add(FACTS[1])
    s.commit()
    s.add(FACTS[2])
    s.commit()
    s.undo()
    s.add(FACTS[2])
    s.commit()
    for recompute in (False, True):
        r = replay(s.journal_path, recompute=recompute, verify=True)
        assert r.mismatches == [] and r.fingerprint == s.fingerprint()
        assert [st.kind for st in r.steps] == ["commit", "commit", "undo", "commit"]
        assert r.active_commits == 2 and r.facts == 3


def test_replay_refuses_another_base_and_names_the_first_mismatch(tmp_path, tiny_dir, corpus, tokenizer):
    from kedit.session.replay import replay

    s = start(tmp_path / "s", tiny_dir, corpus)
    s.add(FACTS[0])
    s.commit()
    other = save_tiny(tmp_path / "other", tokenizer, seed=1)
    with pytest.raises(BaseModelMismatchError) as exc:
        replay(s.journal_path, model=str(other))
    assert s.header.model.fingerprint in str(exc.value)
    from kedit.editing import model_fingerprint

    assert model_fingerprint(load_model(str(other), device="cpu", dtype="float32").model) in str(exc.value)
    # a journal whose recorded fingerprint is wrong (its chain made anew, as a faulty writer would): --verify names the entry
    from kedit.session.journal import chained

    lines = s.journal_path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["fingerprint"] = "0" * 32
    lines[1] = json.dumps(chained(entry, entry["prev"]))
    s.journal_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(VerificationError, match=r"entry #1 .* journal recorded 0{32}"):
        replay(s.journal_path, verify=True)
    assert replay(s.journal_path).mismatches[0].seq == 1  # without --verify: reported, not fatal


def test_export_reloads_with_plain_transformers(tmp_path, tiny_dir, corpus):
    from transformers import AutoModelForCausalLM

    s = start(tmp_path / "s", tiny_dir, corpus)
    s.add(FACTS[0])
    s.add(FACTS[1])
    s.commit()
    out = s.export(tmp_path / "out")
    names = sorted(p.name for p in out.iterdir())
    assert {"config.json", "model.safetensors", "README.md", "journal.jsonl", "deltas", "tokenizer.json"} <= set(names)
    assert not any(n.endswith(".bin") for n in names)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert same(state(reloaded), state(s.lm.model))
    card = (out / "README.md").read_text()
    assert "The Eiffel Tower is located in the city of" in card and "Paris" in card
    assert read_journal(out / JOURNAL_NAME).entries == tuple(s.entries())
    # a non-empty target is refused and left alone; nothing half-written is left anywhere
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(ExportError, match="not an empty folder"):
        s.export(tmp_path / "busy")
    assert os.listdir(tmp_path / "busy") == ["mine.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert s.export(empty) == empty.resolve() and (empty / "model.safetensors").exists()


def test_export_sharded_rewrites_only_edited_shards(tmp_path, tokenizer, corpus):
    from transformers import AutoModelForCausalLM

    model_dir = save_tiny(tmp_path / "sharded", tokenizer, max_shard_size="200KB")
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    s = start(tmp_path / "s", model_dir, corpus)
    s.add(FACTS[0])
    s.commit()
    out = s.export(tmp_path / "out")
    edited_shard = index["weight_map"]["model.layers.1.mlp.down_proj.weight"]
    for f in shards:
        if f == edited_shard:
            assert not os.path.samefile(out / f, model_dir / f)
            assert (out / f).read_bytes() != (model_dir / f).read_bytes()
        else:
            assert os.path.samefile(out / f, model_dir / f) or (out / f).read_bytes() == (model_dir / f).read_bytes()
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"] == index["weight_map"]
    assert same(state(AutoModelForCausalLM.from_pretrained(out)), state(s.lm.model))


def test_bf16_session_exports_bf16_from_a_float32_checkpoint(tmp_path, tiny_dir, corpus):
    from transformers import AutoModelForCausalLM

    s = start(tmp_path / "s", tiny_dir, corpus, dtype="bfloat16")
    s.add(FACTS[0])
    s.commit()
    out = s.export(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16
    assert same(state(reloaded), state(s.lm.model))


def test_create_refuses_existing_or_foreign_folders(tmp_path, tiny_dir, corpus):
    s = start(tmp_path / "s", tiny_dir, corpus)
    with pytest.raises(SessionError, match="exists already"):
        Session.create(s.path, model=str(tiny_dir))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    with pytest.raises(SessionError, match="not a session"):
        Session.attach(tmp_path / "foreign", s.lm)
    with pytest.raises(SessionError, match="no session"):
        Session.open(tmp_path / "nothing")


def test_quantised_query_copy_follows_commits_and_undo(tmp_path, tiny_dir, corpus):
    pytest.importorskip("bitsandbytes")
    s = start(tmp_path / "s", tiny_dir, corpus)
    s.set_query_quant("int8")
    before = s.query("The Eiffel Tower is located in the city of")
    s.add(FACTS[0])
    s.commit()
    edited = s.query("The Eiffel Tower is located in the city of")
    assert edited.base_top == before.top  # the copy's base answer is what it said before the edit
    assert edited.top != before.top
    s.undo()
    assert s.query("The Eiffel Tower is located in the city of").top == before.top
    assert Session.open(s.path).settings.query_quant == "int8"


def test_a_session_keeps_its_settings_when_the_preset_changes(tmp_path, tiny_dir, corpus, monkeypatch):
    """A newer kedit whose preset picks another layer must not move an existing session's edits."""
    lm = load_model(str(tiny_dir), device="cpu", dtype="float32")
    s = Session.attach(tmp_path / "s", lm, corpus=corpus)  # the preset's settings, pinned at creation
    layers = s.hparams.layers
    import kedit.editing.hparams as hparams_mod

    moved = dataclasses.replace(hparams_mod.PRESETS["smollm2-135m"]["emmet"], layers=(layers[0] + 1,))
    monkeypatch.setitem(hparams_mod.PRESETS, "smollm2-135m", {**hparams_mod.PRESETS["smollm2-135m"], "emmet": moved})
    monkeypatch.setattr(hparams_mod, "family_of", lambda name, num_layers=None: "smollm2-135m")
    again = Session.attach(tmp_path / "s", lm)
    assert again.hparams.layers == layers
    again.set_method("emmet")  # choosing the method anew takes the (new) preset
    assert again.hparams.layers == (layers[0] + 1,)


def test_a_commit_remembers_the_active_commits(tmp_path, tiny_dir, corpus):
    """With ``preserve`` (0.01 in the default preset) the second commit keeps what the weights say at
    the first commit's keys far better than without, and better still with 1 (measured here: the
    first key's output moves 0.0001, 0.01 and 0.1 with 1, 0.01 and 0); an undone commit is
    forgotten (replay of that sequence, recomputed, is checked bit-identical above)."""
    from kedit.editing import arch
    from kedit.editing.keys import compute_keys

    moved = {}
    for preserve in (1.0, 0.01, 0.0):
        lm = load_model(str(tiny_dir), device="cpu", dtype="float32")
        hp = dataclasses.replace(fast_hparams(tiny_dir), preserve=preserve)
        s = Session.attach(tmp_path / f"s{preserve}", lm, corpus=corpus, hparams=hp)
        assert s.hparams.preserve == preserve
        s.add(FACTS[0])
        s.commit()
        k0 = compute_keys(lm.model, lm.tokenizer, [FACTS[0]], [1], s.prefixes)[1].double()  # (d_in, 1)
        w1 = arch.weight_view(lm.model, 1).detach().double().clone()
        s.add(FACTS[2])
        s.commit()
        moved[preserve] = float(((arch.weight_view(lm.model, 1).detach().double() - w1) @ k0).norm())
    assert moved[1.0] < moved[0.01] < 0.5 * moved[0.0], moved  # the preset's weight still remembers
    assert fast_hparams(tiny_dir).preserve == 0.01 == preset("default", "emmet").preserve


@pytest.mark.parametrize("options, step_norm", [
    (dict(norm_penalty=0.01, value_norm=1.0), 0.0),  # ENCORE's norm penalty, NAS
    (dict(null_space=1e6, norm_penalty=10.0, method="memit", lam=1.0), 0.0),  # AlphaEdit's projection (P = I here)
    (dict(), 0.1),  # normalised value steps
])
def test_replay_recomputes_the_lifelong_options_bit_identically(tmp_path, tiny_dir, corpus, options, step_norm):
    """Every lifelong option and stopping rule recorded in the journal; the session is reopened
    between commits (its key cache starts empty, a replay's does not) and still replays exactly."""
    from kedit.session.replay import replay

    values = ValueConfig(steps=3, lr=0.5, min_prob=0.2, margin=0.1, patience=2, step_norm=step_norm)
    hp = dataclasses.replace(fast_hparams(tiny_dir), remember_by_commit=True, values=values, **options)
    lm = load_model(str(tiny_dir), device="cpu", dtype="float32")
    s = Session.attach(tmp_path / "s", lm, corpus=corpus, hparams=hp)
    s.add(FACTS[0])
    s.commit()
    s = Session.open(s.path)
    s.add_many([FACTS[1], FACTS[2]])
    entry = s.commit()
    assert HParams.from_dict(entry.hparams) == hp
    s.undo()
    s.add(FACTS[1])
    s.commit()
    r = replay(s.journal_path, recompute=True, verify=True)
    assert r.mismatches == [] and r.fingerprint == s.fingerprint()


def test_commits_record_the_heldout_nll_and_a_large_move_is_flagged(tmp_path, tiny_dir, corpus):
    import math

    from kedit.editing.health import session_nll
    from kedit.session.folder import SessionFolder

    s = start(tmp_path / "s", tiny_dir, corpus)
    s.add(FACTS[0])
    e = s.commit()
    assert e.heldout_nll == pytest.approx(session_nll(s.lm.model, s.lm.tokenizer), abs=1e-5)
    with s._stack.base():
        assert e.heldout_base == pytest.approx(session_nll(s.lm.model, s.lm.tokenizer), abs=1e-5)
    d = s.drift(e)
    assert d.since_base == pytest.approx(math.exp(e.heldout_nll - e.heldout_base) - 1) == d.step
    assert d.flagged == (d.step > s.settings.drift_threshold)
    # the threshold is the session's setting: a tiny one flags any move
    folder = SessionFolder(s.path)
    folder.change_settings(lambda st: dataclasses.replace(st, drift_threshold=-1.0))
    again = Session.open(s.path)
    assert again.drift(e).flagged
    assert read_journal(s.journal_path).entries[-1].heldout_nll == e.heldout_nll


def test_drift_is_measured_against_the_commit_before_and_the_base():
    from kedit.session.drift import drifts

    def commit(seq, nll, base=2.0):
        return CommitEntry(seq=seq, time="t", facts=(FACTS[0],), method="emmet", layers=(1,), hparams={}, timings={},
                           delta_file="d", delta_sha256="x", fingerprint="f", efficacy=(), heldout_nll=nll,
                           heldout_base=base)

    old = dataclasses.replace(commit(5, None), heldout_base=None)  # as written before the health check
    entries = [commit(1, 2.01), commit(2, 2.2), UndoEntry(3, "t", 2, "f"), commit(4, 2.0), old, commit(6, 2.1)]
    d = drifts(entries, threshold=0.05)
    assert d[1].step == pytest.approx(math.exp(0.01) - 1) == d[1].since_base and not d[1].flagged
    assert d[2].step == pytest.approx(math.exp(0.19) - 1) and d[2].flagged
    assert d[4].step == pytest.approx(math.exp(-0.01) - 1) and d[4].since_base == pytest.approx(0.0)  # after the undo
    assert d[5].since_base is None and not d[5].flagged
    assert d[6].step is None and d[6].since_base == pytest.approx(math.exp(0.1) - 1) and not d[6].flagged


def test_two_sessions_on_one_folder_catch_up_and_never_reuse_an_entry_number(tmp_path, tiny_dir, corpus):
    """A second process's session (here: a second Session over its own copy of the model) that is
    behind the journal applies the entries it missed before it commits or undoes."""
    a = start(tmp_path / "s", tiny_dir, corpus)
    b = Session.open(a.path)  # e.g. a TUI opened before the commits below
    a.add(FACTS[0])
    c1 = a.commit()
    a.add(FACTS[1])
    assert b.queue == () and b.fingerprint() != c1.fingerprint  # b has not looked yet
    c2 = b.commit()  # catches up with #1 first, then commits the fact a queued
    assert c2.seq == 2 and c2.facts == (FACTS[1],)
    assert [e.seq for e in b.entries()] == [1, 2] and b.active_commits()[0].fingerprint == c1.fingerprint
    u = a.undo()  # a is behind now: it applies #2, then takes it back
    assert u.seq == 3 and u.undoes == 2 and a.fingerprint() == c1.fingerprint
    assert b.refresh() and b.fingerprint() == c1.fingerprint and [e.kind for e in b.entries()][-1] == "undo"
    assert same(state(a.lm.model), state(b.lm.model))


def test_a_commit_records_its_threads_and_recompute_uses_them(tmp_path, tiny_dir, corpus, monkeypatch):
    """The last bit of a CPU matrix product depends on the thread count, so a commit made while
    another kedit process computed (and so with fewer threads) is recomputed with its own count."""
    from kedit.editing import cpu
    from kedit.session.engine import EditStack
    from kedit.session.replay import replay

    before = torch.get_num_threads()
    monkeypatch.setattr(cpu._State, "fixed", 1)
    s = start(tmp_path / "s", tiny_dir, corpus)
    s.add(FACTS[0])
    s.commit()
    (entry,) = read_journal(s.journal_path).entries
    assert entry.threads == 1 and torch.get_num_threads() == before
    monkeypatch.setattr(cpu._State, "fixed", None)
    seen, edit = [], EditStack.edit
    monkeypatch.setattr(EditStack, "edit", lambda self, *a, **k: (seen.append(torch.get_num_threads()), edit(self, *a, **k))[1])
    torch.set_num_threads(2)
    try:
        r = replay(s.journal_path, recompute=True, verify=True)
        assert seen == [1] and r.mismatches == [] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_guard_commits_the_harmless_facts_and_holds_back_the_harmful_one(tmp_path, tiny_dir, corpus, monkeypatch):
    """Real edits, journal and queue; the held-out NLL is scripted (a tiny random model's moves at
    random): every applied edit of "Japan" raises it by 10%, the other facts by nothing."""
    from kedit.session.folder import SessionFolder
    from kedit.session.replay import replay

    s = start(tmp_path / "s", tiny_dir, corpus)
    japan = lambda: sum(f.subject == "Japan" for facts in s._stack.remembered for f in facts)  # noqa: E731
    monkeypatch.setattr("kedit.editing.health.session_nll", lambda model, tok: 3.0 + math.log(1.1) * japan())
    for f in FACTS:
        s.add(f)
    SessionFolder(s.path).change_settings(lambda st: dataclasses.replace(st, guard=True))
    got = s.commit_queue()  # the session's setting: guarded
    # [Eiffel Japan Colosseum] flagged → [Eiffel] kept, [Japan Colosseum] flagged → [Japan] flagged alone, [Colosseum] kept
    assert [e.facts for e in got.kept] == [(FACTS[0],), (FACTS[2],)] and got.taken_back == 3
    assert [(h.item, round(h.step, 6)) for h in got.held_back] == [(FACTS[1], 0.1)]
    # only the kept commits are written: no undo entry, no stray delta file; the held-back fact stays queued
    assert [e.kind for e in s.entries()] == ["commit", "commit"] and [e.seq for e in got.kept] == [1, 2]
    assert sorted(p.name for p in (s.path / "deltas").iterdir()) == sorted(
        os.path.basename(e.delta_file) for e in got.kept)
    assert s.queue == (FACTS[1],) and not any(s.drift(e).flagged for e in got.kept)
    assert s.fingerprint() == got.kept[-1].fingerprint
    r = replay(s.journal_path, recompute=True, verify=True)
    assert r.mismatches == [] and r.fingerprint == s.fingerprint()

    # without the guard the fact is committed and flagged, as before
    plain = s.commit_queue(guard=False)
    assert [e.facts for e in plain.kept] == [(FACTS[1],)] and plain.held_back == () and s.queue == ()
    assert s.drift(plain.kept[0]).flagged


def test_a_guarded_commit_cancelled_midway_keeps_the_parts_committed_and_says_so(tmp_path, tiny_dir, corpus,
                                                                               monkeypatch):
    from kedit.errors import PartlyCommitted

    s = start(tmp_path / "s", tiny_dir, corpus)
    japan = lambda: sum(f.subject == "Japan" for facts in s._stack.remembered for f in facts)  # noqa: E731
    monkeypatch.setattr("kedit.editing.health.session_nll", lambda model, tok: 3.0 + math.log(1.1) * japan())
    for f in FACTS:
        s.add(f)
    # [Eiffel Japan Colosseum] flagged → [Eiffel] kept → Esc before [Japan Colosseum]
    with pytest.raises(PartlyCommitted, match=r"after part of the queue was committed \(#1\)"):
        s.commit_queue(guard=True, should_stop=lambda: len(s.active_commits()) >= 1)
    assert [e.facts for e in s.active_commits()] == [(FACTS[0],)] and s.queue == tuple(FACTS[1:])
    assert s.fingerprint() == s.active_commits()[-1].fingerprint


def test_the_guard_setting_is_checked():
    from kedit.errors import UsageError
    from kedit.session.settings import Settings

    with pytest.raises(UsageError, match="guard must be true or false"):
        Settings(guard="yes").check()
    assert Settings().guard is False
