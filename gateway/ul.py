"""DICOM Upper Layer framing (PS3.8 9.3) and the DIMSE command sets the gateway uses.

Why this exists beside pynetdicom: its reactor costs ~5 ms of CPU per received instance
(per-PDU objects, a state machine, two threads polling with 1 ms sleeps), which capped a
listener at ~0.2x dcmtk `storescp` (bench/ingest.py). The storage data phase is simple
framing: PDVs are copied from the socket to the file, and command sets are a handful of
fixed elements. Association negotiation stays with pynetdicom's PDU classes and its
presentation-context negotiation, which are not on the per-instance path.
"""

from __future__ import annotations

import socket
import struct
from typing import Protocol

# PDU types (PS3.8 9.3.1)
ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07
PDU_NAMES = {
    ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    ASSOCIATE_AC: "A-ASSOCIATE-AC",
    ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    RELEASE_RQ: "A-RELEASE-RQ",
    RELEASE_RP: "A-RELEASE-RP",
    ABORT: "A-ABORT",
}

# A-ABORT provider reasons (PS3.8 9.3.8)
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_INVALID_PARAMETER = 0x06

# Message Control Header bits (PS3.8 E.2)
MCH_COMMAND = 0x01
MCH_LAST = 0x02

# Command Field values (PS3.7 E.1)
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_FIND_RQ = 0x0020
C_MOVE_RQ = 0x0021
C_GET_RQ = 0x0010
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101
HAS_DATASET = 0x0000

# Command element numbers, group 0000 (PS3.7 E.1-1)
AFFECTED_SOP_CLASS = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_RESPONDED = 0x0120
PRIORITY = 0x0700
DATASET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE = 0x1000
MOVE_DESTINATION = 0x0600
REMAINING = 0x1020  # Number of Remaining / Completed / Failed / Warning Sub-operations
COMPLETED = 0x1021
FAILED = 0x1022
WARNING = 0x1023

_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")
_ELEMENT = struct.Struct("<HHI")


class Writable(Protocol):
    def write(self, data: memoryview, /) -> int | None: ...


