"""Archive retention: delete whole studies, oldest first, by age, archive size or free disk.

Oldest is by study date (a study without one: by when it was last received) or by received
time (`age_by`). Never deleted: an instance whose SOP Instance UID the queue still holds
(any destination has not received it yet, or it is dead-lettered or unmatched: an admin
may still act on it), a protected study (the `archive_protected` table, or the policy's
`protect` list), a file outside the archive's root.

Safe against a concurrent resend of the same instance: the queue check, the index rows'
deletion and the files' rename into the hidden `.deleted` folder happen in one transaction
on the shared database, and the archive destination indexes a file only after checking,
under the same lock, that it is still there (else it stores it again). A run that dies
between its commit and its unlinks leaves files in `.deleted`; the next run removes them. Each deletion is logged with its
study, series and SOP Instance UID and reason, and counted in
`gateway_archive_deleted_instances_total{reason}`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway import metrics
from gateway.archive.index import ArchiveIndex
from gateway.config import ArchiveRetention

log = logging.getLogger(__name__)

GB = 10**9
AGE, SIZE, FREE_DISK = "age", "size", "free_disk"
_QUEUE_CHUNK = 500
TRASH = ".deleted"  # under the archive root; reindex skips hidden names
TRASH_GRACE_S = 600.0


@dataclass
class RetentionReport:
    deleted: dict[str, int] = field(default_factory=dict)  # reason -> instances deleted
    freed_bytes: int = 0
    studies: int = 0  # studies a limit reached (deleted wholly or in part)
    kept_undelivered: int = 0  # instances kept because the queue still holds them
    kept_protected: int = 0  # instances of protected studies a limit reached
    problems: list[str] = field(default_factory=list)  # files that could not be removed


def protect(index: ArchiveIndex, study_uid: str, reason: str = "") -> None:
    """Keep a study whatever the retention policy says (until unprotect)."""
    with index.transaction() as c:
        c.execute(
            "INSERT INTO archive_protected (study_uid, reason, added_at) VALUES (?, ?, ?)"
            " ON CONFLICT (study_uid) DO UPDATE SET reason = excluded.reason",
            (study_uid, reason, time.time()),
        )


def unprotect(index: ArchiveIndex, study_uid: str) -> bool:
    """False if the study was not protected."""
    with index.transaction() as c:
        cur = c.execute("DELETE FROM archive_protected WHERE study_uid = ?", (study_uid,))
        return cur.rowcount > 0


def protected(index: ArchiveIndex) -> dict[str, str]:
    """Protected Study Instance UIDs and why."""
    return dict(index.conn.execute("SELECT study_uid, reason FROM archive_protected"))


def _free_bytes(root: Path) -> int:
    return shutil.disk_usage(root).free


def apply_retention(
    index: ArchiveIndex,
    policy: ArchiveRetention,
    root: Path,
    *,
    now: float | None = None,
    free_bytes: Callable[[Path], int] = _free_bytes,
) -> RetentionReport:
    """Delete what the policy asks for, oldest study first; see the module docstring.

    The queue consulted is the one in the index's database (the gateway keeps both in
    cfg.db_path), which is what makes its check and the deletion one transaction."""
    report = RetentionReport()
    now = time.time() if now is None else now
    _empty_trash(root)
    keep = set(policy.protect) | set(protected(index))
    age_cut = None
    if policy.max_age_days is not None:
        age_cut = now - policy.max_age_days * 86400
    if policy.age_by == "study_date":
        order = (
            "CASE WHEN study_date != '' THEN study_date"
            " ELSE strftime('%Y%m%d', received_at, 'unixepoch', 'localtime') END"
        )
        cut = time.strftime("%Y%m%d", time.localtime(age_cut)) if age_cut else None
    else:
        order = "received_at"
        cut = age_cut
    studies = index.conn.execute(
        f"SELECT id, study_uid, {order}, n_instances FROM archive_studies"
        f" ORDER BY {order}, received_at, id"
    ).fetchall()
    total = index.conn.execute("SELECT coalesce(sum(size), 0) FROM archive_studies").fetchone()[0]
    for study_id, study_uid, age_key, n_instances in studies:
        if cut is not None and age_key < cut:
            reason = AGE
        elif policy.max_size_gb is not None and total > policy.max_size_gb * GB:
            reason = SIZE
        elif policy.min_free_gb is not None and free_bytes(root) < policy.min_free_gb * GB:
            reason = FREE_DISK
        else:
            break  # every later study is younger: no limit reaches it
        report.studies += 1
        if study_uid in keep:
            report.kept_protected += n_instances
            log.info("retention (%s): study %s is protected; kept", reason, study_uid)
            continue
        total -= _delete_study(index, study_id, study_uid, reason, root, report)
    return report


def _delete_study(
    index: ArchiveIndex,
    study_id: int,
    study_uid: str,
    reason: str,
    root: Path,
    report: RetentionReport,
) -> int:
    """Delete a study's deletable instances; returns the bytes freed."""
    inside = os.path.join(os.path.abspath(root), "")
    trash_dir = _trash(root)
    trash: list[tuple[str, str]] = []  # (name in the trash folder, original path)
    with index.transaction() as c:
        rows = c.execute(
            "SELECT i.id, i.sop_uid, i.path, r.series_uid FROM archive_instances i"
            " JOIN archive_series r ON r.id = i.series_ref WHERE r.study_ref = ?",
            (study_id,),
        ).fetchall()
        queued = _queued(c, [r[1] for r in rows])
        report.kept_undelivered += sum(1 for r in rows if r[1] in queued)
        chosen = []
        try:
            for iid, sop_uid, path, series_uid in rows:
                if sop_uid in queued:
                    continue
                if not os.path.abspath(path).startswith(inside):
                    report.problems.append(f"{path}: outside the archive {root}; not deleted")
                    continue
                hidden = os.path.join(trash_dir, f"{uuid.uuid4().hex}.deleted")
                try:
                    os.rename(path, hidden)
                    trash.append((hidden, path))
                except FileNotFoundError:
                    pass  # gone already: only the index row is left to remove
                except OSError as exc:
                    report.problems.append(f"{path}: not deleted: {exc}")
                    continue
                chosen.append((iid, sop_uid, series_uid))
            removed = index.delete_rows(c, [iid for iid, _, _ in chosen])
        except BaseException:
            for hidden, path in trash:  # the rows stay: so must the files
                os.rename(hidden, path)
            raise
    for hidden, _ in trash:
        os.unlink(hidden)
    folders = {os.path.dirname(p) for _, p in trash}
    for folder in sorted(folders, key=len, reverse=True):
        for empty in (folder, os.path.dirname(folder)):
            if os.path.abspath(empty).startswith(inside):
                with contextlib.suppress(OSError):  # not empty: other instances stay
                    os.rmdir(empty)
    for _, sop_uid, series_uid in chosen:
        log.info("retention (%s): deleted %s (study %s, series %s)",
                 reason, sop_uid, study_uid, series_uid)  # fmt: skip
    freed = sum(s.size for s in removed)
    report.deleted[reason] = report.deleted.get(reason, 0) + len(removed)
    report.freed_bytes += freed
    metrics.ARCHIVE_DELETED.labels(reason=reason).inc(len(removed))
    return freed


