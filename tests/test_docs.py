"""The documentation keeps itself true: docs/architecture.md names every module of the
package, and every code name and repository path cited in the README and docs/ exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "oct_vae"
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
# `oct_vae.x.y` or `oct_vae.x.y.Name.attr` in backticks (a trailing call "()" allowed), where
# oct_vae.x is a module or package of the project (`oct_vae.pid` is an MLflow tag name).
CODE_NAME = re.compile(r"`(oct_vae(?:\.\w+)+)(?:\(\))?`")
TOP = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
# Repository paths in backticks or links: src/..., tests/..., benchmarks/..., conf/...
# (not followed by a placeholder such as <pipeline> or a glob).
REPO_PATH = re.compile(
    r"(?<![\w/.])((?:src|tests|benchmarks|scripts|conf|docs|notebooks)/[\w./-]*\w)(?![\w<*{])"
)


def _modules() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "__init__.py":
            out.append(path.relative_to(PACKAGE).with_suffix("").as_posix())
    return out


def test_architecture_names_every_module():
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = [m for m in _modules()
               if f"{m}.py" not in text and f"oct_vae.{m.replace('/', '.')}" not in text]
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_the_readme_layout_matches_the_package():
    """The README's "The code" table names every subpackage of src/oct_vae/, and
    docs/architecture.md draws each one in its folder tree."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The code", 1)[1].split("\n## ", 1)[0]
    architecture = (REPO / "docs" / "architecture.md").read_text()
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert len(folders) >= 6
    assert not [f for f in folders if f"`{f}/`" not in section], section
    tree = architecture.split("## The folders", 1)[1].split("\n## ", 1)[0]
    assert not [f for f in folders if f"── {f}/" not in tree], tree


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_code_name_cited_exists(doc):
    text = doc.read_text()
    names = {n for n in CODE_NAME.findall(text) if n.split(".")[1] in TOP}
    missing = sorted(n for n in names if not _resolves(n))
    assert not missing, f"{doc.name} cites code names that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_repository_path_cited_exists(doc):
    # A line that makes the folder (mkdir) names a path that does not exist yet.
    text = "\n".join(line for line in doc.read_text().splitlines() if "mkdir " not in line)
    paths = {p.rstrip(".") for p in REPO_PATH.findall(text)}
    # Globs, placeholders and outputs written by runs are not repository files.
    paths = {p for p in paths if not re.search(r"[*<>{}]|/out/|/out$", p)}
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"{doc.name} cites paths that do not exist: {missing}"
