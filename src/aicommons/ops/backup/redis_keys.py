"""Redis: the whole RDB (`redis-cli --rdb`), the ACL users, and per-user key dumps.

Per-user dumps are what makes a one-user restore possible: SCAN MATCH `<prefix>*`, then DUMP
and PTTL of every key (one JSON line each), restored with RESTORE ... REPLACE and the TTL left.
The password goes to redis-cli through REDISCLI_AUTH, never argv.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import redis

from aicommons.ops.backup.postgres import Server
from aicommons.ops.backup.repo import BackupError

BATCH = 500
SITE_GROUP = "_site"  # keys outside every tenant prefix (shared services' own keys)


def client(srv: Server, db: int = 0) -> redis.Redis:
    return redis.Redis(host=srv.host, port=srv.port, username=srv.user, password=srv.password, db=db,
                       socket_timeout=30, socket_connect_timeout=10)


def glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def tool_version() -> str:
    exe = shutil.which("redis-cli")
    if not exe:
        return "missing"
    return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()


def dump_rdb(srv: Server, out: Path) -> None:
    exe = shutil.which("redis-cli")
    if not exe:
        raise BackupError("redis-cli not found: install redis-tools")
    env = {**os.environ, "REDISCLI_AUTH": srv.password}
    res = subprocess.run([exe, "-h", srv.host, "-p", str(srv.port), "--user", srv.user, "--no-auth-warning",
                          "--rdb", str(out)], env=env, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0 or not out.exists():
        raise BackupError(f"redis-cli --rdb failed: {(res.stderr or res.stdout).strip()[-300:]}")
    os.chmod(out, 0o600)


def check_rdb(path: Path) -> list[str]:
    exe = shutil.which("redis-check-rdb")
    if not exe:
        return []  # nothing to check with; the sha256 still guards the file
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        last = [ln for ln in res.stdout.splitlines() if ln.strip()][-1:] or ["exit " + str(res.returncode)]
        return [f"{path.name}: redis-check-rdb: {last[0].strip()}"]
    return []


def acl_lines(r: redis.Redis) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else x for x in r.execute_command("ACL", "LIST")]


def _scan(r: redis.Redis, match: str) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in r.scan_iter(match=match, count=1000):
        batch.append(key)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def dump_keys(r: redis.Redis, match: str, route: Callable[[bytes], str | None], out_dir: Path) -> dict[str, int]:
    """Write `<group>.jsonl` per group (route(key) names it; None skips). Returns keys per group."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    files: dict[str, TextIO] = {}
    counts: dict[str, int] = {}
    try:
        for batch in _scan(r, match):
            pipe = r.pipeline(transaction=False)
            for k in batch:
                pipe.dump(k)
                pipe.pttl(k)
            res = pipe.execute()
            for i, k in enumerate(batch):
                data, ttl = res[2 * i], res[2 * i + 1]
                group = route(k)
                if data is None or group is None:  # expired between SCAN and DUMP
                    continue
                if group not in files:
                    fd = os.open(out_dir / f"{group}.jsonl", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
                    files[group] = os.fdopen(fd, "w")
                    counts[group] = 0
                files[group].write(json.dumps({"k": base64.b64encode(k).decode(), "t": ttl,
                                               "d": base64.b64encode(data).decode()}) + "\n")
                counts[group] += 1
    finally:
        for f in files.values():
            f.close()
    return counts


def read_keys(path: Path) -> list[tuple[bytes, int, bytes]]:
    out = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            try:
                e = json.loads(line)
                out.append((base64.b64decode(e["k"], validate=True), int(e["t"]),
                            base64.b64decode(e["d"], validate=True)))
            except (ValueError, KeyError, TypeError) as exc:
                raise BackupError(f"{path.name} line {n} is damaged ({exc})") from None
    return out


def restore_keys(r: redis.Redis, match: str, path: Path | None) -> int:
    """Make the keys matching `match` exactly those of the dump: existing ones are removed first."""
    entries = read_keys(path) if path is not None and path.exists() else []
    for batch in _scan(r, match):
        r.unlink(*batch)
    return _restore(r, entries)


def restore_site_keys(r: redis.Redis, path: Path) -> int:
    """Put shared services' keys back (REPLACE); keys made since are left: no prefix bounds them."""
    return _restore(r, read_keys(path))


def _restore(r: redis.Redis, entries: list[tuple[bytes, int, bytes]]) -> int:
    pipe = r.pipeline(transaction=False)
    for key, ttl, data in entries:
        pipe.restore(key, max(ttl, 0), data, replace=True)  # ttl: ms left at dump time, 0 = none
    pipe.execute()
    return len(entries)


def restore_acl_user(r: redis.Redis, lines: list[str], username: str) -> bool:
    """Re-apply one user's ACL rules (password hash included) and persist them."""
    for line in lines:
        parts = line.split(" ")
        if len(parts) >= 2 and parts[0] == "user" and parts[1] == username:
            r.execute_command("ACL", "SETUSER", username, "reset", *parts[2:])
            try:
                r.execute_command("ACL", "SAVE")
            except redis.ResponseError:
                pass  # no aclfile configured: nothing to persist to
            return True
    return False
