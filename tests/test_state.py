"""State store: real SQLite files on disk, real Fernet encryption, real processes for the lock.

Nothing is simulated here.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from aicommons.state import StateError, StateStore
from aicommons.state.lock import LockHeld, StateLock
from aicommons.state.secrets import KeySource, SecretKeyError


@pytest.fixture
def store(tmp_path):
    s = StateStore.open(tmp_path / ".aicommons" / "state.db")
    yield s
    s.close()


def test_new_state_file_is_private_and_versioned(store):
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store._read("PRAGMA user_version")[0][0] >= 1


def test_allocations_hold_slots_until_purged(store):
    store.allocate("user1", "10.0.5.200", 200)
    store.allocate("user2", "10.0.5.201", 201)
    store.set_allocation_status("user1", "removed")
    assert store.held_slots() == {"user1": "10.0.5.200", "user2": "10.0.5.201"}
    with pytest.raises(StateError, match="held by user user1"):
        store.allocate("user3", "10.0.5.200", 200)
    with pytest.raises(StateError, match="refusing to move"):
        store.allocate("user2", "10.0.5.202", 202)
    store.set_allocation_status("user1", "purged")
    assert store.held_slots() == {"user2": "10.0.5.201"}
    store.allocate("user3", "10.0.5.200", 200)
    assert store.held_slots()["user3"] == "10.0.5.200"


def test_secret_generated_once_encrypted_and_rotated(store, monkeypatch):
    monkeypatch.delenv("AICOMMONS_SECRET_KEY", raising=False)
    sec = store.secrets()
    v1 = sec.get("user1", "postgres_password")
    assert len(v1) >= 32
    assert sec("user1", "postgres_password") == v1
    again = StateStore.open(store.path).secrets()
    assert again.get("user1", "postgres_password") == v1
    keyfile = store.path.parent / "secret.key"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    raw = store.path.read_bytes() + b"".join(p.read_bytes() for p in store.path.parent.glob("state.db-wal"))
    assert v1.encode() not in raw
    assert sec.rotate("user1", "postgres_password") == 2
    v2 = sec.get("user1", "postgres_password")
    assert v2 != v1 and sec.version("user1", "postgres_password") == 2


def test_wrong_key_is_refused_and_nothing_regenerated(tmp_path, monkeypatch):
    monkeypatch.delenv("AICOMMONS_SECRET_KEY", raising=False)
    s = StateStore.open(tmp_path / "state.db")
    v = s.secrets().get("site", "postgres_admin_password")
    from cryptography.fernet import Fernet

    monkeypatch.setenv("AICOMMONS_SECRET_KEY", Fernet.generate_key().decode())
    with pytest.raises(SecretKeyError, match="does not match"):
        s.secrets().get("site", "postgres_admin_password")
    monkeypatch.delenv("AICOMMONS_SECRET_KEY")
    assert s.secrets().get("site", "postgres_admin_password") == v


def test_passphrase_key(tmp_path):
    s = StateStore.open(tmp_path / "state.db")
    v = s.secrets(KeySource(env=None, passphrase="correct horse")).get("u", "k")
    assert s.secrets(KeySource(env=None, passphrase="correct horse")).get("u", "k") == v
    with pytest.raises(SecretKeyError):
        s.secrets(KeySource(env=None, passphrase="wrong")).get("u", "k")


def test_group_readable_key_file_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("AICOMMONS_SECRET_KEY", raising=False)
    s = StateStore.open(tmp_path / "state.db")
    s.secrets().get("u", "k")
    (tmp_path / "secret.key").chmod(0o644)
    with pytest.raises(SecretKeyError, match="chmod 600"):
        StateStore.open(tmp_path / "state.db").secrets().get("u", "k")


def test_corrupt_file_is_refused_and_untouched(tmp_path):
    p = tmp_path / "state.db"
    p.write_bytes(b"this is not sqlite at all" * 40)
    before = p.read_bytes()
    with pytest.raises(StateError, match="left untouched"):
        StateStore.open(p)
    assert p.read_bytes() == before


def test_truncated_sqlite_is_refused_and_untouched(tmp_path):
    p = tmp_path / "state.db"
    s = StateStore.open(p)
    s.allocate("user1", "10.0.5.200", 200)
    s._db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    data = p.read_bytes()
    p.write_bytes(data[:100] + b"\xff" * (len(data) - 100))
    before = p.read_bytes()
    with pytest.raises(StateError):
        StateStore.open(p).allocations()
    assert p.read_bytes() == before


def test_newer_schema_is_refused_and_untouched(tmp_path):
    p = tmp_path / "state.db"
    StateStore.open(p).close()
    c = sqlite3.connect(p)
    c.execute("PRAGMA user_version = 99")
    c.close()
    before = p.read_bytes()
    with pytest.raises(StateError, match="newer"):
        StateStore.open(p)
    assert p.read_bytes() == before


def check_lock_names_holder(target: str) -> tuple[StateLock, int]:
    """A real second process takes the lock and dies; returns a lock on `target` and its pid."""
    StateStore.open(target).close()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from aicommons.state import StateStore; from aicommons.state.lock import StateLock\n"
        f"s=StateStore.open({target!r}); StateLock(s,'apply').acquire(); print('ok', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        lock = StateLock(StateStore.open(target))
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
            lock.acquire(timeout=0.3)
    finally:
        holder.kill()
        holder.wait()
    return lock, holder.pid


def test_lock_names_holder_and_breaks_dead_one(tmp_path):
    lock, pid = check_lock_names_holder(str(tmp_path / "state.db"))
    lock.acquire()
    assert lock.broken is not None and lock.broken.pid == pid
    assert lock.holder().pid == os.getpid()
    lock.release()
    assert lock.holder() is None


def test_v1_state_is_migrated_keeping_data_and_a_backup(tmp_path):
    from aicommons.state.db import SQLITE_V1, statements

    p = tmp_path / "state.db"
    c = sqlite3.connect(p)
    for stmt in statements(SQLITE_V1):
        c.execute(stmt)
    c.execute("INSERT INTO allocations VALUES ('user1', '10.0.5.200', 200, 'active', 0, 0)")
    c.execute("PRAGMA user_version = 1")
    c.commit()
    c.close()
    s = StateStore.open(p)
    assert s.held_slots() == {"user1": "10.0.5.200"} and s.allocations()[0].ctid == 200
    assert s._read("PRAGMA user_version")[0][0] == 2
    assert (tmp_path / "state.db.v1.bak").exists()


def _open_and_allocate(path, name: str, barrier, out) -> None:
    barrier.wait()  # every process reaches StateStore.open at the same moment
    try:
        s = StateStore.open(path)
        s.allocate(name, f"10.0.5.{200 + int(name[1:])}", 1)
        s.close()
        out.put("ok")
    except StateError as exc:
        out.put(str(exc))


def test_processes_creating_one_state_at_once_do_not_clash(tmp_path):
    """Reproduced first: 300 rounds of three processes opening a new state together failed 6 times
    with "database is locked" (switching a new file to WAL does not wait on SQLite's busy timeout)."""
    ctx = multiprocessing.get_context("fork")
    for r in range(150):
        path, barrier, out = tmp_path / f"r{r}" / "state.db", ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_open_and_allocate, args=(path, f"u{i}", barrier, out)) for i in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [out.get(timeout=5) for _ in procs] == ["ok"] * 3, r
        s = StateStore.open(path)
        assert len(s.held_slots()) == 3
        s.close()
