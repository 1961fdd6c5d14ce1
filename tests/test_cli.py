"""`dicom-gateway echo` and `send` against dcmtk's storescp (a real SCP on loopback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.synth import ct_series

REPO = Path(__file__).resolve().parent.parent


def gateway_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120
    )


def test_echo_and_send_folder_with_summary(tmp_path, storescp_factory):
    scp = storescp_factory()
    out = gateway_cli("echo", "--aec", "STORESCP", f"127.0.0.1:{scp.port}")
    assert out.returncode == 0 and "success in" in out.stdout
    folder = tmp_path / "study"
    ct_series(folder / "a", 7, rows=32, cols=32)
    ct_series(folder / "b", 3, rows=32, cols=32)
    (folder / "notes.txt").write_text("not dicom")
    out = gateway_cli("send", "--aec", "STORESCP", f"127.0.0.1:{scp.port}", str(folder))
    assert out.returncode == 1  # one file was not DICOM
    assert "10 success, 1 not DICOM / unreadable" in out.stdout
    assert "notes.txt: not sent" in out.stderr
    assert len(scp.files()) == 10


def test_echo_to_nobody_fails_clearly():
    out = gateway_cli("echo", "--timeout", "2", "127.0.0.1:1")
    assert out.returncode == 1 and "association failed" in out.stderr
    out = gateway_cli("send", "nohostport", ".")
    assert out.returncode == 2 and "expected HOST:PORT" in out.stderr


def test_run_on_a_taken_port_fails_with_one_clear_line(tmp_path):
    import os
    import socket

    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    env = {
        **os.environ,
        "GATEWAY__DIMSE__HOST": "127.0.0.1",
        "GATEWAY__DIMSE__PORT": str(port),
        "GATEWAY__DATA_DIR": str(tmp_path / "data"),
    }
    try:
        out = subprocess.run(
            [sys.executable, "-m", "gateway", "run", "-c", str(REPO / "config.yaml")],
            capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
        )  # fmt: skip
    finally:
        taken.close()
    assert out.returncode == 1
    assert f"cannot listen for DIMSE on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "Traceback" not in out.stderr
