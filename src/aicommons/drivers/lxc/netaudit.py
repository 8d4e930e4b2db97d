"""`audit isolation`'s network section on the LXC site: every door the site's bridge filter closes,
tried from inside every running container, with the sources that must get through as controls.

The doors (render/bridge_filter.py): a person's app ports admit only Traefik's source (the site's
namespace); the model server's ports only its clients (the gateway); Traefik's API only the
portal. A refused connection counts only when the same door answers its allowed source: a door
nobody reaches proves nothing (the probe says "error", naming the control that failed).
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aicommons.drivers.base import HostProbe
from aicommons.drivers.lxc import netns
from aicommons.plan.model import ResolvedSite
from aicommons.render.bridge_filter import TRAEFIK_API_PORT

NAMESPACE = 0  # the site's namespace itself: Traefik's source, and the control plane's

def knock(door: list) -> bool:
    """Connect to [ip, port], 2 s at most: a dropped frame times out, which is the refusal."""
    s = socket.socket()
    s.settimeout(2)
    try:
        return s.connect_ex((door[0], door[1])) == 0
    finally:
        s.close()


# Inside a container: the same `knock`, every door at once.
_PROBE = ("import json, socket, sys\nfrom concurrent.futures import ThreadPoolExecutor\n" + inspect.getsource(knock)
          + "with ThreadPoolExecutor(32) as pool:\n    print(json.dumps(list(pool.map(knock, json.loads(sys.argv[1])))))\n")


@dataclass(frozen=True)
class Door:
    label: str  # "user2's n8n", "the model server", "Traefik's API"
    ip: str
    port: int
    allowed: tuple[str, ...]  # container addresses that may open it (the namespace always may)


def doors(resolved: ResolvedSite) -> list[Door]:
    """What the bridge filter keeps shut, from the plan."""
    out: list[Door] = []
    for t in resolved.tenants:
        out += [Door(f"{t.user}'s {app}", t.ip, port, ()) for app, port in sorted(t.ports.items())
                if app not in resolved.unavailable]
    ep = resolved.endpoints
    if "llama-server" in ep and "llama-server" not in resolved.undeployed:
        clients = (ep["gateway"].host,) if "gateway" in ep and "gateway" not in resolved.undeployed else ()
        out += [Door(f"the model server ({u.model.name})", ep["llama-server"].host, u.port, clients)
                for u in resolved.model_units]
    portal = (ep["portal"].host,) if "portal" in ep and "portal" not in resolved.undeployed else ()
    out.append(Door("Traefik's API", str(resolved.site.network.traefik.address), TRAEFIK_API_PORT, portal))
    return out


def _knock(driver, source: int, targets: list[Door]) -> list[bool] | str:
    arg = json.dumps([[d.ip, d.port] for d in targets])
    if source == NAMESPACE and _inside(driver.net.ns):  # the command joined the site's network (status, audit)
        with ThreadPoolExecutor(32) as pool:  # threads start where this one is
            return list(pool.map(knock, json.loads(arg)))
    if source == NAMESPACE:
        res = netns.nsrun(driver.net.ns, [sys.executable, "-c", _PROBE, arg], check=False, timeout=60)
        out, err = res.stdout.decode(), res.stderr.decode()
    else:
        r = driver.exec(source, ["python3", "-c", _PROBE, arg], timeout=60)
        out, err = r.stdout, r.stderr
    try:
        return [bool(x) for x in json.loads(out.strip().splitlines()[-1])]
    except (ValueError, IndexError):
        return f"the probe did not run: {(err or out).strip()[-200:]}"


def _inside(ns: str) -> bool:
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino == os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return False


def run(driver, resolved: ResolvedSite, running: list[int]) -> list[HostProbe]:
    """From the namespace and every running container of the site, each door not its own."""
    ip_of = {c.ctid: c.ip for c in resolved.containers}
    site_doors = doors(resolved)
    sources = [NAMESPACE, *[c for c in running if c in ip_of]]
    seen: dict[tuple[int, Door], bool | str] = {}
    for src in sources:
        mine = [d for d in site_doors if src == NAMESPACE or d.ip != ip_of[src]]
        got = _knock(driver, src, mine)
        for i, d in enumerate(mine):
            seen[(src, d)] = got if isinstance(got, str) else got[i]
    out: list[HostProbe] = []
    for (src, d), opened in seen.items():
        if src == NAMESPACE:
            continue  # the controls, below
        allowed = ip_of[src] in d.allowed
        probe = f"{'reach' if allowed else 'cannot reach'} {d.label} at {d.ip}:{d.port}"
        controls = [s for s in sources if s == NAMESPACE or ip_of.get(s) in d.allowed]
        answered = [s for s in controls if seen.get((s, d)) is True]
        if isinstance(opened, str):
            out.append(HostProbe(src, "network", probe, None, opened))
        elif allowed:
            out.append(HostProbe(src, "network", probe, not opened, "" if opened else "its allowed source is dropped",
                                 expect_refused=False))
        elif opened:
            out.append(HostProbe(src, "network", probe, False, "connected"))
        elif not answered:
            out.append(HostProbe(src, "network", probe, None, "nothing answers there from its allowed sources "
                                 "either: the refusal proves nothing"))
        else:
            out.append(HostProbe(src, "network", probe, True, "dropped"))
    return out
