"""Compose projects and install recipes of the shared containers.

Langfuse (web + worker + ClickHouse on the shared PostgreSQL/Redis/S3) and Authentik (server +
worker, blueprints mounted) are wired in full; every other `install.method: compose` service gets
a pinned, health-checked, memory-limited project. Secrets go to the project's `.env` (0600).
"""

from __future__ import annotations

from urllib.parse import quote as urlquote

from aicommons.catalog.model import Service
from aicommons.plan.model import Container, ResolvedSite
from aicommons.plan.names import shared_host
from aicommons.plan.policy import service_credentials
from aicommons.plan.secrets import SITE_SCOPE, SecretLookup
from aicommons.render import aicservice
from aicommons.render.common import catalog, db_ident, dump_yaml, endpoint_host, endpoint_url, hex_key, port_of, svc_dir
from aicommons.render.envfile import render_env
from aicommons.render.files import SECRET_MODE, RenderedFile
from aicommons.render.services import REDIS_LANGFUSE
from aicommons.spec.models import Site

HEAD = "# Rendered by aicommons: do not edit by hand. Secrets are in .env (0600).\n"
CLICKHOUSE_IMAGE = "clickhouse/clickhouse-server:25.12"
LOGGING = {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}
# Where known images keep their data (a named volume is mounted there).
DATA_PATHS = {
    "gitea": "/data", "neo4j": "/data", "loki": "/loki", "portainer": "/data", "bookstack": "/config",
    "espocrm": "/var/www/html", "matrix": "/data", "metabase": "/metabase-data", "superset": "/app/superset_home",
    "formbricks": "/home/nextjs/apps/web/uploads", "libretranslate": "/home/libretranslate/.local",
    "faster-whisper": "/home/ubuntu/.cache/huggingface", "openedai-speech": "/app/voices",
    "whisper": "/root/.cache", "docling": "/opt/app-root/src/.cache",
}


def _svc_entry(svc: Service, c: Container, image: str | None = None, env: dict | None = None) -> dict:
    entry: dict = {"image": image or svc.install.image, "restart": "unless-stopped"}
    if env:
        entry["environment"] = env
    entry["ports"] = [f"{c.ip}:{p.port}:{p.port}" + ("/udp" if p.protocol == "udp" else "") for p in svc.ports]
    if svc.name in DATA_PATHS:
        entry["volumes"] = [f"data:{DATA_PATHS[svc.name]}"]
    entry["mem_limit"] = f"{c.memory_mb}m"
    if svc.health.type == "http":
        url = f"http://127.0.0.1:{svc.health.port or svc.ports[0].port}{svc.health.path}"
        entry["healthcheck"] = {"test": ["CMD-SHELL", f"wget -qO- {url} >/dev/null 2>&1 || curl -fsS {url} >/dev/null"],
                                "interval": "30s", "timeout": "10s", "retries": 5, "start_period": "120s"}
    entry["labels"] = {"aicommons.service": svc.name}
    entry["logging"] = LOGGING
    return entry


def _doc(name: str, services: dict, volumes: list[str]) -> str:
    doc: dict = {"name": name, "services": services}
    if volumes:
        doc["volumes"] = {v: {} for v in volumes}
    return dump_yaml(doc, HEAD)


def _pg_url(resolved: ResolvedSite, service: str, password: str) -> str:
    ident = db_ident(service)
    return (f"postgresql://{ident}:{urlquote(password, safe='')}@{endpoint_host(resolved, 'postgres')}:"
            f"{port_of(resolved, 'postgres')}/{ident}")


