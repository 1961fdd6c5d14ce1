"""Worker process: route new instances through the rules, then deliver leased jobs.

Any number of workers run side by side; the queue's leases keep them off each other's
work, and a crashed worker's leases expire so its jobs come back. A worker sleeps on the
supervisor's wake event (set when the front-end commits) or until the next retry is due.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pydicom import Dataset, dcmread

from gateway import metrics
from gateway.archive.index import ArchiveIndex
from gateway.archive.retention import apply_retention
from gateway.config import ArchiveDestination, Config
from gateway.destinations import Destination, build
from gateway.errors import DeliveryError, PermanentError, TransientError
from gateway.match import Context
from gateway.pipeline import ActionError, Pipeline, action_env
from gateway.queue import Instance, Job, Queue, Route
from gateway.retry import next_attempt
from gateway.rules import Rule, RulesWatch
from gateway.transcode import part10_bytes

log = logging.getLogger(__name__)

IDLE_WAIT_S = 1.0  # upper bound on a sleep: rule files and expired leases get noticed
ROUTE_BATCH = 200
BATCH_LINGER_S = 0.05
MIN_WAIT_S = 0.02
RETENTION_EVERY_S = 60.0


class LeaseHeartbeat:
    """Renews a batch's lease while a slow destination works, so no one else takes it."""

    def __init__(self, cfg: Config, job_ids: list[int], owner: str, lease: float) -> None:
        self.cfg, self.job_ids, self.owner, self.lease = cfg, job_ids, owner, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        q: Queue | None = None
        try:
            while not self._stop.wait(self.lease / 3):
                q = q or Queue(self.cfg.db_path, fsync=self.cfg.storage.fsync)
                q.extend_lease(self.job_ids, self.owner, self.lease)
        finally:
            if q is not None:
                q.close()


