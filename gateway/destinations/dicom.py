"""DICOM C-STORE destination (PACS, AI engine) over pynetdicom.

One association per batch; one presentation context per (SOP class, transfer syntax)
proposing exactly the file's own syntax, so files are sent as stored, never decoded
(STORE_SEND_CHUNKED_DATASET). A dropped association mid-batch (a known pynetdicom race,
or a peer restart) is reopened once and the unconfirmed instances are resent.
"""

from __future__ import annotations

import logging

from pydicom import Dataset
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association

from gateway.config import DicomDestination
from gateway.dimse import associate, contexts_for, make_ae, verification_context
from gateway.errors import DeliveryError, PermanentError, TransientError
from gateway.queue import Job

log = logging.getLogger(__name__)

MAX_CONTEXTS = 127  # PS3.8 allows 128 per association; one is Verification
WARNINGS = {0xB000, 0xB006, 0xB007}  # coercion / elements discarded / data set mismatch
RECONNECTS_PER_BATCH = 1


def classify(status: int) -> DeliveryError | None:
    """C-STORE response status -> outcome. Out-of-resources is worth retrying; a peer
    that cannot understand or refuses the SOP class will not change its mind."""
    if status == 0x0000 or status in WARNINGS:
        return None
    text = f"C-STORE status 0x{status:04X}"
    if 0xA700 <= status <= 0xA7FF:
        return TransientError(f"{text} (out of resources)")
    if status == 0x0122:
        return PermanentError(f"{text} (SOP class not supported)")
    if 0xA900 <= status <= 0xA9FF:
        return PermanentError(f"{text} (data set does not match SOP class)")
    if 0xC000 <= status <= 0xCFFF:
        return PermanentError(f"{text} (cannot understand)")
    return TransientError(f"{text} (unexpected)")


class DicomStore:
    def __init__(self, name: str, spec: DicomDestination, *, calling_ae: str) -> None:
        self.name = name
        self.spec = spec
        self.calling_ae = calling_ae
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True

    def _open(self, jobs: list[Job]) -> Association:
        s = self.spec
        ae = make_ae(
            self.calling_ae,
            max_pdu=s.max_pdu,
            acse=s.connect_timeout,
            dimse=s.dimse_timeout,
            network=s.dimse_timeout,
        )
        keys = [(j.sop_class_uid, j.transfer_syntax) for j in jobs]
        # Verification rides along: a peer that takes none of the files' contexts then still
        # accepts the association, and each file fails alone with "no accepted context"
        # (permanent) instead of the whole batch looking like an outage (transient).
        contexts = [*contexts_for(keys), verification_context()]
        assoc = associate(ae, s.host, s.port, s.ae_title, contexts)
        if not assoc.is_established:
            why = (
                "rejected"
                if assoc.is_rejected
                else f"no answer within {s.connect_timeout:g} s (down, busy or aborted)"
            )
            raise TransientError(f"association with {s.ae_title}@{s.host}:{s.port} failed: {why}")
        return assoc

    def send(self, jobs: list[Job]) -> dict[int, DeliveryError | None]:
        out: dict[int, DeliveryError | None] = {}
        for chunk in _by_context_limit(jobs):
            self._send_chunk(chunk, out)
        return out

    def _send_chunk(self, jobs: list[Job], out: dict[int, DeliveryError | None]) -> None:
        todo = list(jobs)
        reconnects = 0
        while todo:
            try:
                assoc = self._open(todo)
            except TransientError as exc:
                for job in todo:
                    out[job.id] = exc
                return
            try:
                while todo:
                    job = todo[0]
                    result = self._send_one(assoc, job)
                    if result is _LOST:
                        break
                    out[job.id] = result
                    todo.pop(0)
            finally:
                if assoc.is_established:
                    assoc.release()
                else:
                    assoc.abort()
            if todo:
                reconnects += 1
                if reconnects > RECONNECTS_PER_BATCH:
                    err = TransientError(
                        f"association with {self.spec.ae_title} lost; no response for "
                        f"{todo[0].sop_instance_uid}"
                    )
                    for job in todo:
                        out[job.id] = err
                    return
                log.warning(
                    "%s: association lost before %s was confirmed; reconnecting",
                    self.name,
                    todo[0].sop_instance_uid,
                )

    def _send_one(self, assoc: Association, job: Job):
        try:
            status: Dataset = assoc.send_c_store(job.path)
        except ValueError as exc:  # no accepted presentation context for this file
            return PermanentError(
                f"{self.spec.ae_title} accepts no context for SOP class {job.sop_class_uid} "
                f"in transfer syntax {job.transfer_syntax}: {exc}"
            )
        except (OSError, AttributeError) as exc:
            return PermanentError(f"cannot send spool file {job.path}: {exc}")
        except RuntimeError:  # association no longer established
            return _LOST
        if "Status" not in status:
            return _LOST  # timeout or abort: unconfirmed, resend on a new association
        return classify(int(status.Status))

    def close(self) -> None:
        pass


_LOST = object()


def _by_context_limit(jobs: list[Job]) -> list[list[Job]]:
    """Split a batch so that no association needs more than 128 presentation contexts."""
    chunks: list[list[Job]] = []
    keys: set[tuple[str, str]] = set()
    for job in jobs:
        key = (job.sop_class_uid, job.transfer_syntax)
        if not chunks or (key not in keys and len(keys) >= MAX_CONTEXTS):
            chunks.append([])
            keys = set()
        keys.add(key)
        chunks[-1].append(job)
    return chunks
