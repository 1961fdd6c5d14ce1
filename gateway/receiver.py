"""The DIMSE front-end: C-ECHO and C-STORE SCP writing into the durable spool.

pynetdicom streams each received dataset to a temporary file in `spool/incoming/`
(STORE_RECV_CHUNKED_DATASET), so memory stays flat whatever the object size. The C-STORE
handler reads only the header, then `Spool.accept()` makes the file durable and queued;
Success is answered only after that returns.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, UID_dictionary
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt, register_uid
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from gateway import metrics
from gateway.config import Config
from gateway.dimse import VERIFICATION, GatewayServer, all_transfer_syntaxes, make_ae
from gateway.queue import NewInstance
from gateway.spool import Spool, SpoolError

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210

# A-ASSOCIATE-RJ (result permanent, source service-user, diagnostic)
_REJECT_CALLING = (0x01, 0x01, 0x03)
_REJECT_CALLED = (0x01, 0x01, 0x07)


# Not network storage: DICOMDIR is media-only (PS3.10); Storage Commitment is its own service.
_NOT_STORAGE = {"1.2.840.10008.1.3.10", "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.2"}


def _pydicom_storage_sop_classes() -> list[str]:
    """Storage SOP classes in pydicom's registry. pynetdicom's storage list leaves out the
    Non-Patient Object ones (Color Palette, Hanging Protocol, ...) and the retired ones old
    modalities still send (e.g. Ultrasound Image Storage 1.2.840.10008.5.1.4.1.1.6); the
    latter are registered so that pynetdicom dispatches them to the C-STORE handler."""
    out = []
    for uid, (name, kind, _info, _retired, keyword) in UID_dictionary.items():
        if kind != "SOP Class" or "Storage" not in name or uid in _NOT_STORAGE:
            continue
        if not issubclass(uid_to_service_class(uid), StorageServiceClass):
            register_uid(uid, keyword, StorageServiceClass)
        out.append(uid)
    return out


def storage_contexts(cfg: Config) -> list[PresentationContext]:
    """Every storage SOP class pydicom/pynetdicom knows, plus configured private ones."""
    syntaxes = all_transfer_syntaxes()
    uids = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    uids += [uid for uid in _pydicom_storage_sop_classes() if uid not in uids]
    for n, uid in enumerate(cfg.dimse.extra_sop_classes):
        if uid not in uids:
            register_uid(uid, f"GatewayPrivateStorage{n}", StorageServiceClass)
            uids.append(uid)
    out = []
    for uid in [VERIFICATION, *uids]:
        cx = PresentationContext()
        cx.abstract_syntax = uid
        cx.transfer_syntax = syntaxes
        out.append(cx)
    return out


def _check_as_sent(ds: Dataset, sop_class: str, sop_instance: str, ts: UID) -> None:
    """ValueError for a dataset no peer downstream takes as it came (dcmtk and Orthanc
    refuse both, pydicom reads on): encoded otherwise than the negotiated transfer syntax,
    or without the request's SOP Class and Instance UIDs (e.g. an empty dataset)."""
    first = next(ds.elements(), None)  # still raw: it says how it was actually encoded
    found = (getattr(first, "is_implicit_VR", None), getattr(first, "is_little_endian", None))
    if None not in found and found != (ts.is_implicit_VR, ts.is_little_endian):
        raise ValueError(f"dataset is not encoded in the negotiated transfer syntax {ts.name}")
    for keyword, sent in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_instance)):
        value = ds.get(keyword)
        if value is None or str(value) != str(sent):
            raise ValueError(f"{keyword} in the dataset ({value}) is not the request's ({sent})")


def _check_pixel_data_complete(fp: BinaryIO, ts: UID, size: int) -> None:
    """ValueError if the Pixel Data element at `fp` (where stop_before_pixels left it) runs
    past the end of the file: a truncated instance, which the header read does not notice
    and no peer can parse. Reads only the element's and its fragments' headers."""
    endian = "<" if ts.is_little_endian else ">"
    head = fp.read(8)
    if len(head) < 8 or struct.unpack(f"{endian}H", head[:2])[0] != 0x7FE0:
        return  # no (Float/Double Float) Pixel Data
    (length,) = struct.unpack(f"{endian}L", head[4:] if ts.is_implicit_VR else fp.read(4))
    if length != 0xFFFFFFFF:
        if fp.tell() + length > size:
            raise ValueError(f"Pixel Data needs {length} bytes, {size - fp.tell()} remain")
        return
    while True:  # encapsulated: fragments up to the sequence delimiter
        item = fp.read(8)
        if len(item) < 8:
            raise ValueError("encapsulated Pixel Data ends before its sequence delimiter")
        group, elem, length = struct.unpack(f"{endian}HHL", item)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return
        if fp.seek(length, os.SEEK_CUR) > size:
            raise ValueError(f"a Pixel Data fragment needs {length} bytes, fewer remain")