def langfuse(resolved: ResolvedSite, c: Container, secrets: SecretLookup) -> list[RenderedFile]:
    svc = catalog().services["langfuse"]
    s = lambda key: secrets(SITE_SCOPE, key)  # noqa: E731
    dotenv = {
        "DATABASE_URL": _pg_url(resolved, "langfuse", s("langfuse_db_password")),
        "SALT": s("langfuse_salt"),
        "ENCRYPTION_KEY": hex_key(s("langfuse_encryption_key")),  # Langfuse wants 64 hex characters
        "NEXTAUTH_SECRET": s("langfuse_nextauth_secret"),
        "CLICKHOUSE_PASSWORD": s("clickhouse_password"),
        "REDIS_CONNECTION_STRING": (f"redis://{REDIS_LANGFUSE}:{urlquote(s('langfuse_redis_password'), safe='')}@"
                                    f"{endpoint_host(resolved, 'redis')}:{port_of(resolved, 'redis')}/0"),
        # In the object store's own key format (Garage: GK + 24 hex, 64 hex): the apply imports it.
        "S3_ACCESS_KEY_ID": service_credentials("langfuse", secrets)[0],
        "S3_SECRET_ACCESS_KEY": service_credentials("langfuse", secrets)[1],
        "LANGFUSE_INIT_PROJECT_PUBLIC_KEY": "pk-lf-" + hex_key(s("langfuse_public_key"), 16),
        "LANGFUSE_INIT_PROJECT_SECRET_KEY": "sk-lf-" + hex_key(s("langfuse_secret_key"), 16),
        "LANGFUSE_INIT_USER_PASSWORD": s("langfuse_init_user_password"),
    }
    store = resolved.site.object_storage
    s3 = endpoint_url(resolved, store, "s3") or ""
    region = catalog().services[store].app_env.get("S3_REGION_NAME", "us-east-1")
    env = {k: f"${{{k}}}" for k in ("DATABASE_URL", "SALT", "ENCRYPTION_KEY", "NEXTAUTH_SECRET",
                                     "CLICKHOUSE_PASSWORD", "REDIS_CONNECTION_STRING")}
    env.update(NEXTAUTH_URL=f"https://langfuse.{resolved.site.domain}", TELEMETRY_ENABLED="false",
               CLICKHOUSE_MIGRATION_URL="clickhouse://clickhouse:9000", CLICKHOUSE_URL="http://clickhouse:8123",
               CLICKHOUSE_USER="clickhouse", CLICKHOUSE_CLUSTER_ENABLED="false")
    # Langfuse presigns media upload URLs for browsers and SDKs outside the site from the one MEDIA
    # endpoint it also uses itself (there is no separate external endpoint for media, only for batch
    # exports; its own docker-compose points MEDIA at a browser-reachable address), so it is the
    # store's public route; events are written by the server itself and stay internal.
    route = catalog().services[store].route
    public = f"https://{shared_host(route.prefix, resolved.site.domain)}" if route else s3
    for kind, endpoint in (("EVENT", s3), ("MEDIA", public)):
        p = f"LANGFUSE_S3_{kind}_UPLOAD_"
        env.update({p + "BUCKET": "langfuse", p + "REGION": region, p + "ENDPOINT": endpoint, p + "FORCE_PATH_STYLE": "true",
                    p + "ACCESS_KEY_ID": "${S3_ACCESS_KEY_ID}", p + "SECRET_ACCESS_KEY": "${S3_SECRET_ACCESS_KEY}",
                    p + "PREFIX": f"{kind.lower()}s/"})
    env.update(LANGFUSE_INIT_ORG_ID="aicommons", LANGFUSE_INIT_ORG_NAME=resolved.site.name,
               LANGFUSE_INIT_PROJECT_ID="aicommons", LANGFUSE_INIT_PROJECT_NAME="aicommons",
               LANGFUSE_INIT_PROJECT_PUBLIC_KEY="${LANGFUSE_INIT_PROJECT_PUBLIC_KEY}",
               LANGFUSE_INIT_PROJECT_SECRET_KEY="${LANGFUSE_INIT_PROJECT_SECRET_KEY}",
               LANGFUSE_INIT_USER_EMAIL=resolved.site.operator_email or f"admin@{resolved.site.domain}",
               LANGFUSE_INIT_USER_NAME="aicommons", LANGFUSE_INIT_USER_PASSWORD="${LANGFUSE_INIT_USER_PASSWORD}")
    web = _svc_entry(svc, c, env=dict(env))
    web["ports"] = [f"{c.ip}:3000:3000"]
    web["depends_on"] = {"clickhouse": {"condition": "service_healthy"}}
    worker = _svc_entry(svc, c, image=svc.install.image.replace("langfuse/langfuse:", "langfuse/langfuse-worker:"),
                        env=dict(env))
    worker["ports"] = [f"{c.ip}:3030:3030"]
    worker["healthcheck"] = {"test": ["CMD-SHELL", "wget -qO- http://127.0.0.1:3030/api/health >/dev/null"],
                             "interval": "30s", "timeout": "10s", "retries": 5, "start_period": "120s"}
    worker["depends_on"] = {"clickhouse": {"condition": "service_healthy"}}
    for x in (web, worker):
        x["mem_limit"] = f"{c.memory_mb // 4}m"
    clickhouse = {"image": CLICKHOUSE_IMAGE, "restart": "unless-stopped", "user": "101:101",
                  "environment": {"CLICKHOUSE_DB": "default", "CLICKHOUSE_USER": "clickhouse",
                                  "CLICKHOUSE_PASSWORD": "${CLICKHOUSE_PASSWORD}"},
                  "volumes": ["clickhouse-data:/var/lib/clickhouse", "clickhouse-logs:/var/log/clickhouse-server"],
                  "mem_limit": f"{c.memory_mb // 2}m",
                  "healthcheck": {"test": ["CMD-SHELL", "wget -qO- http://127.0.0.1:8123/ping >/dev/null"],
                                  "interval": "10s", "timeout": "5s", "retries": 10, "start_period": "30s"},
                  "logging": LOGGING}
    d = svc_dir(c.hostname)
    return [RenderedFile(f"{d}/docker-compose.yml", _doc("langfuse", {"langfuse-web": web, "langfuse-worker": worker,
                                                                      "clickhouse": clickhouse},
                                                         ["clickhouse-data", "clickhouse-logs"])),
            RenderedFile(f"{d}/.env", render_env(dotenv, "Langfuse secrets"), SECRET_MODE)]


