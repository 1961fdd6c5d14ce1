"""The HTTP server: health, readiness, Prometheus metrics and the admin API.

Starlette + uvicorn: a small, well-kept ASGI stack; the DICOMweb server grows on it.
The admin API (`/api/...`) answers loopback clients only, unless `http.admin_token` is
set; then any client presenting it as a bearer token.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import sqlite3

from pydicom import dcmread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import metrics
from gateway.config import Config
from gateway.dryrun import dry_run
from gateway.pipeline import action_env
from gateway.rules import RulesWatch
from gateway.spool import free_mb

LOOPBACK = {"127.0.0.1", "::1"}
MAX_DRY_RUN_BYTES = 512 * 1024 * 1024


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


def rules_detail(watch: RulesWatch) -> dict:
    """The rules in effect and, when the files on disk were rejected, why: the previous
    rules keep routing, so this informs readiness without failing it."""
    watch.refresh()
    in_effect = watch.rules.rules if watch.rules else ()
    return {
        "in_effect": len(in_effect),
        "rejected": bool(watch.problems),
        "problems": watch.problems,
    }


def admin_allowed(cfg: Config, request: Request) -> bool:
    token = cfg.http.admin_token
    if token:
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
    return request.client is not None and request.client.host in LOOPBACK


def create_app(cfg: Config) -> Starlette:
    watch = RulesWatch(cfg)
    env = action_env(cfg)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ok, checks = readiness(cfg)
        body = {"ready": ok, "checks": checks, "rules": rules_detail(watch)}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        watch.refresh()
        body = metrics.render(cfg.db_path, cfg.data_dir, watch)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def rules_test(request: Request) -> Response:
        """POST a DICOM file: the dry run of `dicom-gateway rules test`, as JSON."""
        if not admin_allowed(cfg, request):
            return JSONResponse({"error": "admin API: loopback or bearer token only"}, 403)
        body = await request.body()
        if len(body) > MAX_DRY_RUN_BYTES:
            return JSONResponse({"error": "file too large for a dry run"}, 413)
        try:
            ds = dcmread(io.BytesIO(body), force=True)
            str(ds.SOPInstanceUID)
        except Exception as exc:
            return JSONResponse({"error": f"not a readable DICOM file: {exc}"}, 400)
        watch.refresh()
        if watch.rules is None:
            return JSONResponse({"error": "no rules loaded", "problems": watch.problems}, 503)
        q = request.query_params
        report = await asyncio.to_thread(
            dry_run,
            watch.rules,
            ds,
            env,
            calling_ae=q.get("calling_ae", ""),
            called_ae=q.get("called_ae", ""),
            source=q.get("source", ""),
        )
        report["rules_rejected"] = watch.problems
        return JSONResponse(report)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/api/rules/test", rules_test, methods=["POST"]),
        ]
    )
