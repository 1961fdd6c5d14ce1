"""Wake idle workers when work arrives, across processes, with nothing a crash can wedge.

A shared multiprocessing.Event is guarded by a lock; a child killed while holding it
blocks every other process for good (seen: listeners hung in set() after a kill -9).
Here each worker owns a datagram socket in Linux's abstract namespace (no file, gone when
the process dies) and a ring is a best-effort, non-blocking datagram to each of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import select
import socket
from pathlib import Path


def _address(data_dir: Path, index: int) -> bytes:
    tag = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return f"\0dicom-gateway-{tag}-worker-{index}".encode()


class Bell:
    """The ringing side (listeners): one datagram to every worker, never blocks."""

    def __init__(self, data_dir: Path, workers: int) -> None:
        self.addresses = [_address(data_dir, i) for i in range(workers)]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def ring(self) -> None:
        for addr in self.addresses:
            with contextlib.suppress(OSError):  # worker down or buffer full: it polls anyway
                self.sock.sendto(b"!", addr)


class Door:
    """The waiting side (one per worker)."""

    def __init__(self, data_dir: Path, index: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(_address(data_dir, index))
        self.sock.setblocking(False)

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or `timeout`; True when rung. Drains pending rings."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        rung = False
        while True:
            try:
                self.sock.recv(64)
                rung = True
            except BlockingIOError:
                return rung
