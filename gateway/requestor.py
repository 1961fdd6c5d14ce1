"""An association the gateway opens to a C-STORE SCP: negotiation, then files sent as stored
(or, when transcoded for a peer that does not take their own syntax, from memory).

The counterpart of `gateway.association` for sending. pynetdicom as a sender reached
~130 instances/s here (PITFALLS.md); framing a stored file's dataset bytes into P-DATA-TF
PDUs needs no dataset decoding at all. Negotiation uses pynetdicom's PDU classes.
"""

from __future__ import annotations

import io
import itertools
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from gateway import ul
from gateway.association import UNLIMITED_FRAGMENT, max_pdv, user_information
from gateway.dimse import VERIFICATION, set_nodelay

log = logging.getLogger(__name__)

_PDV = struct.Struct(">BxIIBB")  # P-DATA-TF header + one PDV item header


class AssociationFailed(Exception):
    """Could not connect, or the peer rejected or aborted the negotiation."""


class Lost(Exception):
    """The association broke (closed, aborted, timed out) before a response came."""


class NoContext(Exception):
    """The peer accepted no presentation context for this SOP class and syntax."""


class NotPart10(Exception):
    """A file without the DICOM Part 10 preamble and file meta: its syntax is unknown."""


@dataclass(frozen=True)
class Rejection:
    result: int
    source: int
    reason: int

    def __str__(self) -> str:
        kind = "permanently" if self.result == 1 else "transiently"
        return f"rejected {kind} (source {self.source}, reason {self.reason})"


def dataset_offset(fp) -> int:  # noqa: ANN001 - any binary file object
    """Where the dataset starts in a Part 10 file: after the preamble and group 0002."""
    fp.seek(128)
    if fp.read(4) != b"DICM":
        raise NotPart10("no DICM preamble")
    pos = 132
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return pos
        group, _element, vr = struct.unpack("<HH2s", head[:6])
        if group != 0x0002:
            return pos
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            (length,) = struct.unpack("<I", fp.read(4))
            pos += 12 + length
        else:
            (length,) = struct.unpack("<H", head[6:8])
            pos += 8 + length
        fp.seek(pos)


