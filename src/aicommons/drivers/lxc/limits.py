"""Memory and CPU limits, applied by the driver itself.

LXC 5.0.2 on this kind of host (cgroup v1 + an empty v2 hierarchy) sets up no cgroups of its own
and refuses to start a container whose config has `lxc.cgroup.*` limit keys ("Failed to setup
cgroup limits"). So after start the driver puts every process of the container's PID namespace
into /sys/fs/cgroup/{memory,cpu}/aicommons/<netns>/<ctid> and writes the limits there. Processes
the container starts later inherit the group.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PERIOD = 100000


def group(controller: str, ns: str, ctid: int) -> Path:
    return ROOT / controller / "aicommons" / ns / str(ctid)


# Hierarchies a container's own cgroups are rooted in (cpuset is left alone: a new cpuset group
# needs its cpus/mems copied before anyone may join it, and systemd does not use it).
HIERARCHIES = ("systemd", "unified", "memory", "cpu", "cpuacct", "pids", "blkio", "devices", "freezer")


def enter_script(ns: str, ctid: int) -> str:
    """Shell run before `exec lxc-start`: join `aicommons/<ns>/<ctid>` in every hierarchy, so the
    container's cgroup namespace is rooted there. Without it every container's systemd shares the
    host's `system.slice/<unit>` groups (same unit names in each user container: aic-openwebui...)
    and its services escape the memory limit."""
    dirs = " ".join(str(ROOT / h / "aicommons" / ns / str(int(ctid))) for h in HIERARCHIES)
    return (f"for g in {dirs}; do [ -d \"${{g%/aicommons/*}}\" ] || continue; mkdir -p \"$g\" && "
            "echo $$ > \"$g/cgroup.procs\" || true; done")


def available() -> bool:
    return (ROOT / "memory" / "memory.limit_in_bytes").exists() and (ROOT / "cpu" / "cpu.cfs_quota_us").exists()


def _pids_in_pidns(init_pid: int) -> list[int]:
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


def apply(ns: str, ctid: int, init_pid: int, memory_mb: int, cores: int) -> None:
    if not available():
        return
    mem, cpu = group("memory", ns, ctid), group("cpu", ns, ctid)
    for g in (mem, cpu):
        g.mkdir(parents=True, exist_ok=True)
    (mem / "memory.limit_in_bytes").write_text(str(memory_mb * 1024 * 1024))
    (cpu / "cpu.cfs_period_us").write_text(str(PERIOD))
    (cpu / "cpu.cfs_quota_us").write_text(str(cores * PERIOD))
    for _ in range(3):  # processes forked while moving are caught on the next pass
        for pid in _pids_in_pidns(init_pid):
            for g in (mem, cpu):
                if _inside(pid, g):  # already in the group or a child of it (the container's systemd's)
                    continue
                try:
                    (g / "cgroup.procs").write_text(str(pid))
                except OSError:
                    pass


def _inside(pid: int, g: Path) -> bool:
    controller, *rest = g.relative_to(ROOT).parts
    want = "/" + "/".join(rest)
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if controller in ctrls.split(","):
                return path == want or path.startswith(want + "/")
    except (OSError, ValueError):
        pass
    return False


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
    for controller in HIERARCHIES:
        g = group(controller, ns, ctid)
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
