"""The durable queue: received instances and their per-destination delivery jobs, in SQLite.

An instance row is written in the same transaction that makes a C-STORE a Success. A worker
leases new instances to route them (rules -> one job per destination), then leases jobs per
destination to deliver them. A lease that expires (crashed worker) makes the row due again,
so delivery is at-least-once. Rows of an instance are deleted, and its spool file removed,
only when every job is delivered (or an admin purges the dead ones).

States:
    instance: new -> routed | unmatched          (deleted when all jobs are done)
    job:      [held ->] pending -> leased -> (deleted when the instance completes)
                                          -> pending (retry, due later) -> ... -> dead

A job of a rule that triggers per series or study is `held` under a batch key until the
series/study has been quiet long enough (or waited too long); then all its jobs are due
together and are leased as one batch (one association).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

BUSY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class NewInstance:
    """What the front-end knows about a received instance when it commits it."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    path: str
    size: int
    calling_ae: str = ""
    called_ae: str = ""
    source: str = ""


@dataclass(frozen=True)
class Instance:
    id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    path: str
    size: int
    calling_ae: str
    called_ae: str
    source: str
    received_at: float


@dataclass(frozen=True)
class Job:
    id: int
    instance_id: int
    destination: str
    rule: str
    attempts: int
    created_at: float
    path: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    received_at: float
    actions: str | None = None  # JSON of the rule's actions (gateway.pipeline); None: as received
    batch_key: str | None = None


@dataclass(frozen=True)
class Route:
    destination: str
    rule: str
    actions: str | None = None
    batch_key: str | None = None  # held until its series/study is quiet
    quiet_seconds: float = 0.0
    max_wait_seconds: float = 0.0


_INSTANCE_COLS = (
    "id, sop_instance_uid, sop_class_uid, transfer_syntax, study_uid, series_uid, path, size,"
    " calling_ae, called_ae, source, received_at"
)
_JOB_COLS = (
    "j.id, j.instance_id, j.destination, j.rule, j.attempts, j.created_at, i.path,"
    " i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax, i.study_uid, i.series_uid,"
    " i.received_at, j.actions, j.batch_key"
)


# Columns added after the first schema: added to an existing database when it opens.
JOB_COLUMNS_ADDED: dict[str, type] = {
    "actions": str,  # JSON action spec of the rule that made the job (gateway.pipeline)
    "batch_key": str,  # rule, destination and series/study of a held batch
    "quiet_s": float,
    "max_wait_s": float,
}


