"""The server's job journal: every accepted job on disk (SQLite) before it is acknowledged.

    journal = Journal(out_dir / "journal.sqlite3")
    job_id = journal.add(job.to_dict())          # durable when this returns
    row = journal.claim()                         # the oldest queued job, now running

A job moves queued -> running -> done | failed | cancelled. A server that crashes or is killed
leaves its running jobs `running`; `Journal(...)` on the next start puts them back in the queue,
so no accepted job is lost. Writes are serialised by one lock (SQLite allows one writer) and
synchronous=FULL makes a commit survive power loss, not just a crash.

One server owns a journal: `Journal(...)` takes an exclusive lock on `<path>.lock` (released
when its process ends, however it ends), so a second server on the same folder is refused before
it requeues the first one's running jobs or loads a model.
"""

import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UsageError

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
    error TEXT,
    timeline TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""
# Share of a running job's progress that its Euler steps cover; the rest is decoding the audio
# and writing the files, so 1.0 means done, not "the last step ran".
SAMPLING_SHARE = 0.9


@dataclass(frozen=True)
class Record:
    id: str
    state: str
    job: dict
    created: float
    updated: float
    steps_done: int
    outputs: list[dict]  # per stem: prompt, audio, video (file names), loudness
    error: str | None
    timeline: str | None = None  # the .otio file's name, when the job asked for one

    @property
    def stage(self) -> str:
        """What a running job is doing: preparing (decoding the picture, features), sampling,
        finishing (decoding the audio, writing the files); else its state."""
        if self.state != "running":
            return self.state
        if self.steps_done == 0:
            return "preparing"
        return "sampling" if self.steps_done < self.job["steps"] else "finishing"

    @property
    def progress(self) -> float:
        if self.state == "done":
            return 1.0
        return round(SAMPLING_SHARE * min(self.steps_done / self.job["steps"], 1.0), 4)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "stage": self.stage,
            "job": self.job,
            "progress": self.progress,
            "outputs": self.outputs,
            "timeline": self.timeline,
            "error": self.error,
            "created": iso_time(self.created),
            "updated": iso_time(self.updated),
        }


def iso_time(seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2025-01-31T12:00:00.000Z."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Journal:
    def __init__(self, path: str | Path):
        self._lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise UsageError(
                f"another selva-rt serve uses {Path(path).parent}; stop it or pass another --out"
            ) from None
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "timeline" not in columns:  # a journal from before jobs could ask for one
                self._db.execute("ALTER TABLE jobs ADD COLUMN timeline TEXT")
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
        self,
        job_id: str,
        state: str,
        outputs: list[dict] | None = None,
        error: str | None = None,
        timeline: str | None = None,
    ) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state=?, outputs=?, error=?, timeline=?, updated=?"
                + (", steps_done=0" if state == "queued" else "")
                + " WHERE id=?",
                (state, json.dumps(outputs or []), error, timeline, time.time(), job_id),
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

    def count(self, state: str | None = None) -> int:
        """Jobs in `state` (None: all)."""
        where, args = ("WHERE state=?", (state,)) if state else ("", ())
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]

    def page(self, limit: int, offset: int = 0, state: str | None = None) -> list[Record]:
        """Jobs newest first (in `state`, if given), `limit` of them after the first `offset`."""
        where, args = ("WHERE state=?", (state,)) if state else ("", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [_record(r) for r in rows]

    def clips(self, states: tuple[str, ...]) -> set[str]:
        """The clip paths of jobs in these states."""
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(f"SELECT job FROM jobs WHERE state IN ({marks})", states)
            return {json.loads(job)["clip"] for (job,) in rows.fetchall()}

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._lock_fd)  # the lock goes with it


def _record(row: tuple) -> Record:
    job_id, _, state, job, created, updated, steps_done, outputs, error, timeline = row
    return Record(
        job_id,
        state,
        json.loads(job),
        created,
        updated,
        steps_done,
        json.loads(outputs),
        error,
        timeline,
    )


def _matches(job: dict, like: dict) -> bool:
    return all(job.get(k) == v for k, v in like.items())
