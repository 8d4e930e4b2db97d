"""A fake compute driver that keeps its containers in a JSON file, with failure variants.

Like JupyterHub's MockSpawner family: `slow` (sleeps), `fail` (PermanentError), `flaky`
(TemporaryError the first time), `never` (blocks forever), `crash` (SIGKILL right after creating). State lives in a file, written
atomically under a file lock, so it survives a kill -9 of the process driving it — which is
what the engine's crash tests need. Pushed files land under `<dir>/ct/<ctid>/`.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from aicommons.drivers.base import ContainerState, ExecResult, Usage
from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.model import Container

_NEVER = threading.Event()  # never set: a `never` call waits on it forever


class FakeDriver:
    kind = "fake"

    def __init__(self, directory: str | os.PathLike, variants: dict | None = None, delay: float = 0.0,
                 urls: dict[str, str] | None = None, exec_rc: dict[str, int] | None = None):
        """variants: {ctid or "*": "slow" | "fail" | "flaky" | "never"}; delay: seconds per call for `slow`;
        urls: {service: URL} where the control plane reaches it (loopback stand-ins in tests);
        exec_rc: {substring of a command: exit code} to make matching `exec` calls fail."""
        self.urls = dict(urls or {})
        self.exec_rc = dict(exec_rc or {})
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = self.dir / "containers.json"
        self.variants = dict(variants or {})
        self.delay = delay
        self.calls: list[tuple[str, int]] = []
        self._flaky_seen: set[tuple[str, int]] = set()

    @classmethod
    def from_site(cls, site, **options) -> FakeDriver:
        from aicommons.drivers import registry

        directory = options.get("directory") or registry.FAKE_WORLD
        if not directory:
            raise ValueError("the fake driver needs a directory (tests/fakeworld.py sets one)")
        return cls(directory)

    # ---- persistence ---------------------------------------------------------------------------

    @contextmanager
    def _db(self, write: bool = True):
        with open(self.dir / ".lock", "a+") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            data = json.loads(self.file.read_text()) if self.file.exists() else {"containers": {}, "exec": []}
            yield data
            if write:
                tmp = self.file.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
                os.replace(tmp, self.file)

    def _behave(self, op: str, ctid: int) -> None:
        self.calls.append((op, ctid))
        v = self.variants.get(ctid, self.variants.get("*"))
        if v == "slow":
            time.sleep(self.delay or 0.2)
        elif v == "fail" and op in ("create", "update", "start"):
            raise PermanentError(f"container {ctid}: {op} failed (fake failure)")
        elif v == "flaky" and op == "create" and (op, ctid) not in self._flaky_seen:
            self._flaky_seen.add((op, ctid))
            raise TemporaryError(f"container {ctid}: {op} busy (fake)", delay=0.01)
        elif v == "never" and op in ("create", "wait_ready"):
            _NEVER.wait()

    # ---- the protocol --------------------------------------------------------------------------

    def list_containers(self) -> list[ContainerState]:
        with self._db(write=False) as d:
            return [ContainerState(**{**c, "tags": tuple(c.get("tags", ()))}) for c in d["containers"].values()]

    def get(self, ctid: int) -> ContainerState | None:
        return next((c for c in self.list_containers() if c.ctid == ctid), None)

    def create(self, container: Container) -> None:
        self._behave("create", container.ctid)
        with self._db() as d:
            key = str(container.ctid)
            if key in d["containers"]:
                return  # idempotent: already created (e.g. before a crash)
            d["containers"][key] = asdict(ContainerState(
                ctid=container.ctid, hostname=container.hostname, status="stopped", ip=container.ip,
                node=container.node, memory_mb=container.memory_mb, cores=container.cores,
                disk_gb=container.disk_gb, tags=("aicommons",)))
        v = self.variants.get(container.ctid, self.variants.get("*"))
        if v == "slow":
            time.sleep(self.delay or 0.2)  # answers late: created, but the caller does not know yet
        elif v == "crash":
            os.kill(os.getpid(), signal.SIGKILL)  # dies right after creating it

    def update(self, container: Container) -> None:
        self._behave("update", container.ctid)
        with self._db() as d:
            c = d["containers"].get(str(container.ctid))
            if c is None:
                raise PermanentError(f"container {container.ctid} does not exist")
            c.update(hostname=container.hostname, memory_mb=container.memory_mb, cores=container.cores,
                     disk_gb=container.disk_gb, ip=container.ip)

    def _set_status(self, ctid: int, status: str) -> None:
        with self._db() as d:
            c = d["containers"].get(str(ctid))
            if c is None:
                raise PermanentError(f"container {ctid} does not exist")
            c["status"] = status

    def start(self, ctid: int) -> None:
        self._behave("start", ctid)
        self._set_status(ctid, "running")

    def stop(self, ctid: int) -> None:
        self._behave("stop", ctid)
        self._set_status(ctid, "stopped")

    def destroy(self, ctid: int) -> None:
        self._behave("destroy", ctid)
        with self._db() as d:
            d["containers"].pop(str(ctid), None)

    def archive(self, ctid: int) -> Path:
        """Copy the container's record and files aside (a stand-in for vzdump / a rootfs tarball)."""
        self._behave("archive", ctid)
        import shutil

        dest = self.dir / "archive" / str(ctid)
        c = self.get(ctid)
        if c is None:
            raise PermanentError(f"container {ctid} does not exist")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "container.json").write_text(json.dumps(asdict(c), default=list))
        files = self.dir / "ct" / str(ctid)
        if files.exists():
            shutil.copytree(files, dest / "files", dirs_exist_ok=True)
        return dest

    def exec(self, ctid: int, argv: list[str], *, stdin: bytes | None = None, timeout: float = 600) -> ExecResult:
        self._behave("exec", ctid)
        with self._db() as d:
            if str(ctid) not in d["containers"]:
                return ExecResult(1, "", f"container {ctid} does not exist")
            d["exec"].append([ctid, argv])
        rc = next((v for k, v in self.exec_rc.items() if k in " ".join(argv)), 0)
        return ExecResult(rc, "", f"fake failure of {argv[0]}" if rc else "")

    def push(self, ctid: int, data: bytes, dest: str, mode: int = 0o644) -> None:
        self._behave("push", ctid)
        if self.get(ctid) is None:
            raise PermanentError(f"container {ctid} does not exist")
        target = self.dir / "ct" / str(ctid) / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)

    def wait_ready(self, ctid: int, timeout: float = 120) -> None:
        self._behave("wait_ready", ctid)
        c = self.get(ctid)
        if c is None or c.status != "running":
            raise TemporaryError(f"container {ctid} is not running")

    def set_usage(self, ctid: int, memory_mb: float, cpu_percent: float) -> None:
        """What `usage` reports for a container (a test's stand-in for its cgroup counters)."""
        with self._db() as d:
            d.setdefault("usage", {})[str(ctid)] = {"memory_mb": memory_mb, "cpu_percent": cpu_percent}

    def usage(self, ctids) -> dict[int, Usage]:
        """Running containers' recorded use, in one read (nothing for a stopped or unrecorded one)."""
        with self._db(write=False) as d:
            out = {}
            for ctid in ctids:
                c, u = d["containers"].get(str(ctid)), d.get("usage", {}).get(str(ctid))
                if c is not None and c["status"] == "running" and u is not None:
                    out[ctid] = Usage(memory_mb=u["memory_mb"], memory_limit_mb=c.get("memory_mb"),
                                      cpu_percent=u["cpu_percent"])
            return out

    def exec_log(self) -> list:
        with self._db(write=False) as d:
            return list(d["exec"])

    def service_url(self, service: str) -> str | None:
        """Where a shared service answers (None: nowhere this process may dial; 10.x exists only in namespaces)."""
        return self.urls.get(service)

    def traefik_target(self):
        from aicommons.drivers.targets import LocalDirTarget

        return LocalDirTarget(self.dir / "traefik")
