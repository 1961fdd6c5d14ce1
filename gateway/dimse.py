"""DIMSE plumbing shared by the front-end, the C-STORE destination and the CLI.

pynetdicom leaves Nagle's algorithm on; with delayed ACKs every DIMSE message then waits
~40 ms (measured: 10x slower). Every socket we accept or open gets TCP_NODELAY here.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

VERIFICATION = "1.2.840.10008.1.1"


def set_nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _on_connection_open(event: evt.Event) -> None:
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        set_nodelay(sock)


#: Bind to every association we request: TCP_NODELAY on the outbound socket.
NODELAY_HANDLERS = [(evt.EVT_CONN_OPEN, _on_connection_open)]


class GatewayServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on accept and SO_REUSEPORT on bind.

    SO_REUSEPORT lets several listener processes share one port; the kernel spreads new
    connections over them, so ingest is not capped by one process's GIL.
    """

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        set_nodelay(client)
        return client, address


def file_context_key(path: str | Path) -> tuple[str, str]:
    """(SOP Class UID, Transfer Syntax UID) of a DICOM file, reading only its header."""
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID", ""))
    ts = str(ds.file_meta.get("TransferSyntaxUID") or ImplicitVRLittleEndian)
    return sop_class, ts


def contexts_for(keys: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """One presentation context per (SOP class, transfer syntax): the file's own syntax only.

    pynetdicom as acceptor prefers Implicit VR when a context offers several; proposing
    exactly the file's syntax means the file is sent as it is, never re-encoded.
    """
    out: list[PresentationContext] = []
    for sop_class, ts in dict.fromkeys(keys):
        cx = PresentationContext()
        cx.abstract_syntax = sop_class
        cx.transfer_syntax = [ts]
        out.append(cx)
    return out


def make_ae(ae_title: str, *, max_pdu: int, acse: float, dimse: float, network: float) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.acse_timeout = acse
    ae.dimse_timeout = dimse
    ae.network_timeout = network
    ae.connection_timeout = acse
    return ae


def associate(
    ae: AE, host: str, port: int, called_ae: str, contexts: list[PresentationContext]
) -> Association:
    """Request an association with TCP_NODELAY; the caller checks `is_established`."""
    ae.requested_contexts = contexts
    return ae.associate(host, port, ae_title=called_ae, evt_handlers=NODELAY_HANDLERS)


def verification_context() -> PresentationContext:
    cx = PresentationContext()
    cx.abstract_syntax = VERIFICATION
    cx.transfer_syntax = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    return cx


def all_transfer_syntaxes() -> list[str]:
    return list(ALL_TRANSFER_SYNTAXES)
