"""One apply per site: a lock row in the state naming its holder (host, pid, since).

A holder on this host whose process is gone (or whose pid now belongs to another process,
told apart by the process start time) is dead: its lock is broken automatically and said so.
A holder on another host cannot be checked from here: `aicommons state unlock` breaks it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from aicommons.errors import AicError


class LockHeld(AicError):
    exit_code = 3


@dataclass(frozen=True)
class LockInfo:
    host: str
    pid: int
    pid_start: str
    who: str
    command: str
    since: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"{self.who}@{self.host} pid {self.pid} ({self.command}) since {when}"

    def alive(self) -> bool | None:
        """True/False on this host; None when the holder is on another host (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        return _pid_start(self.pid) == self.pid_start


def _pid_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
        return data.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks since boot
    except (OSError, IndexError):
        return ""


class StateLock:
    def __init__(self, store, command: str = "apply"):
        self.store = store
        self.command = command
        self.broken: LockInfo | None = None  # a dead holder's lock that acquire() broke
        self.nested = False  # this process held it already (a `users add` editing site.yaml, then applying)

    def holder(self) -> LockInfo | None:
        rows = self.store._read("SELECT host, pid, pid_start, who, command, since FROM lock WHERE id = 1")
        return LockInfo(*rows[0]) if rows else None

    def try_acquire(self) -> LockInfo | None:
        """Take the lock; returns the live holder instead when someone else has it."""
        from aicommons.state.store import _who

        me = (socket.gethostname(), os.getpid(), _pid_start(os.getpid()), _who(), self.command, time.time())
        with self.store.tx() as c:
            row = c.execute("SELECT host, pid, pid_start, who, command, since FROM lock WHERE id = 1").fetchone()
            if row:
                info = LockInfo(*row)
                if (info.host, info.pid, info.pid_start) == me[:3]:
                    self.nested = True  # held by this very process: the outer holder releases it
                    return None
                if info.alive() is False:
                    self.broken = info
                    c.execute("DELETE FROM lock WHERE id = 1")
                else:
                    return info
            c.execute("INSERT INTO lock VALUES (1, ?, ?, ?, ?, ?, ?)", me)
        return None

    def acquire(self, timeout: float = 0.0, poll: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while True:
            holder = self.try_acquire()
            if holder is None:
                return
            if time.monotonic() >= deadline:
                hint = ("" if holder.alive() is not None else
                        "; if that process is gone, run `aicommons state unlock`")
                raise LockHeld(f"the site is locked by {holder.describe()}; wait for it "
                               f"(--lock-timeout SECONDS){hint}")
            time.sleep(poll)

    def release(self) -> None:
        if self.nested:
            return
        with self.store.tx() as c:
            c.execute("DELETE FROM lock WHERE id = 1 AND host = ? AND pid = ?", (socket.gethostname(), os.getpid()))

    def force_unlock(self) -> LockInfo | None:
        info = self.holder()
        with self.store.tx() as c:
            c.execute("DELETE FROM lock WHERE id = 1")
        return info

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
