"""The HTTP server: health, readiness and Prometheus metrics (DICOMweb and admin API later).

Starlette + uvicorn: a small, well-kept ASGI stack; the DICOMweb server grows on it.
"""

from __future__ import annotations

import sqlite3

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import metrics
from gateway.config import Config
from gateway.spool import free_mb


def readiness(cfg: Config) -> tuple[bool, dict]:
    """Ready when the queue database answers and free disk is above the floor."""
    checks: dict[str, dict] = {}
    try:
        conn = sqlite3.connect(str(cfg.db_path), timeout=2)
        try:
            conn.execute("SELECT count(*) FROM jobs WHERE 0").fetchone()
        finally:
            conn.close()
        checks["database"] = {"ok": True}
    except sqlite3.Error as exc:
        checks["database"] = {"ok": False, "error": str(exc)}
    try:
        free = free_mb(cfg.data_dir)
        checks["disk"] = {
            "ok": free >= cfg.storage.min_free_mb,
            "free_mb": round(free, 1),
            "min_free_mb": cfg.storage.min_free_mb,
        }
    except OSError as exc:
        checks["disk"] = {"ok": False, "error": str(exc)}
    return all(c["ok"] for c in checks.values()), checks


def create_app(cfg: Config) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ok, checks = readiness(cfg)
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        body = metrics.render(cfg.db_path, cfg.data_dir)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ]
    )
