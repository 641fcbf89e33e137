"""The session: one folder, one live model, a queue of facts and the journal of commits.

The session owns the model's weights. Every use of the model goes through one thread lock, so a
UI can call ``commit``/``query`` from a worker thread. Other processes may change the same
folder at any time (``kedit add`` from another terminal, a ``kedit commit`` while a TUI is
open): every change is made under the folder's locks (``lock.py``, through ``SessionFolder``),
and ``commit``/``undo`` first catch up with the journal as it is on disk — applying the stored
deltas of entries another process wrote and checking the fingerprint — so a commit is never
computed on stale weights and no entry number is written twice. Changes reach the disk in an
order that keeps the folder consistent after a crash at any point (see ``commit``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kedit import __version__
from kedit.errors import (
    EditCancelled, InvalidFactError, KeditError, PartlyCommitted, SessionError, UsageError, VerificationError,
)
from kedit.facts import Fact
from kedit.session import base as base_model
from kedit.session import store
from kedit.session.drift import is_flagged, step_after
from kedit.session.folder import SessionFolder, resolve
from kedit.session.guard import Flagged, Guarded, split_until_clean
from kedit.session.journal import (
    CommitEntry, FactScore, Journal, JournalEntry, JournalHeader, UndoEntry, append_entry, now, write_header,
)
from kedit.session.queue_view import SessionQueue
from kedit.session.settings import Settings

MAX_NEW_TOKENS = 8


@dataclass(frozen=True)
class QueryResult:
    prompt: str
    continuation: str  # greedy continuation (with chat: the assistant's answer) on the current weights
    top: list  # list[TokenProb]: next-token top-k on the current weights
    base_continuation: str | None = None  # the same on the base weights, when an active edit touches the prompt
    base_top: list | None = None
    chat: bool = False  # asked as a chat turn through the tokenizer's chat template
    system: str | None = None  # the system prompt of that chat turn


def answer(model, tok, prompt: str, top_k: int = 5, chat: bool = False, system: str | None = None) -> QueryResult:
    """What ``model`` says to ``prompt``: a greedy continuation and the top next tokens; with
    ``chat`` the prompt is a user turn (after ``system``) and the answer is the assistant's."""
    from kedit.editing import greedy, top_k_next
    from kedit.editing.chat import CHAT_NEW_TOKENS, chat_text

    text = chat_text(tok, prompt, system) if chat else prompt
    cont = greedy(model, tok, text, CHAT_NEW_TOKENS if chat else MAX_NEW_TOKENS)
    return QueryResult(prompt, cont, top_k_next(model, tok, text, top_k), chat=chat, system=system)


