"""The spool: where a received file becomes durable before the sender hears Success.

`Spool.accept()` fsyncs the received file (whose writeback `start_writeback()` began while
it arrived), renames it into `spool/objects/`, and commits its queue row together with
whatever concurrent associations queued meanwhile: one directory fsync and one SQLite
commit for the group. Only when that commit returns does `accept()` return; any failure
raises `SpoolError`, the renamed file is removed again, and the front-end answers 0xA700.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.queue import NewInstance, Queue

log = logging.getLogger(__name__)


class SpoolError(Exception):
    """The instance could not be made durable; the sender must keep it."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc: the fsync alone does the work
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing a receive's pages now, without waiting: by the
    time the dataset is complete most of it is on disk and its fsync is short."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / (1024 * 1024)


@dataclass
class _Waiter:
    item: NewInstance
    done: bool = False
    id: int = 0
    error: Exception | None = None


class Spool:
    """Durable placement of received files plus the group commit of their queue rows.

    Group commit without a committer thread: the first association to arrive with nothing
    being committed becomes the leader, commits every row queued meanwhile (one folder
    fsync, one SQLite commit) and wakes the others. A lone sender's instance never waits
    for another thread; concurrent ones share the fsyncs.
    """

    def __init__(
        self,
        spool_dir: Path,
        db_path: Path,
        *,
        min_free_mb: float,
        fsync: bool = True,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.incoming = spool_dir / "incoming"
        self.objects = spool_dir / "objects"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.objects.mkdir(parents=True, exist_ok=True)
        self.min_free_mb = min_free_mb
        self.fsync = fsync
        self._on_commit = on_commit  # e.g. wake the workers
        self._queue = Queue(db_path, fsync=fsync)  # used by the current leader only
        self._cond = threading.Condition()
        self._waiting: list[_Waiter] = []
        self._leading = False

    def has_room(self) -> bool:
        return free_mb(self.objects) >= self.min_free_mb

    def temp_path(self) -> Path:
        """A fresh path in `incoming/` (same file system as `objects/`, so rename is atomic)."""
        return self.incoming / f"{uuid.uuid4().hex}.part"

    def accept(self, received: Path, item: NewInstance) -> int:
        """Make `received` durable and queued; returns the queue id. Raises SpoolError."""
        final = self.objects / f"{uuid.uuid4().hex}.dcm"
        try:
            if self.fsync:
                _fsync_file(received)
            os.rename(received, final)
        except OSError as exc:
            raise SpoolError(f"cannot write spool file: {exc}") from exc
        me = _Waiter(replace(item, path=str(final)))
        with self._cond:
            self._waiting.append(me)
            while not me.done and self._leading:
                self._cond.wait()
            if not me.done:
                self._leading = True
                group, self._waiting = self._waiting, []
        if not me.done:
            self._lead(group)
        if me.error is not None:
            final.unlink(missing_ok=True)
            raise SpoolError(f"cannot commit queue row: {me.error}") from me.error
        return me.id

    def _lead(self, group: list[_Waiter]) -> None:
        try:
            if self.fsync:
                fsync_dir(self.objects)
            ids = self._queue.add_instances([w.item for w in group])
        except Exception as exc:  # every waiter gets the failure, none is left hanging
            log.error("spool commit of %d instance(s) failed: %s", len(group), exc)
            ids, error = [0] * len(group), exc
        else:
            error = None
        with self._cond:
            for w, iid in zip(group, ids, strict=True):
                w.id, w.error, w.done = iid, error, True
            self._leading = False
            self._cond.notify_all()
        if error is None and self._on_commit is not None:
            self._on_commit()

    def close(self) -> None:
        self._queue.close()


def sweep_partials(incoming: Path, max_age: float) -> int:
    """Remove receive files nobody has written for `max_age` s: an association that died
    mid-transfer (abort, full disk) leaves one, and its sender never got Success."""
    cutoff = time.time() - max_age
    removed = 0
    for p in incoming.iterdir():
        try:
            if p.stat().st_mtime < cutoff:
                p.unlink()
                removed += 1
        except FileNotFoundError:
            pass  # renamed into the spool meanwhile
    return removed


def recover(spool_dir: Path, queue: Queue) -> tuple[int, int]:
    """At start, before any listener: drop partial receives and files with no queue row.

    Neither kind ever got Success (the row commit is what makes Success), so the sender
    still has them. `work/` holds copies a worker made by running a rule's actions while
    it sent them; the original stays until delivery, so they go too.
    Returns (partials and work copies removed, orphans removed).
    """
    objects = spool_dir / "objects"
    partials = orphans = 0
    for scratch in (spool_dir / "incoming", spool_dir / "work"):
        if not scratch.is_dir():
            continue
        for p in scratch.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            partials += 1
    if objects.is_dir():
        known = queue.known_paths()
        for p in objects.iterdir():
            if str(p) not in known:
                p.unlink(missing_ok=True)
                orphans += 1
    return partials, orphans
