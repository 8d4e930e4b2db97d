"""A small typed adapter over proxmoxer: token auth, TLS verified, retries, tasks awaited by UPID.

Nothing past this module sees a raw dict from the API: reads come back as the dataclasses
below, writes return once their task has finished (or raise with the task's log attached).

Retry policy (the only retries of an API call; the engine does not retry what this raised):
- GET is retried on transport errors and 5xx, a bounded number of times.
- A write is retried only when PVE refused it before changing anything: the config lock is held
  (`CT is locked (...)`, `can't lock file ... got timeout`; pve-guest-common
  `AbstractConfig::check_lock` / pve-common `lock_file` run before the change). A write whose
  answer was lost is never repeated: it may have happened, so the error says so and the next
  plan reads what exists.
- 400 (validation), 401, 403 and the known-permanent 500s are never retried.
- A task that outlives its timeout is stopped (DELETE /nodes/{node}/tasks/{upid}) and reported,
  never left running unseen. A task ending `WARNINGS: N` succeeded (pve-common `PVE::UPID::
  status_is_error`); its warnings are logged and returned to the caller.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from aicommons.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)
MiB, GiB = 1024**2, 1024**3

# PVE answers most failures with HTTP 500 and the reason in the status line. A 5xx is retried
# unless its reason is one of these, which no retry can fix.
PERMANENT = re.compile(r"already exists|does not exist|not running|unable to shrink|Permission check failed"
                       r"|no such|not allowed|insufficient free space|is a template", re.I)


LOCKED = re.compile(r"is locked|can't lock file .* got timeout", re.I)
WARNINGS = re.compile(r"^WARNINGS: \d+$")

HINTS = {
    401: "; check driver.token_id and driver.token_secret (USER@REALM!TOKEN and its secret)",
    403: "; the API token lacks a privilege for this: docs/proxmox.md lists the role to grant",
}


class ApiError(PermanentError):
    """The API refused a request; `errors` holds PVE's per-parameter messages."""

    def __init__(self, message: str, status: int = 0, errors: dict | None = None):
        super().__init__(message)
        self.status, self.errors = status, errors or {}


class TaskFailed(PermanentError):
    def __init__(self, message: str, upid: str, log_text: str):
        super().__init__(f"{message}\n--- task log ({upid}) ---\n{log_text}")
        self.upid, self.log = upid, log_text


class TaskLocked(TemporaryError):
    """A task that failed because something else held a lock: worth one more attempt later."""

    def __init__(self, message: str, upid: str, log_text: str):
        super().__init__(f"{message}\n--- task log ({upid}) ---\n{log_text}", delay=5)
        self.upid, self.log = upid, log_text


class TaskTimeout(PermanentError):
    """The task did not finish in time; it was stopped (or the message says it could not be)."""

    def __init__(self, message: str, upid: str, log_text: str):
        super().__init__(f"{message}\n--- task log so far ({upid}) ---\n{log_text}")
        self.upid, self.log = upid, log_text


@dataclass(frozen=True)
class NodeInfo:
    name: str
    online: bool
    maxmem_mb: int
    maxcpu: int
    ip: str | None = None
    mem_mb: int = 0  # in use now: the host and every guest on it, seen or not by this token


@dataclass(frozen=True)
class Committed:
    """Memory and cores promised to the guests on one node that this token can see, QEMU VMs included."""

    mem_mb: int = 0
    cores: int = 0


@dataclass(frozen=True)
class Guest:
    """One row of /cluster/resources?type=vm (containers only)."""

    vmid: int
    node: str
    name: str
    status: str
    maxmem_mb: int
    maxcpu: int
    maxdisk_gb: int
    tags: tuple[str, ...]
    template: bool
    pool: str | None = None
    lock: str | None = None
    mem_mb: float = 0.0  # in use now
    cpu: float = 0.0  # use now, a fraction of maxcpu (the schema's renderer: fraction_as_percentage)


@dataclass(frozen=True)
class CtConfig:
    vmid: int
    node: str
    values: dict[str, str] = field(hash=False)
    digest: str = ""

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    @property
    def lock(self) -> str | None:
        return self.values.get("lock")

    def prop(self, key: str) -> dict[str, str]:
        """A property string (`name=eth0,ip=...`) as a dict; a bare first item is the default key."""
        return parse_props(self.values.get(key, ""))

    @property
    def rootfs_gb(self) -> int | None:
        m = re.search(r"size=(\d+(?:\.\d+)?)([KMGT])", self.values.get("rootfs", ""))
        if not m:
            return None
        scale = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1, "T": 1024}[m.group(2)]
        return int(float(m.group(1)) * scale)


