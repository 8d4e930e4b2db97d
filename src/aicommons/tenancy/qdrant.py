"""Qdrant tenancy: per-user collections made by the control plane, and a per-user JWT.

Qdrant's JWT RBAC (`QDRANT__SERVICE__JWT_RBAC=true`) accepts HS256 tokens signed with the API
key. A token with an `access` list may touch only those collections and cannot create any, so
the control plane creates them. A token WITHOUT `access` has manage rights over everything:
the audit refuses such tokens. Suspension uses the `value_exists` claim: the token is valid only
while the user's row in the control collection says active. The token and its claims are pure
policy render shares (plan/policy.py); this module applies and audits them.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.model import Tenant
from aicommons.plan.policy import CONTROL, user_token
from aicommons.tenancy.base import AuditCheck, Expected, Observed, Secrets


def _point_id(user: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"aicommons:{user}"))


def check_token(token: str, api_key: str, own: Tenant, tenants: list[Tenant], now: float | None = None
                ) -> list[AuditCheck]:
    """Audit one user's token: signed by the site key, unexpired, scoped to its own collections."""
    out = []
    try:
        claims = jwt.decode(token, api_key, algorithms=["HS256"],
                            options={"verify_exp": True}, leeway=0)
    except jwt.PyJWTError as exc:
        return [AuditCheck("qdrant", own.user, own.user, "token", "allow", "error", str(exc)[:120])]
    if "access" not in claims:
        return [AuditCheck("qdrant", own.user, "*", "token without `access` (manage rights)", "deny", "allow")]
    granted = {a.get("collection"): a.get("access") for a in claims["access"] if isinstance(a, dict)}
    for target in tenants:
        for c in target.qdrant_collections:
            expected: Expected = "allow" if target.user == own.user else "deny"
            observed: Observed = "allow" if c in granted else "deny"
            out.append(AuditCheck("qdrant", own.user, target.user, f"collection {c}", expected, observed,
                                  granted.get(c) or ""))
    known = {c for t in tenants for c in t.qdrant_collections}
    for extra in sorted(set(granted) - known, key=str):  # key=str: a grant may name no collection (None)
        out.append(AuditCheck("qdrant", own.user, "*", f"collection {extra} (not a tenant's)", "deny", "allow"))
    ve = claims.get("value_exists") or {}
    bound = {m.get("key"): m.get("value") for m in ve.get("matches", [])} if ve.get("collection") == CONTROL else {}
    if bound.get("user") != own.user:
        out.append(AuditCheck("qdrant", own.user, own.user, "token revocable (value_exists)", "allow", "deny"))
    return out


