"""The spool: where a received file becomes durable before the sender hears Success.

`Spool.accept()` fsyncs the received file, renames it into `spool/objects/`, and hands the
queue row to a committer thread. The committer groups whatever arrived meanwhile from
concurrent associations: one directory fsync and one SQLite commit for the group. Only
when that commit returns does `accept()` return; any failure raises `SpoolError`, the
renamed file is removed again, and the front-end answers 0xA700.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue as stdqueue
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
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


class Spool:
    """Durable placement of received files plus the group commit of their queue rows."""

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
        self._db_path = db_path
        self._on_commit = on_commit  # e.g. wake the workers
        self._pending: stdqueue.SimpleQueue[tuple[NewInstance, Future[int]] | None] = (
            stdqueue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._commit_loop, name="spool-commit", daemon=True)
        self._thread.start()
        self._flusher = ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-fsync")

    def has_room(self) -> bool:
        return free_mb(self.objects) >= self.min_free_mb

    def temp_path(self) -> Path:
        """A fresh path in `incoming/` (same file system as `objects/`, so rename is atomic)."""
        return self.incoming / f"{uuid.uuid4().hex}.part"

    def begin(self, received: Path) -> Future[None]:
        """Start flushing `received` to disk; the caller reads its header meanwhile (the
        fsync is the longest step of a receive, and it does not hold the GIL)."""
        if not self.fsync:
            done: Future[None] = Future()
            done.set_result(None)
            return done
        return self._flusher.submit(_fsync_file, received)

    def accept(self, received: Path, item: NewInstance, flushed: Future[None] | None = None) -> int:
        """Make `received` durable and queued; returns the queue id. Raises SpoolError.

        `flushed` is `begin(received)` when the caller started the flush already."""
        final = self.objects / f"{uuid.uuid4().hex}.dcm"
        try:
            (flushed or self.begin(received)).result()
            os.rename(received, final)
        except OSError as exc:
            raise SpoolError(f"cannot write spool file: {exc}") from exc
        future: Future[int] = Future()
        self._pending.put((replace(item, path=str(final)), future))
        try:
            return future.result()
        except Exception as exc:
            final.unlink(missing_ok=True)
            raise SpoolError(f"cannot commit queue row: {exc}") from exc

    def close(self) -> None:
        self._pending.put(None)
        self._thread.join(timeout=10)
        self._flusher.shutdown(wait=True)

    def _commit_loop(self) -> None:
        q = Queue(self._db_path, fsync=self.fsync)
        while True:
            first = self._pending.get()
            if first is None:
                break
            group = [first]
            while True:
                try:
                    more = self._pending.get_nowait()
                except stdqueue.Empty:
                    break
                if more is None:
                    self._pending.put(None)
                    break
                group.append(more)
            try:
                # The folder's fsync (the renames) and the row commit run side by side:
                # Success waits for both, and recover() drops a row whose file a power cut
                # took before the folder was synced.
                dir_synced = self._flusher.submit(fsync_dir, self.objects) if self.fsync else None
                try:
                    ids = q.add_instances([item for item, _ in group])
                finally:
                    if dir_synced is not None:
                        dir_synced.result()
            except Exception as exc:  # every waiter gets the failure, none is left hanging
                log.error("spool commit of %d instance(s) failed: %s", len(group), exc)
                for _, fut in group:
                    fut.set_exception(exc)
                continue
            for (_, fut), iid in zip(group, ids, strict=True):
                fut.set_result(iid)
            if self._on_commit is not None:
                self._on_commit()
        q.close()


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
    still has them. Returns (partials removed, orphans removed).
    """
    incoming, objects = spool_dir / "incoming", spool_dir / "objects"
    partials = orphans = 0
    if incoming.is_dir():
        for p in incoming.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            partials += 1
    for uid in queue.drop_unrouted_missing():
        log.warning("spool recovery: %s was committed but its file is gone; dropped", uid)
    if objects.is_dir():
        known = queue.known_paths()
        for p in objects.iterdir():
            if str(p) not in known:
                p.unlink(missing_ok=True)
                orphans += 1
    return partials, orphans
