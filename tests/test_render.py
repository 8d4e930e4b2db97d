"""Render: Traefik files, user bundles, blueprints, shared configs, firewall, safe writes.

Real: PyYAML/tomllib/json/configparser parse every file, jsonschema checks every compose file
against the Compose spec, files are written to a real directory. Simulated: secrets come from
a per-run random lookup instead of the state store. Traefik, PostgreSQL and Redis load the
files in test_traefik_routes.py and test_render_servers.py.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from pathlib import Path

import jsonschema
import pytest
import yaml

from aicommons.catalog import load_catalog
from aicommons.render import render_site, render_user
from aicommons.render.authentik import TagLoader
from aicommons.render.envfile import RenderError, parse_env
from aicommons.render.files import RenderedFile
from aicommons.render.firewall import firewall_plan
from aicommons.render.write import parse_problem, write_tree
from tests.test_traefik_harness import FakeSecrets, make_site

SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.schema.json"


@pytest.fixture(scope="module")
def site():
    return make_site(50)


@pytest.fixture(scope="module")
def secrets():
    return FakeSecrets()


@pytest.fixture(scope="module")
def files(site, secrets):
    return render_site(site, secrets)


def _yaml(f: RenderedFile):
    return yaml.load(f.content, Loader=TagLoader)  # noqa: S506


def test_every_file_parses(files):
    kinds = {p.rsplit(".", 1)[-1] for p in files}
    assert {"yml", "yaml", "toml", "json", "env", "fw"} <= kinds
    bad = {p: parse_problem(p, f.content) for p, f in files.items() if parse_problem(p, f.content)}
    assert bad == {}
    for p, f in files.items():
        if p.endswith(("systemd/override.conf", ".service")):
            import configparser
            cp = configparser.ConfigParser(interpolation=None, strict=False)
            cp.read_string(f.content)
            assert cp.sections()


def test_compose_files_match_the_compose_spec(files):
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    composes = [p for p in files if p.endswith("docker-compose.yml")]
    assert len([p for p in composes if p.startswith("users/")]) == 50
    assert "services/langfuse/docker-compose.yml" in composes
    assert "services/authentik/docker-compose.yml" in composes
    for p in composes:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(files[p].content))]
        assert errors == [], p
    # every catalog service installed with compose has a project
    cat = load_catalog()
    for c in make_site(1).containers:
        if c.role == "shared" and cat.services[c.name].install.method == "compose":
            assert f"services/{c.hostname}/docker-compose.yml" in files


def test_secrets_only_in_env_files(files, secrets):
    values = list(secrets.values.values())
    assert len(values) > 100
    for p, f in files.items():
        if any(v in f.content for v in values):
            assert f.mode == 0o600, f"{p} holds a secret but is mode {f.mode:o}"
    assert not any(v in files["users/user1/docker-compose.yml"].content for v in values)
    assert not any(v in files["services/redis/users.acl"].content for v in values)  # hashes only
    for p, f in files.items():
        if p.endswith((".env", "config.yaml", "settings.yml", "garage.toml")):
            assert f.mode == 0o600, p


def test_compose_references_resolve_in_env(files, site):
    for t in site.tenants:
        compose = files[f"users/{t.user}/docker-compose.yml"].content
        env = parse_env(files[f"users/{t.user}/.env"].content)
        refs = set(re.findall(r"\$\{([A-Z0-9_]+)\}", compose))
        assert refs and refs <= set(env), t.user
        assert files[f"users/{t.user}/.env"].mode == 0o600


def test_user_bundle_wiring_uses_the_tenant_names(files, site, secrets):
    cat = load_catalog()
    t = site.tenant("user7")
    doc = yaml.safe_load(files["users/user7/docker-compose.yml"].content)
    env = parse_env(files["users/user7/.env"].content)
    svcs = doc["services"]
    assert set(svcs) == set(site.site.user_template.apps)
    for name, svc in svcs.items():
        app = cat.apps[name]
        assert svc["image"] == app.image
        assert svc["restart"] == "unless-stopped"
        assert svc["mem_limit"] == f"{app.memory_mb}m"
        assert svc["ports"] == [f"{t.ip}:{app.port}:{app.container_port}"]
        assert "healthcheck" in svc and svc["labels"]["aicommons.user"] == "user7"
        assert svc["logging"]["options"]["labels"]
        if app.data_path:
            assert svc["volumes"][0].endswith(":" + app.data_path)
    ow = svcs["openwebui"]["environment"]
    assert ow["S3_BUCKET_NAME"] in t.buckets and ow["S3_ADDRESSING_STYLE"] == "path"
    assert ow["QDRANT_COLLECTION_PREFIX"] == t.qdrant_prefix
    # Open WebUI 0.6.41 writes an unprefixed Redis key a per-user ACL cannot admit: it gets no Redis
    assert "REDIS_KEY_PREFIX" not in ow and "REDIS_URL" not in env
    assert site.fallbacks["openwebui"]["redis"].startswith("not used: Open WebUI 0.6.41")
    assert ow["SEARXNG_QUERY_URL"].endswith("/search?q=<query>")
    assert env["OPENWEBUI_DATABASE_URL"].startswith(f"postgresql://{t.postgres_role}:")
    assert env["OPENWEBUI_DATABASE_URL"].endswith("/openwebui_user7") and "openwebui_user7" in t.databases
    assert env["POSTGRES_PASSWORD"] == secrets("user7", "postgres_password")
    n8n = svcs["n8n"]["environment"]
    assert n8n["DB_POSTGRESDB_DATABASE"] in t.databases and n8n["DB_POSTGRESDB_USER"] == t.postgres_role
    assert n8n["N8N_WEBHOOK_URL"] == f"https://{t.hosts['n8n']}/"
    fl = svcs["flowise"]["environment"]
    assert fl["S3_FORCE_PATH_STYLE"] == "true" and fl["DATABASE_NAME"] in t.databases
    # the Qdrant key is a JWT limited to the user's own collections
    import jwt
    claims = jwt.decode(env["QDRANT_API_KEY"], secrets("site", "qdrant_api_key"), algorithms=["HS256"])
    assert {a["collection"] for a in claims["access"]} == set(t.qdrant_collections)


def _dyn(files, name):
    return yaml.safe_load(files[f"traefik/dynamic/{name}"].content)


def _app_envs(site, user="user1") -> dict[str, dict[str, str]]:
    doc = yaml.safe_load(render_site(site, FakeSecrets())[f"users/{user}/docker-compose.yml"].content)
    return {name: svc.get("environment", {}) for name, svc in doc["services"].items()}


def _ollama_models(gateway: bool):
    def tweak(d):
        d["models"] = ["llama3.2:3b", "nomic-embed-text"]
        d["embedding"] = {"model": "nomic-embed-text"}
        if not gateway:
            del d["services"]["gateway"]
    return tweak


def test_kotaemon_gets_the_site_models_and_langfuse_media_the_public_s3_route(files, site):
    """Issue 24, against each app's own code: Kotaemon's flowsettings.py adds its Ollama models only
    when LOCAL_MODEL is set; Langfuse presigns browser uploads from its one MEDIA endpoint."""
    kh = yaml.safe_load(files["users/user7/docker-compose.yml"].content)["services"]["kotaemon"]["environment"]
    # the reference site pulls no model: nothing to name, and no Ollama URL (the gateway is its way)
    assert not {"LOCAL_MODEL", "KH_OLLAMA_URL", "OPENAI_CHAT_MODEL", "OPENAI_EMBEDDINGS_MODEL"} & set(kh)
    assert kh["OPENAI_API_BASE"] == "http://10.0.5.137:4000/v1"
    kh = _app_envs(make_site(2, _ollama_models(gateway=False)))["kotaemon"]  # a site without the gateway
    assert kh["LOCAL_MODEL"] == "llama3.2:3b" and kh["LOCAL_MODEL_EMBEDDINGS"] == "nomic-embed-text"
    assert kh["KH_OLLAMA_URL"].endswith("/v1/") and "OPENAI_API_BASE" not in kh
    lf = yaml.safe_load(files["services/langfuse/docker-compose.yml"].content)["services"]["langfuse-web"]["environment"]
    assert lf["LANGFUSE_S3_MEDIA_UPLOAD_ENDPOINT"] == f"https://s3.{site.site.domain}"
    assert lf["LANGFUSE_S3_EVENT_UPLOAD_ENDPOINT"].startswith("http://10.0.5.")  # the server's own writes stay inside


def test_apps_reach_ollama_only_through_the_gateway():
    """Issue 22: big-AGI, Kotaemon and Jupyter get the gateway with the person's key for each app,
    and no Ollama URL; the gateway offers the tags Ollama pulls (no gateway settings needed)."""
    from aicommons.plan.models import gateway_routes

    gw_site = make_site(2, _ollama_models(gateway=True))
    assert gateway_routes(gw_site) == dict.fromkeys(["llama3.2:3b", "nomic-embed-text"], "http://10.0.5.100:11434/v1")
    envs = _app_envs(gw_site)
    assert envs["big-agi"] == {"LOCALAI_API_HOST": "http://10.0.5.137:4000", "LOCALAI_API_KEY": "${GATEWAY_KEY_BIG_AGI}"}
    kh = envs["kotaemon"]
    assert (kh["OPENAI_API_BASE"], kh["OPENAI_API_KEY"]) == ("http://10.0.5.137:4000/v1", "${GATEWAY_KEY_KOTAEMON}")
    assert (kh["OPENAI_CHAT_MODEL"], kh["OPENAI_EMBEDDINGS_MODEL"]) == ("llama3.2:3b", "nomic-embed-text")
    assert envs["jupyter"]["OPENAI_API_KEY"] == "${GATEWAY_KEY_JUPYTER}"
    ollama = [k for e in envs.values() for k, v in e.items() if ":11434" in v or k in ("KH_OLLAMA_URL", "LOCAL_MODEL")]
    assert ollama == []
    # without the gateway they keep Ollama itself
    envs = _app_envs(make_site(2, _ollama_models(gateway=False)))
    assert envs["big-agi"] == {"OLLAMA_API_HOST": "http://10.0.5.100:11434"}
    assert envs["jupyter"] == {"OLLAMA_HOST": "http://10.0.5.100:11434"}


def test_user_file_routes_every_app_behind_its_owner(files, site):
    for t in site.tenants:
        c = site.container(t.ctid)
        doc = _dyn(files, c.traefik_file)
        routers = doc["http"]["routers"]
        # n8n's production webhooks, Wait-node resume URLs and forms: the paths without forward-auth
        # and the published static bundles (n8n's /assets/, Open WebUI's /_app/): nothing secret
        hook = routers.pop(f"n8n-{t.user}-public")
        assert hook["rule"] == (f"Host(`{t.hosts['n8n']}`) && (PathPrefix(`/webhook/`) || "
                                "PathPrefix(`/webhook-waiting/`) || PathPrefix(`/form/`) || PathPrefix(`/form-waiting/`)"
                                " || PathPrefix(`/assets/`))")
        assert hook["middlewares"] == ["secure-headers"] and hook["priority"] == 200
        bundle = routers.pop(f"ai-{t.user}-public")
        assert bundle["rule"] == f"Host(`{t.hosts['openwebui']}`) && (PathPrefix(`/_app/`))"
        assert not [n for n in routers if n.endswith("-public")]
        outposts = {n: routers.pop(n) for n in [n for n in routers if n.endswith("-outpost")]}
        assert {r["rule"] for r in outposts.values()} == {
            f"Host(`{h}`) && PathPrefix(`/outpost.goauthentik.io/`)" for h in t.hosts.values()}
        assert all(r["service"] == "authentik-outpost" and r["middlewares"] == ["secure-headers"]
                   and r["priority"] == 300 for r in outposts.values())
        assert {r["rule"] for r in routers.values()} == {f"Host(`{h}`)" for h in t.hosts.values()}
        for r in routers.values():
            assert r["entryPoints"] == ["websecure"] and r["tls"] == {} and r["priority"] == 100
            assert r["middlewares"] == ["secure-headers", f"authentik-{t.user}"]
            # Traefik checks the app itself (its serverStatus is what the portal shows), but a missed
            # check never turns the person away: the fallback is the same server, unchecked
            services = doc["http"]["services"]
            fo = services[r["service"]]["failover"]
            checked, direct = services[fo["service"]]["loadBalancer"], services[fo["fallback"]]["loadBalancer"]
            assert checked["servers"] == direct["servers"] and checked["servers"][0]["url"].startswith(f"http://{t.ip}:")
            assert checked["healthCheck"]["path"].startswith("/") and checked["healthCheck"]["interval"] == "10s"
            assert "healthCheck" not in direct and "healthCheck" not in services[r["service"]]["failover"]
        fa = doc["http"]["middlewares"][f"authentik-{t.user}"]["forwardAuth"]
        assert fa["address"] == "http://10.0.5.146:9000/outpost.goauthentik.io/auth/traefik"


def test_shared_routes_headers_operator_and_no_database_router(files, site):
    routers, tcp = {}, {}
    for p, f in files.items():
        if p.startswith("traefik/dynamic/"):
            doc = yaml.safe_load(f.content) or {}
            routers.update(doc.get("http", {}).get("routers", {}))
            tcp.update(doc.get("tcp", {}).get("routers", {}) or {})
    assert all("secure-headers" in r["middlewares"] for r in routers.values())
    assert not any(n.startswith(("postgres", "redis")) for n in routers) and not tcp
    for name in ("portainer", "prometheus", "traefik-api", "ollama"):  # ollama: the gateway fronts it
        assert "operator-allow" in routers[name]["middlewares"]
    proxy = yaml.safe_load(files[f"traefik/dynamic/{site.proxy_file}"].content)
    allow = proxy["http"]["middlewares"]["operator-allow"]["ipAllowList"]["sourceRange"]
    assert allow == list(site.operator_sources) and "10.0.5.96/30" in allow and "10.0.5.250/31" in allow
    assert not any(ipaddress.ip_address("10.0.5.121") in ipaddress.ip_network(c) for c in allow)  # Prometheus CT
    assert proxy["http"]["services"]["authentik-outpost"]["loadBalancer"]["servers"] == [{"url": "http://10.0.5.146:9000"}]
    # no login of their own: signed-in site users only (the catalog says so, not code)
    for name in ("comfyui", "sd", "searxng", "translate"):
        assert routers[name]["middlewares"] == ["secure-headers", "authentik-sso"], name
        assert routers[f"{name}-outpost"]["service"] == "authentik-outpost"
    assert routers["git"]["middlewares"] == ["secure-headers"]  # Gitea signs people in itself


def test_two_ollamas_one_balancer_and_tcp_opt_in():
    def tweak(d):
        d["services"]["ollama"] = {"instances": 2}
        d["services"]["postgres"] = {"expose_tcp": True}
    s = make_site(2, tweak)
    files = render_site(s, FakeSecrets())
    ollama = [c for c in s.containers if c.name == "ollama"]
    assert len(ollama) == 2
    doc = _dyn(files, ollama[0].traefik_file)
    lb = doc["http"]["services"]["ollama"]["loadBalancer"]
    assert [x["url"] for x in lb["servers"]] == [f"http://{c.ip}:11434" for c in ollama]
    assert lb["healthCheck"]["path"] == "/"
    pg = next(c for c in s.containers if c.name == "postgres")
    tcp = _dyn(files, pg.traefik_file)["tcp"]
    assert tcp["routers"]["postgres"]["rule"].startswith("HostSNI(") and tcp["routers"]["postgres"]["tls"] == {}
    assert tcp["routers"]["postgres"]["middlewares"] == ["operator-allow-tcp"]
    assert tcp["services"]["postgres"]["loadBalancer"]["servers"] == [{"address": f"{pg.ip}:5432"}]
    assert "http" not in _dyn(files, pg.traefik_file)


def test_static_config_http01_by_default_dns01_with_wildcard():
    from aicommons.render.traefik import static_config
    s = make_site(1)
    st = static_config(s)
    assert st["providers"]["file"] == {"directory": "/opt/traefik-stack/dynamic", "watch": True}
    assert st["providers"]["providersThrottleDuration"] == "1s"
    assert st["certificatesResolvers"]["letsencrypt"]["acme"]["httpChallenge"] == {"entryPoint": "web"}
    assert st["entryPoints"]["web"]["http"]["redirections"]["entryPoint"]["to"] == "websecure"
    assert "insecure" not in st["api"] and st["ping"] == {"entryPoint": "ping"}
    s2 = make_site(1, lambda d: d["network"]["traefik"].update(dns_provider="cloudflare"))
    st2 = static_config(s2)
    acme = st2["certificatesResolvers"]["letsencrypt"]["acme"]
    assert acme["dnsChallenge"] == {"provider": "cloudflare"} and "httpChallenge" not in acme
    assert st2["entryPoints"]["websecure"]["http"]["tls"] == {}  # the certificate holders ask, not the entry point
    assert [(c.name, c.hosts) for c in s2.certificates] == [
        ("wildcard", ("valuechainhackers.xyz", "*.valuechainhackers.xyz"))]


def test_without_authentik_loginless_apps_are_not_routed():
    s = make_site(1, lambda d: d["services"].pop("authentik"))
    files = render_site(s, FakeSecrets())
    routers = _dyn(files, s.container(s.tenants[0].ctid).traefik_file)["http"]["routers"]
    assert not any(n.startswith(("bigagi-", "chainforge-")) for n in routers)
    # Ollama's route is the operators' (the gateway fronts it): their allow-list needs no sign-in
    ollama = _dyn(files, "205100.yml")["http"]["routers"]["ollama"]
    assert "ai-user1" in routers and "operator-allow" in ollama["middlewares"]
    assert not any(n.endswith("-outpost") for n in routers)  # no outpost to send sign-in to
    (note,) = [n for n in s.notes if "the sign-in provider authentik is not enabled" in n]
    assert "big-agi" in note and "comfyui" in note and "ollama" not in note and "openwebui" not in note
    # code-server and Jupyter have no login of their own any more (only Traefik reaches them)
    assert "code-server" in note and "jupyter" in note and not any(n.startswith(("code-", "jupyter-")) for n in routers)


def test_blueprints_bind_each_app_to_its_owner(files, site):
    bp = _yaml(files["services/authentik/blueprints/user-user3.yaml"])
    assert bp["version"] == 1
    models = [e["model"] for e in bp["entries"]]
    assert models[:2] == ["authentik_core.group", "authentik_core.user"]
    user = bp["entries"][1]
    assert user["identifiers"] == {"username": "user3", "path": "aicommons/users"}  # never someone else's user
    assert user["attrs"]["groups"] == ["group", ["authentik_core.group", ["name", "aicommons-users"]]]
    providers = [e for e in bp["entries"] if e["model"] == "authentik_providers_proxy.proxyprovider"]
    apps = [e for e in bp["entries"] if e["model"] == "authentik_core.application"]
    binds = [e for e in bp["entries"] if e["model"] == "authentik_policies.policybinding"]
    assert len(providers) == len(apps) == len(binds) == 8
    assert {p["attrs"]["mode"] for p in providers} == {"forward_single"}
    assert all(p["attrs"]["invalidation_flow"] for p in providers)
    assert {a["identifiers"]["slug"] for a in apps} == {h.split(".")[0] for h in site.tenant("user3").hosts.values()}
    assert {b["attrs"]["group"] for b in binds} == {"group"}  # !KeyOf group: the owner's group only
    site_bp = _yaml(files["services/authentik/blueprints/site.yaml"])
    outpost = site_bp["entries"][-1]
    shared_guarded = [r for r in site.routes if r.owner is None and r.access == "site-users"]
    # no login of their own (comfyui, sd, searxng, translate, the portal) and Qdrant's API (key auth, kept off
    # the open net); Ollama's is the operators' where the gateway fronts it
    assert {r.service for r in shared_guarded} == {"comfyui", "automatic1111", "searxng", "libretranslate",
                                                    "qdrant", "portal"}
    assert outpost["model"] == "authentik_outposts.outpost"
    assert len(outpost["attrs"]["providers"]) == 50 * 8 + len(shared_guarded)
    assert outpost["identifiers"] == {"managed": "goauthentik.io/outposts/embedded"}
    assert outpost["attrs"]["config"]["authentik_host"] == "https://auth.valuechainhackers.xyz/"
    # a blueprint replaces the whole config: every key Authentik documents for it is rendered
    # (goauthentik/authentik website/docs/add-secure-apps/outposts/_config.md, OutpostConfig)
    assert set(outpost["attrs"]["config"]) == {
        "log_level", "refresh_interval", "authentik_host", "authentik_host_insecure", "authentik_host_browser",
        "object_naming_template", "container_image", "session_backend", "kubernetes_postgresql_secret_name",
        "kubernetes_postgresql_credentials_secret_name", "docker_network", "docker_map_ports", "docker_labels",
        "kubernetes_replicas", "kubernetes_namespace", "kubernetes_ingress_annotations",
        "kubernetes_ingress_secret_name", "kubernetes_service_type", "kubernetes_disabled_components",
        "kubernetes_image_pull_secrets", "kubernetes_ingress_class_name", "kubernetes_json_patches"}
    site_binds = [e for e in site_bp["entries"] if e["model"] == "authentik_policies.policybinding"]
    assert len(site_binds) == len(shared_guarded) and {b["attrs"]["group"] for b in site_binds} == {"site-users"}


def test_port_lists_are_split_at_pve_firewalls_limit():
    from aicommons.render.firewall import port_lists

    assert port_lists([80]) == ["80"]
    assert port_lists(list(range(1, 16))) == [",".join(map(str, range(1, 16)))]
    assert port_lists(list(range(1, 32))) == [",".join(map(str, range(1, 16))), ",".join(map(str, range(16, 31))), "31"]


def test_firewall_plan(site):
    fw = firewall_plan(site)
    users = [c for c in site.containers if c.role == "user"]
    shared = [c for c in site.containers if c.role == "shared"]
    assert len(fw.containers) == len(users) + len(shared)
    assert all(c.options["policy_in"] == "DROP" and c.options["enable"] == 1 for c in fw.containers)
    user = fw.container(users[0].ctid)
    ins = [r for r in user.rules if r.type == "in"]
    assert ins[0].source == site.proxy_source == "10.0.4.10" and set(ins[0].dport.split(",")) == {
        str(p) for p in site.tenants[0].ports.values()}
    # The only other way in is Prometheus to node exporter; Traefik's address is its real source.
    prom = next(c for c in shared if c.name == "prometheus")
    assert [(r.source, r.dport) for r in ins[1:]] == [(prom.ip, "9100")]
    assert not user.ipsets  # users never admit each other: no set of users on a user container
    outs = [r for r in user.rules if r.type == "out"]
    assert outs[-1].action == "DROP" and outs[-1].dest == "10.0.5.0/24"
    assert {r.dest for r in outs[:-1]} <= {c.ip for c in shared}
    pg = next(c for c in shared if c.name == "postgres")
    rules = fw.container(pg.ctid).rules
    assert any(r.source == "+guest/aic-users" and r.dport == "5432" for r in rules)
    # each container carries exactly the ipsets its rules name (nothing on the datacenter), with the
    # addresses merged into exact CIDRs: the same addresses, no more
    got = {s.name: s for s in fw.container(pg.ctid).ipsets}["aic-users"].cidrs
    assert {str(a) for x in got for a in ipaddress.ip_network(x)} == {c.ip for c in users} and len(got) < len(users)
    gitea = next(c for c in shared if c.name == "gitea")
    assert not any(r.source == "+guest/aic-users" for r in fw.container(gitea.ctid).rules)
    assert "IN ACCEPT -source +guest/aic-users -p tcp -dport 5432" in fw.container_fw(pg.ctid)
    ops = {s.name: s for s in fw.container(pg.ctid).ipsets}["aic-operators"]
    assert ops.cidrs == site.operator_sources and not ops.nomatch
    users_net = [ipaddress.ip_network(f"{c.ip}/32") for c in users]
    assert not any(u.subnet_of(ipaddress.ip_network(o)) for u in users_net for o in ops.cidrs)
    calls = fw.api_calls()
    assert ("PUT", f"/nodes/{{node}}/lxc/{pg.ctid}/firewall/options",
            {"enable": 1, "policy_in": "DROP", "policy_out": "ACCEPT"}) in calls


def test_firewall_users_reach_the_gateway_and_only_the_gateway_reaches_ollama(site):
    """Issue 22: user apps are wired to the gateway, so a user container opens the gateway's port
    and not Ollama's (its last rule drops the rest of the site); Ollama admits the gateway as a
    shared service, and user containers no more."""
    def accepts_out(fw, c, ip, port):
        return [r for r in fw.container(c.ctid).rules if r.type == "out" and r.action == "ACCEPT"
                and r.dest == ip and str(port) in (r.dport or "").split(",")]

    def admits_users(fw, c):
        return [r for r in fw.container(c.ctid).rules if r.type == "in" and r.source == "+guest/aic-users"]

    def ipset(fw, c, name):
        s = {x.name: x for x in fw.container(c.ctid).ipsets}[name]
        return {str(a) for x in s.cidrs for a in ipaddress.ip_network(x)}

    shared = {c.name: c for c in site.containers if c.role == "shared"}
    ollama, gw = shared["ollama"], shared["gateway"]
    user = next(c for c in site.containers if c.role == "user")
    fw = firewall_plan(site)
    assert accepts_out(fw, user, gw.ip, 4000) and not accepts_out(fw, user, ollama.ip, 11434)
    assert [r.dport for r in admits_users(fw, gw)] == ["4000"] and admits_users(fw, ollama) == []
    assert gw.ip in ipset(fw, ollama, "aic-shared") and user.ip not in ipset(fw, ollama, "aic-shared")
    # a site without the gateway: its users' apps call Ollama itself, and the firewall lets them
    bare = make_site(2, lambda d: d["services"].pop("gateway"))
    fw = firewall_plan(bare)
    ollama = next(c for c in bare.containers if c.name == "ollama")
    user = next(c for c in bare.containers if c.role == "user")
    assert accepts_out(fw, user, ollama.ip, 11434) and [r.dport for r in admits_users(fw, ollama)] == ["11434"]


def test_render_user_matches_render_site(files, site, secrets):
    mine = render_user(site, "user9", secrets)
    assert "users/user9/docker-compose.yml" in mine and "users/user9/.env" in mine
    assert all(files[p] == f for p, f in mine.items())
    assert all("user9" in p or p.endswith((f"{site.tenant('user9').ctid}.fw", "205208.yml"))
               for p in mine)


def _tree(out: Path) -> dict[str, tuple[float, int]]:
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*") if p.is_file()}


def test_write_tree_atomic_skips_unchanged_and_rewrites_one_user(tmp_path, site, secrets, files):
    res = write_tree(files, tmp_path)
    assert len(res.written) == len(files) and not res.unchanged
    assert stat.S_IMODE((tmp_path / "users/user1/.env").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "services/postgres/pg_hba.conf").stat().st_mode) == 0o644
    assert not list(tmp_path.rglob("*.tmp"))
    before = _tree(tmp_path)
    assert write_tree(files, tmp_path).written == []
    # change one user's email: only that user's files change
    def tweak(d):
        d["users"][4]["email"] = "someone.else@example.org"
    changed = render_site(make_site(50, tweak), secrets)
    res = write_tree(changed, tmp_path)
    # the sign-in provider's user, and n8n's owner account (N8N_INSTANCE_OWNER_EMAIL)
    mine = ["services/authentik/blueprints/user-user5.yaml", "users/user5/docker-compose.yml"]
    assert sorted(res.written) == mine
    after = _tree(tmp_path)
    assert {p for p in before if before[p] != after[p]} == set(mine)


def test_write_tree_refuses_unparsable_files_and_writes_nothing(tmp_path):
    good = RenderedFile("traefik/dynamic/205200.yml", "http: {}\n")
    for bad in (RenderedFile("traefik/dynamic/205201.yml", "http: [unclosed\n"),
                RenderedFile("x/garage.toml", "a = \n"), RenderedFile("x/api.json", "{"),
                RenderedFile("users/u/.env", "NOT A LINE\n")):
        with pytest.raises(RenderError, match=re.escape(bad.path)):
            write_tree([good, bad], tmp_path)
        assert not list(tmp_path.rglob("*"))
    with pytest.raises(RenderError, match="relative"):
        write_tree([RenderedFile("../escape.yml", "a: 1\n")], tmp_path)


def test_write_replaces_a_file_in_place_without_partial_reads(tmp_path):
    """A reader polling the file never sees anything but a whole old or whole new version."""
    import threading
    target = tmp_path / "traefik/dynamic/205200.yml"
    versions = [yaml.safe_dump({"http": {"routers": {f"r{i}": {"rule": "Host(`x`)" * 200}}}}) for i in range(40)]
    write_tree([RenderedFile("traefik/dynamic/205200.yml", versions[0])], tmp_path)
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(target.read_text())
    th = threading.Thread(target=reader)
    th.start()
    for v in versions[1:]:
        write_tree([RenderedFile("traefik/dynamic/205200.yml", v)], tmp_path)
    stop.set()
    th.join()
    assert seen and seen <= set(versions)
    assert sorted(os.listdir(target.parent)) == ["205200.yml"]


def test_cli_render_writes_the_tree(tmp_path, monkeypatch):
    from cryptography.fernet import Fernet

    from aicommons.cli import main
    from aicommons.spec.default import render_site_yaml
    monkeypatch.setenv("AICOMMONS_SECRET_KEY", Fernet.generate_key().decode())
    site_file = tmp_path / "site.yaml"
    site_file.write_text(render_site_yaml(users=3))
    out = tmp_path / "out"
    from aicommons.drivers import registry

    monkeypatch.setattr(registry, "FAKE_WORLD", str(tmp_path / "world"))  # as tests/fakeworld.py does
    assert main(["apply", "--yes", "-f", str(site_file)]) == 0  # the state holds the secrets now
    assert main(["render", "-f", str(site_file), "--out", str(out)]) == 0
    env1 = (out / "users/user2/.env").read_text()
    assert main(["render", "-f", str(site_file), "--out", str(out), "--user", "user2"]) == 0
    assert (out / "users/user2/.env").read_text() == env1  # secrets come from the state: stable
    assert (out / "traefik/dynamic/205201.yml").exists() and not (out / "firewall/cluster.fw").exists()
    assert main(["render", "-f", str(site_file), "--out", str(out), "--user", "nobody"]) == 1


def test_variants_minio_db_isolation_external_postgres_parse_and_wire():
    def tweak(d):
        d["object_storage"] = "minio"
        for name in ("garage", "langfuse", "formbricks"):  # the last two name garage in the catalog
            d["services"].pop(name)
        d["services"]["minio"] = {}
        d["redis"] = {"isolation": "db", "databases": 16, "first_db": 2}
        d["services"]["postgres"] = {"external": {"host": "db.example.org", "port": 5433,
                                                  "admin_password": "env:AIC_TEST_PG_ADMIN"}}
    s = make_site(3, tweak)
    files = render_site(s, FakeSecrets())
    assert {p: parse_problem(p, f.content) for p, f in files.items() if parse_problem(p, f.content)} == {}
    assert files["services/minio/minio.env"].mode == 0o600 and "services/garage/garage.toml" not in files
    acl = files["services/redis/users.acl"].content
    assert "+select|2" in acl and "+select|4" in acl
    env = parse_env(files["users/user2/.env"].content)
    assert "REDIS_URL" not in env  # Open WebUI 0.6.41 gets no Redis (see plan/deployed.py)
    assert "@db.example.org:5433/openwebui_user2" in env["OPENWEBUI_DATABASE_URL"]
    assert not any(p.startswith("services/postgres/") for p in files)  # not ours to configure
    ow = yaml.safe_load(files["users/user2/docker-compose.yml"].content)["services"]["openwebui"]["environment"]
    assert ow["S3_ENDPOINT_URL"].endswith(":9000") and ow["S3_REGION_NAME"] == "us-east-1"


def _pve_params():
    """(method, templated path) -> parameter schema, from the PVE 9.1.3 API schema."""
    import gzip
    path = SCHEMA.parent / "pve-api-schema-9.1.3.json.gz"
    out = {}

    def walk(nodes):
        for n in nodes:
            for method, info in n.get("info", {}).items():
                out[(method, n["path"])] = info.get("parameters", {}).get("properties", {})
            walk(n.get("children", []))
    walk(json.load(gzip.open(path)))
    return out


def _template(path: str) -> str:
    parts = path.split("/")
    if parts[1] == "nodes":  # /nodes/{node}/lxc/{vmid}/firewall/...
        parts[2], parts[4] = "{node}", "{vmid}"
        if len(parts) > 7 and parts[6] == "ipset":
            parts[7] = "{name}"
    elif parts[1:3] == ["cluster", "firewall"] and len(parts) > 4:
        parts[4] = "{group}" if parts[3] == "groups" else "{name}"
    return "/".join(parts)


def test_firewall_api_calls_match_the_pve_schema(site):
    params = _pve_params()
    calls = firewall_plan(site).api_calls()
    assert calls
    for method, path, body in calls:
        spec = params.get((method, _template(path)))
        assert spec is not None, (method, path)
        for key, value in body.items():
            assert key in spec, (path, key)
            p = spec[key]
            if "enum" in p:
                assert value in p["enum"], (path, key, value)
            if "pattern" in p:
                assert re.fullmatch(p["pattern"], str(value)), (path, key, value)
        required = {k for k, p in spec.items() if not p.get("optional") and k not in ("node", "vmid", "name", "group")}
        assert required <= set(body), (path, required - set(body))
    # nothing on the datacenter (Sys.Modify on /); rules name only the container's own ipsets,
    # created before them (pve-firewall verify_rule refuses "no such ipset")
    assert not [p for _, p, _ in calls if p.startswith("/cluster/")]
    for c in firewall_plan(site).containers:
        sets = {f"+guest/{s.name}" for s in c.ipsets}
        for r in c.rules:
            assert r.action in ("ACCEPT", "DROP", "REJECT")
            for ref in (r.source, r.dest):
                assert not (ref or "").startswith("+") or ref in sets, r
