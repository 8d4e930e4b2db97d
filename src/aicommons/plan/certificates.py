"""Which certificates the site asks Let's Encrypt for (pure).

Facts this follows (Let's Encrypt's published rate limits): at most 100 names per certificate and
50 new certificates per registered domain per week (renewals of the same name set are exempt).
With HTTP-01 every host must be named, so hosts are packed into SAN certificates of at most 100
names; with DNS-01 one wildcard (`*.<domain>` plus `<domain>`) covers every host.

Stability is the point: the current assignment (from the state, written after each render) is the
input, every host keeps the certificate it is in, a departed host leaves its certificate, and a
new unit (one user's hosts) joins the first certificate with room for all of it, else a new one.
So adding a user changes at most one certificate and nothing issued is reshuffled.
"""

from __future__ import annotations

import heapq
import json
import re

from aicommons.plan.model import Certificate

MAX_NAMES = 100
WEEKLY_LIMIT = 50
WILDCARD = "wildcard"
_NAME = re.compile(r"^cert-(\d+)$")


def plan_certificates(units: list[tuple[str, ...]], current: dict[str, tuple[str, ...]] | None = None,
                      wildcard_domain: str | None = None) -> tuple[Certificate, ...]:
    """Certificates for `units` (each a tuple of hosts that should share a certificate)."""
    if wildcard_domain:
        return (Certificate(WILDCARD, (wildcard_domain, f"*.{wildcard_domain}"), wildcard=True),)
    wanted = {h for u in units for h in u}
    certs: dict[str, list[str]] = {}
    home_of: dict[str, str] = {}  # host -> its certificate
    current = current or {}
    for name in sorted(current, key=_number):
        if not _NAME.match(name):
            continue  # e.g. the wildcard of a site that moved to HTTP-01: planned afresh
        kept = [h for h in dict.fromkeys(current[name]) if h in wanted and h not in home_of]
        if kept:
            certs[name] = kept
            home_of.update(dict.fromkeys(kept, name))
    rooms = _Rooms(certs)
    for unit in units:
        new = [h for h in dict.fromkeys(unit) if h not in home_of]
        if not new:
            continue
        holding = sorted({home_of[h] for h in unit if h in home_of}, key=_number)
        home = next((n for n in holding if len(certs[n]) + len(new) <= MAX_NAMES), None) or rooms.first(len(new))
        if home is None:
            home = _next_name(certs, current)
            certs[home] = []
        certs[home].extend(new)
        home_of.update(dict.fromkeys(new, home))
        rooms.filed(home)
    return tuple(Certificate(n, tuple(hs)) for n, hs in sorted(certs.items(), key=lambda kv: _number(kv[0])))


class _Rooms:
    """The lowest-numbered certificate with room for n more names, without scanning them all:
    certificates are filed by how many names they hold (a heap of numbers per count, stale entries
    dropped when seen), so planning stays linear in the number of users."""

    def __init__(self, certs: dict[str, list[str]]) -> None:
        self.certs = certs
        self.by_count: dict[int, list[tuple[int, str]]] = {}
        for name in certs:
            self.filed(name)

    def filed(self, name: str) -> None:
        heapq.heappush(self.by_count.setdefault(len(self.certs[name]), []), (_number(name), name))

    def first(self, n: int) -> str | None:
        best: tuple[int, str] | None = None
        for count in range(MAX_NAMES - n + 1):
            heap = self.by_count.get(count)
            while heap and len(self.certs[heap[0][1]]) != count:
                heapq.heappop(heap)  # it has grown since it was filed here
            if heap and (best is None or heap[0] < best):
                best = heap[0]
        return best[1] if best else None


def _next_name(certs: dict[str, list[str]], current: dict[str, tuple[str, ...]]) -> str:
    used = {_number(n) for n in list(certs) + list(current)}
    i = 1
    while i in used:
        i += 1
    return f"cert-{i}"


def _number(name: str) -> int:
    m = _NAME.match(name)
    return int(m.group(1)) if m else 10**9


def changes(current: dict[str, tuple[str, ...]] | None, planned: tuple[Certificate, ...]) -> dict[str, str]:
    """certificate name -> new / changed / removed (unchanged ones are left out)."""
    current = current or {}
    out: dict[str, str] = {}
    for c in planned:
        if c.name not in current:
            out[c.name] = "new"
        elif set(current[c.name]) != set(c.hosts):
            out[c.name] = "changed"
    for name in current:
        if name not in {c.name for c in planned}:
            out[name] = "removed"
    return out


def to_json(certs: tuple[Certificate, ...]) -> str:
    """The assignment as the state keeps it (meta key `certificates`)."""
    return json.dumps({c.name: list(c.hosts) for c in certs}, sort_keys=True)


def from_json(text: str | None) -> dict[str, tuple[str, ...]]:
    if not text:
        return {}
    data = json.loads(text)
    return {str(k): tuple(str(h) for h in v) for k, v in data.items() if isinstance(v, list)}
