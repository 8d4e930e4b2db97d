"""MinIO (legacy sites) behind the object-store interface: one user and one canned policy per key.

The policy names exactly the user's buckets (a narrow action list, not `s3:*`), so the server's
own users + policies are the permission table; nothing is remembered here. Calls are minio-py's
`MinioAdmin` (admin API v3, SigV4-signed, user payloads encrypted with the admin secret) and
`Minio` for bucket existence.
"""

from __future__ import annotations

import json

from aicommons.errors import PermanentError, TemporaryError

READ = ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"]
WRITE = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]


def policy_name(key_id: str) -> str:
    return f"aicommons-{key_id}"


def policy_for(grants: dict[str, bool]) -> dict:
    """bucket -> may write; one statement per bucket."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": READ + (WRITE if w else []),
         "Resource": [f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*"]} for b, w in sorted(grants.items())]}


def grants_of(policy: dict) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for st in policy.get("Statement", []):
        if st.get("Effect") != "Allow":
            continue
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        res = st.get("Resource", [])
        for r in [res] if isinstance(res, str) else res:
            b = r.removeprefix("arn:aws:s3:::").split("/", 1)[0]
            out[b] = out.get(b, False) or "s3:PutObject" in actions or "s3:*" in actions
    return out


class MinioAdminAdapter:
    def __init__(self, admin_endpoint: str, s3_endpoint: str, access_key: str, secret_key: str,
                 secure: bool = False):
        from minio import Minio, MinioAdmin
        from minio.credentials import StaticProvider

        self.admin = MinioAdmin(endpoint=admin_endpoint, credentials=StaticProvider(access_key, secret_key),
                                secure=secure)
        self.s3 = Minio(s3_endpoint, access_key=access_key, secret_key=secret_key, secure=secure)
        self.endpoint = admin_endpoint
        self.root = access_key  # the root user needs no grant (it is not a MinIO user)

    def _call(self, fn, *a, **kw):
        from minio.error import MinioAdminException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*a, **kw)
        except HTTPError as exc:
            raise TemporaryError(f"MinIO at {self.endpoint} is not reachable: {exc}", delay=2.0) from None
        except MinioAdminException as exc:
            if str(getattr(exc, "_code", "")) in ("401", "403"):
                raise PermanentError(f"MinIO refused the admin credentials ({exc}); check s3_admin_token") from None
            raise

    def _user(self, key_id: str) -> dict | None:
        """user-info answers in plain JSON (list-users is encrypted, costly to decrypt)."""
        from minio.error import MinioAdminException

        try:
            return json.loads(self._call(self.admin.user_info, key_id))
        except MinioAdminException as exc:
            if str(getattr(exc, "_code", "")) in ("400", "404"):
                return None
            raise

    def _all_grants(self) -> dict[str, dict[str, bool]]:
        """key -> bucket -> may write, from every aicommons policy on the server."""
        docs = json.loads(self._call(self.admin.policy_list) or "{}")
        return {n.removeprefix("aicommons-"): grants_of(d.get("Policy", d) if isinstance(d, dict) else {})
                for n, d in docs.items() if n.startswith("aicommons-")}

    def _policy(self, key_id: str) -> dict[str, bool]:
        from minio.error import MinioAdminException

        try:
            info = json.loads(self._call(self.admin.policy_info, policy_name(key_id)))
        except MinioAdminException:
            return {}
        return grants_of(info.get("Policy", info))

    def import_key(self, key_id: str, secret: str, name: str) -> None:
        if self._user(key_id) is None:
            self._call(self.admin.user_add, key_id, secret)

    def delete_key(self, key_id: str) -> None:
        if self._user(key_id) is not None:
            self._call(self.admin.user_remove, key_id)
        if self._policy(key_id):
            self._call(self.admin.policy_remove, policy_name(key_id))

    def bucket(self, alias: str) -> dict | None:
        if not self._call(self.s3.bucket_exists, alias):
            return None
        keys = {}
        for kid, g in self._all_grants().items():
            if alias in g and (self._user(kid) or {}).get("status", "enabled") != "disabled":
                keys[kid] = {"read": True, "write": g[alias], "owner": False}
        quota = json.loads(self._call(self.admin.bucket_quota_get, alias) or "{}").get("quota") or None
        return {"id": alias, "keys": keys, "quota": quota}

    def create_bucket(self, alias: str) -> str:
        self._call(self.s3.make_bucket, alias)
        return alias

    def delete_bucket(self, bucket_id: str) -> None:
        self._call(self.s3.remove_bucket, bucket_id)

    def set_access(self, bucket_id: str, key_id: str, read: bool, write: bool) -> None:
        if key_id == self.root:
            return
        grants = self._policy(key_id)
        if read or write:
            grants[bucket_id] = write
        else:
            grants.pop(bucket_id, None)
        name = policy_name(key_id)
        if not grants:
            self._call(self.admin.detach_policy, [name], user=key_id)
            self._call(self.admin.policy_remove, name)
            return
        self._call(self.admin.policy_add, name, policy=policy_for(grants))
        attached = (self._user(key_id) or {}).get("policyName", "")
        if name not in attached.split(","):
            self._call(self.admin.attach_policy, [name], user=key_id)

    def set_quota(self, bucket_id: str, max_bytes: int | None) -> None:
        self._call(self.admin.bucket_quota_set, bucket_id, max_bytes or 0)

    def ensure_admin_key(self, key_id: str, secret: str) -> None:
        """The root credentials reach every bucket already."""

    def buckets(self) -> list[str]:
        return [b.name for b in self._call(self.s3.list_buckets)]
