"""The rings, checked on the source: every import of every module — at the top, inside functions,
under ``if TYPE_CHECKING`` — read with ``ast``, so a lazy import cannot cross a ring unseen.

* ring 1 ``kedit/editing``: tensors and models; never sessions, evaluation, CLI, TUI, typer, textual;
* ring 2 ``kedit/session`` (and ``kedit/eval``): never CLI, TUI, typer, textual;
* the shared leaves (``kedit/choices.py``, ``facts.py``, ``errors.py``, ``paths.py``) import no
  other part of kedit but each other, and no torch;
* the light session modules import no torch at module level (``kedit log``/``add`` stay instant).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

KEDIT = REPO / "kedit"
UI = ("kedit.cli", "kedit.commands", "kedit.tui", "textual", "typer")
LEAVES = ("kedit.choices", "kedit.errors", "kedit.facts", "kedit.paths")
HEAVY = ("torch", "transformers", "safetensors", "accelerate", "bitsandbytes", "kedit.editing")
LIGHT_SESSION = ("journal", "queue", "queue_view", "folder", "settings", "lock", "atomic", "factfile", "store", "__init__")


def imports(source: str, module: str, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``source`` (``module`` resolves relative ones)."""
    tree = ast.parse(source)
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level]
                base = ".".join(parts + ([base] if base else []))
            out.append((node.lineno, base))
    return out


def modules(folder: Path):
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield path, name


def crossings(folder: Path, forbidden: tuple[str, ...], top_level_only: bool = False) -> list[str]:
    bad = []
    for path, name in modules(folder):
        for line, mod in imports(path.read_text(), name, top_level_only):
            if any(mod == f or mod.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {mod}")
    return bad


def test_the_check_sees_imports_inside_functions_and_relative_ones():
    src = "import os\ndef f():\n    from kedit.tui import app\n    if x:\n        import typer\nfrom . import folder\n"
    assert sorted(m for _, m in imports(src, "kedit.session.x")) == ["kedit.session", "kedit.tui", "os", "typer"]
    assert [m for _, m in imports(src, "kedit.session.x", top_level_only=True)] == ["os", "kedit.session"]


def test_ring_one_imports_no_session_evaluation_or_ui():
    assert crossings(KEDIT / "editing", ("kedit.session", "kedit.eval") + UI) == []


@pytest.mark.parametrize("ring", ["session", "eval"])
def test_ring_two_imports_no_ui(ring):
    assert crossings(KEDIT / ring, UI) == []


def test_the_shared_leaves_import_only_each_other():
    bad = []
    for leaf in LEAVES:
        path = KEDIT / (leaf.split(".")[1] + ".py")
        for line, mod in imports(path.read_text(), leaf):
            if mod.startswith("kedit") and mod not in LEAVES or mod.split(".")[0] in ("torch", "transformers", "textual", "typer"):
                bad.append(f"{path.name}:{line} imports {mod}")
    assert bad == []


def test_light_session_modules_import_no_torch_at_module_level():
    bad = []
    for name in LIGHT_SESSION:
        path = KEDIT / "session" / f"{name}.py"
        for line, mod in imports(path.read_text(), f"kedit.session.{name}", top_level_only=True):
            if any(mod == h or mod.startswith(h + ".") for h in HEAVY):
                bad.append(f"{path.name}:{line} imports {mod}")
    assert bad == []


def test_importing_the_engine_does_not_import_the_ui():
    """The same at run time, for what ``ast`` cannot see (an import through another package)."""
    code = ("import sys, kedit.editing, kedit.facts, kedit.session.engine, kedit.eval.runner; "
            "bad = [m for m in ('textual', 'typer') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
