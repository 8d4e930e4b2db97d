"""`aicommons status`: real PostgreSQL 15 and Redis 7 (the `pg` and `redis_server` fixtures; the
stopped-Redis test starts and stops its own real Redis);
Ollama, Traefik's API and the per-user apps are loopback HTTP stand-ins (aicommons.ops.loopback).
Every plan address is mapped to a loopback port: no traffic leaves 127.0.0.1."""

from __future__ import annotations

import json
import threading

import pytest

from aicommons.ops.checks import Check
from aicommons.ops.loopback import LoopbackHttp
from aicommons.ops.status import CRITICAL, DEGRADED, HEALTHY, plan_checks, run_status, table, to_json
from aicommons.plan.resolve import resolve
from aicommons.spec.default import render_site_yaml
from aicommons.spec.load import load_text
from tests.servers import free_port, start_redis


@pytest.fixture(scope="module")
def resolved():
    text = render_site_yaml(users=3).replace("models: []", "")
    site, _ = load_text(text)
    site = site.model_copy(update={"models": ["llama3.2"]})
    return resolve(site)


def _tls_context():
    """A server context with a throwaway self-signed certificate (Traefik's default one plays
    the same part until Let's Encrypt has issued)."""
    import datetime
    import ssl
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    d = tempfile.mkdtemp(prefix="aic-tls-")
    with open(f"{d}/cert.pem", "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(f"{d}/key.pem", "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{d}/cert.pem", f"{d}/key.pem")
    return ctx


@pytest.fixture(scope="module")
def stand_ins():
    ollama = LoopbackHttp({"/": (200, "Ollama is running"),
                           "/api/tags": (200, {"models": [{"name": "llama3.2:latest"}]})}).start()
    traefik = LoopbackHttp({"/api/http/routers": (200, [{"name": "a@file", "status": "enabled"}])}).start()
    generic = LoopbackHttp().start()  # answers 200 on any path
    hang = LoopbackHttp(hang=True).start()
    # Traefik's HTTPS entry point for the person's path: anonymous visitors are sent to sign in
    # (the real Traefik and forward-auth: tests/test_status_path.py)
    route = LoopbackHttp({"/": (302, "")}, tls=_tls_context()).start()
    yield {"ollama": ollama, "traefik": traefik, "generic": generic, "hang": hang, "route": route}
    for s in (ollama, traefik, generic, hang, route):
        s.stop()


def _targets(resolved, pg, redis_srv, stand_ins, *, slow_check: str | None = None) -> dict[str, str]:
    out = {}
    for c in plan_checks(resolved):
        if c.kind == "postgres":
            port = pg.port
        elif c.kind == "redis":
            port = redis_srv.port
        elif c.kind in ("ollama", "traefik", "route"):
            port = stand_ins[c.kind].ports[0]
        elif c.name == slow_check:
            port = stand_ins["hang"].ports[0]
        else:
            port = stand_ins["generic"].ports[0]
        out[c.address] = f"127.0.0.1:{port}"
    return out


def _secrets(pg, redis_srv):
    values = {("site", "postgres_admin_password"): pg.password,
              ("site", "redis_admin_password"): redis_srv.admin_password}
    return lambda scope, key: values[(scope, key)]


def _by_name(results):
    return {r.check.name: r for r in results}


def test_every_check_is_retargeted_to_loopback(resolved, pg, redis_server, stand_ins):
    checks = plan_checks(resolved, targets=_targets(resolved, pg, redis_server, stand_ins))
    assert all(c.host == "127.0.0.1" for c in checks if not c.skip_reason)
    names = {c.name for c in checks}
    assert {"postgres", "redis", "qdrant", "ollama", "traefik", "user1/openwebui", "user3/flowise"} <= names
    assert next(c for c in checks if c.name == "qdrant").path == "/readyz"


def test_healthy_site(resolved, pg, redis_server, stand_ins):
    code, results = run_status(resolved, secrets=_secrets(pg, redis_server),
                               targets=_targets(resolved, pg, redis_server, stand_ins), timeout=5,
                               slow_ms=60_000)  # a loaded machine is no fault of the site's
    bad = [(r.check.name, r.state, r.reason) for r in results if r.state not in ("ok", "skipped")]
    assert bad == [] and code == HEALTHY
    doc = to_json(code, results)
    assert doc["verdict"] == "healthy" and json.dumps(doc)
    assert "password" not in json.dumps(doc).lower() or pg.password not in json.dumps(doc)


def test_wrong_password_is_down_with_reason(resolved, pg, redis_server, stand_ins):
    wrong = lambda scope, key: "wrong"  # noqa: E731
    code, results = run_status(resolved, secrets=wrong, targets=_targets(resolved, pg, redis_server, stand_ins))
    r = _by_name(results)
    assert r["postgres"].state == "down" and "password" in r["postgres"].reason
    assert r["redis"].state == "down" and code == CRITICAL


def test_missing_model_degrades_ollama(resolved, pg, redis_server, stand_ins):
    site = resolved.site.model_copy(update={"models": ["llama3.2", "qwen3:8b"]})
    code, results = run_status(resolve(site), secrets=_secrets(pg, redis_server),
                               targets=_targets(resolved, pg, redis_server, stand_ins), slow_ms=60_000)
    assert _by_name(results)["ollama"].reason == "models not pulled: qwen3:8b"


def test_stopped_redis_is_critical(resolved, pg, stand_ins):
    srv = start_redis()
    targets = _targets(resolved, pg, srv, stand_ins)
    srv.cleanup()  # stopped: nothing listens on its port any more
    code, results = run_status(resolved, secrets=_secrets(pg, srv), targets=targets, timeout=2, slow_ms=60_000)
    assert code == CRITICAL
    r = _by_name(results)["redis"]
    assert r.state == "down" and r.check.critical and "127.0.0.1" in r.reason


def test_slow_endpoint_is_slow_not_a_hang(resolved, pg, redis_server, stand_ins):
    targets = _targets(resolved, pg, redis_server, stand_ins, slow_check="user2/n8n")
    out: dict = {}

    def run():
        out["v"] = run_status(resolved, secrets=_secrets(pg, redis_server), targets=targets, timeout=0.5)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)  # the stand-in never answers; the sweep must come back on its own
    assert "v" in out, "status sweep hung on a slow endpoint"
    code, results = out["v"]
    r = _by_name(results)
    assert r["user2/n8n"].state == "slow" and "no answer within 0.5s" in r["user2/n8n"].reason
    assert r["user1/n8n"].state == "ok" and code == DEGRADED
    rows = table(code, results).row_count
    assert rows < len(results)  # healthy users fold into one row each


