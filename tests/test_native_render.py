"""The native runtime's rendering: `user_template.runtime`, the systemd units, the env files,
the plan's notes on what is not deployed or not available, and the one source of the env.

Real: site.yaml through the real loader and resolver, the real catalog (its `native:` blocks),
render_site; systemd's own unit parser (`systemd-analyze verify`) checks a unit where systemd
is installed. Simulated: secrets come from a per-run lookup instead of the state store.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess

import pytest

from aicommons.catalog import load_catalog
from aicommons.errors import SiteInvalid
from aicommons.plan import resolve
from aicommons.render import render_site
from aicommons.render.compose import app_environment, compose_bundle
from aicommons.render.envfile import parse_env
from aicommons.render.native import native_bundle
from aicommons.spec.default import render_site_yaml
from aicommons.spec.load import load_text
from tests.standins.helpers import DictSecrets

SERVICES = ["ollama", "qdrant", "postgres", "redis", "garage", "searxng", "langfuse", "gitea"]


def _site(driver: str = "lxc", runtime: str | None = None, extra: str = ""):
    text = render_site_yaml(users=2, driver=driver, services=SERVICES)
    if runtime:
        text = text.replace("user_template:\n", f"user_template:\n  runtime: {runtime}\n")
    site, _ = load_text(text + extra)
    return resolve(site)


def test_runtime_defaults_by_driver_and_is_validated():
    assert _site("lxc").site.user_template.runtime == "native"
    assert _site("proxmox").site.user_template.runtime == "docker"
    assert _site("proxmox", "native").site.user_template.runtime == "native"
    assert _site("lxc", "docker").site.user_template.runtime == "docker"
    with pytest.raises(Exception) as exc:
        _site("lxc", "podman")
    assert "runtime" in str(exc.value) and "docker" in str(exc.value)
    from aicommons.spec.models import Site

    prop = Site.model_json_schema()["$defs"]["UserTemplate"]["properties"]["runtime"]
    assert {"docker", "native"} <= {x.get("const") for x in prop.get("anyOf", [])} | set(
        next((x["enum"] for x in prop.get("anyOf", []) if "enum" in x), []))


def test_plan_says_what_is_not_deployed_and_each_fallback():
    r = _site("lxc")
    assert set(r.undeployed) >= {"qdrant", "garage", "ollama", "langfuse", "searxng", "gitea"}
    assert "postgres" not in r.undeployed and "redis" not in r.undeployed
    assert set(r.unavailable) == {"big-agi", "kotaemon"}
    assert any("big-agi: not available in the native runtime" in n for n in r.notes)
    assert r.fallbacks["openwebui"]["qdrant"].startswith("its own local vector store")
    assert any(re.match(r"openwebui: qdrant is not deployed here -> its own local vector store", n) for n in r.notes)
    assert any(n.startswith("openwebui: garage is not deployed here -> local files") for n in r.notes)
    # An external server is the operator's: deployed, used as given, no fallback.
    text = render_site_yaml(users=2, driver="lxc", services=SERVICES).replace(
        "  qdrant: {}", "  qdrant: {external: {host: qdrant.lan, port: 6333, admin_password: 'env:AIC_QDRANT_KEY'}}")
    ext = resolve(load_text(text)[0])
    assert "qdrant" not in ext.undeployed and "qdrant" not in ext.fallbacks.get("openwebui", {})
    p = _site("proxmox")
    assert p.undeployed == {} and set(p.fallbacks.get("openwebui", {})) == {"redis"}  # only the version's own


def test_where_the_gateway_runs_no_app_is_said_to_lack_a_model_server():
    """The default LXC site serves its models from llama-server through the gateway, and Ollama is
    not enabled: every app is wired to the gateway (render/compose.py), so the plan must not tell
    the operator that Open WebUI has "no Ollama connection" or Jupyter "no OLLAMA_HOST"."""
    from aicommons.spec.default import LXC_CORE

    r = resolve(load_text(render_site_yaml(users=2, driver="lxc", services=LXC_CORE))[0])
    assert not any("ollama" in f for f in r.fallbacks.values()), r.fallbacks
    assert not any("ollama is not" in n for n in r.notes), [n for n in r.notes if "ollama" in n]
    assert r.models_via_gateway and all(t.gateway for t in r.tenants)
    env, _ = app_environment(r, r.tenants[0], load_catalog().apps["jupyter"], DictSecrets(), port=8888, data=None)
    assert env["OPENAI_BASE_URL"].endswith("/v1") and "OLLAMA_HOST" not in env  # wired, as the plan says
    # without the gateway the apps have no model server, and the plan says so for each
    r = resolve(load_text(render_site_yaml(users=2, driver="lxc", services=[s for s in LXC_CORE if s != "gateway"]))[0])
    assert not r.models_via_gateway
    assert r.fallbacks["jupyter"]["ollama"] == "no OLLAMA_HOST"
    assert any(n == "openwebui: ollama is not enabled -> no Ollama connection (a model server can be added in "
               "its settings)" for n in r.notes)


def test_proxmox_native_says_layers_are_not_delivered():
    r = _site("proxmox", "native")
    assert any("does not deliver the app layers yet" in n for n in r.notes)


def _native_files(r, secrets):
    return {p: f for p, f in render_site(r, secrets).items() if p.startswith("users/user1/")}


def test_native_bundle_units_env_and_secrets():
    r, secrets = _site("lxc"), DictSecrets()
    files = _native_files(r, secrets)
    assert "users/user1/docker-compose.yml" not in files  # one path per runtime
    cat = load_catalog()
    natives = [a for a in r.tenant("user1").apps if a not in r.unavailable]
    assert natives and all(f"users/user1/units/aic-{a}.service" in files for a in natives)
    t = r.tenant("user1")
    for a in natives:
        unit = files[f"users/user1/units/aic-{a}.service"].content
        cp = configparser.ConfigParser(interpolation=None, strict=False)
        cp.optionxform = str
        cp.read_string(unit)
        svc = cp["Service"]
        assert svc["User"] == f"aic-{a}" and svc["Restart"] == "on-failure"
        assert svc["EnvironmentFile"] == f"/opt/aicommons/user1/env/{a}.env"
        data = cat.apps[a].native.data_dir or f"/var/lib/aicommons/{a}"
        assert svc["WorkingDirectory"] == data and f'"HOME={data}"' in unit
        exec_start = svc["ExecStart"]
        assert "{" not in exec_start  # every placeholder filled
        if any("{port}" in x for x in cat.apps[a].native.command):
            assert str(t.ports[a]) in exec_start
        env = files[f"users/user1/env/{a}.env"]
        assert env.mode == 0o600
        for (scope, _key), value in secrets.values.items():
            if scope == "user1":
                assert value not in unit  # secrets only in the 0600 env file
    owui = files["users/user1/units/aic-openwebui.service"].content
    assert 'Environment="VECTOR_DB=chroma"' in owui and "QDRANT_URI" not in owui  # fallback, not a dead address
    assert 'Environment="ENABLE_OLLAMA_API=false"' in owui and "10.0.5.100" not in owui
    owui_env = parse_env(files["users/user1/env/openwebui.env"].content)
    assert owui_env["DATABASE_URL"].startswith("postgresql://u_user1:") and "@10.0.5.102:5432/openwebui_user1" in \
        owui_env["DATABASE_URL"]
    # 0.6.41 writes an unprefixed Redis key (found with ACL LOG against the running app): no Redis
    assert "REDIS_URL" not in owui_env and "REDIS_KEY_PREFIX" not in owui
    assert any(n.startswith("openwebui: redis not used: Open WebUI 0.6.41 writes the unprefixed key(s) tool_servers")
               for n in r.notes)
    manifest = files["users/user1/native.json"].content
    assert '"big-agi"' in manifest and "no published package" in manifest.lower() or "not published" in manifest


def test_one_source_of_env_for_both_runtimes():
    """The compose service and the native unit carry the same values, except where the runtime
    itself differs (the port the app listens on and its data path)."""
    r, secrets = _site("lxc"), DictSecrets()
    t = r.tenant("user1")
    doc, dotenv = compose_bundle(r, t, secrets)
    b = native_bundle(r, t, secrets, "/opt/aicommons/user1/env")
    cat = load_catalog()
    for a in (x.name for x in b.apps):
        app = cat.apps[a]
        compose_env = {k: re.sub(r"\$\{(\w+)\}", lambda m: dotenv[m.group(1)], v)
                       for k, v in doc["services"][a].get("environment", {}).items()}
        native_env, secret = app_environment(r, t, app, secrets, port=t.ports[a], data=b.apps[0].data_dir)
        native_env = {k: re.sub(r"\$\{(\w+)\}", lambda m, s=secret: s[m.group(1)], v) for k, v in native_env.items()}
        runtime_keys = {"DATA_DIR", "SECRETKEY_PATH", "LOG_PATH", "N8N_PORT", "PORT", "GRADIO_SERVER_PORT"}
        assert {k: v for k, v in compose_env.items() if k not in runtime_keys} == \
            {k: v for k, v in native_env.items() if k not in runtime_keys}, a
        for k, v in app.env.items():  # the catalog's fixed settings reach both
            assert compose_env.get(k) == v or k in compose_env


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_parses_the_units(tmp_path):
    r, secrets = _site("lxc"), DictSecrets()
    for p, f in _native_files(r, secrets).items():
        if p.endswith(".service"):
            text = re.sub(r"^EnvironmentFile=.*$", f"EnvironmentFile=-{tmp_path}/none.env", f.content, flags=re.M)
            text = re.sub(r"^(User|Group)=.*$", r"\1=root", text, flags=re.M)
            (tmp_path / p.rsplit("/", 1)[1]).write_text(text)
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    res = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    # The layer is not here, so "is not executable" is expected; nothing else may be wrong.
    problems = [ln for ln in res.stderr.splitlines() if ln.strip() and "not executable" not in ln
                and "No such file" not in ln and "Command " not in ln]
    assert problems == [], res.stderr


def test_unknown_runtime_has_a_clear_error():
    with pytest.raises(Exception) as exc:
        _site("lxc", "vm")
    assert not isinstance(exc.value, SiteInvalid) or "runtime" in str(exc.value)


def test_accounts_made_at_apply_are_secret_files_and_named_in_the_manifest():
    """Issue #21: no setup wizard. n8n's owner comes from its environment (the hash in the 0600 env
    file, never the password); Flowise's account is a 0600 file the driver posts once it answers."""
    import json

    import bcrypt

    from aicommons.plan.policy import login_password

    r, secrets = _site("lxc"), DictSecrets()
    files = _native_files(r, secrets)
    manifest = {a["name"]: a for a in json.loads(files["users/user1/native.json"].content)["apps"]}
    assert manifest["flowise"]["account"] == "accounts/flowise.json"
    assert all(not a["account"] for n, a in manifest.items() if n != "flowise")
    acct = files["users/user1/accounts/flowise.json"]
    assert acct.mode == 0o600
    spec = json.loads(acct.content)
    assert spec["make"]["path"] == "/api/v1/account/register" and spec["done"]["contains"] == '"/signin"'
    assert spec["make"]["body"]["user"]["credential"] == login_password(secrets("user1", "flowise_admin_password"))
    n8n_unit = files["users/user1/units/aic-n8n.service"].content
    assert 'Environment="N8N_INSTANCE_OWNER_MANAGED_BY_ENV=true"' in n8n_unit and "PASSWORD_HASH" not in n8n_unit
    def owner_hash(text: str) -> str:  # as systemd reads a double-quoted EnvironmentFile value
        (line,) = [ln for ln in text.splitlines() if ln.startswith("N8N_INSTANCE_OWNER_PASSWORD_HASH=")]
        return re.sub(r'\\([\\"`$])', r"\1", line.split("=", 1)[1][1:-1])

    pw = login_password(secrets("user1", "n8n_owner_password"))
    assert pw not in files["users/user1/env/n8n.env"].content
    hashed = owner_hash(files["users/user1/env/n8n.env"].content)
    assert hashed.startswith("$2b$") and bcrypt.checkpw(pw.encode(), hashed.encode())
    # the same text on every render: an unchanged account restarts nothing
    assert owner_hash(_native_files(r, secrets)["users/user1/env/n8n.env"].content) == hashed
    # code-server and JupyterLab: no credential of their own at all
    assert '"--auth" "none"' in files["users/user1/units/aic-code-server.service"].content
    assert '"--IdentityProvider.token="' in files["users/user1/units/aic-jupyter.service"].content
    assert "JUPYTER_TOKEN" not in files["users/user1/env/jupyter.env"].content


def test_code_server_opens_a_workspace_that_exists_and_is_trusted():
    """The journey met "Workspace does not exist" (the folder code-server opens was never made)
    and Restricted Mode on a person's own files: the unit makes the folder before it starts, and
    the folder is trusted (code-server's --disable-workspace-trust, out/node/cli.js)."""
    r = _site("lxc")
    unit = native_bundle(r, r.tenant("user1"), DictSecrets(), "/etc/aicommons/env").units["aic-code-server.service"]
    data = load_catalog().apps["code-server"].native.data_dir
    assert f'ExecStartPre=-"/bin/mkdir" "-p" "{data}/workspace"' in unit, unit
    start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    assert start.endswith(f' "{data}/workspace"') and '"--disable-workspace-trust"' in start, start
