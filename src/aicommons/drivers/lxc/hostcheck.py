"""Can this host hold the site? Host-wide kernel limits sized from the plan, memory, disk, AppArmor.

Every container's processes count against host-wide limits, whoever started them:
- `fs.inotify.max_user_instances` (128 by default): each Debian 12 container with systemd holds
  5 inotify instances, all charged to the host's root (measured here); at the default, about
  20-25 containers start and then new containers' systemd dies with "Too many open files".
- `fs.inotify.max_user_watches`: the same containers' watches (JupyterLab and code-server watch
  their files).
- `kernel.pid_max` / `kernel.threads-max`: every process and thread of every container.
- `kernel.keys.maxkeys` / `maxbytes`: per-uid key quotas; every container of a site maps its root to
  the same host uid (idmap.py), and systemd gives each service its own session keyring.
apply raises what is too low (never lowers), under a host-wide lock, and records the old value in
/run/aicommons/sysctl.json; `down` of the last site that needed a raise puts it back. Where a value
cannot be written (a read-only /proc/sys) apply refuses before any container starts, with the
`sysctl -w` commands. The host is read through `Host`, so tests pass a fake /proc.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aicommons.errors import PermanentError

STATE = Path("/run/aicommons/sysctl.json")
PER_CONTAINER = {  # what one container needs; the base leaves the rest of the host its defaults
    "fs.inotify.max_user_instances": (128, 10),  # 5 measured (systemd); apps' file watchers on top
    "fs.inotify.max_user_watches": (65536, 16384),
    "kernel.keys.maxkeys": (200, 40),  # one session keyring per service, ~25 units in a container
    "kernel.keys.maxbytes": (20000, 40000),  # LXD's production guidance: 1000 bytes per key
    "kernel.pid_max": (16384, 1024),  # the host's own processes, then ~1000 threads per container with apps
    "kernel.threads-max": (16384, 1024),
}


@dataclass
class Host:
    """The host as read (and written) here: /proc (and /proc/sys) under `proc`, filesystems by statvfs."""
    proc: Path = Path("/proc")

    def sysctl(self, key: str) -> int:
        return int((self.proc / "sys" / key.replace(".", "/")).read_text().split()[0])

    def set_sysctl(self, key: str, value: int) -> None:
        (self.proc / "sys" / key.replace(".", "/")).write_text(f"{value}\n")

    def writable(self, key: str) -> bool:
        return os.access(self.proc / "sys" / key.replace(".", "/"), os.W_OK)

    def mem_total_mb(self) -> int:
        for line in (self.proc / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
        return 0

    def free_gb(self, path: str) -> float:
        p = Path(path)
        while not p.exists() and p != p.parent:
            p = p.parent
        st = os.statvfs(p)
        return st.f_bavail * st.f_frsize / 2**30


def needs(containers: int) -> dict[str, int]:
    return {k: base + per * containers for k, (base, per) in PER_CONTAINER.items()}


def shortfall(want: dict[str, int], host: Host) -> dict[str, tuple[int, int]]:
    """{key: (now, needed)} for every limit below what is needed."""
    out = {}
    for key, value in want.items():
        try:
            now = host.sysctl(key)
        except (OSError, ValueError):
            continue  # this kernel has no such knob
        if now < value:
            out[key] = (now, value)
    return out


def commands(short: dict[str, tuple[int, int]]) -> str:
    return "; ".join(f"sysctl -w {k}={v}" for k, (_, v) in short.items())


def notes(containers: int, memory_mb: int, disk_gb: int, lxcpath: str, host: Host | None = None) -> list[str]:
    """What `plan` says before apply: limits apply will raise or cannot, memory and disk, AppArmor."""
    host = host or Host()
    out = []
    short = shortfall(needs(containers), host)
    fixed = {k: v for k, v in short.items() if host.writable(k)}
    stuck = {k: v for k, v in short.items() if k not in fixed}
    if fixed:
        out.append(f"host limits too low for {containers} containers: apply raises "
                   + ", ".join(f"{k} {now} -> {v}" for k, (now, v) in fixed.items()) + " (down restores them)")
    if stuck:
        out.append(f"host limits too low for {containers} containers, and not writable from here: apply will refuse; "
                   f"as root on the host run: {commands(stuck)}")
    total = host.mem_total_mb()
    if total and memory_mb > total:
        out.append(f"the containers' memory limits add up to {memory_mb} MB, more than this host's {total} MB: "
                   "they cannot all use their limit at once")
    free = host.free_gb(lxcpath)
    if free < disk_gb:
        out.append(f"the containers' disks add up to {disk_gb} GB and {lxcpath} has {free:.0f} GB free "
                   "(the LXC driver does not reserve disk: the containers share what is free)")
    out.append(apparmor_note(host))
    return out


def apparmor_note(host: Host | None = None) -> str:
    """Said at run time, never assumed: LXC's generated profile applies only where AppArmor is on."""
    host = host or Host()
    enabled = Path("/sys/module/apparmor/parameters/enabled")
    on = enabled.exists() and enabled.read_text().strip() == "Y" and host.proc == Path("/proc")
    if on:
        return "AppArmor: every container runs under LXC's generated profile"
    return ("this kernel has no AppArmor: LXC runs its 'nop' security driver, so the containers' "
            "`lxc.apparmor.profile = generated` has no effect here; they are confined by their user "
            "namespace, LXC's device allow-list and seccomp policy")


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[dict]:
    state.parent.mkdir(parents=True, exist_ok=True)
    with open(state.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            data = {"saved": {}, "sites": {}}
        yield data
        state.write_text(json.dumps(data, indent=1, sort_keys=True))


def raise_for(ns: str, want: dict[str, int], *, host: Host | None = None, state: Path = STATE,
              log=lambda msg: None) -> None:
    host = host or Host()
    with _locked(state) as data:
        short = shortfall(want, host)
        stuck = {k: v for k, v in short.items() if not host.writable(k)}
        if stuck:
            raise PermanentError(
                f"this host cannot hold the site: {', '.join(f'{k} is {now}, needs {v}' for k, (now, v) in stuck.items())}"
                f", and it cannot be raised from here. As root on the host run: {commands(stuck)} (and put the same "
                "in /etc/sysctl.d/60-aicommons.conf to keep it); nothing was started")
        mine = data["sites"].setdefault(ns, {})
        for k, v in want.items():
            mine[k] = max(v, mine.get(k, 0))
        for k, (now, v) in short.items():
            data["saved"].setdefault(k, now)
            host.set_sysctl(k, v)
            data.setdefault("set", {})[k] = v
            log(f"host: {k} raised from {now} to {v} (down restores it)")


def release(ns: str, *, host: Host | None = None, state: Path = STATE, log=lambda msg: None) -> None:
    """This site is down: limits go back to the highest the remaining sites need, or to their old value."""
    host = host or Host()
    if not state.exists():
        return
    with _locked(state) as data:
        data["sites"].pop(ns, None)
        ours = data.setdefault("set", {})
        for k, old in list(data["saved"].items()):
            keep = max([old, *(s.get(k, 0) for s in data["sites"].values())])
            try:
                now = host.sysctl(k)
                if now > keep and now == ours.get(k):  # someone else's later change is theirs to keep
                    host.set_sysctl(k, keep)
                    ours[k] = keep
                    log(f"host: {k} restored to {keep}")
            except OSError:
                continue
            if not data["sites"]:
                del data["saved"][k]
                ours.pop(k, None)
