"""The model gateway on the default LXC site (pure: plan and render, nothing runs).

The gateway runs from this checkout's runtime like the portal (catalog `method: aicommons`),
logs in to the site's PostgreSQL as its own least-privilege role, gets no state and no secrets
key, forwards to the site's own llama-server models when the site file names no upstreams, and
the bridge filter lets only it reach the model server. Apps are then wired through it. Real:
the plan, the renderers and the bridge filter text; the LXC run is tests/e2e/test_lxc_site.py.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from aicommons.catalog import load_catalog
from aicommons.drivers.base import ControlPlane
from aicommons.plan.models import gateway_routes
from aicommons.plan.resolve import resolve
from aicommons.render import aicservice as R
from aicommons.render import gatewaydb
from aicommons.render.bridge_filter import bridge_rules
from aicommons.render.compose import app_environment
from aicommons.spec.default import LXC_CORE, render_site_yaml
from aicommons.spec.load import load_text


def default_site(users: int = 1):
    site, _ = load_text(render_site_yaml(users=users, driver="lxc", services=LXC_CORE))
    return site


def secrets(scope: str, key: str) -> str:
    return f"<{scope}:{key}>"


def test_the_default_lxc_site_deploys_the_gateway_from_this_checkout():
    site = default_site()
    r = resolve(site)
    svc = load_catalog().services["gateway"]
    assert "gateway" in LXC_CORE and "gateway" not in r.undeployed
    assert svc.install.method == "aicommons" and not svc.install.state
    c = next(c for c in r.containers if c.name == "gateway")
    assert (c.ctid, c.ip) == (137, "10.0.5.137")
    assert ("ExecStart=/opt/aicommons/runtime/bin/python -m aicommons.cli gateway serve --listen 10.0.5.137:4000\n"
            in R.unit(svc, c, site))


def test_a_default_site_needs_no_gateway_settings_its_models_are_the_upstreams():
    r = resolve(default_site())
    assert r.site.gateway.upstreams == []
    assert gateway_routes(r) == {"smollm2": "http://10.0.5.100:8080/v1", "smollm2-embed": "http://10.0.5.100:8081/v1"}
    named = load_text(render_site_yaml(users=1, driver="lxc", services=LXC_CORE)
                      + "gateway:\n  upstreams: [{url: 'http://10.9.9.9:1/v1/', models: [other]}]\n")[0]
    assert gateway_routes(resolve(named)) == {"other": "http://10.9.9.9:1/v1"}  # what the site file names wins


def test_its_env_is_the_site_file_and_its_own_database_login_never_the_state_or_key(tmp_path: Path):
    from aicommons.drivers.lxc import aicservice as L

    site = default_site()
    r = resolve(site)
    cat = load_catalog()
    plane = ControlPlane(tmp_path / "site.yaml", str(tmp_path / "state.db"), lambda: {"AICOMMONS_SECRET_KEY": "k"})
    own = R.own_env(cat.services["gateway"], r, secrets)
    env = L.env(cat.services["gateway"], plane, own)
    assert "AICOMMONS_STATE" not in env and "AICOMMONS_SECRET_KEY" not in env
    assert env["AICOMMONS_SITE"] == "/etc/aicommons/site/site.yaml"
    db = env["AICOMMONS_GATEWAY_DATABASE"]
    assert "host=10.0.5.102" in db and "user=gateway" in db and "dbname=aicommons_gateway" in db
    assert "<site:gateway_db_password>" in db
    # the portal still works on the state
    portal = L.env(cat.services["portal"], plane, R.own_env(cat.services["portal"], r, secrets))
    assert portal["AICOMMONS_SECRET_KEY"] == "k" and portal["AICOMMONS_STATE"].endswith("state.db")
    # and only the site file's directory is bound into its container (not the SQLite state's)
    binds = L.control_binds(plane, tmp_path / "stage", state=False)
    assert [b[2] for b in binds] == [L.SITE_MOUNT]


def test_its_role_reaches_only_its_database_and_owns_it():
    from aicommons.render.services import pg_hba

    r = resolve(default_site())
    hba = pg_hba(r)
    assert "host    aicommons_gateway  gateway  10.0.5.137/32  scram-sha-256  # gateway" in hba
    sql = gatewaydb.gateway_sql("pw'1", "aicommons_gateway")
    assert "NOSUPERUSER NOCREATEDB NOCREATEROLE" in sql and "pw'1" not in sql  # a SCRAM verifier only
    assert "CREATE DATABASE aicommons_gateway OWNER gateway" in sql
    assert "ALTER TABLE IF EXISTS gw_usage OWNER TO gateway;" in sql
    assert sql == gatewaydb.gateway_sql("pw'1", "aicommons_gateway")  # stable: no needless reload


def test_the_site_postgres_config_runs_the_gateway_sql():
    from aicommons.render.services import backend_files

    r = resolve(default_site())
    files = {f.path: f for f in backend_files(r, secrets)}
    f = files["services/postgres/gateway.sql"]
    assert f.mode == 0o600 and "CREATE ROLE gateway LOGIN" in f.content
    pg = load_catalog().services["postgres"].configure
    assert "gateway.sql" in pg.files and "aicommons-gateway.sql" in pg.apply and "gateway.sql" in pg.reload.files


def test_the_proxmox_install_never_pip_installs_a_registry_name():
    import yaml

    from aicommons.render.shared_compose import shared_files

    data = {"version": 1, "name": "site1", "domain": "example.org", "services": {"postgres": {}, "gateway": {}},
            "user_template": {"apps": ["code-server"]}, "users": [],
            "driver": {"kind": "proxmox", "api_url": "https://pve.internal:8006", "token_id": "a@pve!t",
                       "token_secret": "x", "nodes": ["pve1"], "storage": "local-lvm",
                       "template": "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst"}}
    site, _ = load_text(yaml.safe_dump(data))
    files = {f.path: f for f in shared_files(resolve(site), lambda scope, key: "pw")}
    script = files["services/gateway/install.sh"].content
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    assert "aicommons==" not in script and "pip install aicommons" not in script
    assert "--require-hashes" in script and script.rstrip().endswith("systemctl restart aicommons-gateway.service")


@pytest.mark.parametrize("app", ["openwebui", "jupyter", "code-server", "chainforge"])
def test_on_the_default_lxc_site_each_app_goes_through_the_gateway(app):
    r = resolve(default_site())
    t = r.tenant("user1")
    e, env = app_environment(r, t, load_catalog().apps[app], secrets, port=1, data=None)
    var = {"openwebui": "OPENAI_API_KEYS"}.get(app, "OPENAI_API_KEY")
    assert env[e[var][2:-1]].endswith(f"~{app}")
    if app == "openwebui":
        assert e["OPENAI_API_BASE_URLS"] == "http://10.0.5.137:4000/v1" and e["ENABLE_OLLAMA_API"] == "false"
        # documents are embedded through the gateway with the served embedding model
        assert (e["RAG_EMBEDDING_ENGINE"], e["RAG_EMBEDDING_MODEL"]) == ("openai", "smollm2-embed")
        assert e["RAG_OPENAI_API_BASE_URL"] == "http://10.0.5.137:4000/v1" and e["RAG_OPENAI_API_KEY"] == e[var]
        # the search query is the person's question: the small model writes no usable query JSON
        assert e["ENABLE_RETRIEVAL_QUERY_GENERATION"] == "false"
    elif app == "chainforge":
        assert e["OPENAI_BASE_URL"] == "https://models.valuechainhackers.xyz/v1"  # the browser's way in
    else:
        assert e["OPENAI_BASE_URL"] == "http://10.0.5.137:4000/v1"


def test_only_the_gateway_reaches_the_model_server_on_the_bridge():
    rules = bridge_rules(default_site()).splitlines()
    model = [ln for ln in rules if "--ip-dst 10.0.5.100 " in ln]
    assert model == ["-A FORWARD -p IPv4 --ip-src 10.0.5.137 --ip-dst 10.0.5.100 --ip-proto tcp --ip-dport 8080:8083 -j ACCEPT",
                     "-A FORWARD -p IPv4 --ip-dst 10.0.5.100 --ip-proto tcp --ip-dport 8080:8083 -j DROP"]
    # the namespace itself (the control plane's `status`) is not forwarded: no OUTPUT rule for it
    assert not [ln for ln in rules if ln.startswith("-A OUTPUT") and "10.0.5.100" in ln]
    without = load_text(render_site_yaml(users=1, driver="lxc", services=["postgres"]))[0]
    assert "10.0.5.100" not in bridge_rules(without)


def test_only_the_portal_reaches_traefiks_api_on_the_bridge():
    """Traefik's API (the whole routing table) from the portal's container alone: a person's
    shell, or a shared service, reads nothing of it."""
    rules = bridge_rules(default_site()).splitlines()
    api = [ln for ln in rules if ln.startswith("-A INPUT")]
    assert api == ["-A INPUT -p IPv4 --ip-src 10.0.5.129 --ip-dst 10.0.4.10 --ip-proto tcp --ip-dport 8080 -j ACCEPT",
                   "-A INPUT -p IPv4 --ip-dst 10.0.4.10 --ip-proto tcp --ip-dport 8080 -j DROP"]
    without = load_text(render_site_yaml(users=1, driver="lxc", services=["postgres"]))[0]
    assert [ln for ln in bridge_rules(without).splitlines() if ln.startswith("-A INPUT")] == [api[-1]]


def test_n8n_imports_the_persons_gateway_credential_before_it_starts():
    """A pre-made OpenAI credential in n8n holding the person's gateway URL and key: imported by
    n8n's own CLI at every start (an upsert by a fixed id), the key only in the 0600 env file."""
    from aicommons.render.native import N8N_CREDENTIAL_ID, native_bundle

    r = resolve(default_site())
    b = native_bundle(r, r.tenant("user1"), secrets, "/etc/aicommons/env")
    unit = b.units["aic-n8n.service"]
    pre = [ln for ln in unit.splitlines() if ln.startswith("ExecStartPre=")]
    assert len(pre) == 1 and pre[0].startswith("ExecStartPre=-") and "import:credentials" in pre[0]
    assert N8N_CREDENTIAL_ID in pre[0] and "openAiApi" in pre[0] and "node_modules/n8n/bin/n8n" in pre[0]
    assert 'Environment="AICOMMONS_GATEWAY_URL=http://10.0.5.137:4000/v1"' in unit
    assert "gateway_key" not in unit and "AICOMMONS_GATEWAY_KEY=" in b.env_files["n8n"]
    other = b.units["aic-jupyter.service"]
    assert "ExecStartPre" not in other


