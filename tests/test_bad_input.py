"""Hostile and broken input on the DIMSE port, and a full disk: clear refusal, no crash, no loss.

The disk tests mount a small tmpfs (the test runs as root, as CI does) so that the disk
really fills up.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import wait_for
from tests.peers import PEER_ENV, dcmtk, storescu
from tests.synth import ct_series

ARCHIVE = {"archive": {"type": "archive"}}
TO_ARCHIVE = [{"name": "all", "match": {}, "forward": ["archive"]}]


def echoscu(port: int, aet: str = "ECHOSCU", aec: str = "GATEWAY") -> subprocess.CompletedProcess:
    return subprocess.run(
        [dcmtk("echoscu"), "-aet", aet, "-aec", aec, "127.0.0.1", str(port)],
        env=PEER_ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def raw_send(port: int, payload: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        if not read:
            return b""
        try:
            return s.recv(4096)
        except (TimeoutError, ConnectionResetError):
            return b""


def test_refusals_are_logged_with_the_reason(gateway_factory):
    gw = gateway_factory(
        ARCHIVE,
        TO_ARCHIVE,
        dimse={
            "allowed_calling_aets": [
                "ECHOSCU",
                {"ae_title": "PINNED", "hosts": ["10.99.0.0/16"]},
                {"ae_title": "LOCAL", "hosts": ["127.0.0.0/8"]},
            ]
        },
    ).start()
    assert echoscu(gw.port).returncode == 0
    assert echoscu(gw.port, aet="LOCAL").returncode == 0
    for aet, aec in [("INTRUDER", "GATEWAY"), ("PINNED", "GATEWAY"), ("ECHOSCU", "OTHER")]:
        out = echoscu(gw.port, aet=aet, aec=aec)
        assert out.returncode != 0
        assert "Association Rejected" in out.stdout + out.stderr
    wait_for(lambda: gw.logs().count("refused association") == 3, 10, "refusal log lines")
    log = gw.logs()
    assert "(calling 'INTRUDER', called 'GATEWAY'): calling AE title not allowed" in log
    assert (
        "(calling 'PINNED', called 'GATEWAY'): calling AE title not allowed from 127.0.0.1" in log
    )
    assert "called AE title not ours: expected 'GATEWAY'" in log
    metrics = gw.http("/metrics").text
    assert (
        'gateway_associations_refused_total{reason="calling AE title not allowed"} 1.0' in metrics
    )
    assert gw.stop() == 0


def test_garbage_and_malformed_associations_are_refused_and_the_gateway_keeps_serving(
    tmp_path, gateway_factory
):
    gw = gateway_factory(ARCHIVE, TO_ARCHIVE).start()
    rq_header = struct.pack(">BBI", 0x01, 0, 68)  # A-ASSOCIATE-RQ claiming 68 bytes
    fixed = b"\x00\x01\x00\x00" + b"GATEWAY".ljust(16) + b"STORESCU".ljust(16) + bytes(32)
    abort = 0x07
    attacks = [  # (bytes, wait for an answer, what the log must say, first byte answered)
        (os.urandom(4096), True, "expected A-ASSOCIATE-RQ, got", abort),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True, "got unknown PDU type 0x47", abort),
        (rq_header + fixed[:28], False, "connection closed with 40 byte(s)", None),
        (struct.pack(">BBI", 0x01, 0, 0xFFFFFFF0) + bytes(64), True, "claims 4294967280", abort),
        (struct.pack(">BBI", 0x04, 0, 12) + bytes(12), True, "got P-DATA-TF", abort),
        (struct.pack(">BBI", 0x99, 0, 4) + bytes(4), True, "unknown PDU type 0x99", abort),
        # a complete RQ whose first item claims more bytes than the PDU holds
        (
            struct.pack(">BBI", 0x01, 0, 76) + fixed + b"\x10\x00\x00\x50" + bytes(4),
            True,
            "A-ASSOCIATE-RQ could not be decoded",
            abort,
        ),
    ]
    for payload, read, _, answer in attacks:
        got = raw_send(gw.port, payload, read)
        if answer is not None:
            assert got[:1] == bytes([answer]), (payload[:16], got)
    # half-open connections that never say anything must not block others
    idle = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(5)]
    try:
        assert echoscu(gw.port).returncode == 0
        files = ct_series(tmp_path / "s", 3, rows=32, cols=32)
        assert storescu(gw.port, files).returncode == 0
    finally:
        for s in idle:
            s.close()
    assert gw.proc.poll() is None
    log = gw.logs()
    # each attack is named in the log with its reason; no crash, no traceback
    assert "exited with code" not in log
    assert "Traceback" not in log
    for _, _, reason, _ in attacks:
        assert reason in log
    assert gw.http("/healthz").status_code == 200
    assert gw.stop() == 0


def test_unreadable_dataset_gets_a_failure_status(tmp_path, gateway_factory):
    gw = gateway_factory(ARCHIVE, TO_ARCHIVE).start()
    good = ct_series(tmp_path / "s", 1, rows=32, cols=32)[0]
    # The same header, then a garbage element: valid DIMSE, undecodable dataset.
    bad = tmp_path / "bad.dcm"
    raw = good.read_bytes()
    bad.write_bytes(raw[: len(raw) - 32 * 32 * 2 - 12] + b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff")
    out = storescu(gw.port, [bad])
    text = out.stdout + out.stderr
    if out.returncode == 0 and "0xc210" not in text.lower():
        pytest.fail(f"storescu reported success for an undecodable dataset: {text}")
    assert storescu(gw.port, [good]).returncode == 0
    assert "Traceback" not in gw.logs()
    assert gw.stop() == 0


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path, leave_mb: float) -> None:
    """Write a ballast file until only `leave_mb` MB stay free."""
    st = os.statvfs(path.parent)
    free = st.f_bavail * st.f_frsize
    size = max(0, int(free - leave_mb * 1024 * 1024))
    with open(path, "wb") as f:
        while size > 0:
            chunk = min(size, 1 << 20)
            f.write(b"\0" * chunk)
            size -= chunk


def test_disk_floor_refuses_with_A700_and_recovers(tmp_path, small_disk, gateway_factory):
    gw = gateway_factory(
        ARCHIVE, TO_ARCHIVE, data_dir=str(small_disk / "data"), storage={"min_free_mb": 16}
    ).start()
    before = ct_series(tmp_path / "before", 5, rows=128, cols=128)
    assert storescu(gw.port, before).returncode == 0
    archive = gw.data_dir / "archive"
    wait_for(lambda: len(list(archive.rglob("*.dcm"))) == 5, 30, "first instances archived")
    assert gw.http("/readyz").status_code == 200

    ballast = small_disk / "ballast"
    fill(ballast, leave_mb=8)  # below the 16 MB floor
    blocked = ct_series(tmp_path / "blocked", 2, rows=128, cols=128)
    out = storescu(gw.port, blocked, "-v")
    assert out.returncode != 0
    # dcmtk names status 0xA700 "Refused: OutOfResources"
    assert "Refused: OutOfResources" in out.stdout + out.stderr, out.stdout + out.stderr
    ready = gw.http("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["disk"]["ok"] is False
    assert "free disk below storage.min_free_mb" in gw.logs()

    ballast.unlink()  # space returns
    wait_for(lambda: gw.http("/readyz").status_code == 200, 10, "readiness to return")
    assert storescu(gw.port, blocked).returncode == 0
    wait_for(lambda: len(list(archive.rglob("*.dcm"))) == 7, 30, "all instances archived")
    # nothing corrupted: every archived file equals what was sent
    for src in before + blocked:
        ds = dcmread(src)
        kept = archive / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert dcmread(kept).PixelData == ds.PixelData
    assert gw.stop() == 0


def test_full_disk_write_failure_is_refused_and_recovers(tmp_path, small_disk, gateway_factory):
    """No floor configured: the write itself fails (ENOSPC); the sender must not get Success."""
    gw = gateway_factory(
        ARCHIVE,
        TO_ARCHIVE,
        data_dir=str(small_disk / "data"),
        storage={"min_free_mb": 0},
    ).start()
    ballast = small_disk / "ballast"
    fill(ballast, leave_mb=0.2)
    big = ct_series(tmp_path / "big", 2, rows=512, cols=512)  # 512 KiB each: cannot fit
    out = storescu(gw.port, big)
    assert out.returncode != 0, out.stdout + out.stderr
    assert gw.proc.poll() is None
    ballast.unlink()
    assert echoscu(gw.port).returncode == 0
    assert storescu(gw.port, big).returncode == 0
    wait_for(lambda: len(list((gw.data_dir / "archive").rglob("*.dcm"))) == 2, 30, "archived after")
    # the association removed its partial file itself, and said why the sender got 0xA700
    assert not list((gw.data_dir / "spool" / "incoming").iterdir())
    assert "cannot write the spool file" in gw.logs()
    assert gw.stop() == 0
