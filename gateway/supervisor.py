"""`dicom-gateway run`: one supervisor, N listener processes, N workers, one HTTP server.

The queue database and the spool are the only state the processes share, so any of them
can crash (or be killed) without losing an acknowledged instance; the supervisor restarts
it. SIGTERM/SIGINT stop the listeners first (no new associations; running ones finish),
then the workers (the batch in hand finishes), then the HTTP server.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from gateway import config as config_mod
from gateway.config import Config
from gateway.queue import Queue
from gateway.spool import recover

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
STOP_GRACE_S = 30.0


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)
    # pynetdicom logs every PDU at INFO; keep its warnings and errors only.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def _child_setup(cfg: Config, supervisor_pid: int) -> threading.Event:
    """Common start of every child: logging, die with the supervisor, SIGTERM -> stop event."""
    setup_logging(cfg.log_level)
    with contextlib.suppress(OSError):  # Linux: if the supervisor dies, even by SIGKILL
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if os.getppid() != supervisor_pid:  # it died before PDEATHSIG was armed
        stop.set()
    return stop


def listener_main(cfg: Config, index: int, supervisor_pid: int, sock: socket.socket) -> None:
    from gateway.doorbell import Bell
    from gateway.receiver import Receiver
    from gateway.spool import Spool, sweep_partials

    stop = _child_setup(cfg, supervisor_pid)
    bell = Bell(cfg.data_dir, cfg.workers.count)
    spool = Spool(
        cfg.spool_dir,
        cfg.db_path,
        min_free_mb=cfg.storage.min_free_mb,
        fsync=cfg.storage.fsync,
        on_commit=bell.ring,
    )
    receiver = Receiver(cfg, spool)
    receiver.start(sock)
    log.info("listening for DIMSE on %s:%d as %s", cfg.dimse.host, cfg.dimse.port, cfg.ae_title)
    # A live receive writes at least every network_timeout; twice that is surely dead.
    max_age = 2 * cfg.dimse.network_timeout
    while not stop.wait(min(60.0, max_age)):
        if removed := sweep_partials(spool.incoming, max_age):
            log.warning("removed %d stale partial receive(s) from the spool", removed)
    receiver.stop()
    spool.close()


def worker_main(cfg: Config, index: int, supervisor_pid: int) -> None:
    from gateway.doorbell import Door
    from gateway.worker import Worker

    stop = _child_setup(cfg, supervisor_pid)
    door = Door(cfg.data_dir, index)
    worker = Worker(cfg, f"worker-{index}", door.wait, housekeeping=index == 0)
    worker.run(stop)
    worker.close()


def http_main(cfg: Config, supervisor_pid: int) -> None:
    import uvicorn

    from gateway.http import create_app

    _child_setup(cfg, supervisor_pid)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(cfg),
            host=cfg.http.host,
            port=cfg.http.port,
            log_level="warning",
            lifespan="off",
        )
    )
    server.run()  # uvicorn installs its own SIGTERM handling and exits gracefully


class StartError(Exception):
    """The gateway cannot start (e.g. its port is taken); one line says why."""


def bind_dimse(cfg: Config) -> socket.socket:
    """The DIMSE port, bound once here and shared by every listener process. Each accepts
    when it is free, so associations spread by availability; SO_REUSEPORT's hash put 16 of
    20 parallel associations on one of two listeners (measured), i.e. on one core."""
    d = cfg.dimse
    family = socket.AF_INET6 if ":" in d.host else socket.AF_INET
    try:
        sock = socket.create_server((d.host, d.port), family=family, backlog=128)
    except OSError as exc:
        raise StartError(f"cannot listen for DIMSE on {d.host}:{d.port}: {exc.strerror}") from exc
    sock.setblocking(False)  # a sibling may take a connection first: accept must not block
    return sock


@dataclass
class Child:
    name: str
    target: Callable[..., None]
    args: tuple
    stage: int  # stop order: 0 listeners, 1 workers, 2 http
    process: BaseProcess | None = None
    started_at: float = 0.0
    delay: float = RESTART_MIN_S
    restart_at: float | None = None
    restarts: int = field(default=0)


class Supervisor:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.ctx = mp.get_context("spawn")
        self.children: list[Child] = []
        self._stopping = False
        self._sig_r, self._sig_w = os.pipe()

    def prepare(self) -> None:
        """Create folders and schema; clear what never got Success; set up metrics."""
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        (cfg.spool_dir / "incoming").mkdir(parents=True, exist_ok=True)
        (cfg.spool_dir / "objects").mkdir(parents=True, exist_ok=True)
        q = Queue(cfg.db_path, fsync=cfg.storage.fsync)
        try:
            partials, orphans = recover(cfg.spool_dir, q)
        finally:
            q.close()
        if partials or orphans:
            log.info(
                "spool recovery: removed %d partial receive(s) and %d unacknowledged file(s)",
                partials,
                orphans,
            )
        mdir = cfg.data_dir / "run" / "metrics"
        shutil.rmtree(mdir, ignore_errors=True)
        mdir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(mdir)  # inherited by every child

    def plan(self) -> None:
        cfg, pid = self.cfg, os.getpid()
        sock = bind_dimse(cfg)
        for i in range(cfg.dimse.listeners):
            self.children.append(Child(f"listener-{i}", listener_main, (cfg, i, pid, sock), 0))
        for i in range(cfg.workers.count):
            self.children.append(Child(f"worker-{i}", worker_main, (cfg, i, pid), 1))
        if cfg.http.enabled:
            self.children.append(Child("http", http_main, (cfg, pid), 2))

    def _start(self, child: Child) -> None:
        proc = self.ctx.Process(target=child.target, args=child.args, name=child.name)
        proc.start()
        child.process, child.started_at, child.restart_at = proc, time.monotonic(), None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stopping = True
        os.write(self._sig_w, b"x")

    def run(self) -> int:
        self.prepare()
        self.plan()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self.children:
            self._start(child)
        log.info(
            "gateway started: %d listener(s) on port %d, %d worker(s), http %s",
            self.cfg.dimse.listeners,
            self.cfg.dimse.port,
            self.cfg.workers.count,
            f"on port {self.cfg.http.port}" if self.cfg.http.enabled else "off",
        )
        while not self._stopping:
            sentinels = [c.process.sentinel for c in self.children if c.process]
            pending = [c.restart_at for c in self.children if c.restart_at is not None]
            timeout = max(0.0, min(pending) - time.monotonic()) if pending else None
            multiprocessing.connection.wait([*sentinels, self._sig_r], timeout)
            if self._stopping:
                break
            self._reap_and_restart()
        self.stop()
        return 0

    def _reap_and_restart(self) -> None:
        now = time.monotonic()
        for child in self.children:
            proc = child.process
            if proc is not None and not proc.is_alive():
                proc.join()
                lived = now - child.started_at
                child.delay = RESTART_MIN_S if lived > 60 else min(child.delay * 2, RESTART_MAX_S)
                child.process, child.restart_at = None, now + child.delay
                child.restarts += 1
                log.error(
                    "%s exited with code %s after %.0f s; restarting in %.0f s",
                    child.name,
                    proc.exitcode,
                    lived,
                    child.delay,
                )
            elif child.process is None and child.restart_at is not None and child.restart_at <= now:
                self._start(child)

    def stop(self) -> None:
        log.info("stopping: listeners, then workers, then http")
        for stage in (0, 1, 2):
            procs = [c.process for c in self.children if c.stage == stage and c.process]
            for p in procs:
                if p.is_alive() and p.pid:
                    os.kill(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for p in procs:
                p.join(max(0.1, deadline - time.monotonic()))
                if p.is_alive():
                    log.error("%s did not stop in %.0f s; killing it", p.name, STOP_GRACE_S)
                    p.kill()
                    p.join()
        log.info("stopped")


def run(cfg: Config) -> int:
    setup_logging(cfg.log_level)
    for warning in config_mod.warnings(cfg):
        log.warning("config: %s", warning)
    try:
        return Supervisor(cfg).run()
    except StartError as exc:
        log.error("%s", exc)
        return 1