def test_an_external_postgresql_gets_the_gateways_role_from_the_control_plane():
    """No PostgreSQL container runs gateway.sql there: the tenancy back end runs it (through psql,
    as for LemonLDAP's schema), so the gateway's own login exists wherever its database is."""
    from aicommons.tenancy.registry import backends_for

    ext = load_text(render_site_yaml(users=1, driver="lxc", services=LXC_CORE).replace(
        "  postgres: {}", "  postgres: {external: {host: db.example.org, port: 5432, admin_password: pw}}"))[0]
    (gw,) = [b for b in backends_for(resolve(ext), secrets, Path("/nonexistent")) if b.name == "gateway"]
    assert gw.bootstrap == gatewaydb.gateway_sql("<site:gateway_db_password>", "aicommons_gateway")
    (own,) = [b for b in backends_for(resolve(default_site()), secrets, Path("/nonexistent")) if b.name == "gateway"]
    assert own.bootstrap == ""  # the site's PostgreSQL runs it in its configuration


def test_flowise_gets_the_persons_gateway_credential_through_its_api_at_apply():
    """Flowise's credential is set at every apply, signed in as the person's account: one fixed id
    (a second apply sets the same one), Flowise's own "OpenAI API" type holding the person's key
    for Flowise, its name carrying the Base Path; the key only in the 0600 accounts file."""
    from aicommons.plan.policy import gateway_key, login_email, login_password
    from aicommons.render.native import FLOWISE_CREDENTIAL_ID, native_bundle

    r = resolve(default_site())
    t = r.tenant("user1")
    b = native_bundle(r, t, secrets, "/etc/aicommons/env")
    spec = json.loads(b.accounts["flowise"])
    assert spec["make"]["path"] == "/api/v1/account/register"  # the account first, as before
    assert spec["signin"] == {"method": "POST", "path": "/api/v1/auth/login",
                              "body": {"email": login_email(t, r.site.domain),
                                       "password": login_password(secrets("user1", "flowise_admin_password"))}}
    (step,) = spec["then"]
    assert (step["method"], step["path"], step["headers"]) == ("POST", "/api/v1/credentials", {"x-request-from": "internal"})
    key = gateway_key("user1", secrets("user1", "gateway_key")) + "~flowise"
    assert step["body"] == {"id": FLOWISE_CREDENTIAL_ID, "credentialName": "openAIApi",
                            "name": "Model gateway (aicommons), Base Path http://10.0.5.137:4000/v1",
                            "plainDataObj": {"openAIApiKey": key}}
    assert uuid.UUID(FLOWISE_CREDENTIAL_ID)  # the column is a uuid
    assert key not in b.units["aic-flowise.service"] and key not in b.env_files["flowise"]
    # the same text on every render: nothing restarts for it
    assert native_bundle(r, t, secrets, "/etc/aicommons/env").accounts["flowise"] == b.accounts["flowise"]
    # no gateway on the site: the account alone
    bare = resolve(load_text(render_site_yaml(users=1, driver="lxc",
                                              services=[s for s in LXC_CORE if s != "gateway"]))[0])
    alone = json.loads(native_bundle(bare, bare.tenant("user1"), secrets, "/e").accounts["flowise"])
    assert "then" not in alone and "signin" not in alone


