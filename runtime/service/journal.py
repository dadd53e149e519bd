"""The server's job journal: every accepted job on disk (SQLite) before it is acknowledged.

    journal = Journal(out_dir / "journal.sqlite3")
    job_id = journal.add(job.to_dict())          # durable when this returns
    row = journal.claim()                         # the oldest queued job, now running

A job moves queued -> running -> done | failed | cancelled. A server that crashes or is killed
leaves its running jobs `running`; `Journal(...)` on the next start puts them back in the queue,
so no accepted job is lost. Writes are serialised by one lock (SQLite allows one writer) and
synchronous=FULL makes a commit survive power loss, not just a crash.
"""

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    job TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    steps_done INTEGER NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '[]',
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""


@dataclass(frozen=True)
class Record:
    id: str
    state: str
    job: dict
    created: float
    updated: float
    steps_done: int
    outputs: list[dict]
    error: str | None

    def to_dict(self) -> dict:
        total = self.job["steps"]
        return {
            "id": self.id,
            "state": self.state,
            "job": self.job,
            "progress": 1.0 if self.state == "done" else round(self.steps_done / total, 4),
            "outputs": self.outputs,
            "error": self.error,
            "created": self.created,
            "updated": self.updated,
        }


class Journal:
    def __init__(self, path: str | Path):
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            # A job that was running when the last server died runs again.
            self._db.execute(
                "UPDATE jobs SET state='queued', steps_done=0, updated=? WHERE state='running'",
                (time.time(),),
            )

    def add(self, job: dict) -> str:
        """Journal a queued job; returns its id once the commit is on disk."""
        job_id = secrets.token_hex(8)
        now = time.time()
        with self._lock:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute(
                "INSERT INTO jobs (id, seq, state, job, created, updated) VALUES (?,?,?,?,?,?)",
                (job_id, seq, "queued", json.dumps(job), now, now),
            )
        return job_id

    def claim(self, like: dict | None = None, limit: int = 1) -> list[Record]:
        """Mark up to `limit` of the oldest queued jobs running and return them; with `like`,
        only jobs whose journaled job equals it on those keys."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state='queued' ORDER BY seq"
            ).fetchall()
            picked = [r for r in map(_record, rows) if like is None or _matches(r.job, like)][
                :limit
            ]
            now = time.time()
            for r in picked:
                self._db.execute(
                    "UPDATE jobs SET state='running', updated=? WHERE id=?", (now, r.id)
                )
        return [self.get(r.id) for r in picked]

    def progress(self, job_id: str, steps_done: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET steps_done=?, updated=? WHERE id=? AND state='running'",
                (steps_done, time.time(), job_id),
            )

    def finish(
        self, job_id: str, state: str, outputs: list[dict] | None = None, error: str | None = None
    ) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state=?, outputs=?, error=?, updated=?"
                + (", steps_done=0" if state == "queued" else "")
                + " WHERE id=?",
                (state, json.dumps(outputs or []), error, time.time(), job_id),
            )

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once; returns the state it was in (None: no such job)."""
        with self._lock:
            row = self._db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            if row[0] == "queued":
                self._db.execute(
                    "UPDATE jobs SET state='cancelled', updated=? WHERE id=?",
                    (time.time(), job_id),
                )
            return row[0]

    def get(self, job_id: str) -> Record | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def count(self, state: str) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state=?", (state,)).fetchone()[
                0
            ]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row: tuple) -> Record:
    job_id, _, state, job, created, updated, steps_done, outputs, error = row
    return Record(
        job_id, state, json.loads(job), created, updated, steps_done, json.loads(outputs), error
    )


def _matches(job: dict, like: dict) -> bool:
    return all(job.get(k) == v for k, v in like.items())
