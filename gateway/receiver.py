"""The DIMSE front-end: C-ECHO and C-STORE SCP writing into the durable spool.

Each association runs in its own thread (`gateway.association`), which copies every
dataset from the socket to a file in `spool/incoming/`, so memory stays flat whatever the
object size. `Receiver.store()` reads only the header, then `Spool.accept()` makes the
file durable and queued; Success is answered only after that returns.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import socketserver
import struct
import threading
import time
from pathlib import Path
from typing import BinaryIO

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, UID_dictionary
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext

from gateway import metrics, qr
from gateway.association import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SUCCESS,
    Association,
    Operation,
    Outcome,
    Peer,
    Received,
)
from gateway.config import Config
from gateway.dimse import VERIFICATION, all_transfer_syntaxes, set_nodelay
from gateway.queue import NewInstance
from gateway.spool import Spool, SpoolError

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic): permanent from the service user, or
# transient from the service provider (presentation) for too many associations.
_REJECT_CALLING = (0x01, 0x01, 0x03)
_REJECT_CALLED = (0x01, 0x01, 0x07)
_REJECT_BUSY = (0x02, 0x03, 0x02)
ACCEPT_BACKOFF_S = 0.002


# Not network storage: DICOMDIR is media-only (PS3.10); Storage Commitment is its own service.
_NOT_STORAGE = {"1.2.840.10008.1.3.10", "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.2"}


def _pydicom_storage_sop_classes() -> list[str]:
    """Storage SOP classes in pydicom's registry. pynetdicom's storage list leaves out the
    Non-Patient Object ones (Color Palette, Hanging Protocol, ...) and the retired ones old
    modalities still send (e.g. Ultrasound Image Storage 1.2.840.10008.5.1.4.1.1.6)."""
    return [
        uid
        for uid, (name, kind, *_rest) in UID_dictionary.items()
        if kind == "SOP Class" and "Storage" in name and uid not in _NOT_STORAGE
    ]


def storage_contexts(cfg: Config) -> list[PresentationContext]:
    """Every storage SOP class pydicom/pynetdicom knows, plus configured private ones."""
    syntaxes = all_transfer_syntaxes()
    uids = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    uids += [uid for uid in _pydicom_storage_sop_classes() if uid not in uids]
    uids += [uid for uid in cfg.dimse.extra_sop_classes if uid not in uids]
    out = []
    for uid in [VERIFICATION, *uids]:
        cx = PresentationContext()
        cx.abstract_syntax = uid
        cx.transfer_syntax = syntaxes
        if uid != VERIFICATION:
            # A C-GET requester proposes to be the storage SCP (role selection); without a
            # role item a sender is SCU and we are SCP, as for any C-STORE.
            cx.scu_role, cx.scp_role = True, True
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


def _read_header(received: Received) -> tuple[Dataset, int]:
    """The dataset up to its Pixel Data and the file offset where that starts.

    Read from the bytes kept in memory when they hold the whole header (nearly always),
    else from the file. A parse of a prefix counts only if it stopped at Pixel Data inside
    it; stopping at its end could mean a header cut short."""
    head = received.head
    whole = len(head) == received.size
    fp = io.BytesIO(head)
    try:
        ds = dcmread(fp, stop_before_pixels=True)
        at = fp.tell()
        if whole or (at + 4 <= len(head) and head[at : at + 2] in (b"\xe0\x7f", b"\x7f\xe0")):
            return ds, at
    except Exception:
        if whole:
            raise  # the whole file was in memory: the verdict stands
    with open(received.path, "rb") as f:
        return dcmread(f, stop_before_pixels=True), f.tell()


def _check_pixels(received: Received, ts: UID, at: int) -> None:
    """_check_pixel_data_complete from memory when the kept bytes suffice, else the file."""
    fp = io.BytesIO(received.head)
    fp.seek(at)
    try:
        _check_pixel_data_complete(fp, ts, received.size)
        return
    except ValueError:
        if len(received.head) == received.size:
            raise  # the whole file was in memory: the verdict stands
    with open(received.path, "rb") as f:
        f.seek(at)
        _check_pixel_data_complete(f, ts, received.size)


class _Server(socketserver.ThreadingTCPServer):
    """Accept loop on the listening socket the supervisor shares among listener processes;
    TCP_NODELAY on each connection, one thread per association."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, receiver: Receiver) -> None:
        self.receiver = receiver
        super().__init__(sock.getsockname()[:2], socketserver.BaseRequestHandler, False)
        self.socket.close()
        self.socket = sock

    def process_request(self, request: socket.socket, client_address: tuple) -> None:  # type: ignore[override]
        super().process_request(request, client_address)
        if self.receiver.siblings:
            # Connections that arrive together would all go to whichever listener woke
            # first (measured 3:1 over two listeners). A busy listener steps back from
            # accept() a little per association it serves, so an idler sibling takes the
            # next one from the shared backlog.
            time.sleep(ACCEPT_BACKOFF_S * len(self.receiver.active))

    def finish_request(self, request: socket.socket, client_address: tuple) -> None:  # type: ignore[override]
        set_nodelay(request)
        self.receiver.serve(request, client_address[0])

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        pass  # Association.run() closes its socket


