"""Query/Retrieve SCP over the local archive: C-FIND, C-MOVE and C-GET.

Served on the DIMSE port and AE title (`gateway.association` hands each request over as
an `Operation`). Matching and the archive's index are `gateway.archive`; this module is
the DIMSE side: permissions per calling AE, pending responses, sub-operation counts,
cancel, and the sub-operations themselves, which reuse the C-STORE destination's sending
(the file as stored, or transcoded to a syntax the receiver accepted).
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence

from pydicom import Dataset
from pynetdicom.presentation import PresentationContext

from gateway.archive.index import ArchiveIndex, StoredInstance
from gateway.archive.query import QueryError, find, locate
from gateway.association import Operation
from gateway.config import Config, DicomDestination, QRService
from gateway.destinations.dicom import DicomStore, send_one
from gateway.errors import DeliveryError
from gateway.requestor import Lost

log = logging.getLogger(__name__)

#: SOP Class UID -> (information model root, service)
SOP_CLASSES: dict[str, tuple[str, QRService]] = {
    "1.2.840.10008.5.1.4.1.2.1.1": ("PATIENT", "find"),
    "1.2.840.10008.5.1.4.1.2.1.2": ("PATIENT", "move"),
    "1.2.840.10008.5.1.4.1.2.1.3": ("PATIENT", "get"),
    "1.2.840.10008.5.1.4.1.2.2.1": ("STUDY", "find"),
    "1.2.840.10008.5.1.4.1.2.2.2": ("STUDY", "move"),
    "1.2.840.10008.5.1.4.1.2.2.3": ("STUDY", "get"),
}
QUERY_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # Explicit, Implicit VR LE

# Statuses (PS3.4 C.4, PS3.7 C)
SUCCESS = 0x0000
PENDING = 0xFF00
CANCELLED = 0xFE00
WARNING_SOME_FAILED = 0xB000
NOT_AUTHORIZED = 0x0124
UNABLE_TO_PROCESS = 0xC000
SUB_OPERATIONS_FAILED = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801


def contexts() -> list[PresentationContext]:
    """The Q/R presentation contexts the listener accepts."""
    out = []
    for uid in SOP_CLASSES:
        cx = PresentationContext()
        cx.abstract_syntax = uid
        cx.transfer_syntax = QUERY_SYNTAXES
        out.append(cx)
    return out


class QueryRetrieve:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def serve(self, op: Operation) -> None:
        """Answer one C-FIND / C-MOVE / C-GET to its final response."""
        root, service = SOP_CLASSES.get(op.sop_class, ("", "find"))
        who = op.peer.calling_ae
        if not root or op.name != f"C-{service.upper()}":
            op.respond(UNABLE_TO_PROCESS, comment=f"{op.name} is not served for {op.sop_class}")
            return
        if not self.cfg.qr.enabled or self.cfg.qr_archive() is None:
            op.respond(UNABLE_TO_PROCESS, comment="no archive is configured for Q/R")
            return
        if not self.cfg.qr.allows(who, service):
            log.warning("%s from %s refused: not permitted (qr.permissions)", op.name, who)
            op.respond(NOT_AUTHORIZED, comment=f"{who} may not {service} here")
            return
        index = ArchiveIndex(self.cfg.db_path)
        try:
            if service == "find":
                self._find(op, index, root)
            else:
                self._retrieve(op, index, root, service)
        except QueryError as exc:
            log.warning("%s from %s refused: %s", op.name, who, exc.reason)
            op.respond(exc.status, comment=exc.reason)
        finally:
            index.close()

    def _find(self, op: Operation, index: ArchiveIndex, root: str) -> None:
        n = 0
        results = find(
            index, root, op.identifier, fuzzy_names=self.cfg.qr.fuzzy_names, cancelled=op.cancelled
        )
        for result in results:  # the engine also stops early once cancelled
            if op.cancelled():
                break
            if "RetrieveAETitle" in result:  # where to C-MOVE/C-GET it from: here
                result.RetrieveAETitle = self.cfg.ae_title
            op.respond(PENDING, result)
            n += 1
        if op.cancelled():
            op.respond(CANCELLED)
            log.info("C-FIND from %s cancelled after %d match(es)", op.peer.calling_ae, n)
            return
        op.respond(SUCCESS)
        log.info("C-FIND from %s: %d match(es)", op.peer.calling_ae, n)

    def _retrieve(self, op: Operation, index: ArchiveIndex, root: str, service: str) -> None:
        instances = locate(index, root, op.identifier)
        if service == "move":
            target = self.cfg.move_destinations.get(op.move_destination)
            if target is None:
                log.warning(
                    "C-MOVE from %s: unknown move destination %r (move_destinations)",
                    op.peer.calling_ae,
                    op.move_destination,
                )
                op.respond(
                    MOVE_DESTINATION_UNKNOWN,
                    comment=f"move destination {op.move_destination!r} unknown",
                )
                return
            spec = DicomDestination(
                type="dicom", ae_title=op.move_destination, **target.model_dump()
            )
            store = DicomStore(
                f"C-MOVE to {op.move_destination}", spec, calling_ae=self.cfg.ae_title
            )
            outcomes = store.send_each(instances)
            to = op.move_destination
        else:
            outcomes = _get_outcomes(op, instances)
            to = op.peer.calling_ae
        _report(op, len(instances), outcomes, to)


Outcomes = Generator[tuple[StoredInstance, DeliveryError | None], None, None]


def _get_outcomes(op: Operation, instances: Sequence[StoredInstance]) -> Outcomes:
    """C-GET: each instance sent on the requester's own association."""
    sender = op.sub_operations()
    for item in instances:
        result = send_one(sender, item, f"C-GET by {op.peer.calling_ae}", op.peer.calling_ae)
        if isinstance(result, Lost):  # the requester's association itself is gone
            raise ConnectionError(f"C-GET sub-operation lost: {result}")
        yield item, result


def _report(
    op: Operation,
    total: int,
    outcomes: Outcomes,
    to: str,
) -> None:
    """Pending responses with the sub-operation counts after each instance, then the final
    one: Success, Warning when some failed, Failure when all did; Cancel when asked."""
    completed, failed_uids = 0, []
    for item, error in outcomes:
        if error is None:
            completed += 1
        else:
            failed_uids.append(item.sop_instance_uid)
            log.warning("%s: %s not sent: %s", op.name, item.sop_instance_uid, error)
        remaining = total - completed - len(failed_uids)
        if op.cancelled():
            outcomes.close()  # a C-MOVE's association to its destination is aborted
            op.respond(
                CANCELLED, _failed(failed_uids), counts=(remaining, completed, len(failed_uids), 0)
            )
            log.info("%s from %s to %s cancelled", op.name, op.peer.calling_ae, to)
            return
        if remaining:
            op.respond(PENDING, counts=(remaining, completed, len(failed_uids), 0))
    failed = len(failed_uids)
    if not failed:
        status = SUCCESS
    elif completed:
        status = WARNING_SOME_FAILED
    else:
        status = SUB_OPERATIONS_FAILED
    op.respond(status, _failed(failed_uids), counts=(None, completed, failed, 0))
    log.info(
        "%s from %s to %s: %d sent, %d failed", op.name, op.peer.calling_ae, to, completed, failed
    )


def _failed(uids: list[str]) -> Dataset | None:
    """The identifier of a final response after failures: Failed SOP Instance UID List."""
    if not uids:
        return None
    ds = Dataset()
    ds.FailedSOPInstanceUIDList = uids
    return ds
