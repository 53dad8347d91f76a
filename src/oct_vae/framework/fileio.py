"""Atomic file writes: a crash never leaves a half-written file.

``atomic_write(path, write)`` has ``write`` fill a temporary file in the folder of ``path``,
fsyncs it and renames it onto ``path`` (``atomic_write_dir`` does the same for a folder of
files). Readers see the old file or the complete new one, never a partial one; after a
failure (full disk, exception) the temporary file is removed and ``path`` is untouched.

Temporary files are named ``.{name}.{pid}.{host}.{random}.tmp``: ``name`` is the final
file's name, ``pid`` the writing process, ``host`` a hash of this machine's host name (and
PID namespace) and ``random`` eight hex digits. A process killed mid-write (SIGKILL, power
loss, OOM killer) leaves its temporary file behind; ``sweep_stale_temp_files(root)``
removes those whose writer is dead, and never the file of a live writer, so it is safe
while other runs write. Kedro never takes such a leftover for a version: it globs
``<filepath>/*/<name>``, and a version folder holding only a temporary file does not match.

Write errors name the file: an ``OSError`` during the write re-raises as an ``OSError`` of
the same errno (and class) whose message is ``cannot write <path>: <OS reason>``. When the
write callback fails with another exception (``torch.save`` raises ``RuntimeError``
"unexpected pos" on a full disk) while the file system has (almost) no free space left,
the error is ``OSError(ENOSPC, "cannot write <path>: No space left on device")``, chained
to the original; otherwise the original exception propagates unchanged.

Also here: the lock that makes processes of this machine take turns
(``interprocess_lock``, on ``filelock``), and the id of this host (``host_id``) that
temporary names and MLflow run tags carry.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock

# Below this many free bytes a failed write is reported as a full disk.
DISK_FULL_BYTES = 1 << 20


def host_id() -> str:
    """This host, for telling whose process ids a name or a tag holds: eight hex digits of
    a hash of the host name and, on Linux, the PID namespace (containers may share a host
    name and a data folder, but not their process ids)."""
    try:
        pid_namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_namespace = ""
    key = f"{socket.gethostname()}\0{pid_namespace}".encode()
    return hashlib.blake2s(key, digest_size=4).hexdigest()


_HOST = host_id()
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.(?P<host>[0-9a-f]{8})\.[0-9a-f]{8}\.tmp$")
_MAX_NAME = 200  # keeps the temporary name within the usual 255-byte limit
# A Kedro version folder (kedro.io.core.generate_timestamp), e.g. 2024-01-15T10.30.00.000Z.
_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}\.\d{2}\.\d{2}\.\d{3}Z$")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it, rename it to ``path``.

    The rename is atomic on POSIX file systems: readers see the old file or the new one.
    The temporary file exists (empty) when ``write`` is called; ``write`` may reopen it
    for writing (e.g. ``open(tmp, "w")``). The new file gets the usual permissions
    (``0o666`` less the umask), like a file written directly.

    Raises:
        OSError: The write failed; the message names ``path`` (see the module docstring).
    """
    path = Path(path)
    _write_and_rename(path, _create_temp(path, directory=False), write, _fsync, os.replace)


def atomic_write_dir(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_dir)`` on a temporary folder next to ``path``, then rename it to ``path``.

    Every file under the folder is fsynced before the rename. ``path`` must not exist or be
    an empty folder: a whole folder appears at once or not at all.

    Raises:
        OSError: The write failed or ``path`` is a non-empty folder; the message names
            ``path``.
    """
    path = Path(path)
    _write_and_rename(path, _create_temp(path, directory=True), write, _fsync_tree, os.rename)


def _write_and_rename(
    path: Path,
    tmp: Path,
    write: Callable[[Path], None],
    sync: Callable[[Path], None],
    rename: Callable[[Path, Path], None],
) -> None:
    """``write(tmp)``, ``sync(tmp)``, ``rename(tmp, path)``; on any failure remove ``tmp``
    and raise an error naming ``path``."""
    try:
        write(tmp)
        sync(tmp)
        rename(tmp, path)
    except BaseException as exc:
        error = _write_error(path, exc)
        _remove(tmp)
        if error is not None:
            raise error from exc
        raise
    _fsync_dir(path.parent)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder, name))
        _fsync_dir(Path(folder))


def temp_path(path: str | os.PathLike, pid: int | None = None) -> Path:
    """A fresh temporary name for ``path`` (same folder), as ``atomic_write`` uses.

    ``pid`` is the writer's process id, this process's by default.
    """
    path = Path(path)
    name = path.name[:_MAX_NAME]
    pid = os.getpid() if pid is None else pid
    return path.with_name(f".{name}.{pid}.{_HOST}.{secrets.token_hex(4)}.tmp")


def sweep_stale_temp_files(root: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (and folders) of dead writers under ``root``.

    Only temporary names of this module written on this host are considered; one is
    removed when its writer process no longer exists. A live writer's file is never
    touched (a process id reused by another process keeps the file: the safe side).
    A Kedro version folder (``<timestamp>``) left empty by the removal is removed too,
    although Kedro ignores it anyway (it globs ``<filepath>/*/<name>``).

    Returns:
        The removed temporary paths, sorted.
    """
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for folder, dirs, files in os.walk(root):
        for name in list(dirs):
            if _TEMP_RE.match(name):
                dirs.remove(name)  # never descend into a temporary folder
                if _is_stale(name):
                    shutil.rmtree(Path(folder, name), ignore_errors=True)
                    if not Path(folder, name).exists():
                        removed.append(Path(folder, name))
        for name in files:
            if _is_stale(name):
                try:
                    Path(folder, name).unlink()
                except OSError:
                    continue  # removed meanwhile (by another sweep), or not ours to remove
                removed.append(Path(folder, name))
    for parent in {p.parent for p in removed}:
        if _VERSION_RE.match(parent.name):
            with contextlib.suppress(OSError):  # not empty: a version, or a new writer
                parent.rmdir()
    return sorted(removed)