def test_flowises_custom_openai_node_may_reach_the_gateway_and_nothing_else_it_denied():
    """ChatOpenAI Custom checks its Base Path against Flowise's deny list, which holds 10.0.0.0/8:
    the rendered list is Flowise's own less the gateway's one address."""
    import ipaddress

    from aicommons.render.compose import FLOWISE_DEFAULT_DENY

    r = resolve(default_site())
    e, _ = app_environment(r, r.tenant("user1"), load_catalog().apps["flowise"], secrets, port=1, data=None)
    assert e["HTTP_SECURITY_CHECK"] == "false"
    deny = e["HTTP_DENY_LIST"].split(",")
    nets = [ipaddress.ip_network(d) for d in deny if d[0].isdigit() or ":" in d]

    def denied(ip: str) -> bool:
        return any(ipaddress.ip_address(ip) in n for n in nets if n.version == ipaddress.ip_address(ip).version)

    assert not denied("10.0.5.137")
    for ip in ("10.0.5.136", "10.0.5.138", "10.0.5.102", "10.0.4.10", "10.255.255.255", "10.0.0.0",
               "127.0.0.1", "169.254.169.254", "192.168.1.1", "172.16.0.1"):
        assert denied(ip), ip
    assert {d for d in FLOWISE_DEFAULT_DENY if d != "10.0.0.0/8"} <= set(deny)
    bare = resolve(load_text(render_site_yaml(users=1, driver="lxc",
                                              services=[s for s in LXC_CORE if s != "gateway"]))[0])
    e, _ = app_environment(bare, bare.tenant("user1"), load_catalog().apps["flowise"], secrets, port=1, data=None)
    assert "HTTP_DENY_LIST" not in e and "HTTP_SECURITY_CHECK" not in e  # Flowise's own default


def test_a_failed_credential_step_stops_the_apply_and_a_refused_sign_in_does_not():
    """make_accounts (the driver's side of the account script): a failure names the app and the
    step; "not set" (the person changed the app's password) is reported, not an error."""
    from types import SimpleNamespace

    from aicommons.drivers.lxc.apps import make_accounts
    from aicommons.errors import PermanentError

    def driver(report: dict):
        return SimpleNamespace(exec=lambda ctid, argv, timeout: SimpleNamespace(stdout=json.dumps(report) + "\n",
                                                                                stderr=""))

    t = SimpleNamespace(user="user1", ip="10.0.6.10", ctid=200)
    apps = [{"name": "flowise", "port": 3001, "account": "accounts/flowise.json"}]
    kept = {"flowise": {"account": "kept", "gateway credential": "not set: the app refused the account's sign-in"}}
    assert make_accounts(driver(kept), t, "/etc/aicommons", apps) == kept
    bad = {"flowise": {"account": "kept", "gateway credential": "failed: HTTP 500 ***"}}
    with pytest.raises(PermanentError, match="flowise's gateway credential: failed: HTTP 500"):
        make_accounts(driver(bad), t, "/etc/aicommons", apps)
