"""How the workspace meets its file system: SQLite's errors said as their causes (disk full,
locked by another process, read-only), writes that say so too, read-only detection, and the lock
that keeps ``Workspace.cleanup`` away from files a live writer is still using."""

from __future__ import annotations

import errno
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from maskformer.data.coco import atomic_write_bytes
from maskformer.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class WorkspaceError(UserError):
    """A workspace operation that cannot be done (unknown image or category, bad annotation)."""


class WorkspaceLockedError(WorkspaceError):
    """Another process held the workspace's write lock for longer than the wait allows."""


class WorkspaceFullError(WorkspaceError):
    """The disk (or the database's size limit) is full: nothing of the write was kept."""


class WorkspaceReadOnlyError(WorkspaceError):
    """The workspace is on a read-only file system or not writable by this process."""


BUSY_WAIT = 1.0  # seconds SQLite itself waits for a lock before _begin retries
FILES_LOCK = ".files.lock"
FULL_BELOW = 4 << 20  # bytes free under which an I/O error is taken for a full disk
READ_ONLY = (
    "the workspace {root} is read-only: viewing and exporting to another folder work, "
    "saving and importing do not"
)


def sqlite_code(e: sqlite3.Error) -> int:
    return (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF  # primary result code


def explain(e: sqlite3.DatabaseError, root: Path) -> WorkspaceError:
    """A WorkspaceError that names the cause of a SQLite error."""
    code = sqlite_code(e)
    # A full file system reaches SQLite as SQLITE_FULL, or as SQLITE_IOERR when it hits the WAL
    # or its shared-memory file; free space tells the two I/O errors apart.
    if code == sqlite3.SQLITE_FULL or (code == sqlite3.SQLITE_IOERR and nearly_full(root)):
        return WorkspaceFullError(
            f"disk full: the workspace {root} could not be written; nothing was changed"
        )
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return WorkspaceLockedError(
            "the workspace is locked by another process; nothing was changed: try again"
        )
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN):
        return WorkspaceReadOnlyError(READ_ONLY.format(root=root) + f" ({e})")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return WorkspaceError(f"{root / 'workspace.sqlite'} is damaged or not a database ({e})")
    return WorkspaceError(f"the workspace database failed: {e}")


def nearly_full(root: Path) -> bool:
    try:
        return shutil.disk_usage(root).free < FULL_BELOW
    except OSError:
        return False


def write_file(path: Path, data: bytes) -> None:
    """atomic_write_bytes, with a full disk and a read-only folder said as such."""
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise WorkspaceFullError(
                f"disk full: cannot write {path.name} into the workspace; nothing was changed"
            ) from None
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise WorkspaceReadOnlyError(f"cannot write into {path.parent}: {e.strerror}") from None
        raise


def writable(root: Path, db_path: Path) -> bool:
    """Whether this process can create files in ``root`` (made if missing) and write the DB."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
        if db_path.exists():
            with open(db_path, "r+b"):
                pass
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return False
        raise WorkspaceError(f"{root}: cannot open the workspace ({e.strerror})") from None
    return True


def read_only_uri(db_path: Path) -> str:
    """A read-only SQLite URI. WAL needs its -shm file; where it cannot exist (a read-only
    folder), the file is opened as immutable, which is true while nothing can write it."""
    uri = f"file:{quote(str(db_path.resolve()))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True)
        try:
            con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:
        uri = f"file:{quote(str(db_path.resolve()))}?immutable=1"
    return uri


@contextmanager
def flock(path: Path, *, shared: bool, wait: bool) -> Iterator[bool]:
    """An advisory lock on ``path`` between processes; yields whether it was taken."""
    if fcntl is None:  # no fcntl (Windows): nothing is shared, cleanup runs anyway
        yield True
        return
    with open(path, "a+b") as f:
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(f.fileno(), flags)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
