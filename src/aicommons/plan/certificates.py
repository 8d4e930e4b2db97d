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
    current = current or {}
    for name in sorted(current, key=_number):
        if not _NAME.match(name):
            continue  # e.g. the wildcard of a site that moved to HTTP-01: planned afresh
        kept = [h for h in current[name] if h in wanted and not any(h in c for c in certs.values())]
        if kept:
            certs[name] = kept
    placed = {h for hs in certs.values() for h in hs}
    for unit in units:
        new = [h for h in dict.fromkeys(unit) if h not in placed]
        if not new:
            continue
        home = _with_room(certs, unit, len(new))
        if home is None:
            home = _next_name(certs, current or {})
            certs[home] = []
        certs[home].extend(new)
        placed.update(new)
    return tuple(Certificate(n, tuple(hs)) for n, hs in sorted(certs.items(), key=lambda kv: _number(kv[0])))


def _with_room(certs: dict[str, list[str]], unit: tuple[str, ...], size: int) -> str | None:
    """The certificate already holding part of the unit if it has room, else the first with room."""
    order = sorted(certs, key=lambda n: (not any(h in certs[n] for h in unit), _number(n)))
    return next((n for n in order if len(certs[n]) + size <= MAX_NAMES), None)


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
