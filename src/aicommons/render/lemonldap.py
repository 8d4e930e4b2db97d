"""LemonLDAP::NG 2.16 (Debian 12) as the site's sign-in provider: every file its container runs on.

- `lmConf-1.json`: the whole configuration (File backend). Users are authenticated against the
  `users` table of the site's PostgreSQL (Portal/Lib/DBI.pm check_password: `SELECT uid FROM users
  WHERE uid=? AND password=ENCRYPT(?,password)` with dbiAuthPasswordHash=encrypt, and
  Password/DBI.pm: `UPDATE users SET password=ENCRYPT(?)`): the two `encrypt` functions of
  `schema_sql` are bcrypt through pgcrypto. `dbiMailCol` is read by Portal/Lib/DBI.pm (mailField)
  for reset-by-mail, though 2.16's manager schema lacks it (so it is written here, never through
  lemonldap-ng-cli, which would drop it).
- One virtual host per route behind sign-in (locationRules/exportedHeaders/vhostOptions, keyed by
  host): an owner's app admits `$uid eq "<owner>"`, a site-users route any signed-in person.
  The three identity headers are exported under the names the site trusts (plan/identity.py).
- Sessions live in the same database (Apache::Session::Browseable::PgJSON), so `users suspend` and
  `remove` end them with one DELETE (tenancy/lemonldap.py). `localSessionStorage` empty:
  Handler/Main/Reload.pm sets a session cache only when it is set, so a deleted session is refused
  at once (with the default Cache::FileCache, only after 10 minutes).
- Sign-in reads the view `active_users` (the enabled rows): a suspended person cannot sign in and
  keeps their password and second factors for `users resume`.
- `Traefik.pm`: Handler/Server/Traefik.pm's `handler` returns the exported headers in its answer and
  the PSGI layer (Handler/Server/Main.pm set_header_in -> respHeaders) adds them again, so Traefik
  copied every header twice. The subclass answers an empty 200 and lets the PSGI layer add them once.
  `llng-fastcgi-server` loads it by class name from SOURCE_SERVER (`$sourceServer` is a class
  name unless it is `nginx` or `traefik`).
- `nginx.conf`: the HTTP bridge to the FastCGI server: the Traefik handler on one location
  (LLTYPE handler), the portal on the rest (LLTYPE psgi), as Debian's portal-nginx.conf does.
"""

from __future__ import annotations

import hashlib
import json

from aicommons.plan import identity
from aicommons.plan.model import ResolvedSite
from aicommons.plan.policy import scram_verifier
from aicommons.plan.secrets import SITE_SCOPE, SecretLookup
from aicommons.render.common import db_ident, endpoint_host, port_of, svc_dir
from aicommons.render.files import SECRET_MODE, RenderedFile
from aicommons.render.traefik import guarded

HEAD = "# Rendered by aicommons: do not edit by hand.\n"
DB = db_ident("lemonldap")  # its own database and role in the site's PostgreSQL
CONF_DIR = "/var/lib/lemonldap-ng/conf"
SOCKET = "/run/llng-fastcgi-server/llng-fastcgi.sock"
PERL_LIB = "/usr/local/lib/aicommons/perl"
HANDLER_CLASS = "Aicommons::LLNG::Traefik"
HTDOCS = "/usr/share/lemonldap-ng/portal/htdocs"
SMTP_TLS = {"starttls": "starttls", "tls": "ssl", "none": ""}  # Common/EmailTransport.pm SMTPTLS


def portal_url(resolved: ResolvedSite) -> str:
    return f"https://{identity.AUTH_PREFIX}.{resolved.site.domain}/"


def groups_header() -> str:
    # `$groups` joins the person's groups with multiValuesSeparator ("; ", Portal/Main/Process.pm
    # setLocalGroups); the site's trust path reads them '|'-separated, as Authentik sends them.
    return f'join("{identity.GROUP_SEPARATOR}", split(/; /, $groups))'


