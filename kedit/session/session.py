"""The session: one folder, one live model, a queue of facts and the journal of commits.

The session owns the model's weights. Every use of the model goes through one lock, so a UI can
call ``commit``/``query`` from a worker thread. Changes reach the disk in an order that keeps the
folder consistent after a crash at any point (see ``commit``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kedit import __version__
from kedit.errors import EditCancelled, InvalidFactError, SessionError, UsageError, VerificationError
from kedit.facts import Fact
from kedit.session import base as base_model
from kedit.session import store
from kedit.session.folder import SessionFolder, Settings, resolve, with_method
from kedit.session.journal import (
    CommitEntry, FactScore, Journal, JournalEntry, JournalHeader, UndoEntry, append_entry, now, read_journal,
    write_header,
)
from kedit.session.queue import QueueState, check_against, check_batch, read_queue, reconcile, write_queue

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

    def __init__(self, folder: SessionFolder, lm, settings: Settings, journal: Journal, queue: QueueState) -> None:
        from kedit.session.engine import EditEngine
        from kedit.session.weights import LiveWeights

        self._folder = folder
        self.lm = lm
        self._settings = settings
        self._journal = journal
        self._queue = queue
        self._lock = threading.RLock()
        from kedit.editing.quant import base_layer_digests

        self._weights = LiveWeights(lm.model, base_layer_digests(lm))
        self.base_fingerprint: str = journal.header.model.fingerprint
        self._engine = EditEngine(lm, self._weights, journal.header.prefixes, self.base_fingerprint, journal.header.corpus)
        self.hparams = _hparams_for(settings, journal.header, lm)
        self._qcopy = None  # quantised query copy (settings.query_quant), built on first query
        self._base_nll: float | None = None  # held-out NLL of the base model (health check), measured once

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
        _refuse_foreign_folder(folder)
        lm = _load_session_model(settings, model, device, dtype)
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
        folder = SessionFolder(resolve(path_or_name))
        if not folder.exists():
            raise SessionError(f"no session at {folder.path}", hint="create one with 'kedit add' (or check the name)")
        if not folder.has_journal():  # created by 'kedit add' without a model: load it now
            settings = folder.read_settings()
            lm = _load_session_model(settings, settings.model, device or settings.device, dtype or settings.dtype)
            return cls._start(folder, lm, settings)
        journal = read_journal(folder.journal_file)
        settings = folder.read_settings()
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
        folder = SessionFolder(resolve(path_or_name))
        if folder.exists():
            if load is not None and load != folder.read_settings().load:
                raise UsageError(f"session {folder.path} was started with --load {folder.read_settings().load}, not {load}",
                                 hint="the load mode of a session is fixed; start a new session for another")
            s = cls.open(folder.path, device=device, dtype=dtype)
            if method is not None or layers is not None:
                s.set_method(method or s.method, layers)
            if query_quant is not None and query_quant != s.settings.query_quant:
                s.set_query_quant(query_quant)
            return s
        return cls.create(folder.path, model=model, method=method or "emmet", layers=layers, device=device, dtype=dtype,
                          corpus=corpus, seed=seed, query_quant=query_quant or "none", load=load or "none")

    @classmethod
    def _start(cls, folder: SessionFolder, lm, settings: Settings) -> "Session":
        """Write the journal header for ``lm`` (prefixes sampled once with the seed) and open."""
        from kedit.editing import sample_prefixes
        from kedit.editing.corpus import load_corpus
        from kedit.editing.models import dtype_name
        from kedit.editing.quant import quant_mode_of
        from kedit.session.engine import deterministic, plain

        deterministic()
        ref = base_model.describe(lm)
        hp = _hparams_for(settings, None, lm)
        corpus = load_corpus(settings.corpus)
        prefixes = sample_prefixes(lm.model, lm.tokenizer, hp.n_prefixes, hp.prefix_len, seed=settings.seed)
        header = JournalHeader(
            kedit_version=__version__, created=now(), model=ref, dtype=dtype_name(lm.dtype),
            device=base_model.device_kind(lm.device), method=hp.method, layers=tuple(hp.layers), hparams=plain(hp),
            seed=settings.seed, prefixes=tuple(prefixes), corpus=settings.corpus, corpus_fingerprint=corpus.fingerprint,
            load=quant_mode_of(lm.model),
        )
        _refuse_foreign_folder(folder)
        folder.path.mkdir(parents=True, exist_ok=True)
        # Pin the hyper-parameters the session starts with: a later kedit whose preset differs
        # (another default layer, say) must not change what this session's next commit does.
        settings = dataclasses.replace(settings, dtype=header.dtype, device=header.device, hparams=plain(hp))
        folder.write_settings(settings)
        write_header(folder.journal_file, header)
        return cls._open(folder, lm, read_journal(folder.journal_file))

    @classmethod
    def _open(cls, folder: SessionFolder, lm, journal: Journal | None = None) -> "Session":
        journal = journal or read_journal(folder.journal_file)
        base_model.check_base(lm, journal.header, folder.journal_file)
        settings = folder.read_settings()
        known = {c.delta_file for c in journal.commits()}
        for orphan in store.orphans(folder.path, known):  # an interrupted commit's delta file
            orphan.unlink()
        for tmp in folder.path.glob(".*.tmp*"):  # an interrupted atomic write of the queue or settings
            tmp.unlink()
        deltas = [store.read_deltas(folder.path, c.delta_file, c.delta_sha256, c.seq) for c in journal.active_commits()]
        queue = read_queue(folder.queue_file)
        fixed = reconcile(queue, [(c.seq, c.facts) for c in journal.commits()])
        if fixed != queue:
            write_queue(folder.queue_file, fixed)
        s = cls(folder, lm, settings, journal, fixed)
        for d in deltas:
            s._weights.apply(d)
        fp = s._weights.fingerprint()
        if fp != journal.fingerprint:
            s._weights.reset()
            raise VerificationError(
                f"{folder.journal_file}: the stored deltas give fingerprint {fp}, the journal recorded {journal.fingerprint}",
                hint=f"open it on the device and dtype it was recorded with ({journal.header.device}, {journal.header.dtype}),"
                " or check it with 'kedit replay --verify'",
            )
        return s

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
            return self._weights.fingerprint()

    # -- the queue ------------------------------------------------------------------------------

    def check(self, fact: Fact) -> None:
        """Raise ``InvalidFactError``/``ConflictingFactsError`` if ``fact`` cannot join the queue."""
        check_against(self.queue, fact)

    def add(self, fact: Fact) -> None:
        self.add_many([fact])

    def add_many(self, facts: list[Fact]) -> None:
        """Add every fact or none (each is validated against the queue and the others first)."""
        with self._lock:
            self._set_queue(check_batch(self.queue, list(facts)))

    def remove(self, index: int) -> Fact:
        with self._lock:
            q = list(self.queue)
            fact = q.pop(self._index(index))
            self._set_queue(tuple(q))
            return fact

    def replace(self, index: int, fact: Fact) -> None:
        with self._lock:
            q = list(self.queue)
            i = self._index(index)
            others = tuple(q[:i] + q[i + 1 :])
            check_against(others, fact)
            q[i] = fact
            self._set_queue(tuple(q))

    def clear_queue(self) -> None:
        with self._lock:
            self._set_queue(())

    def _index(self, index: int) -> int:
        n = len(self.queue)
        if not -n <= index < n:
            raise UsageError(f"no queued fact number {index} (the queue holds {n})")
        return index % n

    def _set_queue(self, facts: tuple[Fact, ...]) -> None:
        state = QueueState(tuple(facts), self._journal.entries[-1].seq if self._journal.entries else 0)
        write_queue(self._folder.queue_file, state)
        self._queue = state

    # -- settings for the next commits ----------------------------------------------------------

    def set_method(self, method: str, layers=None) -> None:
        """Method (and layers; None: the preset's) for the next commits."""
        from kedit.session.engine import plain

        with self._lock:
            settings = dataclasses.replace(with_method(self._settings, method, layers), hparams=None)
            hp = _hparams_for(settings, self._journal.header, self.lm)
            _check_full_precision(self.lm, hp.layers, settings.load)
            settings = dataclasses.replace(settings, hparams=plain(hp))
            self._folder.write_settings(settings)
            self._settings, self.hparams = settings, hp

    def set_query_quant(self, mode: str) -> None:
        """Answer queries from a quantised copy (``int8``/``nf4``) or from the live model (``none``)."""
        with self._lock:
            settings = dataclasses.replace(self._settings, query_quant=mode)
            self._folder.write_settings(settings)
            self._settings, self._qcopy = settings, None

    # -- commits --------------------------------------------------------------------------------

    def commit(self, progress: Callable | None = None, should_stop: Callable[[], bool] | None = None) -> CommitEntry:
        """Edit the queued facts as one batch, write its delta file, then its journal line.

        Order on disk: the delta file (temp + fsync + rename), then the journal line (one write +
        fsync), then the emptied queue. A crash before the journal line leaves an orphan delta file
        (removed on open); after it, the commit is complete (a stale queue is recognised on open).
        ``should_stop`` cancels with ``EditCancelled`` before any weight or file changes.
        """
        from kedit.editing import Progress, score_targets
        from kedit.editing.health import session_nll
        from kedit.session.engine import plain

        with self._lock:
            facts = list(self.queue)
            if not facts:
                raise InvalidFactError("the queue is empty: nothing to commit", hint="add facts first ('kedit add')")
            hp = self.hparams
            model, tok = self.lm.model, self.lm.tokenizer
            t0 = time.perf_counter()
            before = score_targets(model, tok, [f.text for f in facts], [f.target for f in facts])
            base_nll = self._heldout_base()
            remember = [c.facts for c in self._journal.active_commits()]  # one tuple per commit
            result = self._engine.edit(facts, hp, progress, should_stop, remember)
            if should_stop is not None and should_stop():
                raise EditCancelled("commit cancelled; no weight was changed")
            if progress:
                progress(Progress("apply", 0, 2, detail="applying"))
            t = time.perf_counter()
            self._weights.apply(result.deltas)
            written: Path | None = None
            try:
                after = score_targets(model, tok, [f.text for f in result.facts], [f.target for f in result.facts])
                heldout = session_nll(model, tok)
                prob_before = {f: b.prob for f, b in zip(facts, before)}
                fp = self._weights.fingerprint()
                seq = self._journal.next_seq
                if progress:
                    progress(Progress("apply", 1, 2, detail="writing"))
                rel, sha = store.write_deltas(self.path, seq, result.deltas)
                written = self.path / rel
                timings = dict(result.timings, apply=time.perf_counter() - t, total=time.perf_counter() - t0)
                entry = CommitEntry(
                    seq=seq, time=now(), facts=tuple(result.facts), method=hp.method, layers=tuple(hp.layers),
                    hparams=plain(hp), timings={k: round(v, 4) for k, v in timings.items()}, delta_file=rel,
                    delta_sha256=sha, fingerprint=fp,
                    efficacy=tuple(FactScore(prob=round(a.prob, 6), argmax=a.argmax, prob_before=round(prob_before[f], 6))
                                   for f, a in zip(result.facts, after)),
                    value_steps=tuple(result.value_steps), heldout_nll=round(heldout, 6), heldout_base=round(base_nll, 6),
                )
                store.test_pause("delta-written")
                append_entry(self.journal_path, entry)
            except BaseException:
                self._weights.pop()
                if written is not None and written.exists():
                    written.unlink()
                raise
            self._journal = dataclasses.replace(self._journal, entries=self._journal.entries + (entry,))
            self._set_queue(())
            self._sync_query_copy(entry.layers)
            if progress:
                progress(Progress("apply", 2, 2, detail="done"))
            return entry

    def _heldout_base(self) -> float:
        """Held-out NLL of the base model (measured once per session object)."""
        if self._base_nll is None:
            from kedit.editing.health import session_nll

            with self._weights.base():
                self._base_nll = session_nll(self.lm.model, self.lm.tokenizer)
        return self._base_nll

    def drift(self, entry: CommitEntry):
        """How far ``entry`` moved the held-out perplexity (``drift.Drift``; flagged past the threshold)."""
        from kedit.session.drift import drifts

        return drifts(self._journal.entries, self._settings.drift_threshold)[entry.seq]

    def undo(self) -> UndoEntry:
        """Take back the last active commit; the weights become bit-identical to before it."""
        with self._lock:
            active = self.active_commits()
            if not active:
                raise SessionError("nothing to undo: no active commit", hint="'kedit log' shows the session's history")
            last = active[-1]
            self._weights.pop()
            fp = self._weights.fingerprint()
            expected = self._fingerprint_before(last.seq)
            try:
                if fp != expected:
                    raise VerificationError(
                        f"undoing commit #{last.seq} gave fingerprint {fp}, expected {expected} (kedit bug; nothing written)"
                    )
                entry = UndoEntry(seq=self._journal.next_seq, time=now(), undoes=last.seq, fingerprint=fp)
                append_entry(self.journal_path, entry)
            except BaseException:
                self._weights.apply(store.read_deltas(self.path, last.delta_file, last.delta_sha256, last.seq))
                raise
            self._journal = dataclasses.replace(self._journal, entries=self._journal.entries + (entry,))
            self._sync_query_copy(last.layers)
            return entry

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
            with qcopy.base() if qcopy is not None else self._weights.base():
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
            if self._weights.touched_layers:
                self._qcopy.sync(self._weights.touched_layers)
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


def _refuse_foreign_folder(folder: SessionFolder) -> None:
    if folder.path.exists() and not folder.exists() and any(folder.path.iterdir()):
        raise SessionError(f"{folder.path} is a non-empty folder that is not a session", hint="pick another name or path")


def _settings(model, method, layers, device, dtype, corpus, seed, query_quant, hparams, load="none") -> Settings:
    return Settings(model=model, method=method, layers=tuple(layers) if layers is not None else None, device=device,
                    dtype=dtype, corpus=corpus, seed=int(seed), query_quant=query_quant,
                    hparams=hparams.to_dict() if hparams is not None and not isinstance(hparams, dict) else hparams,
                    load=load)


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


def _hparams_for(settings: Settings, header: JournalHeader | None, lm):
    """The next commit's hyper-parameters: explicit ones from the settings, else the preset."""
    from kedit.editing import HParams, arch, preset

    n = arch.num_layers(lm.model)
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
    base_model.check_layers(hp.layers, n)
    return hp


def session_exists(path_or_name) -> bool:
    return SessionFolder(resolve(path_or_name)).exists()

