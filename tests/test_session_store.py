"""Each Kedro run of a project gets its own session id, hence its own save version, even
when runs start in the same millisecond (oct_vae.framework.session_store)."""

import multiprocessing as mp
from pathlib import Path

from kedro.io.core import generate_timestamp

from oct_vae.framework.session_store import (
    UniqueVersionSessionStore,
    claim_version,
    version_state_path,
)

REPO = Path(__file__).resolve().parents[1]
STAMP = "2026-11-30T11.15.30.667Z"


def test_a_taken_id_moves_on_by_one_millisecond_and_a_later_one_is_kept(tmp_path):
    key = tmp_path / "sessions"
    assert claim_version(key, STAMP) == STAMP
    assert claim_version(key, STAMP) == "2026-11-30T11.15.30.668Z"
    assert claim_version(key, STAMP) == "2026-11-30T11.15.30.669Z"
    # an earlier clock (set back) still gets an id after the last one
    assert claim_version(key, "2026-11-30T11.15.29.999Z") == "2026-11-30T11.15.30.670Z"
    # carries into the next second, and a later id is taken as it is
    assert claim_version(key, "2026-11-30T11.15.30.999Z") == "2026-11-30T11.15.30.999Z"
    assert claim_version(key, STAMP) == "2026-11-30T11.15.31.000Z"
    assert claim_version(key, "2026-12-01T00.00.00.000Z") == "2026-12-01T00.00.00.000Z"
    # another project is not held back by this one
    assert claim_version(tmp_path / "other", STAMP) == STAMP


def test_ids_keep_kedros_format_so_sorting_sorts_runs(tmp_path):
    ids = [claim_version(tmp_path, STAMP) for _ in range(1500)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {len(i) for i in ids} == {len(generate_timestamp())}
    assert ids[-1] == "2026-11-30T11.15.32.166Z"


def test_an_unreadable_state_file_starts_again(tmp_path):
    version_state_path(tmp_path).write_bytes(b"not a version\xff")
    assert claim_version(tmp_path, STAMP) == STAMP
    assert claim_version(tmp_path, STAMP) == "2026-11-30T11.15.30.668Z"


def _claim_many(key: str, n: int, queue) -> None:
    queue.put([claim_version(key, STAMP) for _ in range(n)])


def test_processes_claiming_at_once_never_share_an_id(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_many, args=(str(tmp_path), 50, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    ids = [i for _ in procs for i in queue.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(ids) == 150 and len(set(ids)) == 150


def test_two_sessions_started_in_one_millisecond_get_two_save_versions(tmp_path, monkeypatch):
    from kedro.framework.project import settings
    from kedro.framework.session import KedroSession
    from kedro.framework.session import session as session_module
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(REPO)
    assert settings.SESSION_STORE_CLASS is UniqueVersionSessionStore
    monkeypatch.setattr(session_module, "generate_timestamp", lambda: STAMP)
    ids = []
    for _ in range(2):
        with KedroSession.create(tmp_path, conf_source=str(REPO / "conf")) as session:
            # KedroSession.run takes the run id and every dataset's save version from here
            ids.append(session.store["session_id"])
    assert ids[0] != ids[1]
    assert ids[1] > ids[0] >= STAMP


def test_a_state_file_that_cannot_be_opened_leaves_kedros_id_with_a_warning(
    tmp_path, monkeypatch, caplog
):
    blocked = tmp_path / "not-a-file"
    blocked.mkdir()  # opening a folder as the state file fails with an OSError
    monkeypatch.setattr("oct_vae.framework.session_store.version_state_path", lambda key: blocked)
    assert claim_version(tmp_path, STAMP) == STAMP
    assert claim_version(tmp_path, STAMP) == STAMP
    assert "is not checked against other runs" in caplog.text