class StoreRequestor:
    """One association to a storage SCP; synchronous: one message in flight."""

    def __init__(
        self,
        sock: socket.socket,
        reader: ul.PDUReader,
        contexts: dict[tuple[str, str], int],
        max_pdv: int,
    ) -> None:
        self.sock = sock
        self.reader = reader
        self.contexts = contexts  # (abstract syntax, transfer syntax) -> accepted context ID
        self.max_pdv = max_pdv
        # Set when this requestor sends a C-GET's sub-operations on the association the
        # C-GET came on: a C-CANCEL-RQ may arrive there among the C-STORE responses.
        self.on_cancel: Callable[[], None] | None = None
        self._ids = itertools.count(1)
        self._buf = bytearray(UNLIMITED_FRAGMENT)

    @classmethod
    def open(
        cls,
        address: tuple[str, int],
        called_ae: str,
        calling_ae: str,
        wanted: list[tuple[str, str]],
        *,
        max_pdu: int = 0,
        connect_timeout: float = 10.0,
        dimse_timeout: float = 30.0,
    ) -> StoreRequestor:
        """Connect and negotiate one context per (SOP class, syntax), plus Verification."""
        keys = tuple(dict.fromkeys([*wanted, (VERIFICATION, "1.2.840.10008.1.2")]))
        if len(keys) > 128:
            raise ValueError(f"{len(keys)} presentation contexts; PS3.8 allows 128")
        rq_bytes = _associate_rq(called_ae, calling_ae, keys, max_pdu)
        where = f"{called_ae}@{address[0]}:{address[1]}"
        try:
            sock = socket.create_connection(address, timeout=connect_timeout)
        except OSError as exc:
            raise AssociationFailed(f"cannot connect to {where}: {exc}") from exc
        reader = ul.PDUReader(sock, bufsize=1 << 16)

        def fail(message: str) -> AssociationFailed:
            # The reader holds the socket's file descriptor too: close both, or the peer
            # keeps a connection that nobody reads (a one-association SCP then blocks).
            reader.close()
            sock.close()
            return AssociationFailed(message)

        try:
            set_nodelay(sock)
            sock.sendall(rq_bytes)
            pdu_type, length = reader.header()
            body = reader.exact(min(length, 1 << 22))
        except (OSError, ul.Closed) as exc:
            raise fail(f"{where} did not answer the association: {exc}") from exc
        if pdu_type == ul.ASSOCIATE_RJ and len(body) >= 4:
            raise fail(f"{where} {Rejection(body[1], body[2], body[3])}")
        if pdu_type != ul.ASSOCIATE_AC:
            name = ul.PDU_NAMES.get(pdu_type, f"PDU type 0x{pdu_type:02X}")
            raise fail(f"{where} answered the association with {name}")
        try:
            accepted_ids, max_pdv = _associate_ac(body, keys)
        except Exception as exc:
            raise fail(f"{where} sent an A-ASSOCIATE-AC that cannot be decoded: {exc}") from exc
        accepted = {keys[n]: 2 * n + 1 for n in accepted_ids}
        sock.settimeout(dimse_timeout)
        return cls(sock, reader, accepted, max_pdv)

    # -- messages ------------------------------------------------------------------------
    def accepts(self, sop_class: str, ts: str) -> bool:
        """Whether the peer accepted a context for this SOP class in this syntax."""
        return (sop_class, ts) in self.contexts

    def store(self, path: Path, sop_class: str, sop_uid: str, ts: str) -> tuple[int, str]:
        """Send one stored file; (status, error comment). NoContext, NotPart10, Lost."""
        context_id = self._context_id(sop_class, ts)
        with open(path, "rb", buffering=0) as fp:
            return self._store(context_id, fp, sop_class, sop_uid)

    def store_part10(self, data: bytes, sop_class: str, sop_uid: str, ts: str) -> tuple[int, str]:
        """Send a Part 10 file held in memory (a transcoded instance) whose dataset is
        encoded in `ts`; as store()."""
        return self._store(self._context_id(sop_class, ts), io.BytesIO(data), sop_class, sop_uid)

    def _context_id(self, sop_class: str, ts: str) -> int:
        context_id = self.contexts.get((sop_class, ts))
        if context_id is None:
            raise NoContext(f"no accepted context for {sop_class} in {ts}")
        return context_id

    def _store(self, context_id: int, fp, sop_class: str, sop_uid: str) -> tuple[int, str]:  # noqa: ANN001
        """C-STORE-RQ with the dataset after the file meta of the Part 10 file `fp`."""
        message_id = next(self._ids) & 0xFFFF
        start = dataset_offset(fp)
        size = fp.seek(0, 2)
        fp.seek(start)
        command = ul.store_rq(message_id, sop_class, sop_uid)
        try:
            self._send_command(context_id, command)
            self._send_dataset(context_id, fp, size - start)
        except OSError as exc:
            raise Lost(f"sending failed: {exc}") from exc
        return self._response(message_id)

    def echo(self) -> int:
        context_id = self.contexts.get((VERIFICATION, "1.2.840.10008.1.2"))
        if context_id is None:
            raise NoContext("Verification was not accepted")
        message_id = next(self._ids) & 0xFFFF
        try:
            self._send_command(context_id, ul.echo_rq(message_id, VERIFICATION))
        except OSError as exc:
            raise Lost(f"sending failed: {exc}") from exc
        return self._response(message_id)[0]

    def _send_command(self, context_id: int, command: bytes) -> None:
        mch = ul.MCH_COMMAND
        for i in range(0, len(command), self.max_pdv):
            part = command[i : i + self.max_pdv]
            last = ul.MCH_LAST if i + self.max_pdv >= len(command) else 0
            self.sock.sendall(ul.p_data(context_id, mch | last, part))

    def _send_dataset(self, context_id: int, fp, remaining: int) -> None:  # noqa: ANN001
        """Read the file in large pieces and send each as P-DATA-TF PDUs of the peer's
        size in one sendmsg: two system calls per MiB rather than two per PDU."""
        buf = memoryview(self._buf)
        if remaining == 0:
            self.sock.sendall(ul.p_data(context_id, ul.MCH_LAST, b""))
            return
        while remaining:
            n = fp.readinto(buf[: min(remaining, len(buf))])
            if not n:
                raise Lost("the spool file shrank while being sent")
            remaining -= n
            parts: list[bytes | memoryview] = []
            for start in range(0, n, self.max_pdv):
                piece = buf[start : min(n, start + self.max_pdv)]
                last = ul.MCH_LAST if not remaining and start + len(piece) == n else 0
                size = len(piece)
                parts += [_PDV.pack(ul.P_DATA_TF, size + 6, size + 2, context_id, last), piece]
            _sendmsg_all(self.sock, parts)

    def _response(self, message_id: int) -> tuple[int, str]:
        command = bytearray()
        try:
            while True:
                pdu_type, length = self.reader.header()
                if pdu_type != ul.P_DATA_TF:
                    self.reader.exact(min(length, 1 << 16))
                    name = ul.PDU_NAMES.get(pdu_type, f"PDU type 0x{pdu_type:02X}")
                    raise Lost(f"the peer sent {name} instead of a response")
                remaining = length
                while remaining > 0:
                    n, _context_id, mch = self.reader.pdv_header()
                    remaining -= 6 + n
                    if not mch & ul.MCH_COMMAND or len(command) + n > (1 << 16):
                        raise Lost("the peer sent a dataset or an oversized command")
                    command += self.reader.exact(n)
                    if mch & ul.MCH_LAST:
                        fields = ul.decode_command(bytes(command))
                        command.clear()
                        cancel = ul.us(fields, ul.COMMAND_FIELD) == ul.C_CANCEL_RQ
                        if cancel and self.on_cancel is not None:
                            self.on_cancel()
                            continue
                        if ul.us(fields, ul.MESSAGE_ID_RESPONDED) != message_id:
                            raise Lost("a response to another message arrived")
                        comment = fields.get(ul.ERROR_COMMENT, b"").decode("ascii", "replace")
                        return ul.us(fields, ul.STATUS), comment.strip()
        except (OSError, ul.Closed, ul.ProtocolError) as exc:
            raise Lost(f"no response: {exc or type(exc).__name__}") from exc

    # -- ending ----------------------------------------------------------------------------
    def release(self) -> None:
        try:
            self.sock.sendall(ul.pdu(ul.RELEASE_RQ, bytes(4)))
            pdu_type, length = self.reader.header()
            self.reader.exact(min(length, 1 << 16))
        except (OSError, ul.Closed):
            pass  # everything that mattered was confirmed already
        finally:
            self.close()

    def abort(self) -> None:
        try:
            self.sock.sendall(ul.pdu(ul.ABORT, bytes([0, 0, 0, 0])))  # source: service user
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _sendmsg_all(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """sendmsg until every byte of `parts` is sent (it may send fewer, like send)."""
    views = [memoryview(p) for p in parts]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if views and sent:
            views[0] = views[0][sent:]


# A worker opens an association per batch, mostly with the same contexts, and the peer
# answers alike: encoding the request and decoding the answer with pynetdicom's PDU
# classes was ~40% of a forwarding worker's Python time. Both are pure functions of bytes.
@lru_cache(maxsize=256)
def _associate_rq(
    called_ae: str, calling_ae: str, keys: tuple[tuple[str, str], ...], max_pdu: int
) -> bytes:
    """The A-ASSOCIATE-RQ PDU proposing keys[n] as presentation context 2n+1."""
    rq = A_ASSOCIATE()
    rq.application_context_name = APPLICATION_CONTEXT_NAME
    rq.calling_ae_title = calling_ae
    rq.called_ae_title = called_ae
    contexts = []
    for n, (abstract, ts) in enumerate(keys):
        cx = PresentationContext()
        cx.context_id = 2 * n + 1
        cx.abstract_syntax = abstract
        cx.transfer_syntax = [ts]
        contexts.append(cx)
    rq.presentation_context_definition_list = contexts
    rq.user_information = user_information(max_pdu)
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(rq)
    return pdu.encode()


@lru_cache(maxsize=256)
def _associate_ac(body: bytes, keys: tuple[tuple[str, str], ...]) -> tuple[tuple[int, ...], int]:
    """(indexes into keys of the accepted contexts, largest PDV value to send)."""
    ac = A_ASSOCIATE_AC()
    ac.decode(ul.pdu(ul.ASSOCIATE_AC, body))
    prim = ac.to_primitive()
    accepted = tuple(
        (int(cx.context_id) - 1) // 2
        for cx in prim.presentation_context_definition_results_list
        if cx.result == 0x00 and int(cx.context_id) % 2 and int(cx.context_id) // 2 < len(keys)
    )
    return accepted, max_pdv(prim.user_information)
