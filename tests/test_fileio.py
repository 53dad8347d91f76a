"""oct_vae.framework.fileio: atomic writes and their error messages (failures injected by
tests/helpers/faults.py), the stale-file sweep, the inter-process lock, the host id."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from oct_vae.framework import fileio
from oct_vae.framework.fileio import (
    atomic_write,
    atomic_write_dir,
    sweep_stale_temp_files,
    temp_path,
)
from tests.helpers import faults

REPO = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def temp_files(root: Path) -> list[Path]:
    """Every temporary file or folder of the atomic writer under ``root``."""
    return sorted(p for p in root.rglob(".*.tmp"))


def run_killed(code: str, *args: str, fail: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose writes ``fail`` names are killed
    (``tests.helpers.faults``, e.g. ``kill:x.bin``); expect SIGKILL."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.faults", fail, "-c", code, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    return proc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_creates_the_file_with_the_usual_permissions(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.bin"
    atomic_write(path, lambda tmp: tmp.write_bytes(b"payload"))
    assert path.read_bytes() == b"payload"
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0o600
    assert temp_files(tmp_path) == []


def test_the_temporary_name_carries_the_writer_pid(tmp_path: Path) -> None:
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(b"x")

    atomic_write(tmp_path / "x.bin", write)
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(f".x.bin.{os.getpid()}.")
    assert tmp.name.endswith(".tmp") and not tmp.exists()


def test_a_failing_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half of the new")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        atomic_write(path, write)
    assert path.read_bytes() == b"old" and temp_files(tmp_path) == []


def test_injected_enospc_names_the_path_and_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "models" / "x.pt"
    path.parent.mkdir()
    path.write_bytes(b"old")
    faults.inject(monkeypatch, "enospc:*.pt")
    with pytest.raises(OSError) as err:
        atomic_write(path, lambda tmp: tmp.write_bytes(b"new" * 1000))
    assert err.value.errno == errno.ENOSPC
    assert f"cannot write {path}: No space left on device" in str(err.value)
    assert path.read_bytes() == b"old" and temp_files(tmp_path) == []


def test_fault_injection_hits_matching_names_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults.inject(monkeypatch, "enospc:auc_*.csv")
    atomic_write(tmp_path / "scores.csv", lambda tmp: tmp.write_text("a\n1\n"))
    assert (tmp_path / "scores.csv").read_text() == "a\n1\n"
    with pytest.raises(OSError, match="No space left"):
        atomic_write(tmp_path / "auc_table.csv", lambda tmp: tmp.write_text("a\n1\n"))
    assert not (tmp_path / "auc_table.csv").exists() and temp_files(tmp_path) == []


def test_an_os_error_keeps_its_errno_and_class_and_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"

    def write(tmp: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    with pytest.raises(PermissionError) as err:
        atomic_write(path, write)
    assert err.value.errno == errno.EACCES
    assert f"cannot write {path}: Permission denied" in str(err.value)
    assert isinstance(err.value.__cause__, PermissionError)


def test_a_non_os_error_on_a_full_disk_is_reported_as_enospc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save reports a full disk as RuntimeError("... unexpected pos ...")."""
    path = tmp_path / "vae_model.pt"
    torch_error = RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64")

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise torch_error

    free = {"bytes": 0}
    seen_tmp: list[bool] = []

    def free_bytes(folder: Path) -> int:
        seen_tmp.append(any(temp_files(tmp_path)))  # checked before the temp file goes
        return free["bytes"]

    monkeypatch.setattr(fileio, "_free_bytes", free_bytes)
    with pytest.raises(OSError) as err:
        atomic_write(path, write)
    assert err.value.errno == errno.ENOSPC
    assert str(err.value) == f"[Errno 28] cannot write {path}: No space left on device"
    assert err.value.__cause__ is torch_error and seen_tmp == [True]
    free["bytes"] = 10**9  # space left: the original error, untouched
    with pytest.raises(RuntimeError, match="unexpected pos"):
        atomic_write(path, write)
    assert not path.exists() and temp_files(tmp_path) == []


def test_an_injected_kill_leaves_only_the_temporary_file_which_the_sweep_removes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")
    code = (
        "import sys; from pathlib import Path; from oct_vae.framework.fileio import atomic_write; "
        "atomic_write(sys.argv[1], lambda tmp: Path(tmp).write_bytes(b'new' * 1000))"
    )
    run_killed(code, str(path), fail="kill:x.bin")
    assert path.read_bytes() == b"old"
    (left,) = temp_files(tmp_path)
    assert 0 < left.stat().st_size < 3000  # a partial write, as a crash leaves it
    assert sweep_stale_temp_files(tmp_path) == [left]
    assert temp_files(tmp_path) == [] and path.read_bytes() == b"old"


