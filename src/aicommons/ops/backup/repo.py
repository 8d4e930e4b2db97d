"""The backup repository on disk: one directory per backup, each with a manifest.

A backup is written into `.partial-<id>` and renamed to `<id>` only when complete, so an
interrupted run (exception, kill, power loss) never replaces or hides the last good one.
`list` ignores partial directories; the next run removes those whose writer is gone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aicommons.errors import PermanentError
from aicommons.fsutil import fsync_dir

MANIFEST = "manifest.json"
PARTIAL = ".partial-"
FORMAT = 1


class BackupError(PermanentError):
    """A backup could not be read, verified or restored; the message says which part and why."""


@dataclass
class Item:
    kind: str  # postgres_db, postgres_globals, redis_rdb, redis_acl, redis_keys, qdrant_snapshot, s3_object, skipped
    name: str
    path: str = ""  # relative to the backup directory
    user: str | None = None
    size: int = 0
    sha256: str = ""
    detail: dict = field(default_factory=dict)  # rows per table, key counts, skip reasons ...


@dataclass
class Manifest:
    id: str
    site: str
    created: str  # ISO 8601 UTC
    user: str | None  # None: the whole site
    tools: dict[str, str]
    items: list[Item]
    format: int = FORMAT

    @property
    def created_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.created)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        items = [Item(**i) for i in data.pop("items")]
        return cls(items=items, **data)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def new_id(now: dt.datetime, user: str | None) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + (f"-{user}" if user else "")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Repo:
    def __init__(self, root: Path):
        self.root = Path(root)

    # ---- writing ---------------------------------------------------------------------------

    def begin(self, backup_id: str) -> Path:
        """A fresh partial directory for `backup_id` (stale partials of dead writers removed)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.clean_partials()
        if (self.root / backup_id).exists():
            raise BackupError(f"backup {backup_id} already exists in {self.root}; wait a second and run again")
        tmp = self.root / f"{PARTIAL}{backup_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        (tmp / ".writer").write_text(str(os.getpid()))
        return tmp

    def commit(self, tmp: Path, manifest: Manifest) -> Path:
        """Write the manifest, flush, and rename into place (atomic on one filesystem)."""
        (tmp / ".writer").unlink(missing_ok=True)
        write_private(tmp / MANIFEST, manifest.to_json())
        for p in tmp.rglob("*"):
            if p.is_file():
                with p.open("rb") as f:
                    os.fsync(f.fileno())
        final = self.root / manifest.id
        os.rename(tmp, final)
        fsync_dir(self.root)
        return final

    def abort(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def clean_partials(self) -> list[str]:
        removed = []
        for d in self.root.glob(f"{PARTIAL}*"):
            writer = d / ".writer"
            try:
                pid = int(writer.read_text())
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
        return removed

    # ---- reading ---------------------------------------------------------------------------

    def list(self) -> list[Manifest]:
        """Complete backups, newest first (a directory without a readable manifest is not one)."""
        out: list[Manifest] = []
        if not self.root.is_dir():
            return out
        for d in self.root.iterdir():
            if d.name.startswith(".") or not (d / MANIFEST).is_file():
                continue
            try:
                out.append(Manifest.from_json((d / MANIFEST).read_text()))
            except (ValueError, TypeError, KeyError):
                continue
        return sorted(out, key=lambda m: (m.created, m.id), reverse=True)

    def get(self, backup_id: str) -> tuple[Manifest, Path]:
        d = self.root / backup_id
        if "/" in backup_id or backup_id.startswith(".") or not (d / MANIFEST).is_file():
            known = ", ".join(m.id for m in self.list()[:5]) or "none"
            raise BackupError(f"no backup {backup_id!r} in {self.root} (newest: {known}); see `aicommons backup list`")
        try:
            return Manifest.from_json((d / MANIFEST).read_text()), d
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupError(f"backup {backup_id}: its manifest is unreadable ({exc})") from None

    def remove(self, backup_id: str) -> None:
        shutil.rmtree(self.root / backup_id)


def write_private(path: Path, text: str | bytes) -> None:
    """Write a 0600 file (backups hold data and password hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)


def file_item(root: Path, rel: str, kind: str, name: str, user: str | None = None, **detail) -> Item:
    p = root / rel
    return Item(kind=kind, name=name, path=rel, user=user, size=p.stat().st_size, sha256=sha256_file(p),
                detail=detail)


def to_prune(backups: list[Manifest], daily: int, weekly: int) -> list[str]:
    """Ids retention drops: keep the newest backup of each of the last `daily` days and of each
    of the last `weekly` ISO weeks (counted per scope: the whole site, or one user)."""
    keep: set[str] = set()
    scopes: dict[str | None, list[Manifest]] = {}
    for m in sorted(backups, key=lambda m: (m.created, m.id), reverse=True):
        scopes.setdefault(m.user, []).append(m)
    for items in scopes.values():
        days: dict[dt.date, str] = {}
        weeks: dict[tuple[int, int], str] = {}
        for m in items:
            d = m.created_at.date()
            days.setdefault(d, m.id)
            weeks.setdefault((d.isocalendar().year, d.isocalendar().week), m.id)
        keep |= set(list(days.values())[:daily])
        keep |= set(list(weeks.values())[:weekly])
    return [m.id for m in backups if m.id not in keep]


def write_metric(textfile_dir: Path, site: str, when: dt.datetime) -> Path:
    """The last-good-backup timestamp for node exporter's textfile collector (atomic rename)."""
    from aicommons.render.monitoring import BACKUP_METRIC

    textfile_dir.mkdir(parents=True, exist_ok=True)
    path = textfile_dir / "aicommons_backup.prom"
    tmp = textfile_dir / ".aicommons_backup.prom.tmp"
    tmp.write_text(f"# HELP {BACKUP_METRIC} Unix time of the last complete backup.\n"
                   f"# TYPE {BACKUP_METRIC} gauge\n"
                   f'{BACKUP_METRIC}{{site="{site}"}} {when.timestamp():.0f}\n')
    os.replace(tmp, path)
    return path
