"""Shared containers' rendered configuration, delivered: one `service.<hostname>` step each,
plus the site's Ollama model list (`ollama.models`).

A service step pushes everything render_site made under `services/<hostname>/` to
/opt/aicommons/<hostname>/ (modes kept: secrets stay 0600), then inside the container runs
`install.sh` (the catalog recipe; for compose services it *is* the apply: `docker compose up`)
when it is new or changed, and copies the system config files to where the service reads
them and restarts or reloads it when any of them changed: the catalog's `configure` says where
each file goes and what makes it take effect. A driver that configures shared
services itself (`configures_services = True`, the LXC driver) gets no service steps.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from pathlib import Path

from aicommons.catalog import load_catalog
from aicommons.catalog.model import Configure
from aicommons.drivers.targets import digest
from aicommons.errors import PermanentError
from aicommons.render import aicservice

SERVICE_ROOT = "/opt/aicommons"
SERVICES_DIR = "services/"
OLLAMA_MODELS = "ollama.models"

def configure_of(service: str) -> Configure | None:
    """The catalog's word on how this service's rendered files take effect (None: nothing to copy)."""
    svc = load_catalog().services.get(service)
    return svc.configure if svc is not None else None


def system_files(service: str) -> set[str]:
    """The rendered files copied into the service's own config (the rest stay under SERVICE_ROOT)."""
    cfg = configure_of(service)
    return set(cfg.files) if cfg is not None else set()


def files_of(files: dict, hostname: str) -> dict:
    """{path relative to the container's directory: RenderedFile} of one shared container."""
    prefix = f"{SERVICES_DIR}{hostname}/"
    return {p[len(prefix):]: f for p, f in files.items() if p.startswith(prefix)}


def digests(files: dict) -> dict[str, str]:
    return {rel: f"{f.mode:o}:{digest(f.content)}" for rel, f in sorted(files.items())}


# A suspended user is `off` in the server's aclfile (ACL SAVE); the rendered file cannot know it,
# so a user the live file has `off` stays `off` in the copy that replaces it.
KEEP_ACL_OFF = ("awk 'NR==FNR {{ if ($1 == \"user\" && / off( |$)/) off[$2] = 1; next }} "
                "$1 == \"user\" && ($2 in off) {{ sub(/ on /, \" off \") }} 1' {live} {src} > {src}.merged "
                "&& cat {src}.merged > {src} && rm -f {src}.merged")  # cat keeps the 0600 file's mode


def apply_script(service: str, root: str, changed: set[str]) -> str | None:
    """Copy the changed system config files into place, then reload the service if a reload
    applies all of them, else restart it (None: nothing to do)."""
    cfg = configure_of(service)
    todo = [(rel, cfg.files[rel].path, cfg.files[rel].owner) for rel in sorted(changed)
            if cfg is not None and rel in cfg.files]
    if cfg is None or not todo:
        return None
    after = cfg.apply
    if cfg.reload is not None and {rel for rel, *_ in todo} <= set(cfg.reload.files):
        after = cfg.reload.command
    lines = ["set -eu"]
    for rel, dest, owner in todo:
        src = shlex.quote(posixpath.join(root, rel))
        if rel == "users.acl":
            lines.append(f"if [ -f {shlex.quote(dest)} ]; then umask 077; "
                         + KEEP_ACL_OFF.format(live=shlex.quote(dest), src=src) + "; fi")
        own = f" -o {shlex.quote(owner.split(':')[0])} -g {shlex.quote(owner.split(':')[1])}" if owner else ""
        lines.append(f'install -D -m "$(stat -c %a {src})"{own} {src} {shlex.quote(dest)}')
    lines.append(after)
    return "\n".join(lines) + "\n"