def check_writable(folder: str | os.PathLike, what: str = "files") -> None:
    """Create ``folder`` and write (then remove) a probe file in it.

    Raises:
        OSError: Same errno, ``cannot write <what> to <folder>: <OS reason>``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_path(folder / "write-probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise type(exc)(
            exc.errno, f"cannot write {what} to {folder}: {exc.strerror or exc}"
        ) from exc


def machine_lock_path(kind: str, key: str | os.PathLike) -> Path:
    """A lock file in the temporary folder for ``kind`` (``mlflow-setup``, ``session-ids``)
    and the folder ``key`` (a project): one per OS user, since another user's file in a
    shared temporary folder is not writable. The project itself holds no runtime files."""
    digest = hashlib.sha1(str(Path(key).resolve()).encode()).hexdigest()[:16]
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"oct-vae-{kind}-{user}-{digest}.lock"


@contextlib.contextmanager
def interprocess_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if needed) for the ``with`` block.

    Processes on this machine that take the same lock run their blocks one at a time; the
    lock is the operating system's (``flock`` on POSIX, ``msvcrt`` on Windows, through
    ``filelock``), so it dies with its holder and a killed process never leaves it held.

    Raises:
        OSError: ``ENOLCK`` where no such lock exists (no ``fcntl`` outside Windows, or a
            file system without ``flock``): the block is never run unlocked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _os_file_lock(path)
    try:
        lock.acquire()
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
            raise
        raise _no_lock(path, exc.strerror or str(exc)) from exc
    try:
        yield
    finally:
        lock.release()


def _os_file_lock(path: Path) -> filelock.BaseFileLock:
    if sys.platform == "win32":  # pragma: no cover - not POSIX
        return filelock.WindowsFileLock(path, fallback_to_soft=False)
    if not filelock.has_fcntl:  # pragma: no cover - e.g. WebAssembly
        raise _no_lock(path, "this platform has no fcntl")
    # No soft (marker file) fallback: a marker outlives a killed holder.
    return filelock.UnixFileLock(path, fallback_to_soft=False)


def _no_lock(path: Path, reason: str) -> OSError:
    return OSError(errno.ENOLCK, f"cannot lock {path}: {reason}; processes could not take turns")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (``True`` when it cannot be told)."""
    if pid == os.getpid():
        return True
    if pid <= 0 or os.name != "posix":  # os.kill(pid, 0) would terminate on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def _is_stale(name: str) -> bool:
    match = _TEMP_RE.match(name)
    return bool(match) and match["host"] == _HOST and not pid_alive(int(match["pid"]))


def _create_temp(path: Path, directory: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        tmp = temp_path(path)
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                os.close(os.open(tmp, flags, 0o666))
            return tmp
        except FileExistsError:
            continue
        except FileNotFoundError:  # the folder vanished (an empty folder swept meanwhile)
            if attempt:
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(path, exc) from exc
    raise FileExistsError(errno.EEXIST, f"cannot write {path}: no free temporary name")


def _write_error(path: Path, exc: BaseException) -> OSError | None:
    """The error to raise for ``exc`` (``None``: re-raise ``exc`` itself)."""
    if isinstance(exc, OSError):
        return _os_error(path, exc)
    if isinstance(exc, Exception) and _disk_full(path.parent):
        # checked before the temporary file is removed, which frees the space again
        return OSError(errno.ENOSPC, f"cannot write {path}: {os.strerror(errno.ENOSPC)}")
    return None


def _os_error(path: Path, exc: OSError) -> OSError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno is None:
        return OSError(f"cannot write {path}: {reason}")
    return OSError(exc.errno, f"cannot write {path}: {reason}")


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on Windows
        return None
    return st.f_bavail * st.f_frsize


def _disk_full(folder: Path) -> bool:
    free = _free_bytes(folder)
    return free is not None and free < DISK_FULL_BYTES


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(tmp: Path) -> None:
    try:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    except OSError:
        pass  # never hide the write's own error
