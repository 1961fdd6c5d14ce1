"""kill -9 of the whole gateway while it receives and forwards: nothing acknowledged is lost.

dcmtk storescu sends; dcmtk storescp is the destination. storescu's verbose log says
which files got Success; after the kill and a restart, every one of those SOP Instance
UIDs must reach storescp.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import dicom_dest, wait_for
from tests.peers import PEER_ENV, dcmtk
from tests.synth import ct_series

SENDING = re.compile(r"Sending file: (\S+)")
RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def acknowledged(storescu_log: str) -> set[str]:
    """Files storescu sent whose response was Success (pairs 'Sending file' -> response)."""
    ok, current = set(), None
    for line in storescu_log.splitlines():
        if m := SENDING.search(line):
            current = m.group(1)
        elif (m := RESPONSE.search(line)) and current:
            if "Success" in m.group(1):
                ok.add(current)
            current = None
    return ok


def received_uids(folder: Path) -> set[str]:
    return {
        str(dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        for p in folder.iterdir()
        if p.is_file()
    }


def drained(gw) -> bool:
    out = gw.cli("queue", "status", "--json")
    if out.returncode != 0:
        return False
    data = json.loads(out.stdout)
    return not data["instances"] and not data["destinations"]


def run_kill_cycle(tmp_path, storescp_factory, gateway_factory, count: int, kills: int) -> None:
    files = ct_series(tmp_path / "series", count, rows=128, cols=128)
    uid_of = {str(p): str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    scp = storescp_factory()
    gw = gateway_factory(
        {"pacs": dicom_dest(scp)},
        [{"name": "all", "match": {}, "forward": ["pacs"]}],
        log_level="DEBUG",
    )
    gw.start()
    chunks = [files[i::4] for i in range(4)]  # 4 concurrent associations
    acked: set[str] = set()
    remaining = list(chunks)
    for cycle in range(kills):
        procs = [
            subprocess.Popen(
                [dcmtk("storescu"), "-v", "-nh", "-aet", "STORESCU", "-aec", "GATEWAY",
                 "127.0.0.1", str(gw.port), *map(str, chunk)],
                env=PEER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for chunk in remaining if chunk
        ]  # fmt: skip
        # Kill while both receiving and forwarding are in full swing.
        target = len(scp.files()) + max(20, count // (4 * kills))
        wait_for(lambda t=target: len(scp.files()) >= t, 120, "forwarding to start")
        gw.kill9()
        logs = [p.communicate(timeout=120)[0] for p in procs]
        (tmp_path / f"storescu{cycle}.log").write_text("\n=====\n".join(logs))
        for log in logs:
            acked |= acknowledged(log)
        sent_ok = {f for f in map(str, files) if f in acked}
        remaining = [[f for f in chunk if str(f) not in sent_ok] for chunk in chunks]
        gw.start()
    assert acked, "storescu got no Success at all before the kill"
    assert len(acked) < count, "the kill came too late to interrupt anything"
    wait_for(lambda: drained(gw), 180, "the queue to drain after restart", every=0.5)
    arrived = received_uids(scp.out_dir)
    lost = {uid_of[f] for f in acked} - arrived
    assert not lost, f"{len(lost)} acknowledged instance(s) lost, e.g. {sorted(lost)[:3]}"
    assert "Traceback" not in gw.logs()
    # Nothing left behind: the spool holds no file once everything is delivered.
    assert not any((gw.data_dir / "spool" / "objects").iterdir())
    assert gw.stop() == 0


def test_kill9_while_receiving_and_forwarding_loses_nothing_acknowledged(
    tmp_path, storescp_factory, gateway_factory
):
    run_kill_cycle(tmp_path, storescp_factory, gateway_factory, count=1000, kills=1)


@pytest.mark.slow
def test_kill9_soak_repeated(tmp_path, storescp_factory, gateway_factory):
    run_kill_cycle(tmp_path, storescp_factory, gateway_factory, count=3000, kills=5)