def run_service(ctx, step) -> str | None:
    c, files, fresh = step.payload
    d, root = ctx.driver, posixpath.join(SERVICE_ROOT, c.hostname)
    rec = None if fresh else ctx.store.applied().get(step.id)  # a new container has none of the files
    before = rec.attrs.get("files", {}) if rec is not None else {}
    now = digests(files)
    svc = load_catalog().services.get(c.name)
    extra: dict[str, tuple[bytes, int]] = {}  # an aicommons service's wheel, lock and settings
    starts: dict[str, str] = {}  # what of them it takes at start (aicservice.restart_basis)
    if svc is not None and aicservice.is_aicommons(svc):
        got = _aicommons_payload(ctx, svc, root)
        if isinstance(got, str):  # not deployable on this state: said. A PostgreSQL state is a new
            # state, without this record, so moving the state there deploys it on the next apply.
            ctx.store.record_applied(step.id, "service", None, step.fingerprint,
                                     {"ctid": c.ctid, "files": {}, "ran": [], "not_deployed": got})
            return got
        extra = got
        now.update({p: f"{mode:o}:{hashlib.sha256(aicservice.change_basis(svc, ctx.resolved, p, b)).hexdigest()}"
                    for p, (b, mode) in extra.items()})
        if aicservice.SITE_FILE in extra:  # every other file restarts it when changed (below)
            basis = aicservice.restart_basis(svc, ctx.resolved, extra[aicservice.SITE_FILE][0])
            starts = {aicservice.SITE_FILE: hashlib.sha256(basis).hexdigest()}
    changed = {rel for rel, h in now.items() if before.get(rel) != h}
    # runs-from.json only says what changed; a record from before `starts` was kept has none: restart.
    restart = bool(changed) and (bool(changed - {aicservice.SITE_FILE, RUNS_FROM})
                                 or (rec.attrs.get("starts", {}) if rec is not None else {}) != starts)
    if changed and aicservice.SITE_FILE in extra:  # whatever restarts it reads the site file as it is now
        changed.add(aicservice.SITE_FILE)
    for rel in sorted(changed):
        if rel in extra:
            data, mode = extra[rel]
            d.push(c.ctid, data, rel if rel.startswith("/") else posixpath.join(root, rel), mode)
            continue
        f = files[rel]
        d.push(c.ctid, f.content.encode(), posixpath.join(root, rel), f.mode)
    ran = []
    install_inputs = {"install.sh"} | {p for p in extra if not p.startswith("/")} | {
        p for p in files if svc is not None and aicservice.is_aicommons(svc) and p.endswith(".service")}
    if "install.sh" in files and (changed & install_inputs or "install.sh" in _compose_changed(files, changed)):
        _run(ctx, c, ["sh", "-eu", posixpath.join(root, "install.sh")], "install.sh")
        ran.append("install.sh")
    elif svc is not None and aicservice.is_aicommons(svc) and restart:  # its settings or what it takes at start
        _run(ctx, c, ["systemctl", "restart", aicservice.unit_name(svc)], "restart")
        ran.append("restart")
    script = apply_script(c.name, root, changed)
    if script:
        _run(ctx, c, ["sh", "-c", script], "config apply")
        ran.append("config apply")
    ctx.store.record_applied(step.id, "service", None, step.fingerprint,
                             {"ctid": c.ctid, "files": now, "starts": starts, "ran": ran})
    return None


RUNS_FROM = "runs-from.json"


def _wheel():
    """(file name, bytes) of this checkout's wheel; None where aicommons does not run from a
    checkout (inside the portal's own container): what the container has then stays."""
    from aicommons.drivers import runtime

    try:
        fname, _, wheel = runtime.wheel_bytes(runtime.checkout())
    except PermanentError:
        return None
    return fname, wheel


def runs_from_files(resolved, site_file) -> dict:
    """`services/<host>/runs-from.json` for each aicommons service: the digests of the site file
    (of the part it reads: aicservice.change_basis) and of the wheel it runs, so a changed site
    file (a user added, for the portal) or checkout plans its step."""
    import json

    from aicommons.render.files import RenderedFile

    cat = load_catalog()
    out = {}
    wheel = _wheel()
    site = Path(site_file).read_bytes()
    for c in resolved.containers:
        svc = cat.services.get(c.name)
        if c.role != "shared" or svc is None or not aicservice.is_aicommons(svc):
            continue
        basis = aicservice.change_basis(svc, resolved, aicservice.SITE_FILE, site)
        text = json.dumps({"site": hashlib.sha256(basis).hexdigest(),
                           "wheel": hashlib.sha256(wheel[1]).hexdigest() if wheel else "as installed"},
                          sort_keys=True) + "\n"
        out[f"{SERVICES_DIR}{c.hostname}/{RUNS_FROM}"] = RenderedFile(f"{SERVICES_DIR}{c.hostname}/{RUNS_FROM}", text)
    return out