def authentik_email_env(resolved: ResolvedSite) -> dict[str, str]:
    """Authentik's global e-mail settings (`email.*` in authentik/lib/default.yml, overridden by
    AUTHENTIK_EMAIL__*) from site.yaml `smtp:`; the recovery flow's e-mail stage uses them
    (render/authentik_flows.py). No SMTP password: smtp.password is a reference resolved only
    where aicommons itself sends mail, so Authentik's mail needs a relay that trusts it (as LL::NG's)."""
    s = resolved.site.smtp
    if s is None:
        return {}
    env = {"AUTHENTIK_EMAIL__HOST": s.host, "AUTHENTIK_EMAIL__PORT": str(s.port), "AUTHENTIK_EMAIL__FROM": s.sender,
           "AUTHENTIK_EMAIL__USE_TLS": str(s.security == "starttls").lower(),
           "AUTHENTIK_EMAIL__USE_SSL": str(s.security == "tls").lower()}
    if s.username:
        env["AUTHENTIK_EMAIL__USERNAME"] = s.username
    return env


def authentik(resolved: ResolvedSite, c: Container, secrets: SecretLookup) -> list[RenderedFile]:
    svc = catalog().services["authentik"]
    s = lambda key: secrets(SITE_SCOPE, key)  # noqa: E731
    dotenv = {"AUTHENTIK_SECRET_KEY": s("authentik_secret_key"),
              "AUTHENTIK_POSTGRESQL__PASSWORD": s("authentik_db_password"),
              "AUTHENTIK_BOOTSTRAP_TOKEN": s("authentik_bootstrap_token"),
              "AUTHENTIK_BOOTSTRAP_PASSWORD": s("authentik_bootstrap_password")}
    env = {k: f"${{{k}}}" for k in dotenv}
    env.update(AUTHENTIK_POSTGRESQL__HOST=endpoint_host(resolved, "postgres") or "",
               AUTHENTIK_POSTGRESQL__PORT=str(port_of(resolved, "postgres") or 5432),
               AUTHENTIK_POSTGRESQL__NAME=db_ident("authentik"), AUTHENTIK_POSTGRESQL__USER=db_ident("authentik"),
               AUTHENTIK_BOOTSTRAP_EMAIL=resolved.site.operator_email or f"admin@{resolved.site.domain}",
               # X-Forwarded-* are believed only from where Traefik's connections come from.
               AUTHENTIK_LISTEN__TRUSTED_PROXY_CIDRS=f"{resolved.proxy_source}/32")
    env.update(authentik_email_env(resolved))
    vols = ["media:/media", "certs:/certs", "./blueprints:/blueprints/aicommons:ro"]
    server = _svc_entry(svc, c, env=dict(env))
    server["command"] = "server"
    server["volumes"] = vols
    worker = _svc_entry(svc, c, env=dict(env))
    worker["command"] = "worker"
    worker["volumes"] = list(vols)
    del worker["ports"], worker["healthcheck"]
    for x in (server, worker):
        x["mem_limit"] = f"{c.memory_mb // 2}m"
    d = svc_dir(c.hostname)
    return [RenderedFile(f"{d}/docker-compose.yml", _doc("authentik", {"server": server, "worker": worker},
                                                         ["media", "certs"])),
            RenderedFile(f"{d}/.env", render_env(dotenv, "Authentik secrets"), SECRET_MODE)]