@dataclass(frozen=True)
class TaskStatus:
    upid: str
    node: str
    running: bool
    exitstatus: str | None


@dataclass(frozen=True)
class Storage:
    storage: str
    node: str
    shared: bool
    content: tuple[str, ...] = ()  # what it may hold: rootdir, images, backup, vztmpl, ...
    plugintype: str = ""  # lvmthin, zfspool, rbd, btrfs, dir, nfs, ...


@dataclass(frozen=True)
class Volume:
    """One row of a storage's content listing."""

    volid: str
    vmid: int | None
    ctime: int
    size: int
    protected: bool = False


@dataclass(frozen=True)
class PciMapping:
    id: str
    nodes: tuple[str, ...]


def parse_props(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, item in enumerate(x for x in text.split(",") if x):
        k, sep, v = item.partition("=")
        out[k if sep else f"_{i}"] = v if sep else k
    return out


def _flat(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (int(v) if isinstance(v, bool) else v) for k, v in params.items() if v is not None}


@dataclass
class RetryPolicy:
    attempts: int = 6
    base: float = 0.25
    cap: float = 5.0
    lock_wait: float = 180.0  # how long to keep retrying "CT is locked"

    def delay(self, n: int) -> float:
        return min(self.cap, self.base * 2**n)


class PveApi:
    def __init__(self, host: str, token_id: str, token_secret: str, *, verify: bool | str = True,
                 timeout: float = 30, retry: RetryPolicy | None = None, task_timeout: float = 600,
                 poll: tuple[float, float] = (0.05, 1.0), sleep: Callable[[float], None] = time.sleep,
                 password: str | None = None):
        """`token_id` is USER@REALM!NAME. With `password` (root's one-time template step only),
        `token_id` is a plain USER@REALM and a ticket login is used instead."""
        user, _, token_name = token_id.partition("!")
        auth = dict(password=password) if password is not None else dict(token_name=token_name, token_value=token_secret)
        self._args = dict(user=user, verify_ssl=verify, timeout=timeout, **auth)
        self.host = host
        self.retry = retry or RetryPolicy()
        self.task_timeout = task_timeout
        self.poll = poll
        self.sleep = sleep
        self._local = threading.local()

    @property
    def _api(self) -> ProxmoxAPI:
        # One session per thread: requests.Session is not meant to be shared across threads.
        api = getattr(self._local, "api", None)
        if api is None:
            api = self._local.api = ProxmoxAPI(self.host, **self._args)
        return api

    # ---- the one place requests happen --------------------------------------------------
    def call(self, method: str, path: str, /, **params: Any) -> Any:
        res = self._api
        for seg in path.strip("/").split("/"):
            res = res(seg)
        fn = getattr(res, method.lower())
        started, n = time.monotonic(), 0
        read = method.upper() == "GET"
        while True:
            try:
                return fn(**_flat(params))
            except ResourceException as exc:
                message = str(exc.content)
                if LOCKED.search(message) and exc.status_code >= 500:
                    retry = time.monotonic() - started <= self.retry.lock_wait  # refused before any change
                else:
                    retry = (read and exc.status_code >= 500 and not PERMANENT.search(message)
                             and n + 1 < self.retry.attempts)
                if not retry:
                    errors = exc.errors if isinstance(exc.errors, dict) else {}
                    detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
                    tries = f" (gave up after {n + 1} attempts)" if n else ""
                    raise ApiError(f"{method} {path}: {exc.content}" + (f" ({detail})" if detail else "") + tries
                                   + HINTS.get(exc.status_code, ""), exc.status_code, errors) from None
            except requests.exceptions.SSLError as exc:
                raise PermanentError(f"TLS verification of {self.host} failed ({exc.__class__.__name__}); set "
                                     "driver.ca_file to the cluster's CA (/etc/pve/pve-root-ca.pem on a node) "
                                     "rather than turning verify_tls off") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if not read:
                    raise PermanentError(f"{method} {path}: the connection to the Proxmox API at {self.host} failed "
                                         f"({exc}); PVE may or may not have carried it out, so it is not repeated: "
                                         "the next plan reads what exists") from None
                if n + 1 >= self.retry.attempts:
                    raise PermanentError(f"{method} {path}: cannot reach the Proxmox API at {self.host} "
                                         f"(gave up after {n + 1} attempts): {exc}") from None
            log.info("retrying %s %s (attempt %d)", method, path, n + 2)
            self.sleep(self.retry.delay(n))
            n += 1

    def get(self, path: str, /, **params: Any) -> Any:
        return self.call("GET", path, **params)

    # ---- tasks --------------------------------------------------------------------------
    def task_status(self, node: str, upid: str) -> TaskStatus:
        d = self.get(f"nodes/{node}/tasks/{upid}/status")
        return TaskStatus(upid, node, d.get("status") == "running", d.get("exitstatus"))

    def task_log(self, node: str, upid: str, limit: int = 50) -> str:
        try:
            lines = self.get(f"nodes/{node}/tasks/{upid}/log", limit=limit)
        except (ApiError, TemporaryError) as exc:
            return f"(task log unavailable: {exc})"
        return "\n".join(str(x.get("t", "")) for x in lines)

    def wait(self, node: str, upid: str, what: str, timeout: float | None = None) -> str | None:
        """Poll the task until it stops. Returns its warnings (None when it ended OK); raises
        TaskFailed / TaskLocked with its log attached, or TaskTimeout once it has been stopped."""
        timeout = self.task_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        interval = self.poll[0]
        while True:
            st = self.task_status(node, upid)
            if not st.running:
                if st.exitstatus == "OK":
                    return None
                text = self.task_log(node, upid, limit=500)
                if WARNINGS.match(st.exitstatus or ""):
                    warned = [x[len("WARN: "):] for x in text.splitlines() if x.startswith("WARN: ")]
                    note = f"{what} on {node} ended with {(st.exitstatus or '').lower()}: " + "; ".join(warned or ["see the task log"])
                    log.warning("%s (task %s)", note, upid)
                    return note
                cls = TaskLocked if re.search(r"is locked|got timeout", st.exitstatus or "") else TaskFailed
                raise cls(f"{what} failed on {node}: {st.exitstatus}", upid, text)
            if time.monotonic() >= deadline:
                text = self.task_log(node, upid)
                try:
                    self.call("DELETE", f"nodes/{node}/tasks/{upid}")
                    fate = "it was stopped, so nothing keeps running unseen; apply again once the cause is fixed"
                except (ApiError, PermanentError) as exc:
                    fate = f"stopping it failed ({exc}): it may still be running - look at the task on {node}"
                raise TaskTimeout(f"{what} did not finish within {timeout:g}s on {node}; {fate}", upid, text)
            self.sleep(interval)
            interval = min(self.poll[1], interval * 1.5)

    def run(self, method: str, path: str, node: str, what: str, timeout: float | None = None,
            **params: Any) -> str | None:
        """A write whose answer is a task: wait for it; returns its warnings, if any."""
        upid = self.call(method, path, **params)
        if isinstance(upid, str) and upid.startswith("UPID:"):
            return self.wait(node, upid, what, timeout)
        return None

    # ---- reads --------------------------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        ips = {d["name"]: d.get("ip") for d in self.get("cluster/status") if d.get("type") == "node"}
        return [NodeInfo(d["node"], d.get("status") == "online", int(d.get("maxmem", 0)) // MiB,
                         int(d.get("maxcpu", 0)), ips.get(d["node"]), int(d.get("mem", 0)) // MiB)
                for d in self.get("cluster/resources", type="node")]

    def committed(self) -> dict[str, Committed]:
        """Per node, what every visible guest (containers and QEMU VMs, templates aside) was given."""
        out: dict[str, Committed] = {}
        for d in self.get("cluster/resources", type="vm"):
            if d.get("template") or d.get("type") not in ("lxc", "qemu"):
                continue
            c = out.get(d["node"], Committed())
            out[d["node"]] = Committed(c.mem_mb + int(d.get("maxmem", 0)) // MiB, c.cores + int(d.get("maxcpu", 0)))
        return out

    def guests(self) -> list[Guest]:
        out = []
        for d in self.get("cluster/resources", type="vm"):
            if d.get("type") != "lxc":
                continue
            tags = tuple(t for t in re.split(r"[;, ]+", d.get("tags", "") or "") if t)
            out.append(Guest(int(d["vmid"]), d["node"], d.get("name", ""), d.get("status", "unknown"),
                             int(d.get("maxmem", 0)) // MiB, int(d.get("maxcpu", 0)), int(d.get("maxdisk", 0)) // GiB,
                             tags, bool(d.get("template")), d.get("pool"), d.get("lock"),
                             round(int(d.get("mem", 0)) / MiB, 1), float(d.get("cpu", 0.0))))
        return out

    def config(self, node: str, vmid: int) -> CtConfig:
        d = self.get(f"nodes/{node}/lxc/{vmid}/config")
        digest = d.pop("digest", "")
        return CtConfig(vmid, node, {k: str(v) for k, v in d.items()}, digest)

    def status(self, node: str, vmid: int) -> str:
        return str(self.get(f"nodes/{node}/lxc/{vmid}/status/current").get("status", "unknown"))

    def pci_mappings(self) -> list[PciMapping]:
        out = []
        for d in self.get("cluster/mapping/pci"):
            nodes = tuple(parse_props(m).get("node", "") for m in d.get("map", []))
            out.append(PciMapping(d["id"], tuple(n for n in nodes if n)))
        return out

    def storages(self) -> list[Storage]:
        return [Storage(d["storage"], d["node"], bool(d.get("shared")),
                        tuple(c for c in str(d.get("content", "")).split(",") if c), str(d.get("plugintype", "")))
                for d in self.get("cluster/resources", type="storage")]

    def permissions(self, path: str) -> set[str]:
        """What this token may do on `path` (GET /access/permissions: one's own, no privilege needed)."""
        return set((self.get("access/permissions", path=path) or {}).get(path, {}))

    def interfaces(self, node: str, vmid: int) -> list[dict]:
        return list(self.get(f"nodes/{node}/lxc/{vmid}/interfaces") or [])

    def backups(self, node: str, storage: str, vmid: int) -> list[Volume]:
        rows = self.get(f"nodes/{node}/storage/{storage}/content", content="backup", vmid=vmid)
        return [Volume(d["volid"], int(d["vmid"]) if d.get("vmid") is not None else None, int(d.get("ctime", 0)),
                       int(d.get("size", 0)), bool(d.get("protected"))) for d in rows]

    def templates(self, node: str, storage: str) -> list[Volume]:
        """The OS templates (content vztmpl) `storage` holds on `node`; [] when the token cannot read it."""
        try:
            rows = self.get(f"nodes/{node}/storage/{storage}/content", content="vztmpl")
        except ApiError:
            return []
        return [Volume(d["volid"], None, int(d.get("ctime", 0)), int(d.get("size", 0))) for d in rows]

    def pools(self) -> set[str]:
        return {d["poolid"] for d in self.get("pools")}

    # ---- writes -------------------------------------------------------------------------
    def create_pool(self, pool: str) -> None:
        self.call("POST", "pools", poolid=pool, comment="aicommons")

    def create(self, node: str, vmid: int, **params: Any) -> str | None:
        return self.run("POST", f"nodes/{node}/lxc", node, f"create CT {vmid}", vmid=vmid, **params)

    def clone(self, node: str, source: int, newid: int, **params: Any) -> str | None:
        return self.run("POST", f"nodes/{node}/lxc/{source}/clone", node, f"clone CT {source} -> {newid}", newid=newid, **params)

    def set_config(self, node: str, vmid: int, digest: str | None = None, **params: Any) -> None:
        self.call("PUT", f"nodes/{node}/lxc/{vmid}/config", digest=digest, **params)

    def resize(self, node: str, vmid: int, size_gb: int) -> str | None:
        return self.run("PUT", f"nodes/{node}/lxc/{vmid}/resize", node, f"resize CT {vmid}", disk="rootfs", size=f"{size_gb}G")

    def start(self, node: str, vmid: int) -> str | None:
        return self.run("POST", f"nodes/{node}/lxc/{vmid}/status/start", node, f"start CT {vmid}")

    def stop(self, node: str, vmid: int) -> str | None:
        return self.run("POST", f"nodes/{node}/lxc/{vmid}/status/stop", node, f"stop CT {vmid}")

    def destroy(self, node: str, vmid: int) -> str | None:
        return self.run("DELETE", f"nodes/{node}/lxc/{vmid}", node, f"destroy CT {vmid}", purge=1)

    def vzdump(self, node: str, vmid: int, storage: str, *, mode: str = "stop", timeout: float | None = None,
               **params: Any) -> str | None:
        return self.run("POST", f"nodes/{node}/vzdump", node, f"back up CT {vmid}", timeout, vmid=str(vmid),
                 storage=storage, mode=mode, compress="zstd", **params)

    def make_template(self, node: str, vmid: int) -> None:
        self.run("POST", f"nodes/{node}/lxc/{vmid}/template", node, f"convert CT {vmid} to a template")