class Receiver:
    """One listener process's DIMSE server: association policy and durable store."""

    def __init__(self, cfg: Config, spool: Spool) -> None:
        self.cfg = cfg
        self.spool = spool
        self.allowed = cfg.dimse.calling_aets()
        self.any_calling = any(a.ae_title == "*" for a in self.allowed)
        self.contexts = storage_contexts(cfg) + qr.contexts()
        self.qr = qr.QueryRetrieve(cfg)
        self.accept_unknown = cfg.dimse.accept_unknown_sop_classes
        self.max_pdu = cfg.dimse.max_pdu
        self.max_associations = 64
        self.siblings = cfg.dimse.listeners > 1  # other processes accept on the same socket
        self._server: _Server | None = None
        self._lock = threading.Lock()
        self.active: set[threading.Thread] = set()

    # -- association control ----------------------------------------------------------
    def serve(self, sock: socket.socket, address: str) -> None:
        d = self.cfg.dimse
        me = threading.current_thread()
        with self._lock:
            self.active.add(me)
        try:
            Association(self, sock, address, (d.acse_timeout, d.network_timeout)).run()
        finally:
            with self._lock:
                self.active.discard(me)

    def refusal(self, peer: Peer) -> tuple[str, tuple[int, int, int]]:
        reason, rsd = self._policy(peer)
        if not reason and len(self.active) > self.max_associations:
            reason, rsd = f"more than {self.max_associations} associations", _REJECT_BUSY
        if reason:
            metrics.ASSOCIATIONS_REFUSED.labels(reason=reason.split(":")[0]).inc()
        return reason, rsd

    def _policy(self, peer: Peer) -> tuple[str, tuple[int, int, int]]:
        """The configured AE checks: ('', ...) admits, else the reason and the reject."""
        if self.cfg.dimse.check_called_aet and peer.called_ae != self.cfg.ae_title:
            return f"called AE title not ours: expected {self.cfg.ae_title!r}", _REJECT_CALLED
        if self.any_calling:
            return "", _REJECT_CALLING
        entries = [a for a in self.allowed if a.ae_title == peer.calling_ae]
        if not entries:
            return "calling AE title not allowed", _REJECT_CALLING
        if not any(a.admits(peer.address) for a in entries):
            return f"calling AE title not allowed from {peer.address}", _REJECT_CALLING
        return "", _REJECT_CALLING

    # -- C-FIND / C-MOVE / C-GET ---------------------------------------------------------
    def operation(self, op: Operation) -> None:
        self.qr.serve(op)

    # -- C-STORE ----------------------------------------------------------------------
    def new_file(self) -> Path:
        return self.spool.temp_path()

    def admits_store(self) -> Outcome | None:
        if self.spool.has_room():
            return None
        log.error(
            "refusing C-STORE: free disk below storage.min_free_mb (%s MB): 0xA700",
            self.cfg.storage.min_free_mb,
        )
        metrics.STORES_FAILED.labels(reason="disk_floor").inc()
        return Outcome(OUT_OF_RESOURCES, "gateway disk below its free-space floor")

    def store(
        self, peer: Peer, received: Received, sop_class: str, sop_uid: str, ts: str
    ) -> Outcome:
        syntax = UID(ts)
        size = received.size
        try:
            ds, pixels_at = _read_header(received)
            _check_as_sent(ds, sop_class, sop_uid, syntax)
            if not syntax.is_deflated:  # offsets in a deflated file are not the dataset's
                _check_pixels(received, syntax, pixels_at)
            study = str(ds.get("StudyInstanceUID", ""))
            series = str(ds.get("SeriesInstanceUID", ""))
        except (InvalidDicomError, ValueError, TypeError, KeyError, EOFError, OSError) as exc:
            if self.cfg.dimse.unparseable == "reject":
                log.error(
                    "refused %s from %s: dataset unreadable: %s", sop_uid, peer.calling_ae, exc
                )
                metrics.STORES_FAILED.labels(reason="unparseable").inc()
                return Outcome(CANNOT_UNDERSTAND, f"dataset unreadable: {exc}")
            log.warning(
                "keeping unreadable %s from %s as received: %s", sop_uid, peer.calling_ae, exc
            )
            study = series = ""
        item = NewInstance(
            sop_instance_uid=sop_uid,
            sop_class_uid=sop_class,
            transfer_syntax=ts,
            study_uid=study,
            series_uid=series,
            path="",
            size=size,
            calling_ae=peer.calling_ae,
            called_ae=self.cfg.ae_title,
            source=peer.address,
        )
        try:
            self.spool.accept(received.path, item)
        except SpoolError as exc:
            log.error("refused %s from %s: %s: 0xA700", sop_uid, peer.calling_ae, exc)
            metrics.STORES_FAILED.labels(reason="write").inc()
            return Outcome(OUT_OF_RESOURCES, "gateway could not store the instance")
        metrics.RECEIVED.labels(calling_ae=item.calling_ae).inc()
        metrics.RECEIVED_BYTES.inc(size)
        log.debug("stored %s (%d bytes) from %s", sop_uid, size, item.calling_ae)
        return Outcome(SUCCESS)

    # -- server -----------------------------------------------------------------------
    def start(self, sock: socket.socket) -> None:
        """Serve `sock` (bound and listening) in a background thread; `stop()` shuts down."""
        self._server = _Server(sock, self)
        threading.Thread(
            target=self._server.serve_forever, name="dimse-accept", daemon=True
        ).start()

    def stop(self) -> None:
        """Stop accepting, then let in-flight associations finish, all within one
        network timeout (an idle association is ended by it anyway)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            active = list(self.active)
        deadline = time.monotonic() + self.cfg.dimse.network_timeout
        for thread in active:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
