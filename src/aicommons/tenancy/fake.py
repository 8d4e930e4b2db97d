"""Fake tenancy back ends that keep tenants in a JSON file, with failure variants.

One `FakeBackend(name, dir)` stands in for postgres / redis / qdrant / s3: it records which
addresses exist per user and a digest of the secrets it was last given (so a test can check
that a rotation reached the back end without the value being stored). Variants per user:
`slow` (before and after acting), `fail`, `flaky`, `never`, `crash` (SIGKILL right after acting).
Archives on remove unless purging. Survives kill -9.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.addresses import BACKEND_KEYS, prefix_of, tenant_addresses
from aicommons.plan.model import Tenant
from aicommons.tenancy.base import AuditCheck, Secrets

_NEVER = threading.Event()


def secret_digest(secrets: Secrets, keys: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for k in sorted(keys):
        h.update(f"{k}={secrets.get(k, '')}\n".encode())
    return h.hexdigest()[:16]


class FakeBackend:
    def __init__(self, name: str, directory: str | os.PathLike, variants: dict | None = None, delay: float = 0.0):
        self.name = name
        self.prefix = prefix_of(name)
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = self.dir / f"tenancy-{name}.json"
        self.variants = dict(variants or {})
        self.delay = delay
        self._flaky_seen: set[str] = set()

    @contextmanager
    def _db(self, write: bool = True):
        with open(self.dir / f".lock-{self.name}", "a+") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            data = json.loads(self.file.read_text()) if self.file.exists() else {"tenants": {}, "archived": {}}
            yield data
            if write:
                tmp = self.file.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
                os.replace(tmp, self.file)

    def _behave(self, user: str) -> None:
        v = self.variants.get(user, self.variants.get("*"))
        if v == "slow":
            time.sleep(self.delay or 0.2)
        elif v == "fail":
            raise PermanentError(f"{self.name}: tenant {user} refused (fake failure)")
        elif v == "flaky" and user not in self._flaky_seen:
            self._flaky_seen.add(user)
            raise TemporaryError(f"{self.name}: busy (fake)", delay=0.01)
        elif v == "never":
            _NEVER.wait()

    def observe(self) -> dict[str, set[str]]:
        with self._db(write=False) as d:
            return {u: set(rec["addresses"]) for u, rec in d["tenants"].items()}

    def ensure(self, tenant: Tenant, secrets: Secrets) -> None:
        self._behave(tenant.user)
        addrs = tenant_addresses(tenant).get(self.prefix, [])
        with self._db() as d:
            d["tenants"][tenant.user] = {"addresses": sorted(addrs), "suspended": False,
                                         "secret": secret_digest(secrets, BACKEND_KEYS.get(self.prefix, ()))}
        self._after(tenant.user)

    def _after(self, user: str) -> None:
        """`slow` answers late too, `crash` kills the process: the world changed, the caller never heard."""
        v = self.variants.get(user, self.variants.get("*"))
        if v == "slow":
            time.sleep(self.delay or 0.2)
        elif v == "crash":
            os.kill(os.getpid(), signal.SIGKILL)

    def verify(self, tenant: Tenant, secrets: Secrets) -> list[str]:
        rec = self.observe_record(tenant.user)
        if rec is None:
            return [f"{self.name}: tenant {tenant.user} is missing"]
        if rec["secret"] != secret_digest(secrets, BACKEND_KEYS.get(self.prefix, ())):
            return [f"{self.name}: tenant {tenant.user} credentials differ from the stored secret"]
        return []

    def observe_record(self, user: str) -> dict | None:
        with self._db(write=False) as d:
            return d["tenants"].get(user)

    def remove(self, tenant: Tenant, *, purge: bool = False) -> None:
        self._behave(tenant.user)
        with self._db() as d:
            rec = d["tenants"].pop(tenant.user, None)
            if rec is not None and not purge:
                d["archived"][tenant.user] = rec
        self._after(tenant.user)

    def suspend(self, tenant: Tenant) -> None:
        with self._db() as d:
            if tenant.user in d["tenants"]:
                d["tenants"][tenant.user]["suspended"] = True

    def resume(self, tenant: Tenant, secrets: Secrets) -> None:
        with self._db() as d:
            if tenant.user in d["tenants"]:
                d["tenants"][tenant.user]["suspended"] = False

    def audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]:
        return []


def fake_backends(directory: str | os.PathLike, variants: dict | None = None,
                  names: tuple[str, ...] = ("postgres", "redis", "qdrant", "s3")) -> list[FakeBackend]:
    """One fake per back end; `variants` = {backend name: {user: variant}}."""
    variants = variants or {}
    return [FakeBackend(n, directory, variants.get(n)) for n in names]
