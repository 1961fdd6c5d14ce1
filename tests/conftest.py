"""Shared fixtures: real peers on 127.0.0.1, stopped by PID when the test ends."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers import Gateway, StoreSCP, gateway_config, start_storescp


@pytest.fixture
def storescp_factory(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    started: list[StoreSCP] = []

    def make(name: str = "storescp", **kw) -> StoreSCP:
        scp = start_storescp(tmp_path / name, **kw)
        started.append(scp)
        return scp

    yield make
    for scp in started:
        scp.stop()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(destinations: dict, rules: list[dict], env: dict | None = None, **over) -> Gateway:
        work = tmp_path / f"gw{len(started)}"
        work.mkdir()
        gw = Gateway(work, gateway_config(work, destinations, **over), rules, env or {})
        started.append(gw)
        return gw

    yield make
    for gw in started:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.kill9()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.2):
    """Poll `predicate` until truthy; fail the test naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def dicom_dest(scp: StoreSCP, **extra) -> dict:
    return {
        "type": "dicom",
        "ae_title": scp.ae_title,
        "host": "127.0.0.1",
        "port": scp.port,
        **extra,
    }