def searxng(resolved: ResolvedSite, c: Container) -> list[RenderedFile]:
    svc = catalog().services["searxng"]
    entry = _svc_entry(svc, c, env={"SEARXNG_BASE_URL": f"https://searxng.{resolved.site.domain}/"})
    entry["volumes"] = ["./settings.yml:/etc/searxng/settings.yml:ro"]
    return [RenderedFile(f"{svc_dir(c.hostname)}/docker-compose.yml", _doc("searxng", {"searxng": entry}, []))]


def generic(resolved: ResolvedSite, c: Container) -> list[RenderedFile]:
    svc = catalog().services[c.name]
    entry = _svc_entry(svc, c)
    vols = ["data"] if "volumes" in entry else []
    return [RenderedFile(f"{svc_dir(c.hostname)}/docker-compose.yml", _doc(c.name, {c.name: entry}, vols))]


def install_script(c: Container, site: Site | None = None) -> str:
    """The container's install recipe, from the catalog (run as root inside the container)."""
    svc = catalog().services[c.name]
    if aicservice.is_aicommons(svc):
        assert site is not None, "an aicommons service's unit names the site's Traefik source address"
        return aicservice.install_script(svc, c, site)
    lines = ["#!/bin/sh", f"# Install {svc.title} {svc.version} in CT {c.ctid} ({c.ip}). Rendered by aicommons.",
             "set -eu"]
    m = svc.install
    if m.method == "apt":
        lines += ["apt-get update", "DEBIAN_FRONTEND=noninteractive apt-get install -y " + " ".join(m.packages)]
    elif m.method == "script":
        lines += [m.script.rstrip()]
    elif m.method == "compose":
        lines += [f"cd /opt/aicommons/{c.hostname}", "docker compose pull", "docker compose up -d --wait"]
    elif m.method == "layer":
        lines += ["# Nothing to install: the driver binds the layers it built (read-only) and writes one",
                  "# systemd unit per model of the site (drivers/lxc/models.py, render/modelserver.py)."]
    return "\n".join(lines) + "\n"


def shared_files(resolved: ResolvedSite, secrets: SecretLookup) -> list[RenderedFile]:
    out: list[RenderedFile] = []
    for c in resolved.containers:
        if c.role != "shared":
            continue
        svc = catalog().services[c.name]
        out.append(RenderedFile(f"{svc_dir(c.hostname)}/install.sh", install_script(c, resolved.site), 0o755))
        if aicservice.is_aicommons(svc):  # the unit; the wheel, lock and env file come with the engine's step
            out.append(RenderedFile(f"{svc_dir(c.hostname)}/{aicservice.unit_name(svc)}",
                                    aicservice.unit(svc, c, resolved.site)))
        if svc.install.method != "compose":
            continue
        if c.name == "langfuse":
            out += langfuse(resolved, c, secrets)
        elif c.name == "authentik":
            out += authentik(resolved, c, secrets)
        elif c.name == "searxng":
            out += searxng(resolved, c)
        else:
            out += generic(resolved, c)
    return out