def _aicommons_payload(ctx, svc, root: str) -> dict[str, tuple[bytes, int]] | str:
    """{path: (bytes, mode)} the engine pushes for an aicommons service (the portal): this
    checkout's wheel and the runtime lock (installed by hash, render/aicservice.install_script),
    the site file and the 0600 env file (state URL, secrets key). Relative paths go under the
    service's directory; absolute ones where the unit reads them. A string: why it cannot run."""
    from aicommons.drivers import runtime

    plane = ctx.control
    if plane is None:
        raise PermanentError(f"{svc.name}: the engine was given no site file and state to run it on")
    if svc.install.state and not plane.state_is_url:
        return (f"{svc.name} not deployed: it works on the site's state, which is the SQLite file {plane.state} on "
                "this machine, out of the container's reach; keep the state in PostgreSQL (`--state "
                "postgresql://…` or AICOMMONS_STATE) and apply again")
    site_path = aicservice.SITE_FILE
    # A service that does not work on the state (the gateway) gets neither it nor the secrets key.
    if ctx.resolved is None:
        raise PermanentError(f"{svc.name}: the engine was given no resolved site to take its settings from")
    env = {"AICOMMONS_SITE": site_path, **aicservice.own_env(svc, ctx.resolved, ctx.secrets.get)}
    if svc.install.state:
        env.update({"AICOMMONS_STATE": plane.state, **plane.key_env()})
    out = {site_path: (plane.site_file.read_bytes(), 0o600),
           aicservice.env_path(svc): (aicservice.env_file(env).encode(), 0o600)}
    wheel = _wheel()
    if wheel is not None:
        fname, data = wheel
        sha = hashlib.sha256(data).hexdigest()
        out.update({fname: (data, 0o644), aicservice.LOCK_FILE: (runtime.lock_text().encode(), 0o644),
                    aicservice.WHEEL_REQ: (f"aicommons @ file://{root}/{fname} --hash=sha256:{sha}\n".encode(),
                                           0o644)})
    return out


def _compose_changed(files: dict, changed: set[str]) -> set[str]:
    """For a compose project any file change is applied by re-running install.sh (`compose up`)."""
    return {"install.sh"} if "docker-compose.yml" in files and changed else set()


def _run(ctx, c, argv: list[str], what: str) -> None:
    res = ctx.driver.exec(c.ctid, argv, timeout=3600)
    if not res.ok:
        raise PermanentError(f"{what} in container {c.ctid} ({c.hostname}) failed (rc {res.rc}): "
                             f"{ctx.redact((res.stderr or res.stdout).strip()[-500:])}")


def ollama_url(resolved) -> str | None:
    ep = resolved.endpoints.get("ollama")
    if ep is None or not ep.ports:
        return None
    return f"http://{ep.host}:{ep.ports.get('api') or next(iter(ep.ports.values()))}"


def missing_models(url: str, models: list[str]) -> list[str]:
    """Models of the site Ollama does not have (raises TemporaryError when unreachable)."""
    from aicommons.tenancy.ollama import _same, list_models

    have = list_models(url)
    return [m for m in models if not any(_same(m, h) for h in have)]


def run_models(ctx, step) -> str | None:
    from aicommons.tenancy.ollama import pull_models

    url, models = step.payload
    results = pull_models(url, list(models))
    failed = [f"{r.model} ({r.status})" for r in results if r.status.startswith("failed")]
    if failed:
        raise PermanentError(f"Ollama at {url} could not pull: {', '.join(failed)}")
    ctx.store.record_applied(step.id, "ollama", None, step.fingerprint,
                             {"models": list(models), "pulled": [r.model for r in results if r.status == "pulled"]})
    return None