def test_traefik_router_errors_are_reported():
    import asyncio

    from aicommons.ops.checks import sweep

    bad = [{"name": "a@file", "status": "enabled"}, {"name": "b@file", "status": "disabled", "error": "bad rule"}]
    with LoopbackHttp({"/api/http/routers": (200, bad)}) as srv:
        c = Check(name="traefik", kind="traefik", host="127.0.0.1", port=srv.ports[0], phase=1, critical=True)
        (r,) = asyncio.run(sweep([c]))
    assert r.state == "down" and "b@file: bad rule" in r.reason


def test_refused_port_is_down():
    import asyncio

    from aicommons.ops.checks import sweep

    c = Check(name="x", kind="http", host="127.0.0.1", port=free_port(), phase=2)
    (r,) = asyncio.run(sweep([c], timeout=1))
    assert r.state == "down" and "refused" in r.reason.lower()


def test_cli_exit_code_and_json(tmp_path, capsys):
    """Through `aicommons status`: every address mapped to a closed loopback port -> critical (2)."""
    import yaml

    from aicommons.cli import main

    site = tmp_path / "site.yaml"
    site.write_text(render_site_yaml(users=2))
    from aicommons.spec.load import load_site

    dead = f"127.0.0.1:{free_port()}"
    checks = plan_checks(resolve(load_site(site)[0]))
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({c.address: dead for c in checks}))
    assert main(["status", "-f", str(site), "--targets", str(tmp_path / "t.yaml"), "--json", "--timeout", "1"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "critical"
    assert {c["address"] for c in doc["checks"] if c["state"] != "skipped"} == {dead}
    assert main(["status", "-f", str(site), "--target", "nonsense"]) == 1
    assert "PLAN_HOST:PORT=ACTUAL_HOST:PORT" in capsys.readouterr().err


def test_status_reads_secrets_but_never_creates_them(tmp_path):
    """A real state store (issue 4) beside the site file: a missing admin secret is not generated."""
    from aicommons.cli.ops import secrets_for
    from aicommons.ops.status import _credentials
    from aicommons.spec.load import load_site
    from aicommons.state.store import StateStore, default_path

    site_file = tmp_path / "site.yaml"
    site_file.write_text(render_site_yaml(users=1))
    site = load_site(site_file)[0]
    store = StateStore.open(default_path(site_file))
    store.secrets().get("site", "postgres_admin_password")  # applied once: this one exists
    lookup = secrets_for(site_file, site)
    res = resolve(site)
    user, pw = _credentials(res, "postgres", lookup, tmp_path)
    assert user == "postgres" and pw == store.secrets().get("site", "postgres_admin_password")
    assert _credentials(res, "redis", lookup, tmp_path) == ("admin", None)
    assert store.secrets().version("site", "redis_admin_password") == 0


def test_limits_row_names_each_limit_not_as_planned():
    """`status`'s "container limits" row (ops/status.py limit_results) from a driver's readings."""
    from aicommons.drivers.base import LimitReading
    from aicommons.ops.status import limit_results, verdict

    assert limit_results([]) == []
    good = [LimitReading(200, "memory.limit_in_bytes", "1073741824", "1073741824", True),
            LimitReading(201, "cpu.cfs_quota_us", "100000", "100000", True)]
    (ok,) = limit_results(good)
    assert ok.state == "ok" and ok.reason == "2 limits of 2 running containers as planned"
    bad = good + [LimitReading(201, "memory.limit_in_bytes", "1073741824", "2147483648", False)]
    (down,) = limit_results(bad)
    assert down.state == "down" and verdict([down]) == 1  # degraded, not critical
    assert "CT 201 memory.limit_in_bytes: wanted 1073741824, found 2147483648" in down.reason
