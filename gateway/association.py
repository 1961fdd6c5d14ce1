"""One accepted DIMSE association: negotiation, then the data phase.

Negotiation uses pynetdicom's PDU classes and presentation-context negotiation. The data
phase is `gateway.ul`: each C-STORE dataset is copied from the socket straight into its
spool file and the response goes out only after `Services.store()` has made the instance
durable. A C-FIND, C-MOVE or C-GET identifier is read into memory and handed, as an
`Operation`, to `Services.operation()`, which answers through it (pending responses,
sub-operations on this association for a C-GET, a C-CANCEL noticed between responses).
Anything a peer does against PS3.8 ends the association with an A-ABORT and a log line;
a half-received dataset is removed and its sender never got Success for it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydicom import Dataset
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import (
    PresentationContext,
    negotiate_as_acceptor,
    negotiate_unrestricted,
)

from gateway import ul
from gateway.spool import start_writeback

if TYPE_CHECKING:
    from gateway.requestor import StoreRequestor

log = logging.getLogger(__name__)

IMPLEMENTATION_UID = str(PYNETDICOM_IMPLEMENTATION_UID)
IMPLEMENTATION_VERSION = PYNETDICOM_IMPLEMENTATION_VERSION

#: An A-ASSOCIATE-RQ offering every storage class in every syntax is ~1 MiB; beyond is abuse.
MAX_ASSOCIATE_RQ = 4 << 20
#: C-STORE/C-ECHO command sets are a few hundred bytes.
MAX_COMMAND = 64 << 10
#: A query identifier is a few kilobytes at most.
MAX_IDENTIFIER = 1 << 20
QR_COMMANDS = {ul.C_FIND_RQ: "C-FIND", ul.C_MOVE_RQ: "C-MOVE", ul.C_GET_RQ: "C-GET"}

# DIMSE statuses this front-end answers with (PS3.7 C.4, PS3.4 B.2.3)
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
UNRECOGNIZED_OPERATION = 0x0211
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210


def user_information(max_pdu: int) -> list:
    """The user information items we send: max PDU (0 = no limit) and who we are."""
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = IMPLEMENTATION_UID
    impl_version = ImplementationVersionNameNotification()
    impl_version.implementation_version_name = IMPLEMENTATION_VERSION
    return [max_length, impl_uid, impl_version]


#: Fragment size when the peer sets no limit.
UNLIMITED_FRAGMENT = 1 << 20


def max_pdv(user_information: list) -> int:
    """The largest PDV value to send a peer: its maximum PDU length less the PDV header,
    or UNLIMITED_FRAGMENT when it sets no limit (0)."""
    peer_max = next(
        (
            int(item.maximum_length_received or 0)
            for item in user_information
            if isinstance(item, MaximumLengthNotification)
        ),
        0,
    )
    return peer_max - 6 if peer_max > 6 else UNLIMITED_FRAGMENT


@dataclass(frozen=True)
class Peer:
    calling_ae: str
    called_ae: str
    address: str


@dataclass(frozen=True)
class Outcome:
    """A DIMSE status for the response, with an Error Comment when it is not Success."""

    status: int
    comment: str = ""


class Services(Protocol):
    """What the association asks of the front-end that owns it."""

    contexts: list[PresentationContext]
    accept_unknown: bool
    max_pdu: int

    def refusal(self, peer: Peer) -> tuple[str, tuple[int, int, int]]:
        """('', ()) to accept, else (reason for the log, A-ASSOCIATE-RJ result/source/diag)."""

    def new_file(self) -> Path:
        """Where the next dataset is written (same file system as the spool)."""

    def admits_store(self) -> Outcome | None:
        """A failure to answer before receiving a dataset (e.g. disk floor), else None."""

    def store(
        self, peer: Peer, received: Received, sop_class: str, sop_uid: str, ts: str
    ) -> Outcome:
        """Make the received file durable; Success only once it is."""

    def operation(self, op: Operation) -> None:
        """Serve a C-FIND, C-MOVE or C-GET to its final response (through `op`)."""


#: Bytes of each received file kept in memory: preamble, file meta and the start of the
#: dataset, enough for the header of nearly every instance (read without touching the file).
HEAD_BYTES = 64 << 10


@dataclass(frozen=True)
class Received:
    """A complete received file: where it is, its first bytes, its size."""

    path: Path
    head: bytes
    size: int


class _SpoolFile:
    """The file a dataset is written to, keeping its first HEAD_BYTES and its size."""

    def __init__(self, path: Path) -> None:
        self.raw = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by the association
        self.head = bytearray()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        n = self.raw.write(data) or 0
        if len(self.head) < HEAD_BYTES:
            self.head += data[: min(n, HEAD_BYTES - len(self.head))]
        self.size += n
        return n

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()


_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2s2xI")


def _encode_le(ds: Dataset, implicit: bool) -> bytes:
    """A dataset in (Implicit or Explicit VR) Little Endian. Elements still raw Explicit VR
    Little Endian bytes (the archive builds C-FIND responses so) are framed directly;
    pydicom's writer would first convert each one, ~300 us a response, which a query
    matching thousands of studies feels. Any other element goes through pydicom's
    element writer, in the dataset's character set."""
    parts = []
    encodings: list[str] | None = None
    for tag in sorted(ds.keys()):
        e = ds.get_item(tag)
        if (
            isinstance(e, RawDataElement)
            and not e.is_implicit_VR
            and e.is_little_endian
            and e.VR not in (None, "SQ")
            and isinstance(e.value, bytes)
            and len(e.value) % 2 == 0
        ):
            group, element, value = tag >> 16, tag & 0xFFFF, e.value
            if implicit:
                parts.append(_IMPLICIT.pack(group, element, len(value)))
            elif e.VR in _LONG_VRS:
                parts.append(_EXPLICIT_LONG.pack(group, element, e.VR.encode(), len(value)))
            else:
                parts.append(_EXPLICIT.pack(group, element, e.VR.encode(), len(value)))
            parts.append(value)
            continue
        if encodings is None:
            encodings = convert_encodings(ds.get("SpecificCharacterSet") or "ISO_IR 6")
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_data_element(fp, ds[tag], encodings)
        parts.append(fp.getvalue())
    return b"".join(parts)


