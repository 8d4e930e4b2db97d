"""Memory and CPU limits: LXC applies them from the config's `lxc.cgroup.*` keys (config.py).

Each container's cgroups are `aicommons/<netns>/<ctid>` in every hierarchy
(`lxc.cgroup.dir.container`), where LXC writes the limits; the container itself lives one level
down (`.../payload`, `lxc.cgroup.dir.container.inner`), the root of its cgroup namespace, so root
inside cannot raise its own limits. For that LXC must see the hierarchies: `ip netns exec`
mounts a fresh /sys without them, so prestart.py mounts them again from `mounts()` (read here,
in the host's mount namespace). What is left to this module: reading limits and use back (every
key of the config compared with its cgroup file after start, by status and audit: read_back), a
live change of a running container's limits (the same values LXC sets at the next start), and
removing the groups.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PERIOD = 100000
INNER = "payload"  # lxc.cgroup.dir.container.inner


def group(controller: str, ns: str, ctid: int) -> Path:
    return ROOT / controller / "aicommons" / ns / str(ctid)


def dirs(ns: str, ctid: int) -> dict[str, str]:
    """The lxc.cgroup.dir.* values of a container (relative to each hierarchy's root)."""
    return {"container": f"aicommons/{ns}/{int(ctid)}", "container.inner": INNER,
            "monitor": f"aicommons/{ns}/monitor.{int(ctid)}"}


# Hierarchies a container's cgroups may be left in (LXC prunes them at stop; destroy makes sure).
HIERARCHIES = ("systemd", "unified", "memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "devices", "freezer",
               "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc")


def mounts(mounts_text: str | None = None) -> list[tuple[str, str, str]]:
    """(fstype, options, mount point) of every cgroup hierarchy under /sys/fs/cgroup, from the
    host's mount table, for prestart.py to mount again inside `ip netns exec`."""
    text = mounts_text if mounts_text is not None else Path("/proc/self/mounts").read_text()
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2") and parts[1].startswith(str(ROOT) + "/"):
            opts = [o for o in parts[3].split(",") if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec")]
            out.append((parts[2], ",".join(opts) or "defaults", parts[1]))
        elif len(parts) >= 3 and parts[2] == "cgroup2" and parts[1] == str(ROOT):
            out.append(("cgroup2", "defaults", parts[1]))
    return out


def host_cpus() -> list[int]:
    """The CPUs the host's root cpuset offers, e.g. [0, 1]."""
    for f in (ROOT / "cpuset" / "cpuset.cpus", ROOT / "cpuset.cpus.effective"):
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        out: list[int] = []
        for part in filter(None, text.split(",")):
            a, _, b = part.partition("-")
            out += list(range(int(a), int(b or a) + 1))
        return out
    return list(range(os.cpu_count() or 1))


def pinned_cpus(cores: int) -> str:
    """The cpuset of a container that needs `cores` CPUs of its own (the model server: llama.cpp's
    workers spin at barriers, and on CPUs others also run on it collapsed to 0.1 tokens/s): the
    host's last ones, so the first stay where the host and the other containers start."""
    cpus = host_cpus()
    return ",".join(map(str, cpus[-min(max(cores, 1), len(cpus)):]))


def legacy() -> bool:
    """Is memory/CPU on cgroup v1 here (hybrid layout)? Decides lxc.cgroup.* vs lxc.cgroup2.* keys."""
    return (ROOT / "memory" / "memory.limit_in_bytes").exists()


def unified() -> Path:
    """The cgroup v2 hierarchy: /sys/fs/cgroup itself on a unified host, `unified/` on a hybrid one."""
    return ROOT / "unified" if (ROOT / "unified" / "cgroup.controllers").exists() else ROOT


def key_file(key: str, ns: str, ctid: int) -> Path:
    """The file in the container's cgroup that an `lxc.cgroup.*` / `lxc.cgroup2.*` key writes.
    LXC 5.0.2 src/lxc/cgroups/cgfsng.c: a v1 key's file is the text after `lxc.cgroup.`, in the
    hierarchy of the controller its first word names (__cg_legacy_setprop); a v2 key's file is the
    text after `lxc.cgroup2.` in the unified hierarchy (cg_hybrid/unified setup_limits), both in
    the container's limiting group (`lxc.cgroup.dir.container`, not the inner one)."""
    if key.startswith("lxc.cgroup2."):
        return unified() / "aicommons" / ns / str(int(ctid)) / key[len("lxc.cgroup2."):]
    name = key[len("lxc.cgroup."):]
    return group(name.split(".", 1)[0], ns, ctid) / name


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        a, _, b = part.partition("-")
        out |= set(range(int(a), int(b or a) + 1))
    return out


def same(key: str, wanted: str, found: str) -> bool:
    """Does the kernel's value say what the key asked? `0,1` is `0-1` in cpuset.cpus; the rest
    compare word by word (cpu.max is `quota period`)."""
    if key.endswith("cpuset.cpus"):
        try:
            return _cpus(wanted) == _cpus(found)
        except ValueError:
            return False
    return wanted.split() == found.split()


def read_back(ns: str, ctid: int, keys: list[tuple[str, str]]) -> list[tuple[str, str, str, bool]]:
    """(cgroup file, wanted, found, same) for each key, read from the container's cgroup on the host;
    found is "unreadable (why)" where the file cannot be read (no group: the container never started)."""
    out = []
    for key, wanted in keys:
        f = key_file(key, ns, ctid)
        try:
            found = f.read_text().strip()
        except OSError as exc:
            found = f"unreadable ({exc.strerror or exc})"
        out.append((f.name, wanted, found, same(key, wanted, found)))
    return out


def write(ns: str, ctid: int, keys: list[tuple[str, str]]) -> None:
    """A running container's limits, live: the config's keys written where LXC writes them at start
    (the config holds the same for the next start). A container without a group is left alone."""
    for key, value in keys:
        f = key_file(key, ns, ctid)
        if f.parent.is_dir():
            f.write_text(value)


def stats(ns: str, ctid: int) -> dict[str, float] | None:
    """A container's memory now and its peak (MB) and the CPU it has used (s), from its cgroups:
    v1 memory.usage_in_bytes / max_usage_in_bytes / cpuacct.usage where memory is on v1, else v2's
    memory.current / memory.peak (Linux 5.19+) / cpu.stat usage_usec. None when it has no group."""
    try:
        if legacy():
            mem = group("memory", ns, ctid)
            return {"memory_mb": int((mem / "memory.usage_in_bytes").read_text()) / 2**20,
                    "peak_mb": int((mem / "memory.max_usage_in_bytes").read_text()) / 2**20,
                    "cpu_s": int((group("cpuacct", ns, ctid) / "cpuacct.usage").read_text()) / 1e9}
        g = unified() / "aicommons" / ns / str(int(ctid))
        cpu = dict(line.split() for line in (g / "cpu.stat").read_text().splitlines())
        peak = g / "memory.peak"
        current = int((g / "memory.current").read_text()) / 2**20
        return {"memory_mb": current, "peak_mb": int(peak.read_text()) / 2**20 if peak.exists() else current,
                "cpu_s": int(cpu["usage_usec"]) / 1e6}
    except (OSError, ValueError, KeyError):
        return None


def pids_in_pidns(init_pid: int) -> list[int]:
    """Every process of a container (by its init's PID namespace), for measurements."""
    target = os.readlink(f"/proc/{init_pid}/ns/pid")
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def read(ns: str, ctid: int) -> tuple[int | None, int | None]:
    """(memory_mb, cores) as the kernel has them, None where unset."""
    try:
        mem = int((group("memory", ns, ctid) / "memory.limit_in_bytes").read_text()) // (1024 * 1024)
        quota = int((group("cpu", ns, ctid) / "cpu.cfs_quota_us").read_text())
        return mem, (quota // PERIOD if quota > 0 else None)
    except (OSError, ValueError):
        return None, None


def usage(ns: str, ctids: list[int], sample: float = 0.25) -> dict[int, tuple[float, int | None, float | None]]:
    """{ctid: (memory in use MB, limit MB, CPU % of its cores)} from the containers' own groups,
    the CPU over one `sample` for all of them; a container without a group or a process in it
    (not running) is left out."""
    def cpu_ns(ctid: int) -> int | None:
        try:
            return int((group("cpuacct", ns, ctid) / "cpuacct.usage").read_text())
        except (OSError, ValueError):
            return None

    before, t0 = {c: cpu_ns(c) for c in ctids}, time.monotonic()
    time.sleep(sample)
    elapsed = time.monotonic() - t0
    out = {}
    for c in ctids:
        mem = group("memory", ns, c)
        try:
            if not any(p.read_text().strip() for p in mem.rglob("cgroup.procs")):
                continue  # stopped: its group (and its systemd's sub-groups) outlive it until destroy
            used = int((mem / "memory.usage_in_bytes").read_text()) / 2**20
        except (OSError, ValueError):
            continue
        limit, cores = read(ns, c)
        start, end = before[c], cpu_ns(c)
        cpu = None
        if start is not None and end is not None:
            cpu = round(100 * (end - start) / 1e9 / elapsed / (cores or os.cpu_count() or 1), 1)
        out[c] = (round(used, 1), limit if limit is not None and limit < 2**40 else None, cpu)
    return out


def remove(ns: str, ctid: int) -> None:
    """The container's groups (and its monitor's), where empty: LXC refuses to start into a
    `lxc.cgroup.dir.container` that exists, and a container of an older version left its own."""
    for g in [p for c in HIERARCHIES
              for p in (group(c, ns, ctid), ROOT / c / "aicommons" / ns / f"monitor.{int(ctid)}")]:
        if g.exists():
            for sub in sorted((p for p in g.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                try:
                    sub.rmdir()  # what the container's systemd left (empty once it stopped)
                except OSError:
                    pass
            try:
                g.rmdir()
            except OSError:
                pass
        for parent in (g.parent, g.parent.parent):
            try:
                parent.rmdir()  # only succeeds once empty
            except OSError:
                pass