class Session:
    """Use ``Session.open``, ``Session.create``, ``Session.open_or_create`` or ``Session.attach``."""

    def __init__(self, folder: SessionFolder, lm, settings: Settings, journal: Journal) -> None:
        from kedit.session.engine import EditStack

        self._folder = folder
        self.lm = lm
        self._settings = settings
        self._journal = journal
        self._lock = threading.RLock()
        self._queue = SessionQueue(folder)
        self._stack = EditStack.for_journal(lm, journal.header)
        self.base_fingerprint: str = journal.header.model.fingerprint
        self.hparams = _hparams_for(folder, settings, journal.header, lm)
        self._qcopy = None  # quantised query copy (settings.query_quant), built on first query
        self._base_nll: float | None = None  # held-out NLL of the base model (health check), measured once

    @property
    def wait(self) -> float | None:
        """Seconds a change waits for another process's lock (None: the defaults of ``lock.py``)."""
        return self._queue.wait

    @wait.setter
    def wait(self, seconds: float | None) -> None:
        self._queue.wait = seconds

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def create(cls, path_or_name, model: str = "default", method: str = "emmet", layers=None, device=None,
               dtype=None, corpus: str = "wiki-sample", seed: int = 0, query_quant: str = "none",
               hparams=None, load: str = "none") -> "Session":
        """A new session folder (refused if one exists); loads the model and writes the journal header.

        ``load`` int8/nf4 loads the model quantised except the MLP output projections of the layers
        it edits, which stay in full precision (and are then the only layers it can edit).
        """
        folder = SessionFolder(resolve(path_or_name))
        settings = _settings(model, method, layers, device, dtype, corpus, seed, query_quant, hparams, load)
        if folder.exists():
            raise SessionError(f"a session exists already at {folder.path}", hint="open it instead, or pick another name")
        folder.refuse_foreign()
        lm = _load_session_model(settings, settings.model, settings.device, settings.dtype)
        return cls._start(folder, lm, settings)

    @classmethod
    def attach(cls, path_or_name, lm, method: str = "emmet", layers=None, corpus: str = "wiki-sample", seed: int = 0,
               query_quant: str = "none", hparams=None) -> "Session":
        """A session on an already-loaded model: opens the folder if it exists (checking the base), else creates it."""
        folder = SessionFolder(resolve(path_or_name))
        if folder.has_journal():
            return cls._open(folder, lm)
        from kedit.editing.quant import quant_mode_of

        settings = _settings(lm.name, method, layers, None, None, corpus, seed, query_quant, hparams, quant_mode_of(lm.model))
        return cls._start(folder, lm, settings)

    @classmethod
    def open(cls, path_or_name, device: str | None = None, dtype: str | None = None) -> "Session":
        """Open an existing session: load its base model (checked), re-apply the stored deltas."""
        from kedit import choices

        device, dtype = choices.device_name(device), choices.dtype_name(dtype)
        folder = SessionFolder(resolve(path_or_name))
        if not folder.exists():
            raise SessionError(f"no session at {folder.path}", hint="create one with 'kedit add' (or check the name)")
        settings = folder.read_settings()
        if not folder.has_journal():  # created by 'kedit add' without a model: load it now
            lm = _load_session_model(settings, settings.model, device or settings.device, dtype or settings.dtype)
            return cls._start(folder, lm, settings)
        journal = folder.read_journal()
        # with --load int8/nf4: the same layers in full precision as when it started, the same quantised bytes
        keep = {l for c in journal.commits() for l in c.layers}
        lm = base_model.load_for(journal.header, folder.journal_file, device=device, dtype=dtype, load=settings.load,
                                 keep_layers=keep)
        return cls._open(folder, lm, journal)

    @classmethod
    def open_or_create(cls, path_or_name, model: str = "default", method: str | None = None, layers=None, device=None,
                       dtype=None, corpus: str = "wiki-sample", seed: int = 0, query_quant: str | None = None,
                       load: str | None = None) -> "Session":
        """Open the session if it exists, else create it.

        On an existing session ``model``, ``corpus`` and ``seed`` are those it was created with;
        ``method``/``layers`` and ``query_quant``, when given, change its settings for what follows.
        """
        from kedit import choices

        folder = SessionFolder(resolve(path_or_name))
        if folder.exists():
            if load is not None:
                _check_same_load(folder, folder.read_settings(), load)
            s = cls.open(folder.path, device=device, dtype=dtype)
            if method is not None or layers is not None:
                s.set_method(method, layers)
            if query_quant is not None and choices.quant_mode(query_quant) != s.settings.query_quant:
                s.set_query_quant(query_quant)
            return s
        return cls.create(folder.path, model=model, method=method or "emmet", layers=layers, device=device, dtype=dtype,
                          corpus=corpus, seed=seed, query_quant=query_quant or "none", load=load or "none")

    @classmethod
    def _start(cls, folder: SessionFolder, lm, settings: Settings) -> "Session":
        """Write the journal header for ``lm`` (prefixes sampled once with the seed) and open.

        Another process may start the same session at the same time: under the folder lock the
        first writes the header, the other opens what it wrote."""
        from kedit.editing import arch, sample_prefixes
        from kedit.editing.corpus import load_corpus
        from kedit.editing.models import dtype_name
        from kedit.editing.quant import quant_mode_of
        from kedit.session.engine import deterministic, plain

        deterministic()
        ref = base_model.describe(lm)
        hp = _hparams_for(folder, settings, None, lm)
        corpus = load_corpus(settings.corpus)
        prefixes = sample_prefixes(lm.model, lm.tokenizer, hp.n_prefixes, hp.prefix_len, seed=settings.seed)
        header = JournalHeader(
            kedit_version=__version__, created=now(), model=ref, dtype=dtype_name(lm.dtype),
            device=base_model.device_kind(lm.device), method=hp.method, layers=tuple(hp.layers), hparams=plain(hp),
            seed=settings.seed, prefixes=tuple(prefixes), corpus=settings.corpus, corpus_fingerprint=corpus.fingerprint,
            load=quant_mode_of(lm.model),
        )
        n = arch.num_layers(lm.model)

        def pinned(s: Settings) -> Settings:
            # Pin the hyper-parameters the session starts with: a later kedit whose preset differs
            # (another default layer, say) must not change what this session's next commit does.
            return dataclasses.replace(s, dtype=header.dtype, device=header.device,
                                       hparams=plain(_hparams_for(folder, s, None, lm)))

        folder.create(settings)  # nothing happens when it exists (created by 'kedit add', or just now by another process)
        with folder.folder_lock("starting the journal"):
            if not folder.has_journal():
                folder.change_settings(pinned, num_layers=n)
                write_header(folder.journal_file, header)
        return cls._open(folder, lm)

    @classmethod
    def _open(cls, folder: SessionFolder, lm, journal: Journal | None = None) -> "Session":
        """The session over ``lm`` as the folder is now (reading only: nothing is deleted or rewritten)."""
        journal = journal or folder.read_journal()
        base_model.check_base(lm, journal.header, folder.journal_file)
        s = cls(folder, lm, folder.read_settings(), journal)
        s._queue.refresh(journal)
        for c in journal.active_commits():
            s._stack.push(store.read_deltas(folder.path, c.delta_file, c.delta_sha256, c.seq), c.facts)
        s._check_fingerprint(journal)
        return s

    def _check_fingerprint(self, journal: Journal) -> None:
        fp = self._stack.fingerprint()
        if fp != journal.fingerprint:
            self._stack.reset()
            self._journal = dataclasses.replace(journal, entries=())
            raise VerificationError(
                f"{self._folder.journal_file}: the stored deltas give fingerprint {fp}, the journal recorded {journal.fingerprint}",
                hint=f"open it on the device and dtype it was recorded with ({journal.header.device}, {journal.header.dtype}),"
                " or check it with 'kedit replay --verify'",
            )

    # -- catching up with other processes -------------------------------------------------------

    def refresh(self) -> bool:
        """Catch up with what other processes wrote: journal entries (their stored deltas are
        applied), settings and queue. True when anything changed."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> bool:
        journal = self._folder.read_journal()
        changed = self._catch_up(journal)
        settings = self._folder.read_settings()
        if settings != self._settings:
            if settings.query_quant != self._settings.query_quant:
                self._qcopy = None
            self._use_settings(settings)
            changed = True
        return self._queue.refresh(journal) or changed

    def _catch_up(self, journal: Journal) -> bool:
        """Bring the weights to ``journal`` (read from disk): apply the new entries' stored deltas,
        or rebuild from the base when the history itself changed; the fingerprint must match."""
        mine = self._journal.entries
        if journal.header != self._journal.header:
            raise SessionError(f"{self._folder.journal_file} was replaced by another journal while this session was open",
                               hint="open the session again")
        if journal.entries == mine:
            return False
        touched = set(self._stack.weights.touched_layers)
        if journal.entries[: len(mine)] == mine:
            for e in journal.entries[len(mine):]:
                if isinstance(e, CommitEntry):
                    self._stack.push(store.read_deltas(self.path, e.delta_file, e.delta_sha256, e.seq), e.facts)
                    touched |= set(e.layers)
                else:
                    self._stack.pop()
        else:
            self._stack.reset()
            for c in journal.active_commits():
                self._stack.push(store.read_deltas(self.path, c.delta_file, c.delta_sha256, c.seq), c.facts)
                touched |= set(c.layers)
        self._check_fingerprint(journal)
        self._journal = journal
        self._sync_query_copy(touched)
        return True

    # -- what the session is ------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._folder.path

    @property
    def name(self) -> str:
        return self._folder.name

    @property
    def header(self) -> JournalHeader:
        return self._journal.header

    @property
    def journal_path(self) -> Path:
        return self._folder.journal_file

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self._journal.header.prefixes

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def method(self) -> str:
        return self.hparams.method

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.hparams.layers)

    @property
    def queue(self) -> tuple[Fact, ...]:
        return self._queue.facts

    def entries(self) -> list[JournalEntry]:
        return list(self._journal.entries)

    def active_commits(self) -> list[CommitEntry]:
        return self._journal.active_commits()

    def fingerprint(self) -> str:
        """Digest of the editable projections now (equals the last journal entry's)."""
        with self._lock:
            return self._stack.fingerprint()

    # -- the queue (changed under the folder lock; facts other processes add are kept) ----------

    @property
    def queue_handle(self) -> SessionQueue:
        return self._queue

    def check(self, fact: Fact) -> None:
        """Raise ``InvalidFactError``/``ConflictingFactsError`` if ``fact`` cannot join the queue."""
        self._queue.check(fact)

    def add(self, fact: Fact) -> None:
        self._queue.add(fact)

    def add_many(self, facts: list[Fact]) -> None:
        """Add every fact or none (each is validated against the queue and the others first)."""
        self._queue.add_many(facts)

    def remove(self, index: int) -> Fact:
        return self._queue.remove(index)

    def replace(self, index: int, fact: Fact) -> None:
        self._queue.replace(index, fact)

    def clear_queue(self) -> None:
        self._queue.clear_queue()

    # -- settings for the next commits ----------------------------------------------------------

    def set_method(self, method: str | None = None, layers=None, preset_layers: bool = False) -> None:
        """Method and/or layers for the next commits. Layers chosen earlier are kept when only the
        method changes (``preset_layers``: the method's own instead); without any choice the
        method's preset decides."""
        from kedit.editing import arch
        from kedit.session.engine import plain

        def change(s: Settings) -> Settings:
            s = s.with_method(method, tuple(layers) if layers is not None else None, preset_layers)
            s = s.check(arch.num_layers(self.lm.model))
            hp = _hparams_for(self._folder, s, self._journal.header, self.lm)
            _check_full_precision(self.lm, hp.layers, s.load)
            return dataclasses.replace(s, hparams=plain(hp))

        with self._lock:
            self._use_settings(self._folder.change_settings(change, self.wait))

    def set_query_quant(self, mode: str) -> None:
        """Answer queries from a quantised copy (``int8``/``nf4``) or from the live model (``none``)."""
        with self._lock:
            self._use_settings(self._folder.change_settings(lambda s: dataclasses.replace(s, query_quant=mode), self.wait))
            self._qcopy = None

    def set_guard(self, on: bool) -> None:
        """Guard the next commits (``commit_queue``) or not."""
        with self._lock:
            self._use_settings(self._folder.change_settings(lambda s: dataclasses.replace(s, guard=on), self.wait))

    def _use_settings(self, settings: Settings) -> None:
        self.hparams = _hparams_for(self._folder, settings, self._journal.header, self.lm)
        self._settings = settings

    # -- commits --------------------------------------------------------------------------------

    def commit(self, progress: Callable | None = None, should_stop: Callable[[], bool] | None = None) -> CommitEntry:
        """Edit the queued facts as one batch, write its delta file, then its journal line.

        The journal lock is held throughout (a second committer is refused or waits); first the
        session catches up with the journal on disk and re-reads the settings and the queue.
        Order on disk, under the folder lock: the delta file (temp + fsync + rename), the journal
        line (one write + fsync), then the queue without exactly the committed facts (facts
        queued meanwhile stay). A crash before the journal line leaves an orphan delta file
        (removed by the next writer); after it, the commit is complete (the queue file's
        ``after`` tells readers which facts it consumed). ``should_stop`` cancels with
        ``EditCancelled`` before any weight or file changes.
        """
        with self._lock, self._folder.journal_lock("committing", self.wait):
            self._refresh()
            return self._commit(list(self.queue), progress, should_stop)

    def commit_queue(self, progress: Callable | None = None, should_stop: Callable[[], bool] | None = None,
                     guard: bool | None = None) -> Guarded:
        """Commit the queue, guarded (``guard``; None: the session's setting) or as one batch.

        The guard (``session.guard``) takes back, before it is written, a commit that the health
        check would flag (its held-out perplexity step above ``drift_threshold``) and commits its
        facts in halves, each guarded the same way; a fact flagged on its own stays in the queue
        (``Guarded.held_back``). Each kept part is an ordinary commit in the journal."""
        with self._lock, self._folder.journal_lock("committing", self.wait):
            self._refresh()
            facts = list(self.queue)
            if not facts:
                raise _nothing_to_commit()
            if not (self._settings.guard if guard is None else guard):
                return Guarded((self._commit(facts, progress, should_stop),), (), 0)
            threshold = self._settings.drift_threshold
            kept: list[CommitEntry] = []

            def attempt(group: list[Fact]):
                got = self._commit(group, progress, should_stop, threshold)
                if isinstance(got, CommitEntry):
                    kept.append(got)
                return got

            try:
                return split_until_clean(facts, attempt)
            except EditCancelled:
                if not kept:
                    raise
                done = ", ".join(f"#{e.seq}" for e in kept)
                raise PartlyCommitted(f"commit cancelled after part of the queue was committed ({done}); "
                                      "the rest stays queued") from None

    def _commit(self, facts: list[Fact], progress, should_stop, guard: float | None = None) -> CommitEntry | Flagged:
        """Commit ``facts`` (queued facts; the caller holds the journal lock and has refreshed). With
        ``guard`` (a threshold), a commit whose held-out perplexity step exceeds it is taken back
        before anything is written and returned as ``Flagged``."""
        from kedit.editing import Progress, cpu, score_targets
        from kedit.editing.health import session_nll
        from kedit.session.engine import plain

        # one thread count for the whole commit, recorded: ``replay --recompute`` needs it (cpu.py)
        with cpu.computing(dynamic=False) as threads:
            self._remove_leftovers()
            queued = set(self.queue)
            facts = [f for f in facts if f in queued]  # a fact removed from the queue meanwhile is not committed
            if not facts:
                raise _nothing_to_commit()
            hp = self.hparams
            model, tok = self.lm.model, self.lm.tokenizer
            t0 = time.perf_counter()
            before = score_targets(model, tok, [f.text for f in facts], [f.target for f in facts])
            base_nll = self._heldout_base()
            result = self._stack.edit(facts, hp, progress, should_stop)
            if should_stop is not None and should_stop():
                raise EditCancelled("commit cancelled; no weight was changed")
            if progress:
                progress(Progress("apply", 0, 2, detail="applying"))
            t = time.perf_counter()
            self._stack.push(result.deltas, result.facts)
            written: Path | None = None
            committed = False
            try:
                after = score_targets(model, tok, [f.text for f in result.facts], [f.target for f in result.facts])
                heldout = session_nll(model, tok)
                step = step_after(self.active_commits(), round(heldout, 6), round(base_nll, 6))
                if guard is not None and is_flagged(step, guard):
                    self._stack.pop()  # nothing was written
                    return Flagged(step)
                prob_before = {f: b.prob for f, b in zip(facts, before)}
                fp = self._stack.fingerprint()
                seq = self._journal.next_seq
                if progress:
                    progress(Progress("apply", 1, 2, detail="writing"))
                with self._folder.folder_lock(f"writing commit #{seq}", self.wait):
                    rel, sha = store.write_deltas(self.path, seq, result.deltas)
                    written = self.path / rel
                    timings = dict(result.timings, apply=time.perf_counter() - t, total=time.perf_counter() - t0)
                    entry = CommitEntry(
                        seq=seq, time=now(), facts=tuple(result.facts), method=hp.method, layers=tuple(hp.layers),
                        hparams=plain(hp), timings={k: round(v, 4) for k, v in timings.items()}, delta_file=rel,
                        delta_sha256=sha, fingerprint=fp,
                        efficacy=tuple(FactScore(prob=round(a.prob, 6), argmax=a.argmax, prob_before=round(prob_before[f], 6))
                                       for f, a in zip(result.facts, after)),
                        value_steps=tuple(result.value_steps), heldout_nll=round(heldout, 6),
                        heldout_base=round(base_nll, 6), threads=threads if self.lm.device.type == "cpu" else None,
                    )
                    append_entry(self.journal_path, entry)
                    committed = True  # from here on the commit is in the session, whatever happens next
                    self._journal = dataclasses.replace(self._journal, entries=self._journal.entries + (entry,))
                    self._drop_committed()
            except BaseException:
                if not committed:
                    self._stack.pop()
                    if written is not None and written.exists():
                        written.unlink()
                raise
            self._sync_query_copy(entry.layers)
            if progress:
                progress(Progress("apply", 2, 2, detail="done"))
            return entry

    def _heldout_base(self) -> float:
        """Held-out NLL of the base model (measured once per session object)."""
        if self._base_nll is None:
            from kedit.editing.health import session_nll

            with self._stack.base():
                self._base_nll = session_nll(self.lm.model, self.lm.tokenizer)
        return self._base_nll

    def drift(self, entry: CommitEntry):
        """How far ``entry`` moved the held-out perplexity (``drift.Drift``; flagged past the threshold)."""
        from kedit.session.drift import drifts

        return drifts(self._journal.entries, self._settings.drift_threshold)[entry.seq]

    def edited_in_context(self, entry: CommitEntry) -> tuple[Fact, ...]:
        """The facts of ``entry`` whose subject is their prompt's first token (``tokens.at_first_token``):
        the commit keyed and fitted them on their prefixed prompts only, so the prompt as written may
        keep its answer where the subject in a sentence does not (``HParams.first_token_prompts``)."""
        from kedit.editing import HParams, tokens

        hp = HParams.from_dict(entry.hparams)
        if hp.first_token_prompts or hp.n_prefixes == 0:
            return ()
        return tuple(f for f in entry.facts if tokens.at_first_token(self.lm.tokenizer, f.prompt, f.subject))

    def undo(self) -> UndoEntry:
        """Take back the last active commit; the weights become bit-identical to before it."""
        with self._lock, self._folder.journal_lock("undoing", self.wait):
            self._refresh()
            self._remove_leftovers()
            active = self.active_commits()
            if not active:
                raise SessionError("nothing to undo: no active commit", hint="'kedit log' shows the session's history")
            last = active[-1]
            deltas = self._stack.pop()
            fp = self._stack.fingerprint()
            expected = self._fingerprint_before(last.seq)
            try:
                if fp != expected:
                    raise VerificationError(
                        f"undoing commit #{last.seq} gave fingerprint {fp}, expected {expected} (kedit bug; nothing written)"
                    )
                entry = UndoEntry(seq=self._journal.next_seq, time=now(), undoes=last.seq, fingerprint=fp)
                with self._folder.folder_lock(f"writing undo #{entry.seq}", self.wait):
                    append_entry(self.journal_path, entry)
            except BaseException:
                self._stack.push(deltas, last.facts)
                raise
            self._journal = dataclasses.replace(self._journal, entries=self._journal.entries + (entry,))
            self._sync_query_copy(last.layers)
            return entry

    def _drop_committed(self) -> None:
        """The queue without the facts just committed. If this write fails the commit still
        stands: the queue file's ``after`` lets every reader drop those facts (``queue.reconcile``)."""
        try:
            self._queue.set_state(self._folder.change_queue(lambda q: q, self.wait, "removing the committed facts"))
        except (OSError, KeditError):
            self._queue.refresh(self._journal)

    def _remove_leftovers(self) -> None:
        """Under the journal lock: what interrupted writes left (orphan deltas, temp files)."""
        with self._folder.folder_lock("removing leftovers of an interrupted write", self.wait):
            self._folder.remove_leftovers(self._journal)

    def _fingerprint_before(self, seq: int) -> str:
        prior = [e for e in self._journal.entries if e.seq < seq]
        return prior[-1].fingerprint if prior else self._journal.header.model.editable_fingerprint

    # -- reading the model ----------------------------------------------------------------------

    def touched_by(self, prompt: str) -> list[CommitEntry]:
        """Active commits with a fact whose subject appears in ``prompt`` (case-insensitive)."""
        p = prompt.lower()
        return [c for c in self.active_commits() if any(f.subject.lower() in p for f in c.facts)]

    def query(self, prompt: str, top_k: int = 5, chat: bool = False, system: str | None = None) -> QueryResult:
        """What the model says now; with the base model's answer when an active edit touches the
        prompt. With ``chat`` the prompt is asked as a chat turn (``answer``)."""
        if not prompt.strip():
            raise UsageError("empty prompt")
        with self._lock:
            qcopy = self._query_copy()
            model, tok = (qcopy.model, qcopy.tokenizer) if qcopy is not None else (self.lm.model, self.lm.tokenizer)
            now = answer(model, tok, prompt, top_k, chat, system)
            if not self.touched_by(prompt):
                return now
            with qcopy.base() if qcopy is not None else self._stack.base():
                before = answer(model, tok, prompt, top_k, chat, system)
            return dataclasses.replace(now, base_continuation=before.continuation, base_top=before.top)

    def _query_copy(self):
        """The quantised copy that answers queries (``query_quant`` int8/nf4), built on first use."""
        if self._settings.query_quant == "none":
            return None
        if self._qcopy is None:
            from kedit.editing.quant import QueryCopy, check_quant_support

            check_quant_support(self._settings.query_quant, self.lm.device)
            self._qcopy = QueryCopy(self.lm, self._settings.query_quant, device=self.lm.device)
            if self._stack.weights.touched_layers:
                self._qcopy.sync(self._stack.weights.touched_layers)
        return self._qcopy

    def _sync_query_copy(self, layers) -> None:
        if self._qcopy is not None:
            self._qcopy.sync(sorted(set(layers)))

    # -- export ---------------------------------------------------------------------------------

    def export(self, out_dir, progress: Callable | None = None, format: str = "checkpoint") -> Path:
        """Write the edited model to ``out_dir``: a Hugging Face checkpoint, a LoRA adapter
        (``peft``) or, for a base read from a GGUF file, a GGUF (``gguf``)."""
        from kedit.session.export import export

        with self._lock:
            return export(self.lm, self._journal, Path(out_dir), format=format, progress=progress)

    def __repr__(self) -> str:
        return f"Session({str(self.path)!r}, model={self.header.model.name!r}, commits={len(self.active_commits())}, queue={len(self.queue)})"


def _nothing_to_commit() -> InvalidFactError:
    return InvalidFactError("the queue is empty: nothing to commit", hint="add facts first ('kedit add')")


def _settings(model, method, layers, device, dtype, corpus, seed, query_quant, hparams, load="none") -> Settings:
    """Settings from a program's arguments, checked (``UsageError`` naming the bad one)."""
    return Settings(model=model, method=method, layers=tuple(layers) if layers is not None else None, device=device,
                    dtype=dtype, corpus=corpus, seed=seed, query_quant=query_quant,
                    hparams=hparams.to_dict() if hparams is not None and not isinstance(hparams, dict) else hparams,
                    load=load).check()


def _check_same_load(folder: SessionFolder, settings: Settings, load: str) -> None:
    from kedit import choices

    if choices.quant_mode(load, "--load") != settings.load:
        raise UsageError(f"session {folder.path} was started with --load {settings.load}, not {load}",
                         hint="the load mode of a session is fixed; start a new session for another")


def _load_session_model(settings: Settings, name: str, device, dtype, keep_layers=()):
    """The session's model: plain, or (``settings.load`` int8/nf4) quantised except the MLP output
    projections of ``keep_layers`` (default: the layers the next commit edits)."""
    if settings.load == "none":
        from kedit.editing import load_model

        return load_model(name, device=device, dtype=dtype)
    from kedit.editing import preset
    from kedit.editing.quant import load_quantized_for_editing, num_layers_from_config

    layers = set(keep_layers)
    if not layers:
        if settings.hparams is not None:
            layers = set(settings.hparams["layers"])
        elif settings.layers is not None:
            layers = set(settings.layers)
        else:
            layers = set(preset(settings.model, settings.method, num_layers=num_layers_from_config(name)).layers)
    return load_quantized_for_editing(name, settings.load, sorted(layers), device=device, dtype=dtype)


def _check_full_precision(lm, layers, load: str) -> None:
    """With --load int8/nf4 only the layers kept in full precision at the start can be edited."""
    from kedit.editing import arch
    from kedit.editing.quant import is_quantized_module

    bad = [l for l in layers if is_quantized_module(arch.mlp_out_module(lm.model, l))]
    if bad:
        keep = [l for l in range(arch.num_layers(lm.model)) if not is_quantized_module(arch.mlp_out_module(lm.model, l))]
        raise UsageError(f"layer(s) {bad} are loaded {load}-quantised in this session; only layer(s) {keep} can be edited",
                         hint="start a new session with --load and the --layers to edit")


def _hparams_for(folder: SessionFolder, settings: Settings, header: JournalHeader | None, lm):
    """The next commit's hyper-parameters: explicit ones from the settings, else the preset.

    Settings that do not fit the loaded model (layers it lacks, say) are an error naming
    ``session.json`` and how to change them, never a traceback."""
    from kedit import choices
    from kedit.editing import HParams, arch, preset

    n = arch.num_layers(lm.model)
    hint = f"change them with 'kedit settings {folder.path} --layers N' (layers 0..{n - 1})"
    try:
        if settings.hparams is not None:
            hp = HParams.from_dict(settings.hparams)
        else:
            hp = preset(settings.model, settings.method, num_layers=n)
            if settings.layers is not None:
                hp = dataclasses.replace(hp, layers=tuple(settings.layers))
            if header is not None:  # keep the statistics settings the session started with (same C0)
                hp = dataclasses.replace(hp, stats_tokens=header.hparams["stats_tokens"],
                                         stats_seq_len=header.hparams["stats_seq_len"],
                                         n_prefixes=header.hparams["n_prefixes"], prefix_len=header.hparams["prefix_len"])
        choices.check_layers(hp.layers, n)
    except UsageError as exc:
        raise UsageError(f"{folder.settings_file}: {exc}", hint=hint) from None
    except (TypeError, KeyError, ValueError) as exc:
        raise SessionError(f"{folder.settings_file}: the hyper-parameters ('hparams') are not valid ({exc})",
                           hint="fix the file, or choose the method again with 'kedit settings SESSION --method M'") from None
    return hp


def session_exists(path_or_name) -> bool:
    return SessionFolder(resolve(path_or_name)).exists()


def in_context_note(fact: Fact) -> str:
    """What to tell the person about a fact of ``Session.edited_in_context``."""
    return (f"“{fact.subject}” is the first word of its prompt, read where every text's first word is, so the edit "
            f"took it where words come before it: ask e.g. “Yesterday I read that {fact.text}”. The prompt as "
            "written may keep its answer.")
