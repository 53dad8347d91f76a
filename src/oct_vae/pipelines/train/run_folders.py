"""Per-run checkpoint folders of the ``train`` pipeline, and what a run resumes from.

Every run writes its per-epoch ``last.pt`` to ``<train.checkpoint_dir>/<run id>/``, so two
runs never share a file. ``train.checkpoint_dir`` is relative to the project root.
``train.resume`` is ``false``, ``true`` (the most recent earlier run that left a
``last.pt``) or the id of the run to continue (a folder name under checkpoint_dir).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def checkpoint_folders(
    params: dict[str, Any], run_info: dict[str, Any]
) -> tuple[str | None, bool | str]:
    """This run's checkpoint folder, and what to resume from (see the module).

    Returns:
        The folder for ``TrainConfig.checkpoint_dir`` (``None`` when checkpointing is off)
        and the value for ``TrainConfig.resume`` (``False`` or the ``last.pt`` to continue).

    Raises:
        FileNotFoundError: ``train.resume`` names a run that left no checkpoint.
    """
    base = params.get("checkpoint_dir")
    if not base:
        return None, False
    root = Path(str(base)).expanduser()
    if not root.is_absolute():
        root = Path(run_info["project_root"]) / root
    run_id = str(run_info["run_id"])
    source = _resume_source(root, str(base), run_id, params.get("resume", False))
    if source:
        log.info("train.resume: run %s continues run %s", run_id, Path(source).parent.name)
    return str(root / run_id), source


def _resume_source(root: Path, base: str, run_id: str, resume: Any) -> bool | str:
    """The ``last.pt`` that ``resume`` names under ``root``, or ``False``."""
    if not resume:
        return False
    earlier = sorted(
        (p.parent for p in root.glob("*/last.pt") if p.parent.name != run_id),
        key=lambda p: p.name,
    )
    if resume is True or resume == "latest":
        if earlier:
            return str(earlier[-1] / "last.pt")
        log.info("train.resume: no earlier run left a checkpoint under %s", base)
        return False
    path = root / str(resume) / "last.pt"
    if not path.exists():
        known = ", ".join(p.name for p in earlier[-5:]) or "none"
        raise FileNotFoundError(
            f"train.resume={resume!r}: no checkpoint {base}/{resume}/last.pt. "
            f"Runs with a checkpoint (latest last): {known}."
        )
    return str(path)
