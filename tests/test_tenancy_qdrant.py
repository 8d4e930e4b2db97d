"""Qdrant tenancy. REAL: qdrant-client in local mode (":memory:"), PyJWT signing/verification.
SIMULATED: no Qdrant server runs here, so JWT enforcement is checked on the claims (the server's
RBAC reads exactly these claims); collections are created and removed in qdrant-client's local mode.
"""

from __future__ import annotations

import jwt
import pytest
from qdrant_client import QdrantClient, models

from aicommons.plan.policy import CONTROL, token_claims, user_token
from aicommons.tenancy.qdrant import QdrantBackend, _point_id, check_token
from tests.standins.helpers import DictSecrets, resolved_site

KEY = "site-qdrant-api-key-of-32-bytes-or-more"


def _backend(tmp_path):
    return QdrantBackend("http://127.0.0.1:1", KEY, tmp_path / "archive", client=QdrantClient(":memory:"))


def test_token_claims_cover_exactly_own_collections():
    t1, t2, _ = resolved_site(3).tenants
    claims = jwt.decode(user_token(t1, KEY), KEY, algorithms=["HS256"])
    assert claims["access"] == [{"collection": c, "access": "rw"} for c in t1.qdrant_collections]
    assert {a["collection"] for a in claims["access"]} == {
        "user1_memories", "user1_knowledge", "user1_files", "user1_web-search", "user1_hash-based"}
    assert claims["exp"] > 0 and claims["value_exists"]["matches"][0] == {"key": "user", "value": "user1"}
    assert not set(t2.qdrant_collections) & {a["collection"] for a in claims["access"]}


def test_audit_passes_then_catches_wide_and_manage_tokens(tmp_path):
    tenants = resolved_site(3).tenants
    b = _backend(tmp_path)
    assert [c for c in b.audit(tenants, {}) if not c.ok] == []
    t1, t2, _ = tenants
    wide = token_claims(t1)
    wide["access"].append({"collection": t2.qdrant_collections[0], "access": "r"})
    bad = [c for c in check_token(jwt.encode(wide, KEY), KEY, t1, tenants) if not c.ok]
    assert [(c.actor, c.target, c.resource) for c in bad] == [("user1", "user2", "collection user2_memories")]
    manage = jwt.encode({"exp": 4102444800}, KEY)
    assert [c.ok for c in check_token(manage, KEY, t1, tenants)] == [False]
    forged = jwt.encode(token_claims(t1), "another-key-also-long-enough-for-hs256")
    assert [c.observed for c in check_token(forged, KEY, t1, tenants)] == ["error"]
    expired = jwt.encode(token_claims(t1, exp=1000), KEY)
    assert [c.observed for c in check_token(expired, KEY, t1, tenants)] == ["error"]


def test_ensure_remove_suspend_in_local_mode(tmp_path):
    tenants = resolved_site(2).tenants
    b = _backend(tmp_path)
    s = DictSecrets()
    for t in tenants:
        b.ensure(t, s.for_tenant(t))
        b.ensure(t, s.for_tenant(t))
        assert b.verify(t, s.for_tenant(t)) == []
    c = b.client
    c.upsert("user1_knowledge", [models.PointStruct(id=1, vector=[0.1] * 384, payload={"doc": "a"})])
    b.suspend(tenants[0])
    b.ensure(tenants[0], s.for_tenant(tenants[0]))
    assert c.retrieve(CONTROL, [_point_id("user1")])[0].payload["active"] is False
    b.resume(tenants[0], s.for_tenant(tenants[0]))
    assert set(b.observe()["user1"]) == {f"qdrant.collection.{n}" for n in tenants[0].qdrant_collections}
    b.remove(tenants[0])
    assert not any(c.collection_exists(n) for n in tenants[0].qdrant_collections)
    assert all(c.collection_exists(n) for n in tenants[1].qdrant_collections)
    archived = list((tmp_path / "archive" / "user1").glob("qdrant-*.json"))
    assert len(archived) == 1 and '"doc": "a"' in archived[0].read_text()
    assert "user1" not in b.observe()


def test_collections_follow_the_sites_embedding_model(tmp_path):
    """Issue 14: collections were made at a fixed 384 dimensions whatever the model."""
    import dataclasses

    from qdrant_client import models

    from aicommons.errors import PermanentError
    from aicommons.plan import resolve
    from aicommons.spec.default import render_site_yaml
    from aicommons.spec.load import load_text

    text = render_site_yaml(users=1, services=["ollama", "qdrant", "postgres", "redis", "garage", "searxng", "langfuse"])
    site, _ = load_text(text + "embedding: {model: nomic-embed-text, engine: ollama}\n")
    t = resolve(site).tenants[0]
    assert t.qdrant_vector_size == 768
    b = _backend(tmp_path)
    b.ensure(t, {})
    c = b._c()
    assert {b._size(c, n) for n in t.qdrant_collections} == {768}
    # the model changes: empty collections are recreated at the new size
    t2 = dataclasses.replace(t, qdrant_vector_size=1024)
    assert any("dimensions" in p for p in b.verify(t2, {}))
    b.ensure(t2, {})
    assert {b._size(c, n) for n in t.qdrant_collections} == {1024} and b.verify(t2, {}) == []
    # one holding vectors is refused by name, unless the site says recreate (archived first)
    full = t.qdrant_collections[0]
    c.upsert(full, [models.PointStruct(id=1, vector=[0.1] * 1024, payload={"x": 1})])
    t3 = dataclasses.replace(t, qdrant_vector_size=384)
    with pytest.raises(PermanentError, match=f"{full} holds 1 vectors.*recreate_nonempty"):
        b.ensure(t3, {})
    assert b._size(c, full) == 1024
    b.recreate_nonempty = True
    b.ensure(t3, {})
    assert {b._size(c, n) for n in t.qdrant_collections} == {384}
    assert list((tmp_path / "archive" / t.user).glob("*.json"))


def test_an_unknown_embedding_model_needs_its_dimensions():
    from aicommons.errors import SiteInvalid
    from aicommons.spec.default import render_site_yaml
    from aicommons.spec.load import load_text

    text = render_site_yaml(users=1, services=["qdrant"])
    with pytest.raises(SiteInvalid, match="embedding"):
        load_text(text + "embedding: {model: my-own-embedder}\n")
    site, _ = load_text(text + "embedding: {model: my-own-embedder, dimensions: 512}\n")
    assert site.embedding.size == 512
