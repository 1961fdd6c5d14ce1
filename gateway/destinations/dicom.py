"""DICOM C-STORE destination (PACS, AI engine).

One association per batch; one presentation context per (SOP class, transfer syntax): the
file's own syntax first, then Explicit and Implicit VR Little Endian as fallbacks, each in a
context of its own (PITFALLS.md: offered together, a peer may pick Implicit). When the peer
accepts the file's own syntax the file is sent as stored, never decoded (`gateway.requestor`
frames the file's bytes); when it accepts only a fallback, the instance is transcoded
(`gateway.transcode`) and sent from memory, and one that cannot be is a permanent failure
that says why. A dropped association mid-batch (a peer restart, a timeout) is reopened once
and the unconfirmed instances are resent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.config import DicomDestination
from gateway.errors import DeliveryError, PermanentError, TransientError
from gateway.queue import Job
from gateway.requestor import AssociationFailed, Lost, NotPart10, StoreRequestor
from gateway.transcode import TranscodeError, TranscodeSpec, part10_bytes, transcode

log = logging.getLogger(__name__)

MAX_CONTEXTS = 127  # PS3.8 allows 128 per association; one is Verification
WARNINGS = {0xB000, 0xB006, 0xB007}  # coercion / elements discarded / data set mismatch
RECONNECTS_PER_BATCH = 1
#: Proposed beside each file's own syntax, in this order of preference; every SCP must take
#: Implicit VR Little Endian (PS3.5 10.1).
FALLBACK_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


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


class Sendable(Protocol):
    """What sending one stored instance needs: a queue job, or an archived instance that a
    C-MOVE or C-GET sends."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


S = TypeVar("S", bound=Sendable)


class DicomStore:
    def __init__(self, name: str, spec: DicomDestination, *, calling_ae: str) -> None:
        self.name = name
        self.spec = spec
        self.calling_ae = calling_ae

    def _open(self, items: Sequence[Sendable]) -> StoreRequestor:
        s = self.spec
        # Verification rides along (the requestor adds it): a peer that takes none of the
        # files' contexts then still accepts, and each file fails alone with "no accepted
        # context" (permanent) instead of the whole batch looking like an outage.
        try:
            return StoreRequestor.open(
                (s.host, s.port),
                s.ae_title,
                self.calling_ae,
                list(dict.fromkeys(key for item in items for key in _contexts(item))),
                max_pdu=s.max_pdu,
                connect_timeout=s.connect_timeout,
                dimse_timeout=s.dimse_timeout,
            )
        except AssociationFailed as exc:
            raise TransientError(f"association failed: {exc}") from exc

    def send(self, jobs: list[Job]) -> dict[int, DeliveryError | None]:
        return {job.id: outcome for job, outcome in self.send_each(jobs)}

    def send_each(self, items: Sequence[S]) -> Iterator[tuple[S, DeliveryError | None]]:
        """Each item's outcome as soon as it is known (a C-MOVE reports progress)."""
        for chunk in _by_context_limit(items):
            yield from self._send_chunk(chunk)

    def _send_chunk(self, items: list[S]) -> Iterator[tuple[S, DeliveryError | None]]:
        todo = list(items)
        reconnects = 0
        lost: Lost | None = None
        while todo:
            try:
                assoc = self._open(todo)
            except TransientError as exc:
                for item in todo:
                    yield item, exc
                return
            try:
                while todo:
                    result = send_one(assoc, todo[0], self.name, self.spec.ae_title)
                    if isinstance(result, Lost):
                        lost = result
                        break
                    yield todo.pop(0), result
            finally:
                if todo:
                    assoc.abort()
                else:
                    assoc.release()
            if todo:
                reconnects += 1
                if reconnects > RECONNECTS_PER_BATCH:
                    err = TransientError(
                        f"association with {self.spec.ae_title} lost twice; "
                        f"{todo[0].sop_instance_uid} unconfirmed: {lost}"
                    )
                    for item in todo:
                        yield item, err
                    return
                log.warning(
                    "%s: association lost before %s was confirmed (%s); reconnecting",
                    self.name,
                    todo[0].sop_instance_uid,
                    lost,
                )

    def close(self) -> None:
        pass


def send_one(
    assoc: StoreRequestor, item: Sendable, who: str, peer_ae: str
) -> DeliveryError | Lost | None:
    """C-STORE one stored instance on an open association: as stored when the peer took
    its syntax, else transcoded to a fallback it took. `who` names us in the log."""
    try:
        if assoc.accepts(item.sop_class_uid, item.transfer_syntax):
            status, comment = assoc.store(
                Path(item.path), item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax
            )
        else:
            sent = _store_transcoded(assoc, item, who, peer_ae)
            if isinstance(sent, PermanentError):
                return sent
            status, comment = sent
    except (OSError, NotPart10, InvalidDicomError) as exc:
        return PermanentError(f"cannot send stored file {item.path}: {exc}")
    except Lost as exc:
        return exc  # unconfirmed: resend on a new association
    error = classify(status)
    if error is not None and comment:
        return type(error)(f"{error}: {comment}")
    return error


def _store_transcoded(
    assoc: StoreRequestor, item: Sendable, who: str, peer_ae: str
) -> tuple[int, str] | PermanentError:
    """The peer did not take the file's own syntax: decode and re-encode the instance
    in memory to a fallback syntax it took, and send that."""
    refused = (
        f"{peer_ae} accepts no context for SOP class {item.sop_class_uid} "
        f"in transfer syntax {item.transfer_syntax}"
    )
    target = next((t for t in FALLBACK_SYNTAXES if assoc.accepts(item.sop_class_uid, t)), "")
    if not target:
        return PermanentError(refused)
    try:
        ds = dcmread(item.path)
        transcode(ds, TranscodeSpec(target))
        data = part10_bytes(ds)
    except TranscodeError as exc:
        return PermanentError(f"{refused}, and it cannot be sent in {UID(target).name}: {exc}")
    log.info(
        "%s: %s does not accept %s in %s; sending it transcoded to %s",
        who,
        peer_ae,
        item.sop_instance_uid,
        UID(item.transfer_syntax).name,
        UID(target).name,
    )
    return assoc.store_part10(data, item.sop_class_uid, item.sop_instance_uid, target)


def _contexts(item: Sendable) -> list[tuple[str, str]]:
    """(SOP class, syntax) to propose for an item: its own syntax first, then the fallbacks."""
    return [
        (item.sop_class_uid, ts) for ts in dict.fromkeys((item.transfer_syntax, *FALLBACK_SYNTAXES))
    ]


def _by_context_limit(items: Sequence[S]) -> list[list[S]]:
    """Split a batch so that no association needs more than 128 presentation contexts."""
    chunks: list[list[S]] = []
    keys: set[tuple[str, str]] = set()
    for item in items:
        new = set(_contexts(item)) - keys
        if not chunks or len(keys) + len(new) > MAX_CONTEXTS:
            chunks.append([])
            keys = set()
            new = set(_contexts(item))
        keys |= new
        chunks[-1].append(item)
    return chunks
