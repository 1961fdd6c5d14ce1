"""Real peers on 127.0.0.1 for tests and benchmarks: the gateway itself, dcmtk, Orthanc.

Each is started as a process on free ports and stopped by PID (process group for the
gateway, so kill -9 takes the whole tree).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
# pynetdicom installs console scripts named storescu/storescp/echoscu/... that shadow
# dcmtk's on PATH; the real peers are dcmtk's, so name them by absolute path.
DCMTK_BIN = Path(os.environ.get("DCMTK_BIN", "/usr/bin"))
PEER_ENV = {
    **os.environ,
    "TCP_NODELAY": "1",  # dcmtk honours it; Nagle costs 10x
    "PATH": f"{DCMTK_BIN}:{os.environ.get('PATH', '')}",  # for shell clients (send_by_ts.sh)
}


def dcmtk(tool: str) -> str:
    """Absolute path of a dcmtk tool (storescu, storescp, echoscu, findscu, ...)."""
    path = DCMTK_BIN / tool
    if not path.exists():
        raise FileNotFoundError(f"dcmtk tool {path} missing: apt-get install dcmtk")
    return str(path)


def _tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants; empty when it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(pid: int) -> int:
    """Resident bytes of a process plus all its descendants; 0 when it is gone."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(psutil.Error):  # exited between listing and reading
            total += p.memory_info().rss
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process tree, reaped children included."""
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


@dataclass
class RssPeak:
    idle: int = 0  # bytes when sampling started
    peak: int = 0  # bytes, highest sample so far


@contextmanager
def peak_rss(pid: int, interval: float = 0.05) -> Iterator[RssPeak]:
    """Sample tree_rss(pid) every `interval` s while the block runs (background thread)."""
    result = RssPeak(idle=tree_rss(pid))
    result.peak = result.idle
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            result.peak = max(result.peak, tree_rss(pid))

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        result.peak = max(result.peak, tree_rss(pid))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- dcmtk storescp ------------------------------------------------------------------
@dataclass
class StoreSCP:
    port: int
    out_dir: Path
    ae_title: str
    proc: subprocess.Popen

    def files(self) -> list[Path]:
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())

    def stop(self) -> None:
        stop(self.proc)


def start_storescp(
    out_dir: Path,
    ae_title: str = "STORESCP",
    port: int | None = None,
    extra: Sequence[str] = (),
    accept: str | None = "+xa",
) -> StoreSCP:
    """dcmtk storescp accepting every SOP class (-pm) and transfer syntax (+xa).

    `extra`: more storescp options, e.g. ["--fork"] to serve associations in parallel.
    `accept=None`: storescp's default, uncompressed transfer syntaxes only.
    Its verbose log goes beside `out_dir` as `<name>.log`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = open(out_dir.parent / f"{out_dir.name}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-v", "-aet", ae_title, "-od", str(out_dir), "-pm", "-uf"]
        + [*([accept] if accept else []), *extra, str(port)],
        env=PEER_ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_port(port, proc=proc)
    return StoreSCP(port, out_dir, ae_title, proc)


# -- Orthanc ---------------------------------------------------------------------------
@dataclass
class Orthanc:
    dicom_port: int
    http_port: int
    ae_title: str
    proc: subprocess.Popen
    url: str = ""

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def instance_ids(self) -> list[str]:
        with self.client() as c:
            return c.get("/instances").json()

    def stop(self) -> None:
        stop(self.proc)


def start_orthanc(work: Path, ae_title: str = "ORTHANC", **extra: Any) -> Orthanc:
    """Orthanc with a temporary configuration; accepts any calling AE and SOP class."""
    work.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    conf = {
        "Name": "test-orthanc",
        "StorageDirectory": str(work / "db"),
        "IndexDirectory": str(work / "db"),
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        "StorageCompression": False,
        "OverwriteInstances": True,
        "HttpServerEnabled": True,
        "Plugins": [],
        "StableAge": 1,
        **extra,
    }
    cfg = work / "orthanc.json"
    cfg.write_text(json.dumps(conf))
    log = open(work / "orthanc.log", "w")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(["Orthanc", str(cfg)], env=PEER_ENV, stdout=log, stderr=log)
    wait_port(http_port, proc=proc)
    wait_port(dicom_port, proc=proc)
    return Orthanc(dicom_port, http_port, ae_title, proc, f"http://127.0.0.1:{http_port}")


# -- the gateway -------------------------------------------------------------------------
@dataclass
class Gateway:
    """A `dicom-gateway run` in its own process group, configured under `work`."""

    work: Path
    config: dict
    rules: list[dict]
    env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return self.config["dimse"]["port"]

    @property
    def http_port(self) -> int:
        return self.config["http"]["port"]

    @property
    def data_dir(self) -> Path:
        return Path(self.config["data_dir"])

    @property
    def config_path(self) -> Path:
        return self.work / "config.yaml"

    def write(self) -> None:
        rules_dir = self.work / "rules"
        rules_dir.mkdir(parents=True, exist_ok=True)
        self.config["rules_dir"] = str(rules_dir)
        self.config_path.write_text(yaml.safe_dump(self.config))
        (rules_dir / "test.yaml").write_text(yaml.safe_dump({"rules": self.rules}))

    def start(self, wait: bool = True) -> Gateway:
        self.write()
        self.log = open(self.work / "gateway.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)],
            env={**os.environ, **self.env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.work,
        )
        if wait:
            wait_port(self.port, timeout=60, proc=self.proc)
            if self.config["http"].get("enabled", True):
                wait_port(self.http_port, timeout=60, proc=self.proc)
        return self

    def stop(self) -> int:
        """SIGTERM: graceful drain; returns the exit code."""
        assert self.proc is not None
        return stop(self.proc, timeout=90)

    def kill9(self) -> None:
        """SIGKILL the whole process tree at once."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_alive(self.proc.pid):
            time.sleep(0.05)

    def http(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.http_port}{path}", timeout=10)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            env={**os.environ, **self.env, "GATEWAY_CONFIG": str(self.config_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def logs(self) -> str:
        return (self.work / "gateway.log").read_text(errors="replace")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def gateway_config(work: Path, destinations: dict, **over: Any) -> dict:
    """A test configuration: free ports, data under `work`, quick retries."""
    cfg: dict[str, Any] = {
        "ae_title": "GATEWAY",
        "data_dir": str(work / "data"),
        "log_level": "INFO",
        "dimse": {
            "host": "127.0.0.1",
            "port": free_port(),
            "allowed_calling_aets": ["STORESCU", "ECHOSCU", "GWTEST"],
            "listeners": 2,
        },
        "storage": {"min_free_mb": 0},
        "workers": {"count": 2, "lease_seconds": 30, "batch_size": 50},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "destinations": destinations,
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def storescu(
    port: int, files: list[Path], *extra: str, aec: str = "GATEWAY"
) -> subprocess.CompletedProcess:
    """dcmtk storescu, all files on one association."""
    return subprocess.run(
        [
            dcmtk("storescu"),
            "-aet",
            "STORESCU",
            "-aec",
            aec,
            *extra,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def send_by_ts(port: int, files: list[Path], aec: str = "GATEWAY") -> subprocess.CompletedProcess:
    """The shared client: one association per file with the file's own transfer syntax."""
    script = ROOT.parent / "shared" / "clients" / "send_by_ts.sh"
    return subprocess.run(
        ["bash", str(script), "127.0.0.1", str(port), aec, *map(str, files)],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def corpus_dir() -> Path:
    return Path(os.environ.get("CORPUS_DIR", ROOT.parent / "corpus-data"))


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
