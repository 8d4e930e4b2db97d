"""Object storage tenancy. REAL: moto's S3 server (bucket data: put/get/list/delete, archive
downloads) on 127.0.0.1, boto3, httpx. SIMULATED: Garage's admin API v2 (tests/standins/garage.py,
following Garage's documented wire format). moto does not enforce per-key bucket permissions,
so cross-user refusal is audited on the admin side's permission table (which is what Garage
enforces); own-key data access is exercised for real against moto.
"""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from aicommons.errors import PermanentError
from aicommons.plan.policy import s3_credentials, tenant_credentials
from aicommons.tenancy.objectstore import GarageAdmin, ObjectStoreBackend
from tests.servers import free_port
from tests.standins.garage import GarageStandin
from tests.standins.helpers import DictSecrets, resolved_site

TOKEN = "garage-admin-token"


@pytest.fixture(scope="module")
def moto():
    port = free_port()
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    yield f"http://127.0.0.1:{port}"
    srv.stop()


@pytest.fixture
def store(moto, tmp_path):
    s3 = boto3.client("s3", endpoint_url=moto, aws_access_key_id="x", aws_secret_access_key="y",
                      region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
    garage = GarageStandin(TOKEN, s3)
    secrets = DictSecrets()
    admin_key = s3_credentials(secrets("site", "s3_admin_access_key"), secrets("site", "s3_admin_token"))
    b = ObjectStoreBackend(GarageAdmin(garage.url, TOKEN), moto, admin_key, tmp_path / "archive")
    yield b, garage, secrets, s3
    garage.stop()
    # moto's backend is process-wide (other tests' servers share it): remove only our buckets
    for bk in s3.list_buckets().get("Buckets", []):
        if bk["Name"].startswith("user") and bk["Name"].endswith(("-openwebui", "-flowise")):
            for o in s3.list_objects_v2(Bucket=bk["Name"]).get("Contents", []):
                s3.delete_object(Bucket=bk["Name"], Key=o["Key"])
            s3.delete_bucket(Bucket=bk["Name"])


def test_credentials_have_garage_format():
    kid, sec = s3_credentials("a", "b")
    assert kid.startswith("GK") and len(kid) == 26 and len(sec) == 64
    assert s3_credentials("a", "b") == (kid, sec) and s3_credentials("a2", "b")[0] != kid


def test_ensure_audit_remove(store, tmp_path):
    b, garage, secrets, s3 = store
    tenants = resolved_site(3).tenants
    for t in tenants:
        b.ensure(t, secrets.for_tenant(t))
        b.ensure(t, secrets.for_tenant(t))  # idempotent: no second key, bucket or grant
        assert b.verify(t, secrets.for_tenant(t)) == []
    assert garage.state.calls.count("ImportKey") == 3 and garage.state.calls.count("CreateBucket") == 6
    mine = {a for t in tenants for a in t.buckets}
    assert mine <= {x["Name"] for x in s3.list_buckets()["Buckets"]}
    checks = b.audit(tenants, secrets.by_user(tenants))
    assert [c for c in checks if not c.ok] == []
    assert sum(c.resource.startswith("objects in") and c.observed == "allow" for c in checks) == 3

    # weaken: user3's key gets read on user1's bucket -> the audit fails, ensure repairs it
    t1, t2, t3 = tenants
    bid = garage.state.by_alias("user1-openwebui")["id"]
    kid3 = tenant_credentials(secrets.for_tenant(t3))[0]
    GarageAdmin(garage.url, TOKEN).set_access(bid, kid3, True, False)
    bad = [c for c in b.audit(tenants, secrets.by_user(tenants)) if not c.ok]
    assert [(c.actor, c.resource) for c in bad] == [("user3", "bucket user1-openwebui")]
    assert b.verify(t1, secrets.for_tenant(t1))
    b.ensure(t1, secrets.for_tenant(t1))
    assert [c for c in b.audit(tenants, secrets.by_user(tenants)) if not c.ok] == []

    # remove user1 with data: archived, buckets and key gone, others intact
    s3.put_object(Bucket="user1-openwebui", Key="uploads/a.txt", Body=b"hello")
    b.remove(t1)
    assert (tmp_path / "archive" / "user1").exists()
    archived = list((tmp_path / "archive" / "user1").rglob("a.txt"))
    assert archived and archived[0].read_bytes() == b"hello"
    assert all(garage.state.by_alias(a) is None for a in t1.buckets)
    assert tenant_credentials(secrets.for_tenant(t1))[0] not in garage.state.keys
    assert garage.state.keys[b.admin_key[0]]["name"] == "aicommons-admin"  # imported for the archive
    assert b.verify(t2, secrets.for_tenant(t2)) == []


def test_suspend_and_resume(store):
    b, garage, secrets, _ = store
    t = resolved_site(1).tenants[0]
    b.ensure(t, secrets.for_tenant(t))
    b.suspend(t)
    assert all(not garage.state.by_alias(a)["keys"] for a in t.buckets)
    b.resume(t, secrets.for_tenant(t))
    assert b.verify(t, secrets.for_tenant(t)) == []


def test_wrong_admin_token_is_a_clear_error(store):
    _, garage, _, _ = store
    with pytest.raises(PermanentError, match="admin token"):
        GarageAdmin(garage.url, "wrong").buckets()


# ---- MinIO (legacy sites): admin calls against tests/standins/minio.py (simulated MinIO admin
# API v3 as minio-py speaks it), bucket calls against the REAL moto S3 server. ----

def test_minio_users_policies_and_audit(moto, tmp_path):
    from aicommons.tenancy.minio import MinioAdminAdapter
    from tests.standins.minio import MinioAdminStandin

    srv = MinioAdminStandin("aicommons-admin", "minio-root-password")
    try:
        adapter = MinioAdminAdapter(srv.endpoint, moto.removeprefix("http://"), "aicommons-admin",
                                    "minio-root-password")
        b = ObjectStoreBackend(adapter, moto, ("aicommons-admin", "minio-root-password"), tmp_path / "archive")
        secrets = DictSecrets()
        t1, t2 = resolved_site(2).tenants
        for t in (t1, t2):
            b.ensure(t, secrets.for_tenant(t))
            b.ensure(t, secrets.for_tenant(t))
            assert b.verify(t, secrets.for_tenant(t)) == []
        assert srv.calls.count("add-user") == 2  # keys imported once
        kid1 = tenant_credentials(secrets.for_tenant(t1))[0]
        pol = srv.policies[f"aicommons-{kid1}"]
        assert sorted(r for s in pol["Statement"] for r in s["Resource"]) == [
            "arn:aws:s3:::user1-flowise", "arn:aws:s3:::user1-flowise/*",
            "arn:aws:s3:::user1-openwebui", "arn:aws:s3:::user1-openwebui/*"]
        assert all("s3:*" not in s["Action"] for s in pol["Statement"])
        assert srv.quotas["user1-openwebui"] == b.quota_bytes
        checks = b.audit([t1, t2], secrets.by_user([t1, t2]))
        assert [c for c in checks if not c.ok and not c.resource.startswith("objects")] == []
        # widen user2's policy to user1's bucket: the audit sees it, ensure takes it back
        kid2 = tenant_credentials(secrets.for_tenant(t2))[0]
        adapter.set_access("user1-openwebui", kid2, True, False)
        bad = [c for c in b.audit([t1, t2], secrets.by_user([t1, t2])) if not c.ok and c.resource.startswith("bucket")]
        assert [(c.actor, c.resource) for c in bad] == [("user2", "bucket user1-openwebui")]
        b.ensure(t1, secrets.for_tenant(t1))
        assert b.verify(t1, secrets.for_tenant(t1)) == []
        b.remove(t1, purge=True)
        assert kid1 not in srv.users and f"aicommons-{kid1}" not in srv.policies
        assert b.verify(t2, secrets.for_tenant(t2)) == []
        b.remove(t2, purge=True)
    finally:
        srv.stop()


def test_observe_reports_only_tenant_buckets(store):
    b, garage, secrets, _ = store
    t = resolved_site(1).tenants[0]
    b.ensure(t, secrets.for_tenant(t))
    admin = GarageAdmin(garage.url, TOKEN)
    bid = admin.create_bucket("langfuse-events")  # a shared service's bucket
    try:
        assert b.observe() == {"user1": {"s3.bucket.user1-openwebui", "s3.bucket.user1-flowise"}}
    finally:
        admin.delete_bucket(bid)


# ---- Langfuse's own key and bucket (issue 14): Garage's key format is GK + 24 hex and a 64-hex
# secret (deuxfleurs-org/garage src/model/key_table.rs `Key::new`; ImportKey refuses other
# formats); MinIO requires an access key of >= 3 and a secret of >= 8 characters without `=`/`,`
# (minio internal/auth/credentials.go). The stand-ins enforce those formats. ----

def _rendered_langfuse_key(site, secrets):
    from aicommons.render.envfile import parse_env
    from aicommons.render.shared_compose import langfuse

    c = next(c for c in site.containers if c.role == "shared" and c.name == "langfuse")
    env = parse_env(next(f for f in langfuse(site, c, secrets) if f.path.endswith("/.env")).content)
    return env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"]


def test_langfuse_key_is_in_the_stores_format_imported_and_its_bucket_granted(store):
    import re

    from aicommons.plan.policy import service_credentials

    b, garage, secrets, s3 = store
    site = resolved_site(2)
    kid, sec = _rendered_langfuse_key(site, secrets)
    assert re.fullmatch(r"GK[0-9a-f]{24}", kid) and re.fullmatch(r"[0-9a-f]{64}", sec)
    assert (kid, sec) == service_credentials("langfuse", secrets)
    t1 = site.tenants[0]
    b.ensure(t1, secrets.for_tenant(t1))
    for _ in range(2):  # idempotent
        b.ensure_service("langfuse", kid, sec)
    assert garage.state.calls.count("ImportKey") == 2  # user1's key and Langfuse's, once each
    info = GarageAdmin(garage.url, TOKEN).bucket("langfuse")
    assert {k for k, p in info["keys"].items() if p.get("read") or p.get("write")} == {kid}
    # a key someone added by hand is taken off again
    tenant_kid = tenant_credentials(secrets.for_tenant(t1))[0]
    GarageAdmin(garage.url, TOKEN).set_access(info["id"], tenant_kid, True, True)
    b.ensure_service("langfuse", kid, sec)
    info = GarageAdmin(garage.url, TOKEN).bucket("langfuse")
    assert {k for k, p in info["keys"].items() if p.get("read") or p.get("write")} == {kid}
    s3.put_object(Bucket="langfuse", Key="events/x.json", Body=b"{}")  # the bucket exists for S3 clients
    s3.delete_object(Bucket="langfuse", Key="events/x.json")
    GarageAdmin(garage.url, TOKEN).delete_bucket(info["id"])


def test_langfuse_key_is_accepted_by_minio(moto, tmp_path):
    from aicommons.plan.policy import service_credentials
    from aicommons.tenancy.minio import MinioAdminAdapter
    from tests.standins.minio import MinioAdminStandin

    srv = MinioAdminStandin("aicommons-admin", "minio-root-password")
    try:
        adapter = MinioAdminAdapter(srv.endpoint, moto.removeprefix("http://"), "aicommons-admin",
                                    "minio-root-password")
        b = ObjectStoreBackend(adapter, moto, ("aicommons-admin", "minio-root-password"), tmp_path / "archive")
        kid, sec = service_credentials("langfuse", DictSecrets())
        b.ensure_service("langfuse", kid, sec)
        b.ensure_service("langfuse", kid, sec)
        assert srv.calls.count("add-user") == 1 and kid in srv.users
        pol = srv.policies[f"aicommons-{kid}"]
        assert sorted(r for s in pol["Statement"] for r in s["Resource"]) == [
            "arn:aws:s3:::langfuse", "arn:aws:s3:::langfuse/*"]
        adapter.delete_bucket("langfuse")
    finally:
        srv.stop()
