"""One user's Docker Compose bundle: the 8 apps wired to that user's slice of the shared layer.

Names come from the Tenant (plan/names.py made them); secrets are `${VAR}` references to the
bundle's `.env` (0600). Values that embed a secret (database and Redis URLs, the Qdrant JWT)
are whole `.env` entries, so the compose file itself never holds one.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import quote as urlquote

from aicommons.catalog.model import App
from aicommons.plan.deployed import redis_refused
from aicommons.plan.identity import EMAIL_HEADER, sign_in
from aicommons.plan.model import ResolvedSite, Tenant
from aicommons.plan.models import gateway_models, serving
from aicommons.plan.policy import bcrypt_hash, login_email, login_password, tenant_credentials, user_token
from aicommons.plan.secrets import SITE_SCOPE, SecretLookup
from aicommons.render.common import catalog, dump_yaml, endpoint_host, endpoint_url, port_of, reachable

HEADER = "# Rendered by aicommons for {user}: do not edit by hand. Secrets are in .env (0600).\n"
LOG_MAX = {"max-size": "10m", "max-file": "3"}
CHAINFORGE_DOCKERFILE = """\
# ChainForge has no upstream image: built here (`docker compose build chainforge`).
FROM python:3.12-slim
RUN pip install --no-cache-dir chainforge=={version}
EXPOSE {port}
CMD ["chainforge", "serve", "--host", "0.0.0.0", "--port", "{port}", "--dir", "/data"]
"""


def qdrant_token(t: Tenant, api_key: str) -> str:
    """The user's Qdrant JWT: the tenancy back end's own (rw on the user's collections, revocable)."""
    return user_token(t, api_key)


def _url(resolved: ResolvedSite, service: str, port_name: str | None = None) -> str | None:
    return endpoint_url(resolved, service, port_name) if reachable(resolved, service) else None


def _pg_url(resolved: ResolvedSite, t: Tenant, db: str, password: str) -> str | None:
    host, port = endpoint_host(resolved, "postgres"), port_of(resolved, "postgres")
    if host is None or not reachable(resolved, "postgres"):
        return None
    return f"postgresql://{urlquote(t.postgres_role)}:{urlquote(password, safe='')}@{host}:{port}/{db}"


def _redis_url(resolved: ResolvedSite, t: Tenant, password: str) -> str | None:
    host, port = endpoint_host(resolved, "redis"), port_of(resolved, "redis")
    if host is None or not reachable(resolved, "redis"):
        return None
    db = t.redis_db if t.redis_db is not None else 0
    port = t.redis_port or port  # the user's own server (redis.isolation=instance)
    return f"redis://{urlquote(t.redis_user)}:{urlquote(password, safe='')}@{host}:{port}/{db}"


def _db(t: Tenant, app_db: str) -> str:
    """The tenant's database for an app (from Tenant.databases: never re-derived)."""
    for d in t.databases:
        if d.startswith(app_db + "_"):
            return d
    raise KeyError(app_db)


def _bucket(t: Tenant, app: str) -> str:
    for b in t.buckets:
        if b.endswith("-" + app):
            return b
    raise KeyError(app)


class _Wiring:
    """Collects environment (plain) and .env entries (secret) per app."""

    def __init__(self, resolved: ResolvedSite, t: Tenant, secrets: SecretLookup) -> None:
        self.r, self.t, self.secrets = resolved, t, secrets
        self.env: dict[str, str] = {}  # .env content

    def secret(self, var: str, key: str, scope: str | None = None) -> str:
        self.env[var] = self.secrets(scope or self.t.user, key)
        return f"${{{var}}}"

    def put(self, var: str, value: str) -> str:
        self.env[var] = value
        return f"${{{var}}}"

    def s3(self) -> dict[str, str]:
        store = self.r.site.object_storage
        svc = catalog().services.get(store)
        url = _url(self.r, store, "s3")
        if not url or not svc:
            return {}
        # The key the object store really holds: tenancy imports keys derived from these secrets.
        kid, sec = tenant_credentials({k: self.secrets(self.t.user, k) for k in ("s3_access_key", "s3_secret_key")})
        return {"endpoint": url, "region": svc.app_env.get("S3_REGION_NAME", "us-east-1"),
                "access": self.put("S3_ACCESS_KEY", kid), "secret": self.put("S3_SECRET_KEY", sec)}

    def gateway(self, app: str) -> tuple[str, str | None, str] | None:
        """(the gateway's /v1 URL, its public /v1 URL, the person's key for this app as ${VAR}),
        or None: no gateway running, or the person has no key."""
        url = _url(self.r, "gateway", "http")
        if url is None or not self.t.gateway:
            return None
        from aicommons.plan.policy import gateway_key

        route = next((x.host for x in self.r.routes if x.service == "gateway"), None)
        key = gateway_key(self.t.user, self.secrets(self.t.user, "gateway_key")) + f"~{app}"
        return (f"{url}/v1", f"https://{route}/v1" if route else None,
                self.put(f"GATEWAY_KEY_{app.upper().replace('-', '_')}", key))

    def app_env(self, app: App, port: int, data: str | None) -> dict[str, str]:
        """The app's environment, the same for every runtime: the catalog's fixed settings
        (`App.env`: offline, no telemetry), then its wiring to this user's slice. `port` and
        `data` are where it listens and keeps its data in the runtime at hand."""
        r, t = self.r, self.t
        host = t.hosts.get(app.name, "")
        ollama = _url(r, "ollama", "api")
        e: dict[str, str] = dict(app.env)
        if app.name == "openwebui":
            e["ENABLE_PERSISTENT_CONFIG"] = "False"
            e["WEBUI_URL"] = f"https://{host}"
            if data:
                e["DATA_DIR"] = data
            e["WEBUI_SECRET_KEY"] = self.secret("WEBUI_SECRET_KEY", "webui_secret_key")
            pw = self.secrets(t.user, "postgres_password")
            if url := _pg_url(r, t, _db(t, "openwebui"), pw):
                e["DATABASE_URL"] = self.put("OPENWEBUI_DATABASE_URL", url)
            if redis_refused(app) is None and (url := _redis_url(r, t, self.secrets(t.user, "redis_password"))):
                e["REDIS_URL"] = self.put("REDIS_URL", url)
                e["REDIS_KEY_PREFIX"] = t.redis_prefix.rstrip(":")  # Open WebUI adds the ':' itself
            if q := _url(r, "qdrant", "http"):
                e.update(VECTOR_DB="qdrant", QDRANT_URI=q, ENABLE_QDRANT_MULTITENANCY_MODE="true",
                         QDRANT_COLLECTION_PREFIX=t.qdrant_prefix)
                # The model the collections are sized for (site.embedding).
                e.update(RAG_EMBEDDING_ENGINE=r.site.embedding.engine, RAG_EMBEDDING_MODEL=r.site.embedding.model)
                e["QDRANT_API_KEY"] = self.put("QDRANT_API_KEY",
                                               qdrant_token(t, self.secrets(SITE_SCOPE, "qdrant_api_key")))
            else:  # its own local store in its data dir
                e["VECTOR_DB"] = "chroma"
            if (s3 := self.s3()) and app.buckets:
                e.update(STORAGE_PROVIDER="s3", S3_ENDPOINT_URL=s3["endpoint"], S3_REGION_NAME=s3["region"],
                         S3_BUCKET_NAME=_bucket(t, "openwebui"), S3_ACCESS_KEY_ID=s3["access"],
                         S3_SECRET_ACCESS_KEY=s3["secret"], S3_ADDRESSING_STYLE="path")
            if gw := self.gateway(app.name):
                # Every model through the person's key (open-webui 0.6.41 config.py:1049-1067
                # OPENAI_API_KEYS/OPENAI_API_BASE_URLS, ';'-separated lists; :2852-2859
                # RAG_OPENAI_API_BASE_URL/_KEY, the embeddings of RAG_EMBEDDING_ENGINE=openai).
                e.update(ENABLE_OPENAI_API="true", OPENAI_API_BASE_URLS=gw[0], OPENAI_API_KEYS=gw[2],
                         ENABLE_OLLAMA_API="false")
                if r.site.embedding.engine == "openai":  # also without Qdrant (its local store embeds too)
                    e.update(RAG_EMBEDDING_ENGINE="openai", RAG_EMBEDDING_MODEL=r.site.embedding.model,
                             RAG_OPENAI_API_BASE_URL=gw[0], RAG_OPENAI_API_KEY=gw[2])
                if serving(r.site):
                    # Document search queries with the person's own question (0.6.41 config.py:1840;
                    # middleware.py chat_completion_files_handler): the site's small model does not
                    # write the JSON its query-generation prompt asks for, and an empty generated
                    # query fails the whole search.
                    e["ENABLE_RETRIEVAL_QUERY_GENERATION"] = "false"
            elif ollama:
                e.update(ENABLE_OLLAMA_API="true", OLLAMA_BASE_URL=ollama)
            else:  # nothing listens at its default (localhost:11434): do not dial it
                e["ENABLE_OLLAMA_API"] = "false"
            if sx := _url(r, "searxng", "http"):
                e.update(ENABLE_WEB_SEARCH="true", WEB_SEARCH_ENGINE="searxng",
                         SEARXNG_QUERY_URL=f"{sx}/search?q=<query>")
            if sign_in(r) is not None:
                # The route admits only the owner through forward-auth, which sets this header
                # (a client's own is removed: authResponseHeaders), and only Traefik reaches the
                # app: sign them in by the provider's e-mail header (plan/identity.py: one name for
                # every provider). Never without a running provider: nothing would strip it.
                e["WEBUI_AUTH_TRUSTED_EMAIL_HEADER"] = EMAIL_HEADER
        elif app.name == "n8n":
            if reachable(r, "postgres"):
                e.update(DB_TYPE="postgresdb", DB_POSTGRESDB_HOST=endpoint_host(r, "postgres") or "",
                         DB_POSTGRESDB_PORT=str(port_of(r, "postgres") or 5432),
                         DB_POSTGRESDB_DATABASE=_db(t, "n8n"), DB_POSTGRESDB_USER=t.postgres_role)
                e["DB_POSTGRESDB_PASSWORD"] = self.secret("POSTGRES_PASSWORD", "postgres_password")
            e["N8N_ENCRYPTION_KEY"] = self.secret("N8N_ENCRYPTION_KEY", "n8n_encryption_key")
            e.update(N8N_HOST=host, N8N_PROTOCOL="https", N8N_PORT=str(port),
                     N8N_WEBHOOK_URL=f"https://{host}/", N8N_PROXY_HOPS="1")  # WEBHOOK_URL is deprecated
            # The owner account is made (and kept) from these at every start, so no owner-setup
            # wizard ever shows; the person signs in with the credential `users show` and the
            # portal give (n8n 2.33.7 owner.instance-settings-loader.js, @n8n/config
            # instance-settings-loader.config.js).
            pw = login_password(self.secrets(t.user, "n8n_owner_password"))
            e.update(N8N_INSTANCE_OWNER_MANAGED_BY_ENV="true", N8N_INSTANCE_OWNER_EMAIL=login_email(t, r.site.domain),
                     N8N_INSTANCE_OWNER_FIRST_NAME=t.user, N8N_INSTANCE_OWNER_LAST_NAME="")
            e["N8N_INSTANCE_OWNER_PASSWORD_HASH"] = self.put("N8N_INSTANCE_OWNER_PASSWORD_HASH",
                                                             bcrypt_hash(pw, f"{t.user}/n8n"))
            # No OLLAMA_HOST: n8n does not read it (its Ollama credential holds the URL; catalog verify).
            if gw := self.gateway(app.name):  # its OpenAI credential, imported at start (render/native.py)
                e.update(AICOMMONS_GATEWAY_URL=gw[0], AICOMMONS_GATEWAY_KEY=gw[2])
        elif app.name == "jupyter":
            # No token: only Traefik reaches it, behind the owner's sign-in (the command sets
            # IdentityProvider.token to empty; JUPYTER_TOKEN would win over it).
            if gw := self.gateway(app.name):  # for the person's code: the openai SDK reads both
                e.update(OPENAI_BASE_URL=gw[0], OPENAI_API_KEY=gw[2])
            elif ollama:
                e["OLLAMA_HOST"] = ollama
        elif app.name == "code-server":
            # No PASSWORD: --auth none, only Traefik reaches it, behind the owner's sign-in.
            if gw := self.gateway(app.name):
                e.update(OPENAI_BASE_URL=gw[0], OPENAI_API_KEY=gw[2])
        elif app.name == "big-agi":
            if gw := self.gateway(app.name):
                # Its server calls the gateway as a LocalAI host (2.0.2 openai.access.ts: host +
                # "/v1/chat/completions", the key as Bearer), a dialect that lists every model the
                # gateway offers; its OpenAI dialect maps names onto OpenAI's own models (a gpt-5*
                # name would go to /v1/responses, which the gateway does not serve).
                e.update(LOCALAI_API_HOST=gw[0].removesuffix("/v1"), LOCALAI_API_KEY=gw[2])
            elif ollama:
                e["OLLAMA_API_HOST"] = ollama
        elif app.name == "kotaemon":
            e.update(GRADIO_SERVER_NAME="0.0.0.0", GRADIO_SERVER_PORT=str(port),
                     KH_FEATURE_USER_MANAGEMENT_ADMIN="admin")
            e["KH_FEATURE_USER_MANAGEMENT_PASSWORD"] = self.secret("KOTAEMON_ADMIN_PASSWORD", "kotaemon_admin_password")
            if gw := self.gateway(app.name):
                # flowsettings.py (0.11.0) makes its OpenAI LLM and embeddings the defaults once
                # OPENAI_API_KEY is not its placeholder; a model is named only when the gateway
                # serves one (else its defaults, gpt-4o-mini and text-embedding-3-large).
                e.update(OPENAI_API_BASE=gw[0], OPENAI_API_KEY=gw[2])
                chat_model, emb_model = gateway_models(r)
                if chat_model:
                    e["OPENAI_CHAT_MODEL"] = chat_model
                if emb_model:
                    e["OPENAI_EMBEDDINGS_MODEL"] = emb_model
            else:
                # flowsettings.py adds its Ollama LLM and embeddings only `if config("LOCAL_MODEL")`,
                # so KH_OLLAMA_URL goes with a model to name or not at all (catalog verify: with:).
                tags = r.site.ollama_tags if ollama else []  # the models the site's Ollama pulls
                chat = [m for m in tags if m != r.site.embedding.model]
                if chat:
                    e.update(KH_OLLAMA_URL=f"{ollama}/v1/", LOCAL_MODEL=chat[0])
                    if r.site.embedding.model in tags:  # served by the site's Ollama
                        e["LOCAL_MODEL_EMBEDDINGS"] = r.site.embedding.model
        elif app.name == "chainforge":
            # 0.3.6 has no Host check (CHAINFORGE_ALLOWED_HOSTS arrives in 0.3.7: catalog verify).
            # It hands OPENAI_BASE_URL and OPENAI_API_KEY to the page (flask_app.py,
            # fetchEnvironAPIKeys) and the browser calls the model: the gateway's public route.
            if (gw := self.gateway(app.name)) and gw[1]:
                e.update(OPENAI_BASE_URL=gw[1], OPENAI_API_KEY=gw[2])
            elif ollama:
                e["OPENAI_BASE_URL"] = f"{ollama}/v1"
        elif app.name == "flowise":
            e["PORT"] = str(port)
            if reachable(r, "postgres"):
                e.update(DATABASE_TYPE="postgres", DATABASE_HOST=endpoint_host(r, "postgres") or "",
                         DATABASE_PORT=str(port_of(r, "postgres") or 5432),
                         DATABASE_NAME=_db(t, "flowise"), DATABASE_USER=t.postgres_role)
                e["DATABASE_PASSWORD"] = self.secret("POSTGRES_PASSWORD", "postgres_password")
            e["SECRETKEY_PATH"] = data or "/root/.flowise"
            e["LOG_PATH"] = f"{data or '/root/.flowise'}/logs"  # default: inside the (read-only) package
            e["FLOWISE_SECRETKEY_OVERWRITE"] = self.secret("FLOWISE_SECRET_KEY", "flowise_secret_key")
            # Flowise 3 reads no FLOWISE_USERNAME/PASSWORD: its account is registered once the app
            # answers (render/native.py first_account, run by the driver), so /organization-setup
            # never shows; the gateway credential is made there too.
            if (gw := self.gateway(app.name)) and (allow := endpoint_host(r, "gateway")):
                # Its "ChatOpenAI Custom" node refuses a BasePath in 10.0.0.0/8 (flowise-components
                # 3.1.3 ChatOpenAICustom.js init -> src/httpSecurity.js checkDenyList): the default
                # deny list is kept, less the gateway's address (HTTP_SECURITY_CHECK=false drops the
                # built-in list, HTTP_DENY_LIST is then the whole list: getHttpDenyList).
                if deny := flowise_deny_list(allow):
                    e.update(HTTP_SECURITY_CHECK="false", HTTP_DENY_LIST=deny)
            if (s3 := self.s3()) and app.buckets:
                e.update(STORAGE_TYPE="s3", S3_STORAGE_BUCKET_NAME=_bucket(t, "flowise"),
                         S3_STORAGE_ACCESS_KEY_ID=s3["access"], S3_STORAGE_SECRET_ACCESS_KEY=s3["secret"],
                         S3_STORAGE_REGION=s3["region"], S3_ENDPOINT_URL=s3["endpoint"], S3_FORCE_PATH_STYLE="true")
        # No LANGFUSE_HOST for Open WebUI: 0.6.41 does not read it (tracing goes through its
        # Pipelines, configured in the app; catalog verify).
        return e


# flowise-components 3.1.3 dist/src/httpSecurity.js DEFAULT_DENY_LIST: where its nodes may not
# send requests unless HTTP_SECURITY_CHECK=false.
FLOWISE_DEFAULT_DENY = ("0.0.0.0", "10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "169.254.169.253",
                        "169.254.169.254", "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
                        "255.255.255.255/32", "::1", "fc00::/7", "fd00:ec2::254", "fe80::/10", "ff00::/8",
                        "localhost", "ip6-localhost")


def flowise_deny_list(allow: str) -> str | None:
    """Flowise's default deny list without the one address `allow` (its ranges split around it),
    as HTTP_DENY_LIST's comma-separated text; None when `allow` is no IP address."""
    try:
        ip = ipaddress.ip_address(allow)
    except ValueError:
        return None
    out: list[str] = []
    for entry in FLOWISE_DEFAULT_DENY:
        try:
            net = ipaddress.ip_network(entry)
        except ValueError:  # a host name
            out.append(entry)
            continue
        if ip not in net:
            out.append(entry)
        elif net.num_addresses > 1:
            out += [str(n) for n in sorted(net.address_exclude(ipaddress.ip_network(ip)))]  # type: ignore[arg-type]
    return ",".join(out)


def gateway_credential(resolved: ResolvedSite, t: Tenant, secrets: SecretLookup, app: str) -> tuple[str, str] | None:
    """(the gateway's /v1 URL, the person's key for `app`) for a credential made inside the app;
    None where no gateway runs or the person has no key. The key is the one the environment wiring
    gives (`_Wiring.gateway`)."""
    w = _Wiring(resolved, t, secrets)
    gw = w.gateway(app)
    return None if gw is None else (gw[0], w.env[gw[2][2:-1]])


def app_environment(resolved: ResolvedSite, t: Tenant, app: App, secrets: SecretLookup, *, port: int,
                    data: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """(environment, secrets) of one app: the one source both runtimes render from. Secret values
    appear in the environment only as `${VAR}`, their values in the second dict."""
    w = _Wiring(resolved, t, secrets)
    return w.app_env(app, port, data), w.env


# Apps that need no login of their own once only Traefik reaches them (the owner's forward-auth
# is the door): their images' arguments for it, as the native commands in the catalog have them.
# codercom/code-server appends these to its entrypoint's (out/node/cli.js: `--auth none`);
# docker-stacks runs its CMD, start-notebook.py, which passes them to jupyter_server
# (auth/identity.py: an empty token with no password disables authentication).
DOCKER_COMMAND = {
    "code-server": ["--auth", "none"],
    "jupyter": ["start-notebook.py", "--IdentityProvider.token="],
}


def _healthcheck(app: App) -> dict:
    url = f"http://127.0.0.1:{app.container_port}{app.health.path}"
    # Images differ in what they ship: try wget, then curl, then Python.
    probe = (f"wget -qO- {url} >/dev/null 2>&1 || curl -fsS {url} >/dev/null 2>&1 || "
             f"python3 -c \"import urllib.request; urllib.request.urlopen('{url}', timeout=5)\"")
    return {"test": ["CMD-SHELL", probe], "interval": "30s", "timeout": "10s", "retries": 5,
            "start_period": "120s"}


def compose_bundle(resolved: ResolvedSite, t: Tenant, secrets: SecretLookup) -> tuple[dict, dict[str, str]]:
    """(compose document, .env values) for one tenant."""
    cat = catalog()
    w = _Wiring(resolved, t, secrets)
    services: dict[str, dict] = {}
    volumes: dict[str, dict] = {}
    for name in t.apps:
        app = cat.apps[name]
        svc: dict = {}
        if name == "chainforge":
            svc["build"] = {"context": "./chainforge"}
        svc["image"] = app.image
        if name in DOCKER_COMMAND:
            svc["command"] = list(DOCKER_COMMAND[name])
        svc["container_name"] = f"{name}-{t.user}"
        svc["restart"] = "unless-stopped"
        env = w.app_env(app, app.container_port, app.data_path)
        if env:
            svc["environment"] = env
        svc["ports"] = [f"{t.ip}:{t.ports[name]}:{app.container_port}"]
        if app.data_path:
            vol = f"{name}-data"
            volumes[vol] = {}
            svc["volumes"] = [f"{vol}:{app.data_path}"]
        svc["mem_limit"] = f"{app.memory_mb}m"
        svc["healthcheck"] = _healthcheck(app)
        labels = {"aicommons.site": resolved.site.name, "aicommons.user": t.user, "aicommons.app": name}
        svc["labels"] = labels
        svc["logging"] = {"driver": "json-file",
                          "options": {**LOG_MAX, "labels": "aicommons.site,aicommons.user,aicommons.app"}}
        services[name] = svc
    doc: dict = {"name": f"aicommons-{t.user}", "services": services}
    if volumes:
        doc["volumes"] = volumes
    return doc, w.env


def render_compose(resolved: ResolvedSite, t: Tenant, secrets: SecretLookup) -> tuple[str, dict[str, str]]:
    doc, env = compose_bundle(resolved, t, secrets)
    return dump_yaml(doc, HEADER.format(user=t.user)), env


def chainforge_dockerfile() -> str:
    app = catalog().apps["chainforge"]
    return CHAINFORGE_DOCKERFILE.format(version=app.version, port=app.container_port)
