"""Local archive destination: files laid out as ROOT/study/series/sop.dcm by validated UIDs.

With an index (`gateway.archive.index`, the Q/R archive's) every stored file is indexed
once it is durable; a file the index cannot take is retried (TransientError). The same SOP
Instance UID again follows `duplicates`: overwrite (replace the file), keep_first (keep the
archived one, report delivered) or reject (PermanentError, unless it is the same file
delivered again: the queue is at-least-once).
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import sqlite3
import uuid
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from gateway.archive.index import ArchiveIndex
from gateway.config import Duplicates
from gateway.errors import DeliveryError, PermanentError, TransientError
from gateway.queue import Job
from gateway.spool import fsync_dir
from gateway.uids import is_valid_uid

log = logging.getLogger(__name__)


class ArchiveStore:
    def __init__(
        self,
        name: str,
        root: Path,
        *,
        fsync: bool = True,
        index_db: Path | None = None,
        duplicates: Duplicates = "overwrite",
    ) -> None:
        self.name = name
        self.root = root
        self.fsync = fsync
        self.duplicates = duplicates
        self.index = ArchiveIndex(index_db, fsync=fsync) if index_db is not None else None

    def path_for(self, job: Job) -> Path:
        """Where the instance lives; PermanentError if a UID is not a UID."""
        parts = {
            "StudyInstanceUID": job.study_uid,
            "SeriesInstanceUID": job.series_uid,
            "SOPInstanceUID": job.sop_instance_uid,
        }
        for keyword, uid in parts.items():
            if not is_valid_uid(uid):
                raise PermanentError(f"{keyword} {uid!r} is not a valid UID; not used as a path")
        return self.root / job.study_uid / job.series_uid / f"{job.sop_instance_uid}.dcm"

    def send(self, jobs: list[Job]) -> dict[int, DeliveryError | None]:
        """Place every file, then fsync each folder touched once for the whole batch:
        nothing is reported delivered before its directory entry is durable."""
        out: dict[int, DeliveryError | None] = {}
        folders: dict[Path, list[int]] = {}  # folder to fsync -> jobs depending on it
        placed: dict[str, Job] = {}  # SOP Instance UID -> job whose file was placed
        for job in jobs:
            try:
                self.path_for(job)  # a UID that is not a UID is refused first
                if self.duplicates != "overwrite":
                    earlier = placed.get(job.sop_instance_uid)
                    existing = earlier.path if earlier else self._archived(job)
                    if existing is not None:
                        out[job.id] = self._duplicate(job, existing)
                        continue
                for folder in self._store(job):
                    folders.setdefault(folder, []).append(job.id)
                placed[job.sop_instance_uid] = job
                out[job.id] = None
            except DeliveryError as exc:
                out[job.id] = exc
            except OSError as exc:
                out[job.id] = TransientError(f"archive write failed: {exc}")
        if self.fsync:
            # Deepest first: a new folder's entry in its parent comes after its contents.
            for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
                try:
                    fsync_dir(folder)
                except OSError as exc:
                    for job_id in folders[folder]:
                        out[job_id] = TransientError(f"archive fsync failed: {exc}")
        if self.index is not None:
            self._index([j for j in placed.values() if out[j.id] is None], out)
        return out

    def _archived(self, job: Job) -> str | None:
        """Where this SOP Instance UID is archived already, if it is."""
        if self.index is None:
            target = self.path_for(job)
            return str(target) if target.exists() else None
        stored = self.index.get(job.sop_instance_uid)
        return stored.path if stored is not None and os.path.exists(stored.path) else None

    def _duplicate(self, job: Job, existing: str) -> DeliveryError | None:
        """keep_first or reject: the outcome of an instance that is archived already."""
        if self.duplicates == "keep_first":
            log.info("%s: %s already archived at %s; kept that one (duplicates: keep_first)",
                     self.name, job.sop_instance_uid, existing)  # fmt: skip
            return None
        if os.path.samefile(existing, job.path) or filecmp.cmp(existing, job.path, shallow=False):
            return None  # the same file delivered again
        log.warning("%s: %s rejected: archived already at %s (duplicates: reject)",
                    self.name, job.sop_instance_uid, existing)  # fmt: skip
        return PermanentError(
            f"SOP Instance UID {job.sop_instance_uid} is archived already with other content"
            f" ({existing}); duplicates: reject"
        )

    def _index(self, jobs: list[Job], out: dict[int, DeliveryError | None]) -> None:
        """Index the files placed; a file the index cannot take is stored again later."""
        assert self.index is not None
        entries = []
        for job in jobs:
            target = self.path_for(job)
            try:
                ds = dcmread(target, stop_before_pixels=True, force=True)
                entries.append((ds, target, target.stat().st_size, job.received_at))
            except (InvalidDicomError, OSError, ValueError) as exc:
                log.warning("%s: %s archived but not indexed: %s", self.name,
                            job.sop_instance_uid, exc)  # fmt: skip
        try:
            replaced = self.index.add_many(entries)
        except (sqlite3.Error, OSError, ValueError) as exc:
            for job in jobs:
                out[job.id] = TransientError(f"archive index: {exc}")
            return
        for old in replaced:  # overwritten: a copy elsewhere (a reindexed folder) is superseded
            Path(old.path).unlink(missing_ok=True)
            log.info("%s: %s replaced; its previous file %s removed", self.name,
                     old.sop_instance_uid, old.path)  # fmt: skip

    def _store(self, job: Job) -> list[Path]:
        """Place one file; returns the folders whose entries changed (to be fsync'd)."""
        target = self.path_for(job)
        created = []  # a new folder is durable only once its parent is fsync'd too
        for folder in (target.parent.parent, target.parent):
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                created.append(folder.parent)
        tmp = target.parent / f".{uuid.uuid4().hex}.tmp"
        try:
            # The spool file is already durable; a hard link shares its data at no cost.
            os.link(job.path, tmp)
        except OSError:
            shutil.copyfile(job.path, tmp)
            if self.fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
        os.replace(tmp, target)  # same SOP Instance UID again: replaced, idempotent
        return [target.parent, *created]

    def close(self) -> None:
        if self.index is not None:
            self.index.close()