def connect(db_path: Path, *, fsync: bool = True) -> sqlite3.Connection:
    """A connection in WAL mode; synchronous=FULL so a commit survives power loss."""
    conn = sqlite3.connect(
        str(db_path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'OFF'}")
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    """Create tables and indexes if missing (idempotent; every process may call it)."""
    db = sqlite_utils.Database(conn)
    with transaction(conn) as c:
        if "instances" not in db.table_names():
            db["instances"].create(
                {
                    "id": int,
                    "sop_instance_uid": str,
                    "sop_class_uid": str,
                    "transfer_syntax": str,
                    "study_uid": str,
                    "series_uid": str,
                    "path": str,
                    "size": int,
                    "calling_ae": str,
                    "called_ae": str,
                    "source": str,
                    "received_at": float,
                    "state": str,  # new | routed | unmatched
                    "due_at": float,  # when a worker may (re)lease it for routing
                    "lease_owner": str,
                    "note": str,
                },
                pk="id",
                not_null={"sop_instance_uid", "path", "received_at", "state", "due_at"},
            )
            db["instances"].create_index(["state", "due_at"], index_name="instances_due")
            db["instances"].create_index(["sop_instance_uid"], index_name="instances_sop")
        if "jobs" not in db.table_names():
            db["jobs"].create(
                {
                    "id": int,
                    "instance_id": int,
                    "destination": str,
                    "rule": str,
                    "state": str,  # pending | leased | delivered | dead
                    "attempts": int,
                    "created_at": float,
                    "due_at": float,  # pending: next attempt; leased: lease expiry
                    "lease_owner": str,
                    "last_error": str,
                    "delivered_at": float,
                },
                pk="id",
                not_null={"instance_id", "destination", "state", "attempts", "due_at"},
                foreign_keys=[("instance_id", "instances", "id")],
            )
            db["jobs"].create_index(["state", "due_at"], index_name="jobs_due")
            db["jobs"].create_index(["destination", "state"], index_name="jobs_dest")
        columns = db["jobs"].columns_dict
        for name, kind in JOB_COLUMNS_ADDED.items():
            if name not in columns:
                db["jobs"].add_column(name, kind)
        indexes = {i.name: i.columns for i in db["jobs"].indexes}
        if indexes.get("jobs_unique") != ["instance_id", "destination", "rule"]:
            if "jobs_unique" in indexes:
                c.execute("DROP INDEX jobs_unique")
            db["jobs"].create_index(
                ["instance_id", "destination", "rule"], index_name="jobs_unique", unique=True
            )
        if "jobs_batch" not in indexes:
            db["jobs"].create_index(["batch_key", "state"], index_name="jobs_batch")


@contextmanager
def transaction(conn: sqlite3.Connection, relaxed: bool = False) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so no deadlock retries.

    `relaxed`: bookkeeping that a replay repairs (leases, routing, a failed attempt) commits
    without its own WAL fsync. The next durable commit from any process (every receive is
    one) fsyncs the WAL up to and including it; lost after a power cut, it only means a job
    is leased, routed or tried again, which at-least-once delivery allows.
    """
    level = conn.execute("PRAGMA synchronous").fetchone()[0] if relaxed else None
    if level is not None and level > 1:  # FULL/EXTRA -> NORMAL for this transaction
        conn.execute("PRAGMA synchronous=NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        if level is not None and level > 1:
            conn.execute(f"PRAGMA synchronous={level}")


class Queue:
    """All queue operations; one instance per thread (or guarded by the caller)."""

    def __init__(self, db_path: Path, *, fsync: bool = True) -> None:
        self.db_path = db_path
        self.conn = connect(db_path, fsync=fsync)
        create_schema(self.conn)

    def close(self) -> None:
        self.conn.close()

    # -- ingest ------------------------------------------------------------------------
    def add_instances(self, items: Iterable[NewInstance]) -> list[int]:
        """Commit received instances in one transaction (the group commit of the front-end)."""
        now = time.time()
        ids = []
        with transaction(self.conn) as c:
            for it in items:
                cur = c.execute(
                    "INSERT INTO instances (sop_instance_uid, sop_class_uid, transfer_syntax,"
                    " study_uid, series_uid, path, size, calling_ae, called_ae, source,"
                    " received_at, state, due_at) VALUES (?,?,?,?,?,?,?,?,?,?,?, 'new', ?)",
                    (
                        it.sop_instance_uid,
                        it.sop_class_uid,
                        it.transfer_syntax,
                        it.study_uid,
                        it.series_uid,
                        it.path,
                        it.size,
                        it.calling_ae,
                        it.called_ae,
                        it.source,
                        now,
                        now,
                    ),
                )
                ids.append(int(cur.lastrowid or 0))
        return ids

    # -- routing -----------------------------------------------------------------------
    def lease_unrouted(self, owner: str, limit: int, lease_seconds: float) -> list[Instance]:
        now = time.time()
        with transaction(self.conn, relaxed=True) as c:
            rows = c.execute(
                f"UPDATE instances SET due_at = ?, lease_owner = ? WHERE id IN ("
                f" SELECT id FROM instances WHERE state = 'new' AND due_at <= ?"
                f" ORDER BY id LIMIT ?) RETURNING {_INSTANCE_COLS}",
                (now + lease_seconds, owner, now, limit),
            ).fetchall()
        return sorted((Instance(*r) for r in rows), key=lambda i: i.id)

    def set_routes(self, decisions: Iterable[tuple[int, list[Route], str, bool]]) -> list[str]:
        """Record the rules' decisions (instance id, routes, note, dropped) in one
        transaction. An instance no rule matched stays, state 'unmatched'; one that a
        `drop` rule consumed is deleted: its spool path is returned for the caller to unlink.
        """
        now = time.time()
        dropped: list[str] = []
        with transaction(self.conn, relaxed=True) as c:
            for instance_id, routes, note, drop in decisions:
                if drop and not routes:
                    row = c.execute(
                        "DELETE FROM instances WHERE id = ? RETURNING path", (instance_id,)
                    ).fetchone()
                    if row:
                        dropped.append(row[0])
                    continue
                c.executemany(
                    "INSERT OR IGNORE INTO jobs (instance_id, destination, rule, state,"
                    " attempts, created_at, due_at, actions, batch_key, quiet_s, max_wait_s)"
                    " VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            instance_id,
                            r.destination,
                            r.rule,
                            "held" if r.batch_key else "pending",
                            now,
                            now,
                            r.actions,
                            r.batch_key,
                            r.quiet_seconds,
                            r.max_wait_seconds,
                        )
                        for r in routes
                    ],
                )
                c.execute(
                    "UPDATE instances SET state = ?, lease_owner = NULL, note = ? WHERE id = ?",
                    ("routed" if routes else "unmatched", note, instance_id),
                )
        return dropped

    def release_held(self) -> int:
        """Make due every held batch whose series/study has been quiet for its quiet
        period, or that has waited its longest; returns how many jobs were released."""
        now = time.time()
        with transaction(self.conn, relaxed=True) as c:
            cur = c.execute(
                "UPDATE jobs SET state = 'pending', due_at = ? WHERE state = 'held' AND"
                " batch_key IN (SELECT batch_key FROM jobs WHERE state = 'held'"
                " GROUP BY batch_key HAVING max(created_at) + max(quiet_s) <= ?"
                " OR min(created_at) + max(max_wait_s) <= ?)",
                (now, now, now),
            )
            return cur.rowcount

    def release_unrouted(self, instance_id: int, note: str, delay: float) -> None:
        """Routing failed (e.g. rules unreadable): try again later, keep the reason."""
        with transaction(self.conn, relaxed=True) as c:
            c.execute(
                "UPDATE instances SET due_at = ?, lease_owner = NULL, note = ? WHERE id = ?",
                (time.time() + delay, note, instance_id),
            )

    # -- delivery ----------------------------------------------------------------------
    def lease_jobs(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        concurrency: dict[str, int] | None = None,
    ) -> list[Job]:
        """Lease up to `limit` due jobs of one destination (the one waiting longest).

        A destination already served by `concurrency[name]` live leases is skipped, so a
        PACS that takes one association at a time is not flooded with parallel ones.
        """
        now = time.time()
        concurrency = concurrency or {}
        with transaction(self.conn, relaxed=True) as c:
            due = c.execute(
                "SELECT destination, min(due_at) AS t FROM jobs WHERE state IN"
                " ('pending', 'leased') AND due_at <= ? GROUP BY destination ORDER BY t",
                (now,),
            ).fetchall()
            dest = None
            for name, _ in due:
                cap = concurrency.get(name)
                if cap is not None:
                    busy = c.execute(
                        "SELECT count(DISTINCT lease_owner) FROM jobs WHERE destination = ?"
                        " AND state = 'leased' AND due_at > ?",
                        (name, now),
                    ).fetchone()[0]
                    if busy >= cap:
                        continue
                dest = name
                break
            if dest is None:
                return []
            first = c.execute(
                "SELECT batch_key FROM jobs WHERE destination = ? AND state IN"
                " ('pending', 'leased') AND due_at <= ? ORDER BY id LIMIT 1",
                (dest, now),
            ).fetchone()
            if first[0] is not None:  # a released series/study goes out whole, in one batch
                query = "batch_key = ? AND"
                args: tuple = (dest, first[0], now, -1)
            else:
                query, args = "batch_key IS NULL AND", (dest, now, limit)
            ids = [
                r[0]
                for r in c.execute(
                    f"SELECT id FROM jobs WHERE destination = ? AND {query} state IN"
                    " ('pending', 'leased') AND due_at <= ? ORDER BY id LIMIT ?",
                    args,
                )
            ]
            c.executemany(
                "UPDATE jobs SET state = 'leased', due_at = ?, lease_owner = ?,"
                " attempts = attempts + 1 WHERE id = ?",
                [(now + lease_seconds, owner, i) for i in ids],
            )
            rows = c.execute(
                f"SELECT {_JOB_COLS} FROM jobs j JOIN instances i ON i.id = j.instance_id"
                f" WHERE j.id IN ({','.join('?' * len(ids))}) ORDER BY j.id",
                ids,
            ).fetchall()
        return [Job(*r) for r in rows]

    def mark_delivered(self, job_ids: list[int]) -> list[str]:
        """Jobs done; returns spool paths of instances now complete (caller unlinks them).

        Whoever delivered may say so, lease or not: it is true, and a duplicate send by
        another holder is harmless (destinations are idempotent per SOP Instance UID).
        """
        if not job_ids:
            return []
        now = time.time()
        marks = ",".join("?" * len(job_ids))
        with transaction(self.conn) as c:
            c.execute(
                f"UPDATE jobs SET state = 'delivered', delivered_at = ?, lease_owner = NULL,"
                f" last_error = NULL WHERE id IN ({marks})",
                [now, *job_ids],
            )
            return self._complete(c, f"SELECT instance_id FROM jobs WHERE id IN ({marks})", job_ids)

    def _complete(self, c: sqlite3.Connection, select_ids: str, args: list) -> list[str]:
        """Delete instances whose every job is delivered; return their spool paths."""
        done = c.execute(
            f"SELECT id, path FROM instances WHERE id IN ({select_ids}) AND state = 'routed'"
            " AND NOT EXISTS (SELECT 1 FROM jobs WHERE instance_id = instances.id"
            " AND state != 'delivered')",
            args,
        ).fetchall()
        for iid, _ in done:
            c.execute("DELETE FROM jobs WHERE instance_id = ?", (iid,))
            c.execute("DELETE FROM instances WHERE id = ?", (iid,))
        return [p for _, p in done]

    def mark_failed(self, job_id: int, owner: str, error: str, retry_at: float | None) -> bool:
        """Schedule a retry at `retry_at`, or dead-letter (None) keeping the error.

        Only the current lease holder may do this: a worker that outlived its lease must
        not overwrite what the next holder did. Returns False when the lease was lost.
        """
        with transaction(self.conn, relaxed=True) as c:
            if retry_at is None:
                cur = c.execute(
                    "UPDATE jobs SET state = 'dead', lease_owner = NULL, last_error = ?"
                    " WHERE id = ? AND state = 'leased' AND lease_owner = ?",
                    (error, job_id, owner),
                )
            else:
                cur = c.execute(
                    "UPDATE jobs SET state = 'pending', due_at = ?, lease_owner = NULL,"
                    " last_error = ? WHERE id = ? AND state = 'leased' AND lease_owner = ?",
                    (retry_at, error, job_id, owner),
                )
            return cur.rowcount == 1

    def extend_lease(self, job_ids: list[int], owner: str, lease_seconds: float) -> int:
        """Keep a long delivery's jobs ours (heartbeat); returns how many are still ours."""
        if not job_ids:
            return 0
        with transaction(self.conn, relaxed=True) as c:
            cur = c.execute(
                f"UPDATE jobs SET due_at = ? WHERE state = 'leased' AND lease_owner = ?"
                f" AND id IN ({','.join('?' * len(job_ids))})",
                [time.time() + lease_seconds, owner, *job_ids],
            )
            return cur.rowcount

    def next_due(self) -> float | None:
        """Earliest time any routing or delivery work becomes due (for the worker's sleep)."""
        row = self.conn.execute(
            "SELECT min(t) FROM (SELECT min(due_at) AS t FROM jobs WHERE state IN"
            " ('pending', 'leased') UNION ALL SELECT min(due_at) FROM instances"
            " WHERE state = 'new' UNION ALL SELECT min(min(last + quiet, first + most)) FROM"
            " (SELECT max(created_at) AS last, min(created_at) AS first, max(quiet_s) AS quiet,"
            " max(max_wait_s) AS most FROM jobs WHERE state = 'held' GROUP BY batch_key))"
        ).fetchone()
        return row[0]

    # -- administration ------------------------------------------------------------------
    def destination_stats(self) -> list[dict]:
        """Per destination and state: count and oldest job's received time."""
        rows = self.conn.execute(
            "SELECT j.destination, j.state, count(*), min(i.received_at), max(j.attempts)"
            " FROM jobs j JOIN instances i ON i.id = j.instance_id"
            " GROUP BY j.destination, j.state ORDER BY j.destination, j.state"
        ).fetchall()
        keys = ("destination", "state", "count", "oldest_received_at", "max_attempts")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def instance_stats(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT state, count(*) FROM instances GROUP BY state")
        return {state: n for state, n in rows}

    def dead_letters(self, destination: str | None = None, limit: int = 1000) -> list[dict]:
        rows = self.conn.execute(
            "SELECT j.id, j.destination, i.sop_instance_uid, j.attempts, j.last_error,"
            " i.received_at FROM jobs j JOIN instances i ON i.id = j.instance_id"
            " WHERE j.state = 'dead' AND (? IS NULL OR j.destination = ?) ORDER BY j.id LIMIT ?",
            (destination, destination, limit),
        ).fetchall()
        keys = ("job", "destination", "sop_instance_uid", "attempts", "last_error", "received_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def unmatched(self, limit: int = 1000) -> list[dict]:
        rows = self.conn.execute(
            "SELECT id, sop_instance_uid, calling_ae, received_at, note FROM instances"
            " WHERE state = 'unmatched' ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        keys = ("instance", "sop_instance_uid", "calling_ae", "received_at", "note")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def retry_dead(
        self, destination: str | None = None, actions: dict[str, str | None] | None = None
    ) -> int:
        """Give dead letters a fresh set of attempts, due now. `actions` (rule name ->
        action spec) replaces the actions a job froze when it was routed, so a rule fixed
        after its actions failed is what the retry runs."""
        with transaction(self.conn) as c:
            for rule, spec in (actions or {}).items():
                c.execute(
                    "UPDATE jobs SET actions = ? WHERE state = 'dead' AND rule = ?"
                    " AND (? IS NULL OR destination = ?)",
                    (spec, rule, destination, destination),
                )
            cur = c.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, due_at = ?, created_at = ?"
                " WHERE state = 'dead' AND (? IS NULL OR destination = ?)",
                (time.time(), time.time(), destination, destination),
            )
            return cur.rowcount

    def purge_dead(self, destination: str | None = None) -> tuple[int, list[str]]:
        """Drop dead letters (an admin decision); returns (count, spool paths now unneeded)."""
        with transaction(self.conn) as c:
            ids = [
                r[0]
                for r in c.execute(
                    "SELECT instance_id FROM jobs WHERE state = 'dead'"
                    " AND (? IS NULL OR destination = ?)",
                    (destination, destination),
                )
            ]
            cur = c.execute(
                "UPDATE jobs SET state = 'delivered', last_error = 'purged by admin'"
                " WHERE state = 'dead' AND (? IS NULL OR destination = ?)",
                (destination, destination),
            )
            n = cur.rowcount
            paths = self._complete(c, ",".join("?" * len(ids)) or "NULL", ids)
        return n, paths

    def purge_unmatched(self) -> list[str]:
        with transaction(self.conn) as c:
            rows = c.execute(
                "DELETE FROM instances WHERE state = 'unmatched' RETURNING path"
            ).fetchall()
        return [r[0] for r in rows]

    def known_paths(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT path FROM instances")}
