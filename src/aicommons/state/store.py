"""The state store: allocations, secrets (encrypted), what was applied, runs and their journal.

Embedded SQLite (`.aicommons/state.db` beside the site file) or a postgresql:// URL (state/db.py).
Every write is one transaction, so a kill -9 leaves the state at the last committed step. The
schema carries a version; a state from a newer aicommons, or one that is not a state at all, is
refused with a clear error and never written to.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aicommons.errors import AicError
from aicommons.state.db import TABLES, DbError, PgDb, SqliteDb, is_url, statements

SCHEMA_VERSION = 2
DEFAULT_DIR = ".aicommons"
DEFAULT_NAME = "state.db"


class StateError(AicError):
    """The state file cannot be used as it is; nothing was written."""


@dataclass(frozen=True)
class Allocation:
    user: str
    ip: str
    ctid: int
    status: str


@dataclass(frozen=True)
class Applied:
    address: str
    kind: str
    owner: str | None
    fingerprint: str
    attrs: dict


@dataclass(frozen=True)
class Run:
    id: int
    command: str
    who: str
    host: str
    started_at: float
    finished_at: float | None
    outcome: str
    summary: dict


@contextmanager
def _opening(path: Path) -> Iterator[None]:
    """Processes open one SQLite state in turn. Switching a new file to WAL and migrating it take
    locks SQLite will not wait for (it answers "database is locked" at once), so two commands
    started together could fail on a fresh state. The lock is a sidecar file: SQLite's own POSIX
    locks on the database would be dropped by any other descriptor of it being closed."""
    fd = os.open(path.with_name(path.name + ".open-lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def default_path(site_file: str | os.PathLike) -> Path:
    return Path(site_file).resolve().parent / DEFAULT_DIR / DEFAULT_NAME


class StateStore:
    """One site's state. Thread-safe: the engine's workers share one store."""

    def __init__(self, path: Path | None, db):
        self.path = path  # None for a PostgreSQL state
        self.read_only = False  # opened for a command that changes nothing: its secrets are never stored
        self._db = db
        self._mu = threading.RLock()

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, target: str | os.PathLike, *, create: bool = True, read_only: bool = False) -> StateStore:
        """An SQLite file path, or a postgresql:// URL. `read_only` (plan, render, users list/show):
        a missing file is not created; the command reads an empty state held in memory."""
        if is_url(target):
            try:
                store = cls._open_db(PgDb(str(target)), None)
            except DbError as exc:
                raise StateError(str(exc)) from None
        else:
            store = cls._open_path(Path(target), create=create, read_only=read_only)
        store.read_only = read_only
        return store

    @classmethod
    def _open_path(cls, path: Path, *, create: bool, read_only: bool) -> StateStore:
        if read_only and not path.exists():
            return cls._open_db(SqliteDb(None), None)
        if not path.exists():
            if not create:
                raise StateError(f"no state file at {path}; run `aicommons apply` first")
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        elif not SqliteDb.check_file(path):
            raise StateError(f"{path} is not an aicommons state file (corrupt or foreign); it was left untouched. "
                             f"Restore it from a backup, or move it aside to start a new state")
        with _opening(path):
            try:
                db = SqliteDb(path)
            except sqlite3.DatabaseError as exc:
                raise StateError(f"{path} cannot be read as a state file ({exc}); it was left untouched") from None
            return cls._open_db(db, path)

    @classmethod
    def _open_db(cls, db, path: Path | None) -> StateStore:
        try:
            version = db.version()
            if version > SCHEMA_VERSION:
                raise StateError(f"{db.where} has state schema {version}, newer than this aicommons understands "
                                 f"({SCHEMA_VERSION}); upgrade aicommons. The state was left untouched")
            store = cls(path, db)
            db.prepare()
            if version < SCHEMA_VERSION:
                store._migrate(version)
            missing = TABLES - db.tables()
            if missing:
                raise StateError(f"{db.where} lacks tables {sorted(missing)}: not an aicommons state; "
                                 f"it was left untouched")
        except StateError:
            db.close()
            raise
        except Exception as exc:  # noqa: BLE001 - sqlite3 / psycopg errors: a damaged or foreign database
            db.close()
            raise StateError(f"{db.where} cannot be read as a state ({exc}); it was left untouched. "
                             f"Restore it from a backup") from None
        return store

    def _migrate(self, version: int) -> None:
        if version > 0:  # keep the old file: a failed migration must not lose state
            self._db.backup(version)
        with self.tx() as c:
            version = self._db.version()  # again, under the write lock: another process may have just done it
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in statements(self._db.migrations[v]):
                    c.execute(stmt)
            self._db.set_version(c, SCHEMA_VERSION)

    def close(self) -> None:
        with self._mu:
            self._db.close()

    @contextmanager
    def tx(self):
        """One write transaction; writers queue, never interleave."""
        with self._damaged(), self._mu, self._db.transaction() as c:
            yield c

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._damaged(), self._mu:
            return [tuple(r) for r in self._db.execute(sql, args).fetchall()]

    @contextmanager
    def _damaged(self):
        """A damaged page or a full disk met mid-way is a clear StateError, never a DatabaseError
        (the transaction it broke was rolled back: nothing half-written stays)."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise  # a constraint the caller handles (not damage)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"the state {self._db.where} cannot be used: {exc}. If it is damaged, restore it "
                             "from a backup; if the disk is full, free space and run again") from None

    def _bump(self, c) -> None:
        c.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'serial'")

    # ---- meta ------------------------------------------------------------------------------

    def serial(self) -> int:
        """Grows on every change that a saved plan depends on (plans carry it to detect staleness)."""
        return int(self.meta("serial") or 0)

    def meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str, *, only_if_missing: bool = False) -> str:
        with self.tx() as c:
            action = "NOTHING" if only_if_missing else "UPDATE SET value = excluded.value"
            c.execute(f"INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO {action}", (key, value))
            return c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    # ---- allocations -----------------------------------------------------------------------

    def allocations(self) -> list[Allocation]:
        return [Allocation(*r) for r in self._read('SELECT "user", ip, vmid, status FROM allocations ORDER BY vmid')]

    def held_slots(self) -> dict[str, str]:
        """user -> ip for every slot not yet purged (removed users keep theirs until purged)."""
        return dict(self._read("SELECT \"user\", ip FROM allocations WHERE status != 'purged'"))

    def allocate(self, user: str, ip: str, ctid: int) -> Allocation:
        """Record (or re-activate) a user's slot. A live slot never moves; an address is never shared."""
        now = time.time()
        with self.tx() as c:
            row = c.execute('SELECT ip, status FROM allocations WHERE "user" = ?', (user,)).fetchone()
            if row and row[1] != "purged" and row[0] != ip:
                raise StateError(f"user {user} holds {row[0]} in state; refusing to move it to {ip}")
            other = c.execute("SELECT \"user\" FROM allocations WHERE ip = ? AND status != 'purged' AND \"user\" != ?",
                              (ip, user)).fetchone()
            if other:
                raise StateError(f"address {ip} is held by user {other[0]} in state; it cannot go to {user}")
            if row is None:
                c.execute("INSERT INTO allocations VALUES (?, ?, ?, 'active', ?, ?)", (user, ip, ctid, now, now))
            elif row[1] != "active" or row[0] != ip:
                c.execute("UPDATE allocations SET ip = ?, vmid = ?, status = 'active', updated_at = ? WHERE \"user\" = ?",
                          (ip, ctid, now, user))
            else:
                return Allocation(user, ip, ctid, "active")
            self._bump(c)
        return Allocation(user, ip, ctid, "active")

    def set_allocation_status(self, user: str, status: str) -> None:
        if status not in ("active", "removed", "purged"):
            raise ValueError(status)
        with self.tx() as c:
            cur = c.execute("UPDATE allocations SET status = ?, updated_at = ? WHERE \"user\" = ? AND status != ?",
                            (status, time.time(), user, status))
            if cur.rowcount:
                self._bump(c)

    # ---- what was applied ------------------------------------------------------------------

    def applied(self) -> dict[str, Applied]:
        rows = self._read("SELECT address, kind, owner, fingerprint, attrs FROM resources")
        return {r[0]: Applied(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows}

    def is_applied(self, address: str) -> bool:
        return bool(self._read("SELECT 1 FROM resources WHERE address = ?", (address,)))

    def record_applied(self, address: str, kind: str, owner: str | None, fingerprint: str,
                       attrs: dict | None = None) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO resources VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (address) DO UPDATE SET "
                      "kind = excluded.kind, owner = excluded.owner, fingerprint = excluded.fingerprint, "
                      "attrs = excluded.attrs, updated_at = excluded.updated_at",
                      (address, kind, owner, fingerprint, json.dumps(attrs or {}, sort_keys=True), time.time()))
            self._bump(c)

    def forget_applied(self, address: str) -> None:
        with self.tx() as c:
            if c.execute("DELETE FROM resources WHERE address = ?", (address,)).rowcount:
                self._bump(c)

    # ---- secrets ---------------------------------------------------------------------------

    def secrets(self, key_source=None):
        """A SecretLookup-compatible object: `get(scope, key)` generate-once, `rotate(scope, key)`.
        On a store opened read-only a value not stored yet is a throwaway one (see SecretStore)."""
        from aicommons.state.secrets import KeySource, SecretStore

        if key_source is None:
            key_source = KeySource.default(self.path.parent) if self.path else KeySource(key_file=None)
        return SecretStore(self, key_source, read_only=self.read_only)

    # ---- runs and journal ------------------------------------------------------------------

    def begin_run(self, command: str) -> int:
        with self.tx() as c:
            cur = c.execute("INSERT INTO runs (command, who, host, pid, started_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
                            (command, _who(), socket.gethostname(), os.getpid(), time.time()))
            return int(cur.fetchone()[0])

    def finish_run(self, run_id: int, outcome: str, summary: dict) -> None:
        with self.tx() as c:
            c.execute("UPDATE runs SET finished_at = ?, outcome = ?, summary = ? WHERE id = ?",
                      (time.time(), outcome, json.dumps(summary, sort_keys=True), run_id))

    def runs(self, limit: int = 20) -> list[Run]:
        rows = self._read("SELECT id, command, who, host, started_at, finished_at, outcome, summary FROM runs "
                          "ORDER BY id DESC LIMIT ?", (limit,))
        return [Run(i, command, who, host, started, finished, outcome, json.loads(summary))
                for i, command, who, host, started, finished, outcome, summary in rows]

    def journal(self, run_id: int, address: str, action: str, status: str, detail: str = "") -> None:
        with self.tx() as c:
            c.execute("INSERT INTO journal (run_id, address, action, status, at, detail) VALUES (?, ?, ?, ?, ?, ?)",
                      (run_id, address, action, status, time.time(), detail[:2000]))

    def journal_entries(self, run_id: int | None = None) -> list[tuple[int, str, str, str, str]]:
        if run_id is None:
            return self._read("SELECT run_id, address, action, status, detail FROM journal ORDER BY id")
        return self._read("SELECT run_id, address, action, status, detail FROM journal WHERE run_id = ? ORDER BY id",
                          (run_id,))

    def mark_interrupted(self) -> list[tuple[int, str, list[str]]]:
        """Close runs left 'running' by a dead process (call with the lock held): (id, command, steps cut short)."""
        out = []
        for run_id, command in self._read("SELECT id, command FROM runs WHERE outcome = 'running'"):
            cut = [a for r, a, _ in self.unfinished_steps() if r == run_id]
            self.finish_run(run_id, "interrupted", {"interrupted_steps": cut})
            out.append((run_id, command, cut))
        return out

    def unfinished_steps(self) -> list[tuple[int, str, str]]:
        """Steps journaled as started with no end: a run that died mid-step (the next apply redoes them)."""
        return self._read(
            "SELECT j.run_id, j.address, j.action FROM journal j WHERE j.status = 'started' AND NOT EXISTS "
            "(SELECT 1 FROM journal k WHERE k.run_id = j.run_id AND k.address = j.address AND k.id > j.id)")


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