class Worker:
    def __init__(
        self,
        cfg: Config,
        name: str,
        wait: Callable[[float], bool],
        *,
        housekeeping: bool = False,
    ) -> None:
        self.cfg = cfg
        self.name = name
        self.wait = wait
        self.housekeeping = housekeeping  # this worker runs archive retention
        self._next_retention = 0.0
        self.queue = Queue(cfg.db_path, fsync=cfg.storage.fsync)
        self.destinations: dict[str, Destination] = {n: build(n, cfg) for n in cfg.destinations}
        self.concurrency = {n: d.concurrency for n, d in cfg.destinations.items()}
        self.watch = RulesWatch(cfg)
        self._pipelines: dict[str, Pipeline] = {}  # by action spec JSON
        self.work_dir = cfg.spool_dir / "work"  # processed copies, only while being sent
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.reload_rules()

    def reload_rules(self) -> None:
        """Load rules when their files changed; a bad set is logged and the old one kept."""
        if not self.watch.refresh():
            return
        self._close_pipelines()  # lookup files and recipes beside the rules may have changed
        if self.watch.problems:
            metrics.RULES_RELOADS.labels(result="rejected").inc()
            kept = "previous rules kept" if self.watch.rules else "no rules yet: instances wait"
            for line in self.watch.problems:
                log.error("%s: rules rejected, %s: %s", self.name, kept, line)
        else:
            metrics.RULES_RELOADS.labels(result="loaded").inc()
            log.info("%s: loaded %d rule(s)", self.name, len(self.watch.rules.rules))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.step():
                continue
            due = self.queue.next_due()
            # Work can be due yet not ours to take (a destination at its concurrency cap):
            # never spin on the database, always sleep a little.
            timeout = IDLE_WAIT_S if due is None else min(IDLE_WAIT_S, due - time.time())
            if self.wait(max(MIN_WAIT_S, timeout)):
                # Woken by a commit: while a sender streams, let a batch gather rather than
                # spend four queue transactions (each an fsync) on every single instance.
                stop.wait(BATCH_LINGER_S)

    def step(self) -> bool:
        """Do one unit of work; False when nothing was due."""
        self.reload_rules()
        if self.housekeeping and time.time() >= self._next_retention:
            self._next_retention = time.time() + RETENTION_EVERY_S
            self.retention()
        released = self.queue.release_held()
        if released:
            log.info("%s: %d held job(s) released (series/study quiet)", self.name, released)
        return self.route() or self.deliver()

    def retention(self) -> None:
        """Apply each archive's retention policy (oldest studies first; never what the
        queue still holds undelivered, never a protected study)."""
        for name, spec in self.cfg.destinations.items():
            if not isinstance(spec, ArchiveDestination) or not spec.retention.active:
                continue
            index = ArchiveIndex(self.cfg.db_path, fsync=self.cfg.storage.fsync)
            try:
                report = apply_retention(index, spec.retention, self.cfg.archive_dir(spec))
            except Exception:
                log.exception("%s: retention of archive %r failed", self.name, name)
                continue
            finally:
                index.close()
            if report.deleted or report.problems:
                log.info("retention of archive %r: %s", name, report)

    # -- routing ----------------------------------------------------------------------
    def route(self) -> bool:
        rules = self.watch.rules
        if rules is None:
            return False
        batch = self.queue.lease_unrouted(self.name, ROUTE_BATCH, self.cfg.workers.lease_seconds)
        decisions = []
        for inst in batch:
            ds = Dataset()
            if rules.reads_tags:
                try:
                    ds = dcmread(inst.path, stop_before_pixels=True, force=True)
                except Exception as exc:  # unreadable kept-as-received file: rules see no tags
                    log.warning(
                        "instance %s: header unreadable for rules: %s", inst.sop_instance_uid, exc
                    )
            fired = rules.route(context(inst, ds))
            routes = [_route(v.rule, d, inst) for v in fired for d in v.rule.forward]
            dropped = any(v.rule.drop for v in fired)
            if not fired:
                log.warning(
                    "instance %s from %s matched no rule; kept in the spool (queue purge"
                    " --unmatched drops it)",
                    inst.sop_instance_uid,
                    inst.calling_ae,
                )
            note = ", ".join(v.rule.name for v in fired) or "no rule matched"
            decisions.append((inst.id, routes, note, dropped))
        for path in self.queue.set_routes(decisions):
            Path(path).unlink(missing_ok=True)
            metrics.DROPPED.inc()
            log.info("dropped by rule: %s", path)
        return bool(batch)

    # -- delivery ---------------------------------------------------------------------
    def deliver(self) -> bool:
        owner = f"{self.name}/{uuid.uuid4().hex[:8]}"  # a token per lease, not per worker
        lease = self.cfg.workers.lease_seconds
        jobs = self.queue.lease_jobs(owner, self.cfg.workers.batch_size, lease, self.concurrency)
        if not jobs:
            return False
        dest_name = jobs[0].destination
        dest = self.destinations.get(dest_name)
        if dest is None:
            err: DeliveryError = PermanentError(f"destination {dest_name!r} is not configured")
            outcomes: dict[int, DeliveryError | None] = {j.id: err for j in jobs}
        else:
            present = [j for j in jobs if os.path.exists(j.path)]
            outcomes = {
                j.id: PermanentError(f"spool file missing: {j.path}")
                for j in jobs
                if j not in present
            }
            with LeaseHeartbeat(self.cfg, [j.id for j in present], owner, lease):
                ready, copies = self._process(present, outcomes)
                try:
                    outcomes.update(dest.send(ready))
                except Exception as exc:
                    log.exception("%s: delivery batch failed", dest_name)
                    outcomes.update(
                        {j.id: TransientError(f"{type(exc).__name__}: {exc}") for j in ready}
                    )
                finally:
                    for p in copies:
                        p.unlink(missing_ok=True)
        self._record(dest_name, owner, jobs, outcomes)
        return True

    def _process(
        self, jobs: list[Job], outcomes: dict[int, DeliveryError | None]
    ) -> tuple[list[Job], list[Path]]:
        """Run each job's rule actions on a copy of its original; a job whose actions
        fail gets a permanent error (the same input would fail again), never the original
        sent in its place. Returns the jobs to send and the copies to delete afterwards."""
        ready, copies = [], []
        for job in jobs:
            if job.actions is None:
                ready.append(job)
                continue
            out = self.work_dir / f"{uuid.uuid4().hex}.dcm"
            try:
                ds = dcmread(job.path, force=True)
                self._pipeline(job.actions).apply(ds)
                ready.append(write_processed(ds, out, job))
                copies.append(out)
            except Exception as exc:
                out.unlink(missing_ok=True)
                why = str(exc) if isinstance(exc, ActionError) else f"{type(exc).__name__}: {exc}"
                log.error("rule %s on %s: %s", job.rule, job.sop_instance_uid, why)
                outcomes[job.id] = PermanentError(f"rule {job.rule!r}: {why}")
        return ready, copies

    def _pipeline(self, actions: str) -> Pipeline:
        pipe = self._pipelines.get(actions)
        if pipe is None:
            pipe = Pipeline(json.loads(actions), action_env(self.cfg))
            self._pipelines[actions] = pipe
        return pipe

    def _close_pipelines(self) -> None:
        for pipe in self._pipelines.values():
            pipe.close()
        self._pipelines.clear()

    def _record(
        self, dest: str, owner: str, jobs: list[Job], outcomes: dict[int, DeliveryError | None]
    ) -> None:
        now = time.time()
        done = [j for j in jobs if outcomes.get(j.id, TransientError("no outcome")) is None]
        for path in self.queue.mark_delivered([j.id for j in done]):
            Path(path).unlink(missing_ok=True)
        for j in done:
            metrics.DELIVERED.labels(destination=dest).inc()
            metrics.DELIVERY_LATENCY.labels(destination=dest).observe(max(0.0, now - j.received_at))
            log.debug("delivered %s to %s (job %d)", j.sop_instance_uid, dest, j.id)
        policy = self.cfg.destinations[dest].retry if dest in self.cfg.destinations else None
        for j in jobs:
            err = outcomes.get(j.id, TransientError("no outcome"))
            if err is None:
                continue
            if policy is None:
                retry_at, why = None, "destination not configured"
            else:
                retry_at, why = next_attempt(policy, err, j.attempts, j.created_at, now)
            if not self.queue.mark_failed(j.id, owner, str(err), retry_at):
                log.info(
                    "job %d (%s to %s) was re-leased meanwhile; its outcome here is dropped: %s",
                    j.id, j.sop_instance_uid, dest, err,
                )  # fmt: skip
                continue
            if retry_at is None:
                metrics.DEAD_LETTERED.labels(destination=dest).inc()
                log.error(
                    "dead letter: %s to %s after %d attempt(s) (%s): %s",
                    j.sop_instance_uid, dest, j.attempts, why, err,
                )  # fmt: skip
            else:
                metrics.RETRIED.labels(destination=dest).inc()
                log.warning(
                    "retry %s to %s in %.1f s (attempt %d): %s",
                    j.sop_instance_uid, dest, retry_at - now, j.attempts, err,
                )  # fmt: skip

    def close(self) -> None:
        self._close_pipelines()
        for d in self.destinations.values():
            d.close()
        self.queue.close()


def context(inst: Instance, ds: Dataset) -> Context:
    return Context(
        ds,
        inst.calling_ae,
        inst.called_ae,
        inst.source,
        inst.sop_class_uid,
        inst.transfer_syntax,
        inst.received_at,
    )


def _route(rule: Rule, destination: str, inst: Instance) -> Route:
    t = rule.trigger
    if t.per == "instance":
        return Route(destination, rule.name, rule.actions)
    uid = inst.series_uid if t.per == "series" else inst.study_uid
    key = "\x1f".join((rule.name, destination, t.per, uid or inst.sop_instance_uid))
    return Route(destination, rule.name, rule.actions, key, t.quiet_seconds, t.max_wait_seconds)


def write_processed(ds: Dataset, out: Path, job: Job) -> Job:
    """Write an actions' result as a Part 10 file; the job as the destination must see it."""
    meta = ds.file_meta
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out.write_bytes(part10_bytes(ds))  # dcmwrite: save_as() will not change byte order
    return replace(
        job,
        path=str(out),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax=str(meta.TransferSyntaxUID),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
    )
