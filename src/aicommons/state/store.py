"""The state store: allocations, secrets (encrypted), what was applied, runs and their journal.

Embedded SQLite (`.aicommons/state.db` beside the site file). Every write is one transaction, so
a kill -9 leaves the file at the last committed step. The schema carries a version
(`PRAGMA user_version`); a file from a newer aicommons, or one that is not a state file, is
refused with a clear error and never written to.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aicommons.errors import AicError

SCHEMA_VERSION = 1
DEFAULT_DIR = ".aicommons"
DEFAULT_NAME = "state.db"

# Index = version reached after running the script.
MIGRATIONS: list[str] = [
    "",  # 0: empty file
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE allocations (
        user TEXT PRIMARY KEY, ip TEXT NOT NULL, ctid INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'removed', 'purged')),
        created_at REAL NOT NULL, updated_at REAL NOT NULL);
    CREATE UNIQUE INDEX allocations_ip_held ON allocations(ip) WHERE status != 'purged';
    CREATE TABLE secrets (
        scope TEXT NOT NULL, key TEXT NOT NULL, token BLOB NOT NULL, version INTEGER NOT NULL,
        created_at REAL NOT NULL, rotated_at REAL, PRIMARY KEY (scope, key));
    CREATE TABLE resources (
        address TEXT PRIMARY KEY, kind TEXT NOT NULL, owner TEXT, fingerprint TEXT NOT NULL,
        attrs TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL);
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, command TEXT NOT NULL, who TEXT NOT NULL,
        host TEXT NOT NULL, pid INTEGER NOT NULL, started_at REAL NOT NULL, finished_at REAL,
        outcome TEXT NOT NULL DEFAULT 'running', summary TEXT NOT NULL DEFAULT '{}');
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL, address TEXT NOT NULL,
        action TEXT NOT NULL, status TEXT NOT NULL, at REAL NOT NULL, detail TEXT NOT NULL DEFAULT '');
    CREATE INDEX journal_run ON journal(run_id);
    CREATE TABLE lock (
        id INTEGER PRIMARY KEY CHECK (id = 1), host TEXT NOT NULL, pid INTEGER NOT NULL,
        pid_start TEXT NOT NULL, who TEXT NOT NULL, command TEXT NOT NULL, since REAL NOT NULL);
    INSERT INTO meta VALUES ('serial', '0');
    """,
]


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


def default_path(site_file: str | os.PathLike) -> Path:
    return Path(site_file).resolve().parent / DEFAULT_DIR / DEFAULT_NAME


