"""Text for the key statistics C0: the offline Wikipedia sample, local files, or HF datasets.

``load_corpus(spec)`` gives a ``Corpus`` (a name, a fingerprint and an iterator of documents):

* ``"wiki-sample"`` (the default): the Wikipedia dump sample that the ``gensim`` wheel ships
  (install with ``pip install --no-deps gensim``), wiki markup stripped. Works offline.
* a path to a ``.txt``/``.md`` file, a ``.jsonl`` file with a ``"text"`` field, or a folder of them.
* ``"hf:wikitext"`` / ``"hf:wikipedia"`` (or ``hf:NAME[:CONFIG]``): a Hugging Face dataset, online
  (needs the ``datasets`` package).
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from kedit.errors import MissingDependencyError, UsageError

DEFAULT_CORPUS = "wiki-sample"
_GENSIM_SAMPLE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


@dataclass(frozen=True)
class Corpus:
    name: str
    fingerprint: str  # changes when the text changes
    documents: Callable[[], Iterator[str]]


def load_corpus(spec: str = DEFAULT_CORPUS) -> Corpus:
    if spec in ("wiki-sample", "default"):
        return _gensim_sample()
    if spec.startswith("hf:"):
        return _hf_dataset(spec[3:])
    path = Path(spec).expanduser()
    if path.exists():
        return _local(path)
    raise UsageError(
        f"unknown statistics corpus {spec!r}: not a file or folder",
        hint="use 'wiki-sample', a path to text files, or 'hf:wikitext'",
    )


# -- the gensim wheel's Wikipedia sample ------------------------------------------------------


def _gensim_sample() -> Corpus:
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            "the offline statistics corpus needs the 'gensim' wheel",
            hint="pip install --no-deps gensim   (or pass --corpus PATH to your own text)",
        )
    path = Path(spec.origin).parent / _GENSIM_SAMPLE
    if not path.exists():
        raise MissingDependencyError(f"gensim is installed but lacks its Wikipedia sample ({path})")
    fp = hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    def docs() -> Iterator[str]:
        xml = bz2.open(path, "rt", encoding="utf-8").read()
        for m in re.finditer(r"<text[^>]*>(.*?)</text>", xml, flags=re.S):
            text = strip_wiki_markup(_unescape(m.group(1)))
            if len(text) > 200 and not text.lower().startswith("#redirect"):
                yield text

    return Corpus(name="wiki-sample", fingerprint=f"wiki-sample-{fp}", documents=docs)


def _unescape(s: str) -> str:
    for a, b in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#039;", "'"), ("&nbsp;", " "), ("&amp;", "&")):
        s = s.replace(a, b)
    return s


def strip_wiki_markup(s: str) -> str:
    """Plain prose from MediaWiki markup (templates, tables, refs, links, emphasis, headings)."""
    s = re.sub(r"<!--.*?-->", "", s, flags=re.S)
    s = re.sub(r"<ref[^>/]*/>", "", s)
    s = re.sub(r"<ref.*?</ref>", "", s, flags=re.S)
    for _ in range(5):  # nested templates and tables, innermost first
        s = re.sub(r"\{\{[^{}]*\}\}", "", s)
        s = re.sub(r"\{\|[^{}]*?\|\}", "", s, flags=re.S)
    s = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", s, flags=re.I)
    s = re.sub(r"\[\[[^\]|]*\|([^\]]*)\]\]", r"\1", s)
    s = re.sub(r"\[\[([^\]]*)\]\]", r"\1", s)
    s = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", s)
    s = re.sub(r"\[https?://\S+\]", "", s)
    s = re.sub(r"<[^>]+>", "", s)
    s = re.sub(r"'{2,}", "", s)
    s = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1.", s, flags=re.M)
    lines = [ln.strip() for ln in s.splitlines()]
    lines = [ln.lstrip("*#:; ") for ln in lines if ln and not ln.startswith(("|", "!", "{", "}"))]
    return re.sub(r"[ \t]+", " ", "\n".join(lines)).strip()


# -- local files ------------------------------------------------------------------------------

_TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst", ".jsonl"}


def _local(path: Path) -> Corpus:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise UsageError(f"no text files (.txt .md .jsonl) under {path}")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())

    def docs() -> Iterator[str]:
        for f in files:
            if f.suffix == ".jsonl":
                for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                    if not line.strip():
                        continue
                    try:
                        yield str(json.loads(line)["text"])
                    except (ValueError, KeyError, TypeError) as exc:
                        raise UsageError(f"{f}:{i}: a corpus .jsonl line needs a 'text' field ({exc})") from None
            else:
                yield f.read_text(encoding="utf-8", errors="replace")

    return Corpus(name=str(path), fingerprint=f"files-{h.hexdigest()[:16]}", documents=docs)


# -- Hugging Face datasets (online) ----------------------------------------------------------

_HF_ALIASES = {
    "wikitext": ("wikitext", "wikitext-103-raw-v1"),
    "wikipedia": ("wikimedia/wikipedia", "20231101.en"),
}


def _hf_dataset(name: str) -> Corpus:
    if importlib.util.find_spec("datasets") is None:
        raise MissingDependencyError(
            f"corpus 'hf:{name}' needs the 'datasets' package", hint="pip install datasets"
        )
    ds_name, config = _HF_ALIASES.get(name, (name.split(":")[0], name.split(":")[1] if ":" in name else None))

    def docs() -> Iterator[str]:
        import datasets

        ds = datasets.load_dataset(ds_name, config, split="train", streaming=True)
        for rec in ds:
            text = rec.get("text", "")
            if text and text.strip():
                yield text

    return Corpus(name=f"hf:{name}", fingerprint=f"hf-{ds_name}-{config}", documents=docs)
