"""Local archive destination: files laid out as ROOT/study/series/sop.dcm by validated UIDs."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from gateway.errors import DeliveryError, PermanentError, TransientError
from gateway.queue import Job
from gateway.spool import fsync_dir
from gateway.uids import is_valid_uid


class ArchiveStore:
    def __init__(self, name: str, root: Path, *, fsync: bool = True) -> None:
        self.name = name
        self.root = root
        self.fsync = fsync

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
        for job in jobs:
            try:
                for folder in self._store(job):
                    folders.setdefault(folder, []).append(job.id)
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
        return out

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
        pass
