"""The site's network, kept inside a network namespace the driver owns.

Inside namespace NS: the site bridge (e.g. vmbr0) carrying the gateway (10.0.5.1/24) and the
Traefik address (10.0.4.10/32), and one end of a veth pair. The other end is the only thing the
site adds to the host's network: a link-local /30 that the host masquerades, with FORWARD rules
that let it reach the Debian mirror's addresses on ports 80/443 and nothing else. So
10.0.5.0/24 never appears on the host, and containers can still `apt-get install`.
Every host iptables rule carries the comment `aicommons:NS`, which is how `down` finds them.

Several sites share one host: each has its own namespace, so the names derived from it (host
veth, rule comment) differ, and the link /30 is the first one no host interface already uses.
Creating and removing host-side pieces is serialized across processes by a host-wide lock.
Nothing here stops or kills a process: `down` stops what the site started (containers, its
Traefik) and `ip netns del` only unmounts the namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import ipaddress
import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from aicommons.drivers.lxc.run import out, run
from aicommons.errors import PermanentError

CLONE_NEWNET = 0x40000000
STATE_DIR = Path("/run/aicommons")


@dataclass(frozen=True)
class NetPlan:
    ns: str
    bridge: str
    gateway: str
    prefixlen: int
    subnet: str
    extra: tuple[str, ...] = ()  # more addresses on the bridge (Traefik's), as /32
    nat: bool = True
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"  # on the mirror's host (spec)

    @property
    def host_veth(self) -> str:
        # <= 15 characters, and distinct for namespaces that share a prefix.
        return f"{self.ns[:6]}-{hashlib.sha256(self.ns.encode()).hexdigest()[:8]}"

    @property
    def ns_veth(self) -> str:
        return "out0"

    @property
    def link(self) -> ipaddress.IPv4Network:
        """Where this namespace's search for a free /30 starts, in 169.254.0.0/16 (never routed)."""
        k = int.from_bytes(hashlib.sha256(self.ns.encode()).digest()[:2], "big") % 16000 + 100
        return ipaddress.IPv4Network((0xA9FE0000 + k * 4, 30))

    @property
    def comment(self) -> str:
        return f"aicommons:{self.ns}"


_HOST_NS: int | None = None  # fd of the host's namespace, kept open once this process joined the site's


def host(argv: list[str]) -> list[str]:
    """argv to run in the host's network namespace, even after join() moved this process out of it."""
    if _HOST_NS is None:
        return argv
    return ["nsenter", f"--net=/proc/{os.getpid()}/fd/{_HOST_NS}", *argv]


def exists(ns: str) -> bool:
    return Path("/run/netns", ns).exists()


def nsrun(ns: str, argv: list[str], **kw):
    return run(["ip", "netns", "exec", ns, *argv], **kw)


def _link_exists(name: str, ns: str | None = None) -> bool:
    argv = ["ip", "link", "show", name]
    argv = ["ip", "netns", "exec", ns, *argv] if ns else host(argv)
    return run(argv, check=False).returncode == 0


