"""The queue's lease rules and the retry schedule, on a real SQLite file (no network)."""

from __future__ import annotations

import time

from gateway.config import Retry
from gateway.errors import PermanentError, TransientError
from gateway.queue import NewInstance, Queue, Route
from gateway.retry import backoff_seconds, next_attempt


def queue_with_job(tmp_path) -> tuple[Queue, int]:
    q = Queue(tmp_path / "q.db")
    spool = tmp_path / "x.dcm"
    spool.write_bytes(b"x")
    [iid] = q.add_instances(
        [NewInstance("1.2.3", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "1.2", "1.2.1",
                     str(spool), 1)]
    )  # fmt: skip
    [inst] = q.lease_unrouted("w", 10, 30)
    q.set_routes([(inst.id, [Route("pacs", "all"), Route("archive", "all")], "all", False)])
    return q, iid


def test_expired_lease_brings_a_crashed_workers_job_back(tmp_path):
    q, _ = queue_with_job(tmp_path)
    first = q.lease_jobs("crashed/1", 10, lease_seconds=0.2)
    assert len(first) == 1
    q.mark_delivered([j.id for j in q.lease_jobs("other/1", 10, 30)])  # the other destination
    time.sleep(0.3)
    again = q.lease_jobs("other/2", 10, 30)
    assert [j.id for j in again] == [first[0].id] and again[0].attempts == 2
    # the crashed holder, back from the dead, cannot overwrite the new holder's outcome
    assert not q.mark_failed(first[0].id, "crashed/1", "late", None)
    assert q.mark_failed(first[0].id, "other/2", "busy", time.time() + 60)


def test_instance_completes_only_when_every_destination_has_it(tmp_path):
    q, _ = queue_with_job(tmp_path)
    a = q.lease_jobs("w/1", 10, 30)
    b = q.lease_jobs("w/2", 10, 30)
    assert {a[0].destination, b[0].destination} == {"pacs", "archive"}
    assert q.mark_delivered([a[0].id]) == []  # one destination still waits
    paths = q.mark_delivered([b[0].id])
    assert len(paths) == 1 and paths[0].endswith("x.dcm")
    assert q.instance_stats() == {} and q.destination_stats() == []


def test_concurrency_cap_per_destination(tmp_path):
    q, _ = queue_with_job(tmp_path)
    caps = {"pacs": 1, "archive": 1}
    first = q.lease_jobs("w/1", 10, 30, caps)
    second = q.lease_jobs("w/2", 10, 30, caps)
    assert first[0].destination != second[0].destination
    assert q.lease_jobs("w/3", 10, 30, caps) == []  # both destinations busy


def test_retry_schedule_backs_off_then_dead_letters():
    policy = Retry(
        max_attempts=5, max_age_seconds=3600, initial_backoff=1, max_backoff=60, jitter=0
    )
    waits = [backoff_seconds(policy, n) for n in range(1, 9)]
    assert waits[:4] == [1, 2, 4, 8] and waits[-1] == 60
    now = 1000.0
    at, _ = next_attempt(policy, TransientError("down"), 1, now, now)
    assert at == now + 1
    assert next_attempt(policy, TransientError("down"), 5, now, now) == (
        None, "gave up after 5 attempts")  # fmt: skip
    assert next_attempt(policy, TransientError("down"), 1, now - 4000, now)[0] is None
    assert next_attempt(policy, PermanentError("no"), 1, now, now) == (None, "permanent error")