def test_the_sweep_removes_dead_writers_files_and_keeps_live_ones(tmp_path: Path) -> None:
    dead = dead_pid()
    version = tmp_path / "t.csv" / "2024-01-02T00.00.00.000Z"
    version.mkdir(parents=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    dead_in_version = temp_path(version / "t.csv", pid=dead)
    dead_plain = temp_path(plain / "a.png", pid=dead)
    dead_dir = temp_path(plain / "figs", pid=dead)
    live = temp_path(plain / "b.png")  # this test process: alive
    other_host = plain / f".c.png.{dead}.00000000.0123abcd.tmp"
    unrelated = plain / ".hidden.tmp"
    for p in (dead_in_version, dead_plain, live, other_host, unrelated):
        p.write_bytes(b"x")
    dead_dir.mkdir()
    (dead_dir / "0.png").write_bytes(b"x")

    removed = sweep_stale_temp_files(tmp_path)

    assert removed == sorted([dead_in_version, dead_plain, dead_dir])
    assert not version.exists()  # the emptied version folder goes too
    assert plain.is_dir()  # a folder that is not a version stays
    assert all(p.exists() for p in (live, other_host, unrelated))
    assert sweep_stale_temp_files(tmp_path) == []
    assert sweep_stale_temp_files(tmp_path / "missing") == []


def test_atomic_write_dir_appears_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write(folder: Path) -> None:
        (folder / "sub").mkdir()
        (folder / "0.png").write_bytes(b"zero")
        (folder / "sub" / "1.png").write_bytes(b"one")

    atomic_write_dir(tmp_path / "figs", write)
    assert (tmp_path / "figs" / "sub" / "1.png").read_bytes() == b"one"
    faults.inject(monkeypatch, "enospc:figs2")
    with pytest.raises(OSError, match=r"cannot write .*figs2: No space left on device"):
        atomic_write_dir(tmp_path / "figs2", write)
    assert not (tmp_path / "figs2").exists() and temp_files(tmp_path) == []


_HOLDER = """
import sys
from oct_vae.framework.fileio import interprocess_lock
with interprocess_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _try_lock(path: Path) -> bool:
    import fcntl

    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return True


@pytest.mark.parametrize("end", ["release", "kill"])
def test_interprocess_lock_excludes_other_processes_until_released_or_dead(tmp_path, end):
    path = tmp_path / "locks" / "setup.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not _try_lock(path)  # held by the other process
        if end == "release":
            holder.stdin.write("\n")
            holder.stdin.flush()
        else:
            holder.kill()  # a holder that dies never leaves the lock held
        holder.wait(timeout=30)
        assert _try_lock(path)
        with fileio.interprocess_lock(path):
            assert not _try_lock(path)  # this process holds it now
        assert _try_lock(path)
    finally:
        if holder.poll() is None:
            holder.kill()


def test_machine_lock_paths_are_per_kind_project_and_user(tmp_path, monkeypatch):
    import tempfile

    from oct_vae.framework.fileio import machine_lock_path

    a = machine_lock_path("session-ids", tmp_path / "p")
    monkeypatch.chdir(tmp_path)
    assert machine_lock_path("session-ids", "p") == a  # the same project, however spelled
    assert machine_lock_path("mlflow-setup", tmp_path / "p") != a
    assert machine_lock_path("session-ids", tmp_path / "q") != a
    assert a.parent == Path(tempfile.gettempdir())
    assert f"-{os.getuid()}-" in a.name and a.name.startswith("oct-vae-session-ids-")


def test_where_no_lock_can_be_taken_the_block_never_runs_unlocked(tmp_path, monkeypatch):
    import filelock

    ran = []
    monkeypatch.setattr(filelock, "has_fcntl", False)  # a POSIX system without fcntl
    with pytest.raises(OSError) as err, fileio.interprocess_lock(tmp_path / "a.lock"):
        ran.append("a")
    assert err.value.errno == errno.ENOLCK and "no fcntl" in str(err.value)
    monkeypatch.undo()

    class NoFlock:  # a file system without flock (filelock reports ENOSYS)
        def acquire(self):
            raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fileio, "_os_file_lock", lambda path: NoFlock())
    with pytest.raises(OSError) as err, fileio.interprocess_lock(tmp_path / "b.lock"):
        ran.append("b")
    assert err.value.errno == errno.ENOLCK
    assert str(err.value).startswith(f"[Errno {errno.ENOLCK}] cannot lock {tmp_path / 'b.lock'}")
    assert ran == []


def test_temporary_names_carry_the_host_id():
    host = fileio.host_id()
    assert len(host) == 8 and int(host, 16) >= 0
    assert temp_path("x.bin").name.split(".")[-3] == host
