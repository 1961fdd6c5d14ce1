"""Delivery against real dcmtk peers: outages, backoff, dead letters, retry, drain, restarts."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate

from tests.conftest import dicom_dest, wait_for
from tests.peers import free_port, start_storescp, storescu
from tests.synth import ct_series

ALL = [{"name": "all", "match": {}, "forward": ["pacs"]}]
FAST_RETRY = {"initial_backoff": 0.2, "max_backoff": 1.0, "jitter": 0.1}


def queue_json(gw) -> dict:
    out = gw.cli("queue", "status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def jobs_in(gw, state: str) -> int:
    return sum(r["count"] for r in queue_json(gw)["destinations"] if r["state"] == state)


def metric(gw, name: str, labels: str = "") -> float:
    for line in gw.http("/metrics").text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def sop_uids(paths) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_destination_down_queues_backs_off_and_delivers_when_back(
    tmp_path, gateway_factory, storescp_factory
):
    port = free_port()  # nothing listens here yet
    files = ct_series(tmp_path / "s", 20, rows=64, cols=64)
    dest = {"type": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port,
            "connect_timeout": 2, "retry": {**FAST_RETRY, "max_attempts": 1000}}  # fmt: skip
    gw = gateway_factory({"pacs": dest}, ALL).start()
    out = storescu(gw.port, files)
    assert out.returncode == 0, out.stdout + out.stderr  # accepted while the destination is down
    wait_for(lambda: metric(gw, "gateway_delivery_retries_total") >= 40, 60, "retries")
    pending = queue_json(gw)["destinations"]
    assert sum(r["count"] for r in pending) == 20
    assert max(r["max_attempts"] for r in pending) >= 2
    # backoff: retries are spaced out, not a hot loop (20 jobs, backoff >= 0.2 s doubling)
    time.sleep(2)
    assert metric(gw, "gateway_delivery_retries_total") < 20 * 12
    assert gw.http("/readyz").status_code == 200
    scrape = gw.http("/metrics").text  # one scrape: states move between two
    depth = sum(
        float(line.rsplit(" ", 1)[1])
        for line in scrape.splitlines()
        if line.startswith('gateway_queue_depth{destination="pacs",state="')
    )
    assert depth == 20
    assert metric(gw, "gateway_queue_oldest_age_seconds", '{destination="pacs"}') > 1
    scp = start_storescp(tmp_path / "late", port=port)  # the destination comes back
    try:
        wait_for(lambda: len(scp.files()) >= 20, 60, "delivery after the destination returned")
        wait_for(lambda: not queue_json(gw)["destinations"], 30, "queue to drain")
        assert sop_uids(scp.files()) == sop_uids(files)
        assert metric(gw, "gateway_delivered_instances_total", '{destination="pacs"}') == 20
        assert not any((gw.data_dir / "spool" / "objects").iterdir())
    finally:
        scp.stop()
    assert gw.stop() == 0


def test_permanent_failure_dead_letters_and_queue_retry_delivers_after_fix(
    tmp_path, gateway_factory, storescp_factory
):
    port = free_port()
    # JPEG Baseline whose pixel data no decoder can read: the gateway cannot transcode it
    jpeg = tmp_path / "broken_jpeg.dcm"
    broken = dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    broken.PixelData = encapsulate([b"\xff\xd8" + bytes(200)])
    broken.save_as(jpeg)
    ct = ct_series(tmp_path / "s", 3, rows=64, cols=64)
    dest = {"type": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port,
            "connect_timeout": 2, "retry": {**FAST_RETRY, "max_attempts": 3}}  # fmt: skip
    gw = gateway_factory({"pacs": dest}, ALL).start()
    # 1. A peer that accepts no JPEG, and a JPEG that cannot be transcoded: that instance
    #    is dead at once (permanent), the rest go.
    picky = start_storescp(tmp_path / "picky", port=port, accept=None)
    try:
        assert storescu(gw.port, [jpeg], "-xy").returncode == 0
        assert storescu(gw.port, ct).returncode == 0
        wait_for(lambda: jobs_in(gw, "dead") == 1, 60, "the JPEG instance to dead-letter")
        wait_for(lambda: len(picky.files()) == 3, 60, "the CT instances to arrive")
    finally:
        picky.stop()
    dead = json.loads(gw.cli("queue", "dead", "--json").stdout)
    assert len(dead) == 1 and dead[0]["attempts"] == 1
    assert "accepts no context" in dead[0]["last_error"]
    # 2. Destination down past max_attempts: dead-lettered after 3 attempts, reason kept.
    assert storescu(gw.port, ct[:1]).returncode == 0
    wait_for(lambda: jobs_in(gw, "dead") == 2, 60, "max attempts to dead-letter")
    dead = json.loads(gw.cli("queue", "dead", "--json").stdout)
    assert sorted(d["attempts"] for d in dead) == [1, 3]
    assert any("cannot connect" in d["last_error"] for d in dead)
    assert metric(gw, "gateway_dead_lettered_total", '{destination="pacs"}') == 2
    # 3. Fixed: a peer accepting everything; `queue retry` delivers both.
    fixed = start_storescp(tmp_path / "fixed", port=port)
    try:
        out = gw.cli("queue", "retry")
        assert out.returncode == 0 and "2 dead letter(s) queued again" in out.stdout
        wait_for(lambda: len(fixed.files()) == 2, 60, "retried dead letters to arrive")
        wait_for(lambda: not queue_json(gw)["destinations"], 30, "queue to drain")
        assert sop_uids(fixed.files()) == sop_uids([jpeg, ct[0]])
    finally:
        fixed.stop()
    assert gw.stop() == 0


def test_queue_purge_drops_dead_letters_and_their_spool_files(tmp_path, gateway_factory):
    dest = {"type": "dicom", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port(),
            "connect_timeout": 1, "retry": {**FAST_RETRY, "max_attempts": 1}}  # fmt: skip
    gw = gateway_factory({"pacs": dest}, ALL).start()
    assert storescu(gw.port, ct_series(tmp_path / "s", 2, rows=32, cols=32)).returncode == 0
    wait_for(lambda: jobs_in(gw, "dead") == 2, 60, "dead letters")
    assert len(list((gw.data_dir / "spool" / "objects").iterdir())) == 2
    out = gw.cli("queue", "purge", "--yes")
    assert out.returncode == 0 and "2 dead letter(s) purged; 2 spool file(s) removed" in out.stdout
    assert not queue_json(gw)["destinations"]
    assert not any((gw.data_dir / "spool" / "objects").iterdir())
    assert gw.stop() == 0


def test_sigterm_drains_and_restart_delivers_the_rest(tmp_path, gateway_factory, storescp_factory):
    scp = storescp_factory()
    files = ct_series(tmp_path / "s", 200, rows=64, cols=64)
    gw = gateway_factory({"pacs": dicom_dest(scp)}, ALL).start()
    assert storescu(gw.port, files).returncode == 0
    assert gw.stop() == 0  # SIGTERM: clean exit, whatever was in flight
    assert "stopped" in gw.logs() and "Traceback" not in gw.logs()
    gw.start()
    wait_for(lambda: len(scp.files()) >= 200, 120, "everything delivered after restart")
    wait_for(lambda: not queue_json(gw)["destinations"], 30, "queue to drain")
    assert sop_uids(scp.files()) == sop_uids(files)
    assert gw.stop() == 0


def test_crashed_child_is_restarted(tmp_path, gateway_factory, storescp_factory):
    scp = storescp_factory()
    gw = gateway_factory({"pacs": dicom_dest(scp)}, ALL, dimse={"listeners": 1}).start()
    children = psutil.Process(gw.proc.pid).children()
    spawned = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    assert len(spawned) == 4  # 1 listener, 2 workers, http
    for child in spawned:
        os.kill(child.pid, signal.SIGKILL)
    wait_for(lambda: "restarting" in gw.logs(), 10, "the supervisor to notice")
    files = ct_series(tmp_path / "s", 5, rows=32, cols=32)

    def stored() -> bool:
        return storescu(gw.port, files).returncode == 0

    wait_for(stored, 60, "the listener to come back", every=1)
    wait_for(lambda: len(scp.files()) >= 5, 60, "workers to come back and deliver")
    assert gw.http("/healthz").status_code == 200
    assert gw.stop() == 0


def test_busy_single_association_peer_is_reached_once_free(tmp_path, gateway_factory):
    """storescp without --fork serves one association at a time. While another client holds
    it, the gateway's attempts time out; each must close its connection completely, or the
    peer later answers those dead connections first and the gateway never gets through."""
    from gateway.requestor import StoreRequestor

    scp = start_storescp(tmp_path / "single")
    try:
        blocker = StoreRequestor.open(("127.0.0.1", scp.port), scp.ae_title, "BLOCKER", [])
        dest = {"type": "dicom", "ae_title": scp.ae_title, "host": "127.0.0.1",
                "port": scp.port, "connect_timeout": 1, "retry": FAST_RETRY}  # fmt: skip
        gw = gateway_factory({"pacs": dest}, ALL).start()
        files = ct_series(tmp_path / "s", 5, rows=32, cols=32)
        assert storescu(gw.port, files).returncode == 0
        wait_for(lambda: metric(gw, "gateway_delivery_retries_total") >= 10, 60, "timed-out tries")
        blocker.release()
        wait_for(lambda: len(scp.files()) == 5, 30, "delivery once the peer is free")
        assert sop_uids(scp.files()) == sop_uids(files)
        assert gw.stop() == 0
    finally:
        scp.stop()
