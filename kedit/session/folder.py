"""A session folder on disk: where its files are, its settings, and atomic writes.

    sessions/<name>/
        session.json     settings for the next commits (model, method, layers, dtype, ...)
        journal.jsonl    header + one line per commit/undo (``journal.py``), created on first load
        queue.json       facts waiting for the next commit (``queue.py``)
        deltas/NNNN.safetensors   rank-E factors of each commit (``store.py``)

No torch here: ``kedit add``, ``kedit queue`` and ``kedit log`` work on the folder alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from kedit.errors import SessionError, UsageError
from kedit.paths import sessions_dir
from kedit.session.journal import JOURNAL_NAME, fsync_dir

SETTINGS_NAME = "session.json"
QUEUE_NAME = "queue.json"
DELTAS_DIR = "deltas"
QUERY_QUANTS = ("none", "int8", "nf4")


def resolve(path_or_name: str | os.PathLike) -> Path:
    """A bare name goes to ``sessions/<name>/``; anything with a slash (or an existing folder) is a path."""
    s = str(path_or_name)
    if not s.strip():
        raise UsageError("empty session name")
    p = Path(s).expanduser()
    if os.sep in s or "/" in s or s in (".", "..") or p.is_absolute():
        return p.resolve()
    if p.is_dir() and (p / SETTINGS_NAME).exists():
        return p.resolve()
    return (sessions_dir() / s).resolve()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file, fsync and rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


@dataclass(frozen=True)
class Settings:
    """What the next commit uses; the journal records what each commit actually used."""

    model: str = "default"
    method: str = "emmet"
    layers: tuple[int, ...] | None = None  # None: the preset's layers
    device: str | None = None  # None: the journal's device kind when it exists, else auto
    dtype: str | None = None  # None: the journal's dtype when it exists, else auto
    corpus: str = "wiki-sample"
    seed: int = 0
    query_quant: str = "none"
    hparams: dict | None = None  # explicit HParams.to_dict() for the next commits (None: the preset)
    load: str = "none"  # int8/nf4: the model is loaded quantised except the edit layers (fixed at the start)
    drift_threshold: float = 0.02  # a commit that moves held-out perplexity by more than this fraction is flagged

    def __post_init__(self) -> None:
        if self.query_quant not in QUERY_QUANTS:
            raise UsageError(f"unknown query quantisation {self.query_quant!r}", hint=f"choose one of {', '.join(QUERY_QUANTS)}")
        if self.load not in QUERY_QUANTS:
            raise UsageError(f"unknown --load mode {self.load!r}", hint=f"choose one of {', '.join(QUERY_QUANTS)}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(l) for l in self.layers))

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass(frozen=True)
class SessionFolder:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def settings_file(self) -> Path:
        return self.path / SETTINGS_NAME

    @property
    def journal_file(self) -> Path:
        return self.path / JOURNAL_NAME

    @property
    def queue_file(self) -> Path:
        return self.path / QUEUE_NAME

    @property
    def deltas_dir(self) -> Path:
        return self.path / DELTAS_DIR

    def exists(self) -> bool:
        return self.settings_file.exists() or self.journal_file.exists()

    def has_journal(self) -> bool:
        return self.journal_file.exists()

    def read_settings(self) -> Settings:
        if not self.settings_file.exists():
            if self.journal_file.exists():
                return _settings_from_journal(self.journal_file)
            raise SessionError(f"no session at {self.path}", hint="create one with 'kedit add' or 'kedit tui'")
        try:
            return Settings.from_dict(json.loads(self.settings_file.read_text("utf-8")))
        except (json.JSONDecodeError, TypeError) as exc:
            raise SessionError(f"{self.settings_file} is not valid: {exc}") from None

    def write_settings(self, settings: Settings) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.settings_file, settings.to_dict())

    def create(self, settings: Settings) -> None:
        if self.exists():
            raise SessionError(f"a session exists already at {self.path}", hint="open it instead, or pick another name")
        if self.path.exists() and any(self.path.iterdir()):
            raise SessionError(f"{self.path} is a non-empty folder that is not a session", hint="pick another name or path")
        self.write_settings(settings)


def _settings_from_journal(journal: Path) -> Settings:
    """A session folder that holds only a journal (a copied one): settings from its header."""
    from kedit.session.journal import read_journal

    h = read_journal(journal).header
    return Settings(model=h.model.name, method=h.method, layers=h.layers, device=h.device, dtype=h.dtype,
                    corpus=h.corpus, seed=h.seed)


def with_method(settings: Settings, method: str, layers) -> Settings:
    return replace(settings, method=method, layers=tuple(layers) if layers is not None else None)