class StateStore:
    """One site's state. Thread-safe: the engine's workers share one store."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self._conn = conn
        self._mu = threading.RLock()

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = True) -> StateStore:
        path = Path(path)
        if not path.exists():
            if not create:
                raise StateError(f"no state file at {path}; run `aicommons apply` first")
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        elif path.stat().st_size and not _looks_like_sqlite(path):
            raise StateError(f"{path} is not an aicommons state file (corrupt or foreign); it was left untouched. "
                             f"Restore it from a backup, or move it aside to start a new state")
        try:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path} cannot be read as a state file ({exc}); it was left untouched. "
                             f"Restore it from a backup, or move it aside to start a new state") from None
        if version > SCHEMA_VERSION:
            conn.close()
            raise StateError(f"{path} has state schema {version}, newer than this aicommons understands "
                             f"({SCHEMA_VERSION}); upgrade aicommons. The file was left untouched")
        store = cls(path, conn)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if version < SCHEMA_VERSION:
                store._migrate(version)
            store._check_integrity()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StateError(f"{path} is damaged ({exc}); it was left untouched. Restore it from a backup") from None
        return store

    def _migrate(self, version: int) -> None:
        if version > 0:  # keep the old file: a failed migration must not lose state
            shutil.copy2(self.path, self.path.with_name(f"{self.path.name}.v{version}.bak"))
        with self.tx() as c:
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in _statements(MIGRATIONS[v]):
                    c.execute(stmt)
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_integrity(self) -> None:
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = {"meta", "allocations", "secrets", "resources", "runs", "journal", "lock"} - tables
        if missing:
            raise StateError(f"{self.path} lacks tables {sorted(missing)}: not an aicommons state file; "
                             f"it was left untouched")

    def close(self) -> None:
        with self._mu:
            self._conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue, never interleave)."""
        with self._mu:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._mu:
            return self._conn.execute(sql, args).fetchall()

    def _bump(self, c: sqlite3.Connection) -> None:
        c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'serial'")

    # ---- meta ------------------------------------------------------------------------------

    def serial(self) -> int:
        """Grows on every change that a saved plan depends on (plans carry it to detect staleness)."""
        return int(self.meta("serial") or 0)

    def meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str, *, only_if_missing: bool = False) -> str:
        with self.tx() as c:
            verb = "INSERT OR IGNORE" if only_if_missing else "INSERT OR REPLACE"
            c.execute(f"{verb} INTO meta VALUES (?, ?)", (key, value))
            return c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    # ---- allocations -----------------------------------------------------------------------

    def allocations(self) -> list[Allocation]:
        return [Allocation(*r) for r in self._read("SELECT user, ip, ctid, status FROM allocations ORDER BY ctid")]

    def held_slots(self) -> dict[str, str]:
        """user -> ip for every slot not yet purged (removed users keep theirs until purged)."""
        return dict(self._read("SELECT user, ip FROM allocations WHERE status != 'purged'"))

    def allocate(self, user: str, ip: str, ctid: int) -> Allocation:
        """Record (or re-activate) a user's slot. A live slot never moves; an address is never shared."""
        now = time.time()
        with self.tx() as c:
            row = c.execute("SELECT ip, status FROM allocations WHERE user = ?", (user,)).fetchone()
            if row and row[1] != "purged" and row[0] != ip:
                raise StateError(f"user {user} holds {row[0]} in state; refusing to move it to {ip}")
            other = c.execute("SELECT user FROM allocations WHERE ip = ? AND status != 'purged' AND user != ?",
                              (ip, user)).fetchone()
            if other:
                raise StateError(f"address {ip} is held by user {other[0]} in state; it cannot go to {user}")
            if row is None:
                c.execute("INSERT INTO allocations VALUES (?, ?, ?, 'active', ?, ?)", (user, ip, ctid, now, now))
            elif row[1] != "active" or row[0] != ip:
                c.execute("UPDATE allocations SET ip = ?, ctid = ?, status = 'active', updated_at = ? WHERE user = ?",
                          (ip, ctid, now, user))
            else:
                return Allocation(user, ip, ctid, "active")
            self._bump(c)
        return Allocation(user, ip, ctid, "active")

    def set_allocation_status(self, user: str, status: str) -> None:
        if status not in ("active", "removed", "purged"):
            raise ValueError(status)
        with self.tx() as c:
            cur = c.execute("UPDATE allocations SET status = ?, updated_at = ? WHERE user = ? AND status != ?",
                            (status, time.time(), user, status))
            if cur.rowcount:
                self._bump(c)

    # ---- what was applied ------------------------------------------------------------------

    def applied(self) -> dict[str, Applied]:
        rows = self._read("SELECT address, kind, owner, fingerprint, attrs FROM resources")
        return {r[0]: Applied(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows}

    def record_applied(self, address: str, kind: str, owner: str | None, fingerprint: str,
                       attrs: dict | None = None) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?)",
                      (address, kind, owner, fingerprint, json.dumps(attrs or {}, sort_keys=True), time.time()))
            self._bump(c)

    def forget_applied(self, address: str) -> None:
        with self.tx() as c:
            if c.execute("DELETE FROM resources WHERE address = ?", (address,)).rowcount:
                self._bump(c)

    # ---- secrets ---------------------------------------------------------------------------

    def secrets(self, key_source=None):
        """A SecretLookup-compatible object: `get(scope, key)` generate-once, `rotate(scope, key)`."""
        from aicommons.state.secrets import KeySource, SecretStore

        return SecretStore(self, key_source or KeySource.default(self.path.parent))

    # ---- runs and journal ------------------------------------------------------------------

    def begin_run(self, command: str) -> int:
        with self.tx() as c:
            cur = c.execute("INSERT INTO runs (command, who, host, pid, started_at) VALUES (?, ?, ?, ?, ?)",
                            (command, _who(), socket.gethostname(), os.getpid(), time.time()))
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, outcome: str, summary: dict) -> None:
        with self.tx() as c:
            c.execute("UPDATE runs SET finished_at = ?, outcome = ?, summary = ? WHERE id = ?",
                      (time.time(), outcome, json.dumps(summary, sort_keys=True), run_id))

    def runs(self, limit: int = 20) -> list[Run]:
        rows = self._read("SELECT id, command, who, host, started_at, finished_at, outcome, summary FROM runs "
                          "ORDER BY id DESC LIMIT ?", (limit,))
        return [Run(*r[:7], json.loads(r[7])) for r in rows]

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


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _looks_like_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