@dataclass
class QdrantBackend:
    url: str
    api_key: str
    archive_dir: Path
    client: Any = None  # a QdrantClient; tests pass one in local mode (path= or ":memory:")
    recreate_nonempty: bool = False  # site.embedding.recreate_nonempty
    name: str = "qdrant"
    _ready: bool = field(default=False, repr=False)

    def _c(self):
        if self.client is None:
            from qdrant_client import QdrantClient

            self.client = QdrantClient(url=self.url, api_key=self.api_key, timeout=10)
        return self.client

    def _call(self, fn):
        try:
            return fn(self._c())
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise TemporaryError(f"Qdrant at {self.url} is not reachable: {exc}", delay=2.0) from None
        except Exception as exc:  # qdrant-client wraps transport errors in its own types
            if type(exc).__name__ in ("ResponseHandlingException", "ConnectError", "ConnectTimeout"):
                raise TemporaryError(f"Qdrant at {self.url} is not reachable: {exc}", delay=2.0) from None
            raise

    def _control(self, c) -> None:
        if not self._ready:
            from qdrant_client import models

            if not c.collection_exists(CONTROL):
                c.create_collection(CONTROL, vectors_config={})
            try:  # local mode warns that indexes do nothing there
                import warnings

                warnings.filterwarnings("ignore", message="Payload indexes have no effect")
                for key, schema in (("user", models.PayloadSchemaType.KEYWORD), ("active", models.PayloadSchemaType.BOOL)):
                    c.create_payload_index(CONTROL, key, schema)
            except Exception:  # noqa: BLE001 - local mode has no payload indexes; the server makes them once
                pass
            self._ready = True

    def _set_active(self, c, t: Tenant, active: bool) -> None:
        from qdrant_client import models

        self._control(c)
        c.upsert(CONTROL, [models.PointStruct(id=_point_id(t.user), vector={},
                                              payload={"user": t.user, "active": active})])

    def _active(self, c, t: Tenant) -> bool | None:
        self._control(c)
        pts = c.retrieve(CONTROL, [_point_id(t.user)], with_payload=True)
        return bool(pts[0].payload.get("active")) if pts else None

    def observe(self) -> dict[str, set[str]]:
        def go(c):
            self._control(c)
            names = [col.name for col in c.get_collections().collections]
            users, _ = c.scroll(CONTROL, limit=100000, with_payload=True)
            out: dict[str, set[str]] = {}
            for p in users:
                u = p.payload.get("user")
                prefix = u.replace("-", "_") + "_"
                out[u] = {f"qdrant.collection.{n}" for n in names if n.startswith(prefix)}
            return out
        return self._call(go)

    @staticmethod
    def _size(c, name: str) -> int | None:
        vectors = c.get_collection(name).config.params.vectors
        return getattr(vectors, "size", None)  # None: named vectors, not ours to judge

    def ensure(self, t: Tenant, secrets: Secrets) -> None:
        """Collections at the site's embedding dimensions. A collection made for another model is
        recreated when empty; one holding vectors only with embedding.recreate_nonempty (its points
        archived first), else the error names it."""
        size = t.qdrant_vector_size

        def go(c):
            from qdrant_client import models

            for name in t.qdrant_collections:
                if c.collection_exists(name):
                    have = self._size(c, name)
                    if have is None or have == size:
                        continue
                    n = c.count(name, exact=True).count
                    if n and not self.recreate_nonempty:
                        raise PermanentError(
                            f"Qdrant collection {name} holds {n} vectors of {have} dimensions; the site's "
                            f"embedding model makes {size}. Set embedding.recreate_nonempty: true to archive "
                            f"and recreate it (then re-embed in the app), or set embedding back")
                    if n:
                        self._archive(c, t, [name])
                    c.delete_collection(name)
                c.create_collection(name, vectors_config=models.VectorParams(
                    size=size, distance=models.Distance.COSINE))
            if self._active(c, t) is None:  # keep a suspension; only resume re-activates
                self._set_active(c, t, True)
        self._call(go)

    def verify(self, t: Tenant, secrets: Secrets) -> list[str]:
        def go(c):
            missing = [n for n in t.qdrant_collections if not c.collection_exists(n)]
            problems = [f"collection {n} is missing" for n in missing]
            for n in t.qdrant_collections:
                if n not in missing and self._size(c, n) not in (None, t.qdrant_vector_size):
                    problems.append(f"collection {n} has {self._size(c, n)} dimensions, the site's "
                                    f"embedding model {t.qdrant_vector_size}")
            if self._active(c, t) is None:
                problems.append(f"no control row for {t.user} in {CONTROL}: its token is refused")
            return problems
        return self._call(go)

    def remove(self, t: Tenant, *, purge: bool = False) -> None:
        def go(c):
            present = [n for n in t.qdrant_collections if c.collection_exists(n)]
            if not purge and present:
                self._archive(c, t, present)
            for n in present:
                c.delete_collection(n)
            c.delete(CONTROL, points_selector=[_point_id(t.user)])
        self._call(go)

    def _archive(self, c, t: Tenant, names: list[str]) -> Path:
        """Points (ids, vectors, payloads) as JSON; a server snapshot would need its own download."""
        out = Path(self.archive_dir) / t.user
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = out / f"qdrant-{time.strftime('%Y%m%dT%H%M%S')}.json"
        data = {}
        for n in names:
            pts, offset = [], None
            while True:
                batch, offset = c.scroll(n, limit=1000, offset=offset, with_payload=True, with_vectors=True)
                pts += [{"id": str(p.id), "vector": p.vector, "payload": p.payload} for p in batch]
                if offset is None:
                    break
            data[n] = pts
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"user": t.user, "collections": data}, f)
        return path

    def suspend(self, t: Tenant) -> None:
        self._call(lambda c: self._set_active(c, t, False))

    def resume(self, t: Tenant, secrets: Secrets) -> None:
        self._call(lambda c: self._set_active(c, t, True))
        self.ensure(t, secrets)

    def token(self, t: Tenant) -> str:
        return user_token(t, self.api_key)

    def audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]:
        """Claims only: each user's token must cover exactly its own collections."""
        out = []
        for t in tenants:
            out += check_token(self.token(t), self.api_key, t, tenants)
        return out