def _rule(route) -> str:
    if route.access == "owner" and route.owner:
        return f'$uid eq "{route.owner}"'  # user names are [a-z0-9-] (spec/models.py NAME_RE)
    return "accept"


def lmconf(resolved: ResolvedSite, secrets: SecretLookup) -> dict:
    """lmConf-1.json: every key is one of 2.16's (Common/Conf/DefaultValues.pm, Portal/Lib/DBI.pm)."""
    site = resolved.site
    pg_host, pg_port = endpoint_host(resolved, "postgres"), port_of(resolved, "postgres") or 5432
    dsn = f"dbi:Pg:dbname={DB};host={pg_host};port={pg_port}"
    db_password = secrets(SITE_SCOPE, "lemonldap_db_password")
    rules: dict[str, dict[str, str]] = {}
    headers: dict[str, dict[str, str]] = {}
    options: dict[str, dict[str, int]] = {}
    for r in resolved.routes:
        if r.kind != "http" or not guarded(resolved, r):
            continue
        rules[r.host] = {"default": _rule(r)}
        headers[r.host] = {identity.USER_HEADER: "$uid", identity.EMAIL_HEADER: "$mail",
                           identity.GROUPS_HEADER: groups_header()}
        options[r.host] = {"vhostHttps": 1, "vhostPort": 443}  # Traefik terminates TLS on 443
    conf: dict = {
        "cfgNum": 1, "cfgAuthor": "aicommons", "cfgVersion": "2.16.1",
        "key": secrets(SITE_SCOPE, "lemonldap_key"),
        "domain": site.domain, "portal": portal_url(resolved),
        "cookieName": "lemonldap", "securedCookie": 1, "httpOnly": 1, "sameSite": "Lax",
        "authentication": "DBI", "userDB": "Same", "passwordDB": "DBI", "registerDB": "Null",
        "dbiAuthChain": dsn, "dbiAuthUser": DB, "dbiAuthPassword": db_password,
        "dbiAuthTable": "active_users", "dbiAuthLoginCol": "uid", "dbiAuthPasswordCol": "password",
        "dbiAuthPasswordHash": "encrypt", "dbiMailCol": "mail",
        "dbiExportedVars": {"uid": "uid", "mail": "mail", "cn": "name", "operator": "operator"},
        "whatToTrace": "uid",
        "groups": {"aicommons-users": "1", identity.OPERATORS_GROUP: "$operator"},
        "locationRules": rules, "exportedHeaders": headers, "vhostOptions": options,
        # Sessions in the same database (Apache::Session::Browseable::PgJSON: a jsonb per session,
        # its Store::Postgres takes DataSource/UserName/Password/TableName/Commit): the control
        # plane ends a person's sessions with one DELETE (users suspend/remove).
        "globalStorage": "Apache::Session::Browseable::PgJSON",
        "globalStorageOptions": {"DataSource": dsn, "UserName": DB, "Password": db_password,
                                 "TableName": "sessions", "Commit": 1},
        "localSessionStorage": "",
        # ... and no in-process copy of the last session either (Handler/Main/Run.pm retrieveSession
        # reuses it for handlerInternalCache seconds, 15 by default): a suspension bites at once.
        "handlerInternalCache": 0,
        "portalDisplayResetPassword": 1, "portalDisplayRegister": 0,
        "mailUrl": portal_url(resolved) + "resetpwd",
        "totp2fActivation": 1, "totp2fSelfRegistration": 1,
        "captcha_login_enabled": 0, "notification": 0,
    }
    if site.smtp:
        s = site.smtp
        # SMTP authentication is not rendered yet: smtp.password is a reference resolved only where
        # the mail is sent (aicommons' own invitations); LL::NG's resets need a relay that trusts it.
        conf.update(mailFrom=s.sender, SMTPServer=s.host, SMTPPort=s.port, SMTPTLS=SMTP_TLS[s.security])
    # The handler refuses a configuration without cfgDate ("No configuration available",
    # Handler/Main/Reload.pm) and reloads when cfgNum or cfgDate differ from what it holds: a
    # number that changes with the content (render is pure: no clock) makes every change count.
    digest = hashlib.sha256(json.dumps(conf, sort_keys=True).encode()).digest()
    conf["cfgDate"] = 1_000_000_000 + int.from_bytes(digest[:4], "big") % 1_000_000_000
    return conf


