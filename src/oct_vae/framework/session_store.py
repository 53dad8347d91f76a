"""A Kedro session store that gives every run of a project on this machine its own version.

Kedro names a run by its session id, the UTC time to the millisecond
(``2026-11-30T11.15.30.667Z``), and saves every versioned dataset of the run under that
name. Two runs of one project that start in the same millisecond therefore share it, and
the second one fails on its first versioned output ("Save path ... must not exist if
versioning is enabled"), after it has already done work.

``UniqueVersionSessionStore`` (``settings.SESSION_STORE_CLASS``) issues session ids one at a
time per project and machine, under an inter-process lock: each id is the session's own
timestamp, or, when that is not later than the last id issued, the last one plus one
millisecond. Ids stay in Kedro's format, so sorting them still sorts the runs by start and
"the latest version" stays the latest run. Kedro reads the run's save version and run id
from the store, so both change together.

The lock and the last id (two files) live in the temporary folder (the project holds no
runtime files), one pair per OS user; runs on other machines that share one data folder
are not covered. Where they cannot be written, or no lock can be taken, the session keeps
Kedro's id, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from kedro.framework.session.store import BaseSessionStore
from kedro.io.core import VERSION_FORMAT

from oct_vae.framework.fileio import interprocess_lock, machine_lock_path

log = logging.getLogger(__name__)


def _format(moment: datetime) -> str:
    """Kedro's version string: ``generate_timestamp``'s format, milliseconds kept."""
    text = moment.strftime(VERSION_FORMAT)
    return text[:-4] + text[-1:]


def _parse(version: str) -> datetime:
    return datetime.strptime(version, VERSION_FORMAT).replace(tzinfo=timezone.utc)


def version_state_path(key: str | os.PathLike) -> Path:
    """The file holding the last id issued for the project that ``key`` names (beside its
    lock file, which holds nothing: a lock file's content is the lock library's)."""
    return machine_lock_path("session-ids", key).with_suffix(".last")


def claim_version(key: str | os.PathLike, proposed: str) -> str:
    """The id this session gets: ``proposed``, or one millisecond after the last id issued
    for ``key`` when ``proposed`` is not later. Processes take turns; never returns an id
    returned before for the same ``key`` on this machine."""
    state = version_state_path(key)
    try:
        with interprocess_lock(machine_lock_path("session-ids", key)):
            state.touch(exist_ok=True)
            with open(state, "r+b") as handle:
                last = handle.read().decode("ascii", "replace").strip()
                chosen = _next_id(last, proposed)
                handle.seek(0)
                handle.truncate()
                handle.write(chosen.encode("ascii"))
                handle.flush()
    except OSError as exc:  # e.g. a temporary folder this user cannot write
        log.warning("run id %s is not checked against other runs (%s: %s)", proposed,
                    state, exc.strerror or exc)
        return proposed
    return chosen


def _next_id(last: str, proposed: str) -> str:
    """``proposed``, or one millisecond after ``last`` when ``proposed`` is not later."""
    with contextlib.suppress(ValueError):  # unreadable state: start from this id
        if last and _parse(proposed) <= (previous := _parse(last)):
            return _format(previous + timedelta(milliseconds=1))
    return proposed


class UniqueVersionSessionStore(BaseSessionStore):
    """Kedro's ephemeral session store, with a session id no other run of the project on
    this machine has had (see the module docstring)."""

    def __init__(self, path: str, session_id: str):
        self._unique_id = claim_version(path, session_id)
        super().__init__(path, self._unique_id)

    def __setitem__(self, key: str, value: Any) -> None:
        # KedroSession.create writes its own (maybe shared) timestamp here; keep ours.
        if key == "session_id":
            value = self._unique_id
        super().__setitem__(key, value)