class Receiver:
    """One listener process's DIMSE server."""

    def __init__(self, cfg: Config, spool: Spool) -> None:
        self.cfg = cfg
        self.spool = spool
        self.allowed = cfg.dimse.calling_aets()
        self.any_calling = any(a.ae_title == "*" for a in self.allowed)
        self._server: GatewayServer | None = None

    # -- association control ----------------------------------------------------------
    def on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        rq = assoc.requestor
        calling = str(rq.primitive.calling_ae_title).strip()
        called = str(rq.primitive.called_ae_title).strip()
        address = rq.address
        reason, rsd = self._refusal(calling, called, address)
        if reason:
            log.warning(
                "refused association from %s (calling %r, called %r): %s",
                address,
                calling,
                called,
                reason,
            )
            metrics.ASSOCIATIONS_REFUSED.labels(reason=reason.split(":")[0]).inc()
            assoc.acse.send_reject(*rsd)
            assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ

    def _refusal(self, calling: str, called: str, address: str) -> tuple[str, tuple[int, ...]]:
        if self.cfg.dimse.check_called_aet and called != self.cfg.ae_title:
            return f"called AE title not ours: expected {self.cfg.ae_title!r}", _REJECT_CALLED
        if self.any_calling:
            return "", ()
        entries = [a for a in self.allowed if a.ae_title == calling]
        if not entries:
            return "calling AE title not allowed", _REJECT_CALLING
        if not any(a.admits(address) for a in entries):
            return f"calling AE title not allowed from {address}", _REJECT_CALLING
        return "", ()

    # -- services ---------------------------------------------------------------------
    def on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def on_store(self, event: evt.Event) -> int:
        req = event.request
        sop_uid = str(req.AffectedSOPInstanceUID)
        rq = event.assoc.requestor
        received = Path(event.dataset_path)
        if not self.spool.has_room():
            log.error(
                "refused %s from %s: free disk below storage.min_free_mb (%s MB): 0xA700",
                sop_uid,
                rq.ae_title,
                self.cfg.storage.min_free_mb,
            )
            metrics.STORES_FAILED.labels(reason="disk_floor").inc()
            return OUT_OF_RESOURCES
        try:
            ts = event.context.transfer_syntax
            with open(received, "rb") as fp:
                ds = dcmread(fp, stop_before_pixels=True)
                _check_as_sent(ds, req.AffectedSOPClassUID, sop_uid, ts)
                if not ts.is_deflated:  # offsets in a deflated file are not the dataset's
                    _check_pixel_data_complete(fp, ts, received.stat().st_size)
            study = str(ds.get("StudyInstanceUID", ""))
            series = str(ds.get("SeriesInstanceUID", ""))
        except (InvalidDicomError, ValueError, TypeError, KeyError, EOFError, OSError) as exc:
            if self.cfg.dimse.unparseable == "reject":
                log.error("refused %s from %s: dataset unreadable: %s", sop_uid, rq.ae_title, exc)
                metrics.STORES_FAILED.labels(reason="unparseable").inc()
                return CANNOT_UNDERSTAND
            log.warning("keeping unreadable %s from %s as received: %s", sop_uid, rq.ae_title, exc)
            study = series = ""
        size = received.stat().st_size
        item = NewInstance(
            sop_instance_uid=sop_uid,
            sop_class_uid=str(req.AffectedSOPClassUID),
            transfer_syntax=str(event.context.transfer_syntax),
            study_uid=study,
            series_uid=series,
            path="",
            size=size,
            calling_ae=rq.ae_title.strip(),
            called_ae=self.cfg.ae_title,
            source=rq.address,
        )
        try:
            self.spool.accept(received, item)
        except SpoolError as exc:
            log.error("refused %s from %s: %s: 0xA700", sop_uid, rq.ae_title, exc)
            metrics.STORES_FAILED.labels(reason="write").inc()
            return OUT_OF_RESOURCES
        metrics.RECEIVED.labels(calling_ae=item.calling_ae).inc()
        metrics.RECEIVED_BYTES.inc(size)
        log.debug("stored %s (%d bytes) from %s", sop_uid, size, item.calling_ae)
        return SUCCESS

    # -- server -----------------------------------------------------------------------
    def start(self) -> GatewayServer:
        """Bind and serve in a background thread; `stop()` shuts down."""
        d = self.cfg.dimse
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE = d.accept_unknown_sop_classes
        # pynetdicom writes its chunk file with NamedTemporaryFile: keep it on the spool's
        # file system so the rename into the spool is atomic.
        tempfile.tempdir = str(self.spool.incoming)
        ae = make_ae(
            self.cfg.ae_title,
            max_pdu=d.max_pdu,
            acse=d.acse_timeout,
            dimse=d.dimse_timeout,
            network=d.network_timeout,
        )
        ae.maximum_associations = 64
        handlers = [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
        ]
        server = ae.make_server(
            (d.host, d.port),
            contexts=storage_contexts(self.cfg),
            evt_handlers=handlers,
            server_class=GatewayServer,
        )
        ae._servers.append(server)  # make_server doesn't; server.shutdown() expects it
        self._server = server
        threading.Thread(target=server.serve_forever, name="dimse-server", daemon=True).start()
        return server

    def stop(self) -> None:
        """Stop accepting, then let in-flight associations finish (bounded)."""
        if self._server is None:
            return
        server = self._server
        server.shutdown()
        for assoc in list(server.active_associations):
            assoc.join(timeout=self.cfg.dimse.network_timeout)
