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
        out: dict[int, DeliveryError | None] = {}
        for job in jobs:
            try:
                self._store(job)
                out[job.id] = None
            except DeliveryError as exc:
                out[job.id] = exc
            except OSError as exc:
                out[job.id] = TransientError(f"archive write failed: {exc}")
        return out

    def _store(self, job: Job) -> None:
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
        if self.fsync:
            for folder in (target.parent, *reversed(created)):
                fsync_dir(folder)

    def close(self) -> None:
        pass