class ProtocolError(Exception):
    """The peer broke PS3.8/PS3.7; the association is aborted with `reason`."""

    def __init__(self, message: str, reason: int = ABORT_UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


class Closed(Exception):
    """The peer closed the connection; `clean` if it did so between PDUs."""

    def __init__(self, message: str, clean: bool = False) -> None:
        super().__init__(message)
        self.clean = clean


class PDUReader:
    """Reads PDUs from a socket through one buffer, copying large PDVs without holding them."""

    def __init__(self, sock: socket.socket, bufsize: int = 1 << 18) -> None:
        self._sock = sock
        self._r = sock.makefile("rb", buffering=bufsize)
        self._copy: memoryview | None = None  # 1 MiB, made on the first copy()

    def ready(self) -> bool:
        """Whether bytes (or the end of the stream) can be read now without waiting: lets
        a long operation notice a C-CANCEL or an A-ABORT between its responses."""
        timeout = self._sock.gettimeout()
        self._sock.setblocking(False)
        try:
            return bool(self._r.peek(1))
        except (BlockingIOError, InterruptedError):
            return False
        finally:
            self._sock.settimeout(timeout)

    def exact(self, n: int) -> bytes:
        data = self._r.read(n)
        if len(data) < n:
            raise Closed(f"connection closed with {n - len(data)} byte(s) of a PDU unread")
        return data

    def header(self) -> tuple[int, int]:
        """(PDU type, length); Closed(clean=True) if the stream ends before it."""
        data = self._r.read(6)
        if not data:
            raise Closed("connection closed", clean=True)
        if len(data) < 6:
            raise Closed(f"connection closed inside a PDU header ({len(data)} of 6 bytes)")
        return _PDU_HEADER.unpack(data)

    def pdv_header(self) -> tuple[int, int, int]:
        """(value length, presentation context ID, message control header) of a PDV item."""
        length, context_id, mch = _PDV_HEADER.unpack(self.exact(6))
        if length < 2:
            raise ProtocolError(f"PDV item length {length} is shorter than its header")
        return length - 2, context_id, mch

    def copy(self, n: int, sink: Writable | None) -> OSError | None:
        """Move `n` bytes to `sink` (None: discard them). A failed write does not stop the
        read: the rest is drained so the association can answer, and the error returned."""
        if self._copy is None:
            self._copy = memoryview(bytearray(1 << 20))
        buf = self._copy
        error = None
        while n:
            got = self._r.readinto(buf[: min(n, len(buf))])
            if not got:
                raise Closed(f"connection closed with {n} byte(s) of a PDV unread")
            n -= got
            view = buf[:got]
            try:
                while sink is not None and view:
                    view = view[sink.write(view) :]  # raw files may write short
            except OSError as exc:
                error, sink = exc, None
        return error

    def close(self) -> None:
        self._r.close()


def pdu(pdu_type: int, body: bytes) -> bytes:
    return _PDU_HEADER.pack(pdu_type, len(body)) + body


def p_data(context_id: int, mch: int, value: bytes) -> bytes:
    """One P-DATA-TF PDU holding one PDV."""
    return pdu(P_DATA_TF, _PDV_HEADER.pack(len(value) + 2, context_id, mch) + value)


def abort(reason: int = ABORT_UNEXPECTED_PDU) -> bytes:
    return pdu(ABORT, bytes([0, 0, 0x02, reason]))  # source: service provider


def associate_rj(result: int, source: int, diagnostic: int) -> bytes:
    return pdu(ASSOCIATE_RJ, bytes([0, result, source, diagnostic]))


def release_rp() -> bytes:
    return pdu(RELEASE_RP, bytes(4))


# -- command sets (Implicit VR Little Endian, PS3.7 6.3.1) ---------------------------------
def decode_command(data: bytes) -> dict[int, bytes]:
    """{element number: raw value} of a group-0000 command set."""
    out: dict[int, bytes] = {}
    i, end = 0, len(data)
    while i < end:
        if i + 8 > end:
            raise ProtocolError("command set ends inside an element header")
        group, element, length = _ELEMENT.unpack_from(data, i)
        i += 8
        if group != 0 or i + length > end:
            raise ProtocolError(f"malformed command element ({group:04X},{element:04X})")
        out[element] = data[i : i + length]
        i += length
    return out


def us(command: dict[int, bytes], element: int) -> int:
    value = command.get(element)
    if value is None or len(value) != 2:
        raise ProtocolError(f"command element (0000,{element:04X}) missing or not US")
    return int.from_bytes(value, "little")


def ui(command: dict[int, bytes], element: int) -> str:
    return command.get(element, b"").rstrip(b"\0 ").decode("ascii", "replace")


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _us(value: int) -> bytes:
    return value.to_bytes(2, "little")


def _ui(value: str) -> bytes:
    return _even(value.encode("ascii"), b"\0")


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set from (element number, raw value) pairs in ascending order."""
    body = b"".join(_ELEMENT.pack(0, e, len(v)) + v for e, v in elements)
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<I", len(body)) + body


def store_rq(message_id: int, sop_class: str, sop_uid: str) -> bytes:
    """A C-STORE-RQ command set (priority medium, a dataset follows)."""
    return encode_command(
        [
            (AFFECTED_SOP_CLASS, _ui(sop_class)),
            (COMMAND_FIELD, _us(C_STORE_RQ)),
            (MESSAGE_ID, _us(message_id)),
            (PRIORITY, _us(0)),
            (DATASET_TYPE, _us(0x0000)),
            (AFFECTED_SOP_INSTANCE, _ui(sop_uid)),
        ]
    )


def echo_rq(message_id: int, sop_class: str) -> bytes:
    return encode_command(
        [
            (AFFECTED_SOP_CLASS, _ui(sop_class)),
            (COMMAND_FIELD, _us(C_ECHO_RQ)),
            (MESSAGE_ID, _us(message_id)),
            (DATASET_TYPE, _us(NO_DATASET)),
        ]
    )


def response(
    command_field: int,
    message_id: int,
    sop_class: str,
    status: int,
    sop_instance: str = "",
    comment: str = "",
    *,
    has_dataset: bool = False,
    counts: tuple[int | None, int, int, int] | None = None,
) -> bytes:
    """A response command set (C-STORE/C-ECHO/C-FIND/C-MOVE/C-GET-RSP). `comment` becomes
    the Error Comment of a failure; `counts`: remaining (None: left out), completed, failed
    and warning sub-operations of a C-MOVE or C-GET."""
    elements = [
        (AFFECTED_SOP_CLASS, _ui(sop_class)),
        (COMMAND_FIELD, _us(command_field)),
        (MESSAGE_ID_RESPONDED, _us(message_id)),
        (DATASET_TYPE, _us(HAS_DATASET if has_dataset else NO_DATASET)),
        (STATUS, _us(status)),
    ]
    if comment and status not in (0x0000, 0xFF00, 0xFF01):
        text = comment.encode("ascii", "replace")[:64].replace(b"\\", b"/")
        elements.append((ERROR_COMMENT, _even(text, b" ")))
    if sop_instance:
        elements.append((AFFECTED_SOP_INSTANCE, _ui(sop_instance)))
    if counts is not None:
        names = (REMAINING, COMPLETED, FAILED, WARNING)
        elements += [(n, _us(c)) for n, c in zip(names, counts, strict=True) if c is not None]
    return encode_command(elements)


# -- Part 10 file meta (Explicit VR Little Endian, PS3.10 7.1) -----------------------------
def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sxxI", 2, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def file_meta(
    sop_class: str,
    sop_instance: str,
    transfer_syntax: str,
    impl_uid: str,
    impl_version: str,
    source_ae: str,
) -> bytes:
    """Preamble, `DICM` and the group-0002 elements that make a received dataset a file."""
    body = b"".join(
        [
            _meta_element(0x0001, b"OB", b"\0\1"),
            _meta_element(0x0002, b"UI", _ui(sop_class)),
            _meta_element(0x0003, b"UI", _ui(sop_instance)),
            _meta_element(0x0010, b"UI", _ui(transfer_syntax)),
            _meta_element(0x0012, b"UI", _ui(impl_uid)),
            _meta_element(0x0013, b"SH", _even(impl_version.encode(), b" ")),
            _meta_element(0x0016, b"AE", _even(source_ae.encode("ascii", "replace"), b" ")),
        ]
    )
    return bytes(128) + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body