def ini(conf_dir: str = CONF_DIR) -> str:
    """lemonldap-ng.ini: the File configuration backend and no configuration cache (a restart then
    always reads the rendered lmConf-1.json, never a cached copy of an older one)."""
    return "\n".join([
        "; Rendered by aicommons: do not edit by hand.",
        "[all]", "logLevel = warn", "",
        "[configuration]", "type = File", f"dirName = {conf_dir}", "",
        "[portal]", "staticPrefix = /static", "templateDir = /usr/share/lemonldap-ng/portal/templates",
        "languages = en, fr, de, es", "",
        "[handler]", "status = 0", "",
    ]) + "\n"


def workers(people: int) -> int:
    """FastCGI workers for a site of `people`: every request to every app asks the handler first,
    and one page can open dozens at once (the journey saw two workers overrun: 502s). Two for a
    small site (~100 MB each), one more per ten people, Debian's seven at most (~700 MB of the
    container's 1 GB)."""
    return min(7, 2 + people // 10)


def fastcgi_env(socket: str = SOCKET, nproc: int = 2) -> str:
    """/etc/default/lemonldap-ng-fastcgi-server (the unit's EnvironmentFile; llng-fastcgi-server reads
    SOCKET, PID, USER, GROUP, NPROC, SOURCE_SERVER); NPROC from `workers`."""
    run_dir = socket.rsplit("/", 1)[0]
    return HEAD + "\n".join([f"SOCKET={socket}", f"PID={run_dir}/llng-fastcgi-server.pid", "USER=www-data",
                             "GROUP=www-data", f"NPROC={nproc}", f"SOURCE_SERVER={HANDLER_CLASS}",
                             f"PERL5LIB={PERL_LIB}"]) + "\n"


HANDLER_PM = f"""\
# Rendered by aicommons: do not edit by hand.
# LL::NG 2.16's Traefik server class returns the exported headers itself and the PSGI layer adds
# them again (every header arrived twice); answer an empty 200 and let the PSGI layer add them once.
package {HANDLER_CLASS};

use strict;
use Mouse;

extends 'Lemonldap::NG::Handler::Server::Traefik';

sub handler {{
    return [ 200, [ 'Content-Length' => 0 ], [] ];
}}

1;
"""


def nginx_conf(listen: str, socket: str = SOCKET, htdocs: str = HTDOCS) -> str:
    """The portal and the Traefik handler behind one nginx server (after Debian's portal-nginx.conf)."""
    fcgi = ["    include /etc/nginx/fastcgi_params;", f"    fastcgi_pass unix:{socket};"]
    return "\n".join([
        HEAD.rstrip(),
        "server {",
        f"  listen {listen};",
        f"  root {htdocs}/;",
        "  location = /ping { default_type text/plain; return 200 'ok'; }",
        f"  location = {identity.LEMONLDAP_AUTH_PATH} {{",
        *[" " + line for line in fcgi],
        "     fastcgi_param LLTYPE handler;",
        "  }",
        "  location /static/ { alias " + htdocs + "/static/; }",
        "  location /javascript/ { alias /usr/share/javascript/; }",
        "  # The portal's REST/SOAP endpoints stay closed, as Debian ships them.",
        "  location ~ ^/(adminSessions|proxy|sessions|config|notification) { deny all; }",
        "  location / {",
        "    rewrite ^/(.*)$ /index.psgi/$1 break;",
        *fcgi,
        "    fastcgi_param LLTYPE psgi;",
        "    fastcgi_param SCRIPT_FILENAME $document_root/index.psgi;",
        "    fastcgi_split_path_info ^(.*\\.psgi)(/.*)$;",
        "    fastcgi_param PATH_INFO $fastcgi_path_info;",
        "  }",
        "}",
    ]) + "\n"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def schema_sql(password: str) -> str:
    """Run by the superuser in the PostgreSQL container (idempotent): the role and database, then
    the users table and the two `encrypt` functions LL::NG's DBI modules call. The role's password
    reaches the server only as a SCRAM verifier (salt derived from it: the file is stable)."""
    salt = hashlib.sha256(b"aicommons-lemonldap|" + password.encode()).digest()[:16]
    verifier = _literal(scram_verifier(password, salt))
    return HEAD.replace("#", "--") + "\n".join([
        r"\set ON_ERROR_STOP on",
        f"SELECT 'CREATE ROLE {DB} LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{DB}') \\gexec",
        f"ALTER ROLE {DB} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {verifier};",
        f"SELECT 'CREATE DATABASE {DB} OWNER {DB}' WHERE NOT EXISTS "
        f"(SELECT 1 FROM pg_database WHERE datname = '{DB}') \\gexec",
        f"REVOKE ALL ON DATABASE {DB} FROM PUBLIC;",
        f"\\connect {DB}",
        "CREATE EXTENSION IF NOT EXISTS pgcrypto;",
        f"SET ROLE {DB};",
        # password NULL: no usable password (invited, suspended); ENCRYPT(x, NULL) is NULL: no match.
        "CREATE TABLE IF NOT EXISTS users (uid text PRIMARY KEY, mail text NOT NULL UNIQUE, name text NOT NULL,"
        " password text, operator boolean NOT NULL DEFAULT false);",
        # Sign-in reads the enabled people only (an updatable view: a password reset writes through it).
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS enabled boolean NOT NULL DEFAULT true;",
        "CREATE OR REPLACE VIEW active_users AS SELECT * FROM users WHERE enabled;",
        # Apache::Session::Browseable::PgJSON's table (its POD), indexed on whose session it is.
        "CREATE TABLE IF NOT EXISTS sessions (id varchar(64) NOT NULL PRIMARY KEY, a_session jsonb);",
        "CREATE INDEX IF NOT EXISTS sessions_who ON sessions ((a_session ->> 'uid'));",
        "CREATE INDEX IF NOT EXISTS sessions_kind ON sessions ((a_session ->> '_session_kind'));",
        "CREATE TABLE IF NOT EXISTS invitations (token_sha256 text PRIMARY KEY,"
        " uid text NOT NULL REFERENCES users(uid) ON DELETE CASCADE, expires timestamptz NOT NULL);",
        "CREATE OR REPLACE FUNCTION encrypt(text) RETURNS text LANGUAGE sql VOLATILE"
        " AS $$ SELECT public.crypt($1, public.gen_salt('bf', 12)) $$;",
        "CREATE OR REPLACE FUNCTION encrypt(text, text) RETURNS text LANGUAGE sql IMMUTABLE"
        " AS $$ SELECT public.crypt($1, $2) $$;",
        "RESET ROLE;",
    ]) + "\n"


def files(resolved: ResolvedSite, secrets: SecretLookup) -> list[RenderedFile]:
    """The LL::NG container's files (catalog lemonldap.yaml `configure`)."""
    out: list[RenderedFile] = []
    for c in resolved.containers:
        if c.role == "shared" and c.name == "lemonldap":
            d = svc_dir(c.hostname)
            out += [RenderedFile(f"{d}/lemonldap-ng.ini", ini()),
                    RenderedFile(f"{d}/lmConf-1.json", json.dumps(lmconf(resolved, secrets), indent=1,
                                                                  sort_keys=True) + "\n", SECRET_MODE),
                    RenderedFile(f"{d}/fastcgi.env", fastcgi_env(nproc=workers(len(resolved.tenants)))),
                    RenderedFile(f"{d}/Traefik.pm", HANDLER_PM),
                    RenderedFile(f"{d}/nginx.conf", nginx_conf(f"{c.ip}:{identity.LEMONLDAP_HTTP_PORT}"))]
    return out
