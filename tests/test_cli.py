"""`dicom-gateway echo` and `send` against dcmtk's storescp (a real SCP on loopback)."""

from __future__ import annotations

import subprocess
import sys

from tests.synth import ct_series


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