@functools.lru_cache(maxsize=8)
def mirror_addresses(mirror: str) -> tuple[str, list[str]]:
    """(host, IPv4 addresses) of the mirror, resolved in the host's namespace and kept for the process
    (inside the site's namespace there is no DNS: containers get the mirror in /etc/hosts)."""
    host = urlparse(mirror).hostname or ""
    try:
        infos = socket.getaddrinfo(host, 80, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise PermanentError(f"driver.mirror: cannot resolve {host!r} ({exc}); set driver.mirror to a "
                             "reachable Debian mirror or driver.nat: false") from None
    return host, sorted({str(i[4][0]) for i in infos})  # AF_INET: (address, port)


def _ipt(argv: list[str], table: str = "filter", ns: str | None = None) -> None:
    """Add a rule once (-C first), at the top of its chain."""
    base = ["iptables", "-w", "-t", table]
    base = ["ip", "netns", "exec", ns, *base] if ns else host(base)
    chain, rest = argv[0], argv[1:]
    if run([*base, "-C", chain, *rest], check=False).returncode != 0:
        run([*base, "-I", chain, "1", *rest])


@contextlib.contextmanager
def _host_lock():
    """One process at a time changes host-side networking (link /30s, rules, ip_forward)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "net.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _host_links() -> dict[str, list[ipaddress.IPv4Interface]]:
    found: dict[str, list[ipaddress.IPv4Interface]] = {}
    for line in out(host(["ip", "-4", "-o", "addr", "show"])).splitlines():
        words = line.split()
        if len(words) >= 4 and words[2] == "inet":
            found.setdefault(words[1].split("@")[0], []).append(ipaddress.IPv4Interface(words[3]))
    return found


def link_for(p: NetPlan) -> ipaddress.IPv4Network:
    """The /30 of this namespace's veth: the one it has, else the first free one from p.link on."""
    addrs = _host_links()
    mine = [a.network for a in addrs.get(p.host_veth, []) if a.network.prefixlen == 30]
    if mine:
        return mine[0]
    used = [a.network for nets in addrs.values() for a in nets]
    first = (int(p.link.network_address) - 0xA9FE0000) // 4 - 100
    for i in range(16000):  # /30 number k in 100..16099: 169.254.1.144 up to 169.254.251.x
        cand = ipaddress.IPv4Network((0xA9FE0000 + ((first + i) % 16000 + 100) * 4, 30))
        if not any(cand.overlaps(u) for u in used):
            return cand
    raise PermanentError("no free /30 left in 169.254.0.0/16 for the site's link to the host")


def ensure(p: NetPlan) -> None:
    """Create what is missing; safe to call on every run."""
    with _host_lock():
        _ensure(p)


def _ensure(p: NetPlan) -> None:
    if not exists(p.ns):
        run(["ip", "netns", "add", p.ns])
    nsrun(p.ns, ["ip", "link", "set", "lo", "up"])
    if not _link_exists(p.bridge, p.ns):
        nsrun(p.ns, ["ip", "link", "add", p.bridge, "type", "bridge"])
    nsrun(p.ns, ["ip", "addr", "replace", f"{p.gateway}/{p.prefixlen}", "dev", p.bridge])
    for addr in p.extra:
        nsrun(p.ns, ["ip", "addr", "replace", f"{addr}/32", "dev", p.bridge])
    nsrun(p.ns, ["ip", "link", "set", p.bridge, "up"])
    if p.nat:
        _ensure_nat(p)


def _ensure_nat(p: NetPlan) -> None:
    link = link_for(p)
    host_ip, ns_ip = (str(a) for a in list(link.hosts())[:2])
    if not _link_exists(p.host_veth):
        run(host(["ip", "link", "add", p.host_veth, "type", "veth", "peer", "name", p.ns_veth, "netns", p.ns]))
    run(host(["ip", "addr", "replace", f"{host_ip}/30", "dev", p.host_veth]))
    run(host(["ip", "link", "set", p.host_veth, "up"]))
    nsrun(p.ns, ["ip", "addr", "replace", f"{ns_ip}/30", "dev", p.ns_veth])
    nsrun(p.ns, ["ip", "link", "set", p.ns_veth, "up"])
    nsrun(p.ns, ["ip", "route", "replace", "default", "via", host_ip])
    nsrun(p.ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    _ipt(["POSTROUTING", "-s", p.subnet, "-o", p.ns_veth, "-j", "MASQUERADE"], "nat", ns=p.ns)
    # Host side: remember ip_forward as it was, so `down` can put it back.
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    saved = STATE_DIR / f"{p.ns}.ip_forward"
    if not saved.exists():
        saved.write_text(out(host(["sysctl", "-n", "net.ipv4.ip_forward"])).strip())
    run(host(["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
    c = ["-m", "comment", "--comment", p.comment]
    _ipt(["POSTROUTING", "-s", str(link), "!", "-o", p.host_veth, "-j", "MASQUERADE", *c], "nat")
    # Order matters: each -I goes to the top, so the DROP is inserted first and ends up last.
    _ipt(["FORWARD", "-i", p.host_veth, "-j", "DROP", *c])
    _, addrs = mirror_addresses(p.mirror)
    for a in addrs:
        _ipt(["FORWARD", "-i", p.host_veth, "-d", a, "-p", "tcp", "-m", "multiport",
              "--dports", "80,443", "-j", "ACCEPT", *c])
    _ipt(["FORWARD", "-o", p.host_veth, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
          "-j", "ACCEPT", *c])


def load_bridge_filter(p: NetPlan, rules: str) -> None:
    """Replace the bridge filter table inside the namespace with `rules` (ebtables-restore text,
    render/bridge_filter.py) and read it back: a kernel or tool that cannot enforce it stops the
    apply here, never silently (the namespace is the site's own: nothing else keeps rules there)."""
    nsrun(p.ns, ["ebtables-restore"], input=rules.encode())
    have = out(["ip", "netns", "exec", p.ns, "ebtables-save"])
    wanted = [ln for ln in rules.splitlines() if ln.startswith("-A ")]
    missing = [ln for ln in wanted if ln not in have.splitlines()]
    if missing:
        raise PermanentError(f"the bridge filter of namespace {p.ns} did not load ({len(missing)} rules missing, "
                             f"e.g. {missing[0]!r}): users' apps would be reachable from every container")


def _drop_host_rules(comment: str) -> None:
    for table in ("filter", "nat"):
        for line in out(host(["iptables", "-w", "-t", table, "-S"])).splitlines():
            words = shlex.split(line)
            if words[:1] == ["-A"] and comment in words:
                run(host(["iptables", "-w", "-t", table, "-D", *words[1:]]), check=False)


def teardown(p: NetPlan) -> None:
    """Remove the namespace (its bridge and container veths go with it), the host veth and rules.

    Kills nothing: a process still inside (one that joined to read the site) keeps the old
    namespace alive until it exits, detached from every name and route."""
    with _host_lock():
        _teardown(p)


def _teardown(p: NetPlan) -> None:
    if exists(p.ns):
        run(["ip", "netns", "del", p.ns])
    if _link_exists(p.host_veth):
        # The kernel deletes this end by itself once the namespace above is really gone (which
        # may be just now): a link that vanished in between is what we wanted.
        r = run(host(["ip", "link", "del", p.host_veth]), check=False)
        if r.returncode != 0 and _link_exists(p.host_veth):
            raise PermanentError(f"`ip link del {p.host_veth}` failed: {r.stderr.decode(errors='replace').strip()}")
    _drop_host_rules(p.comment)
    saved = STATE_DIR / f"{p.ns}.ip_forward"
    if saved.exists():
        others = [f for f in STATE_DIR.glob("*.ip_forward") if f != saved]
        if not others:
            run(host(["sysctl", "-qw", f"net.ipv4.ip_forward={saved.read_text().strip() or '0'}"]))
        saved.unlink()


def enter(ns: str, mirror: str, nat: bool) -> None:
    """Join the site's namespace, resolving the mirror first while the host's DNS is reachable
    (inside there is none; an apply later in this process needs it). A mirror that does not
    resolve is said by the apply that needs it (open_network resolves again, and raises)."""
    if nat:
        try:
            mirror_addresses(mirror)
        except PermanentError:
            pass
    join(ns)


def join(ns: str) -> None:
    """Move the calling thread (and threads it starts later) into the namespace.

    The control plane then reaches 10.0.5.x as it would from a host on vmbr0 (Python 3.11 has no
    os.setns, hence libc).
    """
    global _HOST_NS
    libc = ctypes.CDLL(None, use_errno=True)
    if _HOST_NS is None:
        _HOST_NS = os.open("/proc/self/ns/net", os.O_RDONLY)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise PermanentError(f"cannot join network namespace {ns!r}: {os.strerror(err)}")
    finally:
        os.close(fd)