class _Memory:
    """Where a query identifier is collected; refuses to grow past MAX_IDENTIFIER."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: memoryview) -> int:
        if len(self.data) + len(data) > MAX_IDENTIFIER:
            raise ul.ProtocolError(f"identifier longer than {MAX_IDENTIFIER} bytes")
        self.data += data
        return len(data)


@dataclass
class _Incoming:
    """A request whose dataset is still arriving."""

    context_id: int
    message_id: int
    command_field: int
    sop_class: str
    sop_uid: str
    command: dict[int, bytes] = field(default_factory=dict)
    path: Path | None = None
    file: _SpoolFile | None = None
    memory: _Memory | None = None  # a query identifier, read into memory
    failure: Outcome | None = None


class Operation:
    """A C-FIND, C-MOVE or C-GET being served: what was asked, and how to answer it."""

    def __init__(self, assoc: Association, incoming: _Incoming, identifier: Dataset) -> None:
        self._assoc = assoc
        self._incoming = incoming
        self._cancel = False
        self.peer = assoc.peer
        self.command_field = incoming.command_field
        self.name = QR_COMMANDS[incoming.command_field]
        self.sop_class = incoming.sop_class
        self.identifier = identifier
        self.move_destination = ul.ui(incoming.command, ul.MOVE_DESTINATION).strip()

    def respond(
        self,
        status: int,
        identifier: Dataset | None = None,
        *,
        counts: tuple[int | None, int, int, int] | None = None,
        comment: str = "",
    ) -> None:
        """Send one response (pending or final), with an identifier dataset if given."""
        a, inc = self._assoc, self._incoming
        command = ul.response(
            inc.command_field | 0x8000,
            inc.message_id,
            inc.sop_class,
            status,
            comment=comment,
            has_dataset=identifier is not None,
            counts=counts,
        )
        a.send_message(inc.context_id, command, a.encode(inc.context_id, identifier))

    def cancelled(self) -> bool:
        """Whether the peer sent a C-CANCEL for this operation (checked without waiting)."""
        while not self._cancel and self._assoc.reader.ready():
            self._assoc.read_during(self)
        return self._cancel

    def cancel(self) -> None:
        self._cancel = True

    @property
    def message_id(self) -> int:
        return self._incoming.message_id

    def sub_operations(self) -> StoreRequestor:
        """A C-STORE requestor on this association, over the storage contexts in which the
        peer took the SCP role (C-GET); a C-CANCEL among its responses cancels `self`."""
        from gateway.requestor import StoreRequestor

        a = self._assoc
        sender = StoreRequestor(a.sock, a.reader, dict(a.peer_scp_contexts), a.peer_max_pdv)
        sender.on_cancel = self.cancel
        return sender


class Association:
    def __init__(
        self, services: Services, sock: socket.socket, address: str, timeouts: tuple[float, float]
    ) -> None:
        self.services = services
        self.sock = sock
        self.address = address
        self.acse_timeout, self.network_timeout = timeouts
        self.reader = ul.PDUReader(sock)
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract syntax, syntax)
        # (storage SOP class, syntax) -> context ID where the peer is SCP (C-GET targets)
        self.peer_scp_contexts: dict[tuple[str, str], int] = {}
        self.peer_max_pdv = UNLIMITED_FRAGMENT  # largest PDV value the peer takes
        self.peer = Peer("", "", address)
        self._command = bytearray()
        self._incoming: _Incoming | None = None

    def run(self) -> None:
        """Serve until release, abort, close or timeout; never raises."""
        try:
            self.sock.settimeout(self.acse_timeout)
            if self._negotiate():
                self.sock.settimeout(self.network_timeout)
                self._data_phase()
        except ul.ProtocolError as exc:
            log.warning("aborting association from %s (%s): %s", self.address, self._who(), exc)
            self._send(ul.abort(exc.reason))
        except (ul.Closed, OSError) as exc:
            # A TCP health check that connects and leaves is not worth a warning.
            if not (isinstance(exc, ul.Closed) and exc.clean and not self.contexts):
                log.warning(
                    "association from %s (%s) ended without release: %s",
                    self.address,
                    self._who(),
                    exc or type(exc).__name__,
                )
        except Exception:  # a bug of ours must not take the listener down
            log.exception("association from %s (%s) failed", self.address, self._who())
            self._send(ul.abort(0))
        finally:
            self._discard()
            self.reader.close()
            self.sock.close()

    def _who(self) -> str:
        return self.peer.calling_ae or "before negotiation"

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the peer is gone; nothing was promised to it
            self.sock.sendall(data)

    # -- negotiation ---------------------------------------------------------------------
    def _negotiate(self) -> bool:
        pdu_type, length = self.reader.header()
        if pdu_type != ul.ASSOCIATE_RQ:
            name = ul.PDU_NAMES.get(pdu_type, f"unknown PDU type 0x{pdu_type:02X}")
            reason = (
                ul.ABORT_UNEXPECTED_PDU if pdu_type in ul.PDU_NAMES else ul.ABORT_UNRECOGNIZED_PDU
            )
            raise ul.ProtocolError(f"expected A-ASSOCIATE-RQ, got {name}", reason)
        if length > MAX_ASSOCIATE_RQ:
            raise ul.ProtocolError(
                f"A-ASSOCIATE-RQ claims {length} bytes (limit {MAX_ASSOCIATE_RQ})",
                ul.ABORT_INVALID_PARAMETER,
            )
        raw = ul.pdu(ul.ASSOCIATE_RQ, self.reader.exact(length))
        try:
            pdu = A_ASSOCIATE_RQ()
            pdu.decode(raw)
            rq = pdu.to_primitive()
            peer = Peer(
                str(rq.calling_ae_title).strip(), str(rq.called_ae_title).strip(), self.address
            )
        except Exception as exc:
            raise ul.ProtocolError(
                f"A-ASSOCIATE-RQ could not be decoded: {exc or type(exc).__name__}",
                ul.ABORT_INVALID_PARAMETER,
            ) from exc
        self.peer = peer
        reason, rsd = self.services.refusal(peer)
        if reason:
            log.warning(
                "refused association from %s (calling %r, called %r): %s",
                self.address,
                peer.calling_ae,
                peer.called_ae,
                reason,
            )
            self._send(ul.associate_rj(*rsd))
            return False
        self._accept(rq)
        return True

    def _accept(self, rq: A_ASSOCIATE) -> None:
        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in rq.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
        }
        negotiate = (
            negotiate_unrestricted if self.services.accept_unknown else negotiate_as_acceptor
        )
        result, ac_roles = negotiate(
            rq.presentation_context_definition_list, self.services.contexts, roles or None
        )
        self.contexts = {
            int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in result
            if cx.result == 0x00
        }
        self.peer_scp_contexts = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])): int(cx.context_id)
            for cx in result
            if cx.result == 0x00 and cx.as_scu
        }
        self.peer_max_pdv = max_pdv(rq.user_information)
        ac = A_ASSOCIATE()
        ac.application_context_name = APPLICATION_CONTEXT_NAME
        ac.calling_ae_title = rq.calling_ae_title
        ac.called_ae_title = rq.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = result
        ac.user_information = [*user_information(self.services.max_pdu), *ac_roles]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(ac)
        self.sock.sendall(pdu.encode())
        log.info(
            "association from %s (%s): %d of %d presentation context(s) accepted",
            self.address,
            self.peer.calling_ae,
            len(self.contexts),
            len(result),
        )

    # -- data phase ----------------------------------------------------------------------
    def _data_phase(self) -> None:
        while True:
            pdu_type, length = self.reader.header()
            if pdu_type == ul.P_DATA_TF:
                self._p_data(length)
            elif pdu_type == ul.RELEASE_RQ:
                self.reader.exact(length)
                if self._incoming is not None or self._command:
                    raise ul.ProtocolError("A-RELEASE-RQ in the middle of a DIMSE message")
                self._send(ul.release_rp())
                return
            elif pdu_type == ul.ABORT:
                self.reader.exact(min(length, 4))
                raise ul.Closed("aborted by the peer (A-ABORT)")
            else:
                name = ul.PDU_NAMES.get(pdu_type)
                if name is None:
                    raise ul.ProtocolError(
                        f"unknown PDU type 0x{pdu_type:02X}", ul.ABORT_UNRECOGNIZED_PDU
                    )
                raise ul.ProtocolError(f"unexpected {name} after the association was accepted")

    def _p_data(self, length: int) -> None:
        remaining = length
        while remaining:
            if remaining < 6:
                raise ul.ProtocolError("P-DATA-TF ends inside a PDV item header")
            n, context_id, mch = self.reader.pdv_header()
            remaining -= 6 + n
            if remaining < 0:
                raise ul.ProtocolError("a PDV item runs past the end of its P-DATA-TF")
            if context_id not in self.contexts:
                raise ul.ProtocolError(f"PDV on presentation context {context_id}, not accepted")
            if mch & ul.MCH_COMMAND:
                self._command_fragment(context_id, mch, n)
            else:
                self._dataset_fragment(context_id, mch, n)

    def _command_fragment(self, context_id: int, mch: int, n: int) -> None:
        if self._incoming is not None:
            raise ul.ProtocolError("a command began before the previous dataset ended")
        if len(self._command) + n > MAX_COMMAND:
            raise ul.ProtocolError(f"command set longer than {MAX_COMMAND} bytes")
        self._command += self.reader.exact(n)
        if not mch & ul.MCH_LAST:
            return
        command = ul.decode_command(bytes(self._command))
        self._command.clear()
        field_ = ul.us(command, ul.COMMAND_FIELD)
        if field_ == ul.C_CANCEL_RQ:
            return  # for an operation already answered: nothing to do (PS3.7 9.3.2.3)
        message_id = ul.us(command, ul.MESSAGE_ID)
        has_dataset = ul.us(command, ul.DATASET_TYPE) != ul.NO_DATASET
        incoming = _Incoming(
            context_id,
            message_id,
            field_,
            ul.ui(command, ul.AFFECTED_SOP_CLASS),
            ul.ui(command, ul.AFFECTED_SOP_INSTANCE),
            command,
        )
        if field_ == ul.C_STORE_RQ and has_dataset:
            self._start_store(incoming)
        elif field_ == ul.C_ECHO_RQ and not has_dataset:
            self._respond(incoming, Outcome(SUCCESS))
        elif field_ in QR_COMMANDS and has_dataset:
            incoming.memory = _Memory()
            self._incoming = incoming
        else:
            incoming.failure = Outcome(
                UNRECOGNIZED_OPERATION, f"command 0x{field_:04X} is not served here"
            )
            if has_dataset:
                self._incoming = incoming  # drained, then answered
            else:
                self._respond(incoming, incoming.failure)

    def _start_store(self, incoming: _Incoming) -> None:
        self._incoming = incoming
        incoming.failure = self.services.admits_store()
        if incoming.failure is not None:
            return
        incoming.path = self.services.new_file()
        ts = self.contexts[incoming.context_id][1]
        meta = ul.file_meta(
            incoming.sop_class,
            incoming.sop_uid,
            ts,
            IMPLEMENTATION_UID,
            IMPLEMENTATION_VERSION,
            self.peer.calling_ae,
        )
        try:
            incoming.file = _SpoolFile(incoming.path)
            incoming.file.write(meta)
        except OSError as exc:
            self._write_failed(incoming, exc)

    def _dataset_fragment(self, context_id: int, mch: int, n: int) -> None:
        incoming = self._incoming
        if incoming is None:
            raise ul.ProtocolError("a dataset fragment arrived without a command")
        if context_id != incoming.context_id:
            raise ul.ProtocolError("a dataset continued on another presentation context")
        if incoming.memory is not None:
            self.reader.copy(n, incoming.memory)  # ProtocolError past MAX_IDENTIFIER
            if mch & ul.MCH_LAST:
                self._incoming = None
                self._operation(incoming)
            return
        error = self.reader.copy(n, incoming.file)
        if error is not None:
            self._write_failed(incoming, error)
        elif incoming.file is not None:
            start_writeback(incoming.file.fileno())
        if not mch & ul.MCH_LAST:
            return
        self._incoming = None
        outcome = incoming.failure
        if outcome is None and incoming.file is not None and incoming.path is not None:
            try:
                incoming.file.close()
            except OSError as exc:
                self._write_failed(incoming, exc)
            received = Received(incoming.path, bytes(incoming.file.head), incoming.file.size)
            outcome = incoming.failure or self.services.store(
                self.peer,
                received,
                incoming.sop_class,
                incoming.sop_uid,
                self.contexts[context_id][1],
            )
        outcome = outcome or Outcome(PROCESSING_FAILURE, "nothing was received")
        if outcome.status != SUCCESS:
            self._close_and_remove(incoming)  # refused: the sender keeps the image
        incoming.file = None
        self._respond(incoming, outcome)

    def _write_failed(self, incoming: _Incoming, exc: OSError) -> None:
        log.error(
            "refused %s from %s: cannot write the spool file: %s: 0xA700",
            incoming.sop_uid,
            self.peer.calling_ae,
            exc,
        )
        incoming.failure = Outcome(OUT_OF_RESOURCES, f"cannot write: {exc.strerror or exc}")
        self._close_and_remove(incoming)

    def _close_and_remove(self, incoming: _Incoming) -> None:
        if incoming.file is not None:
            with contextlib.suppress(OSError):
                incoming.file.close()
            incoming.file = None
        if incoming.path is not None:
            try:
                os.unlink(incoming.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove partial receive %s: %s", incoming.path, exc)

    # -- query / retrieve ----------------------------------------------------------------
    def _operation(self, incoming: _Incoming) -> None:
        assert incoming.memory is not None
        ts = UID(self.contexts[incoming.context_id][1])
        try:
            identifier = read_dataset(
                io.BytesIO(bytes(incoming.memory.data)), ts.is_implicit_VR, ts.is_little_endian
            )
        except Exception as exc:
            name = QR_COMMANDS[incoming.command_field]
            log.warning("%s from %s: identifier unreadable: %s", name, self.peer.calling_ae, exc)
            self._respond(incoming, Outcome(CANNOT_UNDERSTAND, f"identifier unreadable: {exc}"))
            return
        self.services.operation(Operation(self, incoming, identifier))

    def read_during(self, op: Operation) -> None:
        """Read one PDU that arrived while `op` runs: a C-CANCEL for it is all a peer may
        send then (no asynchronous operations are negotiated)."""
        pdu_type, length = self.reader.header()
        if pdu_type == ul.ABORT:
            self.reader.exact(min(length, 4))
            raise ul.Closed("aborted by the peer (A-ABORT)")
        if pdu_type != ul.P_DATA_TF:
            name = ul.PDU_NAMES.get(pdu_type, f"PDU type 0x{pdu_type:02X}")
            raise ul.ProtocolError(f"{name} while a {op.name} was being answered")
        command = bytearray()
        remaining = length
        while remaining > 0:
            n, _context_id, mch = self.reader.pdv_header()
            remaining -= 6 + n
            if not mch & ul.MCH_COMMAND or len(command) + n > MAX_COMMAND:
                raise ul.ProtocolError(f"a dataset while a {op.name} was being answered")
            command += self.reader.exact(n)
        fields = ul.decode_command(bytes(command))
        if ul.us(fields, ul.COMMAND_FIELD) != ul.C_CANCEL_RQ:
            raise ul.ProtocolError(f"a new request while a {op.name} was being answered")
        if ul.us(fields, ul.MESSAGE_ID_RESPONDED) == op.message_id:
            op.cancel()

    def encode(self, context_id: int, ds: Dataset | None) -> bytes:
        """A dataset in the context's transfer syntax (and its Specific Character Set)."""
        if ds is None:
            return b""
        ts = UID(self.contexts[context_id][1])
        if ts.is_little_endian:
            return _encode_le(ds, ts.is_implicit_VR)
        fp = DicomBytesIO()
        fp.is_little_endian = ts.is_little_endian
        fp.is_implicit_VR = ts.is_implicit_VR
        write_dataset(fp, ds)
        return fp.getvalue()

    def send_message(self, context_id: int, command: bytes, dataset: bytes = b"") -> None:
        """A command and its dataset as PDVs no larger than the peer takes."""
        step = self.peer_max_pdv
        pdus = []
        for data, kind in ((command, ul.MCH_COMMAND), (dataset, 0)):
            for i in range(0, len(data), step):
                last = ul.MCH_LAST if i + step >= len(data) else 0
                pdus.append(ul.p_data(context_id, kind | last, data[i : i + step]))
        self.sock.sendall(b"".join(pdus))

    def _respond(self, incoming: _Incoming, outcome: Outcome) -> None:
        command = ul.response(
            incoming.command_field | 0x8000,
            incoming.message_id,
            incoming.sop_class,
            outcome.status,
            incoming.sop_uid,
            outcome.comment,
        )
        self.sock.sendall(ul.p_data(incoming.context_id, ul.MCH_COMMAND | ul.MCH_LAST, command))

    def _discard(self) -> None:
        if self._incoming is not None:
            self._close_and_remove(self._incoming)
            self._incoming = None
