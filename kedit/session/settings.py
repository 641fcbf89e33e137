"""A session's settings for its next commits (``session.json``), checked when given and when read.

Every setting is checked the moment it is given (``Settings.check``) — before anything is
written — and again whenever ``session.json`` is read (``read_settings``): a file that is not a
JSON object, a field of the wrong type or an unknown method, dtype, device or quantisation is an
error naming the file and the field, never silently replaced by defaults. Layers are checked
against the model's layer count whenever it is known (``choices.check_layers``); otherwise the first
load checks them. No torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from kedit import choices
from kedit.errors import SessionError, UsageError

SETTINGS_NAME = "session.json"


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
    guard: bool = False  # take back a commit that would be flagged and commit its facts in halves (session.guard)

    def __post_init__(self) -> None:
        if self.layers is not None and not isinstance(self.layers, tuple):
            object.__setattr__(self, "layers", tuple(self.layers) if isinstance(self.layers, list) else self.layers)

    def check(self, num_layers: int | None = None) -> "Settings":
        """This settings value with every field checked and spelled canonically (``UsageError`` otherwise)."""
        for name, kind in (("model", str), ("corpus", str)):
            value = getattr(self, name)
            if not isinstance(value, kind) or not value.strip():
                raise UsageError(f"{name} must be a non-empty text, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise UsageError(f"seed must be a whole number, got {self.seed!r}")
        if not isinstance(self.drift_threshold, (int, float)) or isinstance(self.drift_threshold, bool):
            raise UsageError(f"drift_threshold must be a number (a fraction, e.g. 0.02), got {self.drift_threshold!r}")
        if not isinstance(self.guard, bool):
            raise UsageError(f"guard must be true or false, got {self.guard!r}")
        layers = None if self.layers is None else choices.check_layers(self.layers, num_layers)
        method = choices.method_name(self.method)
        if layers is not None and method in ("emmet", "rome") and len(layers) != 1:
            raise UsageError(f"{method} edits one layer, but layers {list(layers)} are chosen",
                             hint="give one layer with --layers, or use --method memit for several")
        if self.hparams is not None:
            _check_hparams(self.hparams, num_layers)
        return replace(
            self, method=method, layers=layers, device=choices.device_name(self.device),
            dtype=choices.dtype_name(self.dtype), query_quant=choices.quant_mode(self.query_quant, "query_quant"),
            load=choices.quant_mode(self.load, "--load"),
        )

    def with_method(self, method: str | None = None, layers: tuple[int, ...] | None = None,
                    preset_layers: bool = False) -> "Settings":
        """The settings with another method and/or layers; the explicit hyper-parameters are dropped
        (the next commit takes the new method's preset). Layers the person chose earlier are kept
        unless new ones are given or ``preset_layers`` asks for the method's own."""
        keep = None if preset_layers else layers if layers is not None else self.layers
        return replace(self, method=method or self.method, layers=keep, hparams=None)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d

    @classmethod
    def from_dict(cls, d, source: str = "settings") -> "Settings":
        """Settings from a parsed ``session.json`` (``source`` names it in errors); strict about types."""
        if not isinstance(d, dict):
            raise SessionError(f"{source} is not a JSON object of settings (it holds {type(d).__name__} {_short(d)})",
                               hint="fix the file, or delete it to start the session's settings afresh")
        known = {f.name for f in fields(cls)}
        values = {}
        for k, v in d.items():
            if k not in known:
                continue  # a newer kedit's setting: ignored, kept out of the way
            if k == "layers" and v is not None:
                if not isinstance(v, list):
                    raise SessionError(f"{source}: 'layers' must be a list of layer numbers or null, got {_short(v)}")
                v = tuple(v)
            values[k] = v
        try:
            return cls(**values).check()
        except UsageError as exc:
            raise SessionError(f"{source}: {exc}", hint="fix the file, or change the setting with 'kedit settings'") from None


def _check_hparams(hp, num_layers: int | None) -> None:
    if not isinstance(hp, dict):
        raise UsageError(f"hparams must be an object, got {_short(hp)}")
    choices.method_name(hp.get("method"))
    choices.check_layers(hp.get("layers", ()), num_layers)


def _short(v) -> str:
    text = json.dumps(v, ensure_ascii=True) if not isinstance(v, (bytes, bytearray)) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def read_settings(path: Path) -> Settings:
    """``session.json``, checked (``SessionError`` naming the file and the problem)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SessionError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        d = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SessionError(f"{path} is not UTF-8 text", hint="fix the file, or delete it to start the settings afresh") from None
    except json.JSONDecodeError as exc:
        raise SessionError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                           hint="fix the file, or delete it to start the settings afresh") from None
    return Settings.from_dict(d, source=str(path))


def settings_from_header(header) -> Settings:
    """The settings of a session folder that holds only a journal (a copied one): from its header."""
    return Settings(model=header.model.name, method=header.method, layers=tuple(header.layers), device=header.device,
                    dtype=header.dtype, corpus=header.corpus, seed=header.seed, load=header.load)
