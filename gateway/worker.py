"""Worker process: route new instances through the rules, then deliver leased jobs.

Any number of workers run side by side; the queue's leases keep them off each other's
work, and a crashed worker's leases expire so its jobs come back. A worker sleeps on the
supervisor's wake event (set when the front-end commits) or until the next retry is due.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset, dcmread

from gateway import metrics
from gateway.config import Config
from gateway.destinations import Destination, build
from gateway.errors import ConfigError, DeliveryError, PermanentError, TransientError
from gateway.queue import Job, Queue, Route
from gateway.retry import next_attempt
from gateway.rules import Candidate, RuleSet, load_rules, signature

log = logging.getLogger(__name__)

IDLE_WAIT_S = 1.0  # upper bound on a sleep: rule files and expired leases get noticed
ROUTE_BATCH = 200
BATCH_LINGER_S = 0.05


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
    def __init__(self, cfg: Config, name: str, wait: Callable[[float], bool]) -> None:
        self.cfg = cfg
        self.name = name
        self.wait = wait
        self.queue = Queue(cfg.db_path, fsync=cfg.storage.fsync)
        self.destinations: dict[str, Destination] = {n: build(n, cfg) for n in cfg.destinations}
        self.concurrency = {n: d.concurrency for n, d in cfg.destinations.items()}
        self.rules: RuleSet | None = None
        self._rules_sig: tuple = ()
        self.reload_rules()

    def reload_rules(self) -> None:
        """Load rules when their files changed; a bad set is logged and the old one kept."""
        sig = signature(self.cfg.rules_dir)
        if sig == self._rules_sig and self.rules is not None:
            return
        self._rules_sig = sig
        try:
            self.rules = load_rules(self.cfg.rules_dir, self.cfg.destinations)
            log.info("%s: loaded %d rule(s)", self.name, len(self.rules.rules))
        except ConfigError as exc:
            for line in exc.problems:
                log.error("%s: rules rejected, previous rules kept: %s", self.name, line)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.step():
                continue
            due = self.queue.next_due()
            timeout = IDLE_WAIT_S if due is None else min(IDLE_WAIT_S, max(0.0, due - time.time()))
            if timeout > 0 and self.wait(timeout):
                # Woken by a commit: while a sender streams, let a batch gather rather than
                # spend four queue transactions (each an fsync) on every single instance.
                stop.wait(BATCH_LINGER_S)

    def step(self) -> bool:
        """Do one unit of work; False when nothing was due."""
        self.reload_rules()
        return self.route() or self.deliver()

    # -- routing ----------------------------------------------------------------------
    def route(self) -> bool:
        rules = self.rules
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
            matched = rules.route(Candidate(ds, inst.calling_ae, inst.called_ae, inst.source))
            routes = [Route(d, dec.rule) for dec in matched for d in dec.destinations]
            if not routes:
                log.warning(
                    "instance %s from %s matched no rule; kept in the spool (queue purge"
                    " --unmatched drops it)",
                    inst.sop_instance_uid,
                    inst.calling_ae,
                )
            note = ", ".join(d.rule for d in matched) or "no rule matched"
            decisions.append((inst.id, routes, note))
        self.queue.set_routes(decisions)
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
                try:
                    outcomes.update(dest.send(present))
                except Exception as exc:
                    log.exception("%s: delivery batch failed", dest_name)
                    outcomes.update(
                        {j.id: TransientError(f"{type(exc).__name__}: {exc}") for j in present}
                    )
        self._record(dest_name, owner, jobs, outcomes)
        return True

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
        for d in self.destinations.values():
            d.close()
        self.queue.close()
