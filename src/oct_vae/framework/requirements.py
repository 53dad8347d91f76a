"""The project's dependency pins, in one place: ``pyproject.toml``.

The MLflow models a training run logs carry pip requirements. They are read here from the
installed package's metadata (written from ``pyproject.toml`` at install time), so a pin
changed in ``pyproject.toml`` reaches the logged models with nothing else to edit. The
catalog uses them through the ``${pins:...}`` resolver (settings.py).
"""

from __future__ import annotations

import re
from importlib import metadata

DISTRIBUTION = "oct-vae"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def pins(*names: str) -> list[str]:
    """``oct-vae`` and the requirement specifiers of ``names`` as ``pyproject.toml`` pins
    them (extras and markers dropped), e.g. ``pins("torch")`` ->
    ``["oct-vae", "torch<2.15,>=2.4"]``.

    Raises:
        KeyError: A name that is not a runtime dependency of the project.
    """
    found: dict[str, str] = {}
    for requirement in metadata.requires(DISTRIBUTION) or []:
        spec, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue  # test and other optional extras
        match = _NAME.match(spec)
        if match:
            name = match.group(1).lower()
            found[name] = name + re.sub(r"\[[^\]]*\]", "", spec[match.end():]).strip()
    missing = [n for n in names if n.lower() not in found]
    if missing:
        raise KeyError(f"not a dependency in pyproject.toml: {missing}; known: {sorted(found)}")
    return [DISTRIBUTION, *(found[n.lower()] for n in names)]