def _trash(root: Path) -> str:
    """The hidden folder (same file system) where a deletion's files wait for its commit."""
    folder = os.path.join(root, TRASH)
    os.makedirs(folder, exist_ok=True)
    return folder


def _empty_trash(root: Path) -> None:
    """Files left in the trash by a retention run that died between its commit and its
    unlinks. Only old ones: a run in another process may still roll its renames back."""
    folder = Path(root) / TRASH
    if not folder.is_dir():
        return
    cutoff = time.time() - TRASH_GRACE_S
    for p in folder.iterdir():
        with contextlib.suppress(OSError):
            if p.stat().st_ctime < cutoff:  # ctime: when it was renamed in
                p.unlink()
                log.info("retention: removed %s, left by an interrupted run", p.name)


def _queued(c: sqlite3.Connection, sop_uids: list[str]) -> set[str]:
    """The SOP Instance UIDs the queue still holds (its rows go once all jobs are done)."""
    if not c.execute("SELECT 1 FROM sqlite_master WHERE name = 'instances'").fetchone():
        return set()
    out: set[str] = set()
    for start in range(0, len(sop_uids), _QUEUE_CHUNK):
        chunk = sop_uids[start : start + _QUEUE_CHUNK]
        out.update(
            r[0]
            for r in c.execute(
                f"SELECT sop_instance_uid FROM instances WHERE sop_instance_uid IN"
                f" ({','.join('?' * len(chunk))})",
                chunk,
            )
        )
    return out
