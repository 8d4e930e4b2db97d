"""A user's apps in the native runtime, on the LXC driver.

The layers (drivers/applayers.py) are built once on the host and bound read-only into every
user's container (`lxc.mount.entry ... bind,ro`), so adding a user installs nothing. Per user,
inside its container: a system user and a data dir per app (the user's data stays in its
container: archive and backup keep it), the rendered units installed, every app started at once
(Open WebUI alone needs ~46 s on two cores), then one probe inside waits for all health checks.
Only Traefik reaches a user's apps: the site namespace's bridge filter (render/bridge_filter.py,
loaded by netns.load_bridge_filter) drops every other container's frames to them.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
import time

from aicommons.catalog import load_catalog
from aicommons.errors import AicError, PermanentError, TemporaryError
from aicommons.plan.model import Container

_FAILED: dict[str, str] = {}  # layer builds that failed in this process: not retried per container
READY_TIMEOUT = 900  # first start runs every migration; three users start at once on two cores
STATE = "state"  # <root>/state/<app>.sha: what the running unit was started from


# ---- layers --------------------------------------------------------------------------------

def layer_mounts(c: Container, cache_dir: str, log) -> list[tuple[str, str]]:
    """(host dir, mount point) of the layers a user container's apps need, built if missing.
    An app whose layer cannot be built is left out (and reported when its unit cannot start)."""
    from aicommons.drivers import applayers

    cat = load_catalog()
    out: list[tuple[str, str]] = []
    nodes: set[str] = set()
    for name in c.services:
        app = cat.apps.get(name)
        if app is None or app.native is None or app.native.source == "none":
            continue
        if name in _FAILED:
            continue
        try:
            out.append((str(applayers.ensure_layer(app, cache_dir, log)), applayers.mount_point(app)))
            if app.native.node and app.native.node not in nodes:
                nodes.add(app.native.node)
                out.append((str(applayers.ensure_node(app.native.node, cache_dir, log)),
                            applayers.node_mount_point(app.native.node)))
        except AicError as exc:
            _FAILED[name] = str(exc)
            log(f"{name}: no layer, the app will not start ({exc})")
    return out


def mount_lines(config_text: str) -> list[str]:
    return [ln for ln in config_text.splitlines() if ln.startswith("lxc.mount.entry")]


# ---- running -------------------------------------------------------------------------------

_PROBE = r"""
import json, sys, time, urllib.request, urllib.error, subprocess
apps, deadline = json.loads(sys.argv[1]), time.monotonic() + float(sys.argv[2])
start, done = time.monotonic(), {}
while len(done) < len(apps) and time.monotonic() < deadline:
    for a in apps:
        if a["name"] in done:
            continue
        try:
            code = urllib.request.urlopen(a["url"], timeout=3).status
        except urllib.error.HTTPError as e:
            code = e.code
        except Exception:
            code = 0
        if code == a["expect"]:
            done[a["name"]] = round(time.monotonic() - start, 1)
        else:
            restarts = subprocess.run(["systemctl", "show", "-p", "NRestarts", "--value", a["unit"]],
                                      capture_output=True, text=True).stdout.strip()
            failed = subprocess.run(["systemctl", "is-failed", "--quiet", a["unit"]]).returncode == 0
            if failed or (restarts.isdigit() and int(restarts) >= 3):
                done[a["name"]] = None  # failed for good, or keeps failing at start
    time.sleep(1)
print(json.dumps(done))
"""


# Accounts made once an app answers (render/native.py first_account): `done` first, so a made
# account is left alone; the file holds the credential and is read here, inside the container.
# Then, signed in as that account (its session cookies), the `then` calls of every apply (Flowise's
# gateway credential). No value sent is ever echoed in the report.
_ACCOUNTS = r"""
import json, sys, urllib.request, urllib.error
def call(base, c, cookie=""):
    body = json.dumps(c["body"]).encode() if "body" in c else b"{}"
    headers = {"Content-Type": "application/json", **c.get("headers", {}), **({"Cookie": cookie} if cookie else {})}
    req = urllib.request.Request(base + c["path"], data=body, method=c["method"], headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(errors="replace"), r.headers.get_all("Set-Cookie") or []
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), []
def sent(v):
    if isinstance(v, dict):
        return [s for x in v.values() for s in sent(x)]
    return [v] if isinstance(v, str) and len(v) >= 8 else []
def report(code, text, c):
    for s in sent(c.get("body")):
        text = text.replace(s, "***")
    return f"HTTP {code} {text[:200]}"
out = {}
for a in json.loads(sys.argv[1]):
    spec, base = json.load(open(a["file"])), a["base"]
    res = out[a["name"]] = {}
    if spec["done"]["contains"] in call(base, spec["done"])[1]:
        res["account"] = "kept"
    else:
        code, text, _ = call(base, spec["make"])
        done = spec["done"]["contains"] in call(base, spec["done"])[1]
        res["account"] = "made" if 200 <= code < 300 and done else "failed: " + report(code, text, spec["make"])
    if res["account"] == "made" or res["account"] == "kept":
        if spec.get("then"):
            code, text, cookies = call(base, spec["signin"])
            cookie = "; ".join(c.split(";", 1)[0] for c in cookies)
            for step in spec["then"]:
                if code == 401:  # the person changed the app's password: theirs now, left alone
                    res[step["label"]] = "not set: the app refused the account's sign-in (password changed?)"
                elif not 200 <= code < 300 or not cookie:
                    res[step["label"]] = "failed: sign-in " + report(code, text, spec["signin"])
                else:
                    c, t, _ = call(base, step, cookie)
                    res[step["label"]] = "set" if 200 <= c < 300 else "failed: " + report(c, t, step)
print(json.dumps(out))
"""


def make_accounts(driver, t, root: str, apps: list[dict]) -> dict[str, dict[str, str]]:
    """app -> {"account": made / kept, <label of a later call>: set / not set: why}, for the apps
    whose account the bundle asks for; a failure stops the apply."""
    wanted = [{"name": a["name"], "base": f"http://{t.ip}:{a['port']}", "file": posixpath.join(root, a["account"])}
              for a in apps if a.get("account")]
    if not wanted:
        return {}
    res = driver.exec(t.ctid, ["python3", "-c", _ACCOUNTS, json.dumps(wanted)], timeout=120)
    try:
        got = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise TemporaryError(f"user {t.user}: making the app accounts failed: {res.stderr.strip()[-300:]}",
                             delay=5) from None
    bad = [f"{app}'s {what}: {v}" for app, r in got.items() for what, v in r.items() if v.startswith("failed")]
    if bad:
        raise PermanentError(f"user {t.user}: " + "; ".join(bad))
    return got


def _digest(files: dict, app: str) -> str:
    h = hashlib.sha256()
    for rel in (f"units/aic-{app}.service", f"env/{app}.env"):
        f = files.get(rel)
        h.update(rel.encode() + b"\0" + (f.content.encode() if f else b"") + b"\0")
    return h.hexdigest()


def run_native(driver, t, root: str, files: dict) -> str:
    manifest = json.loads(files["native.json"].content)
    apps = manifest["apps"]
    ctid = t.ctid
    q = shlex.quote
    missing = [a["name"] for a in apps if a["name"] in _FAILED]
    if missing:
        raise PermanentError(f"user {t.user}: no layer for {', '.join(missing)}: "
                             + "; ".join(f"{m}: {_FAILED[m][-300:]}" for m in missing))
    # The layers of now (a pin changed, or a layer was built after the container started): the
    # config is rewritten and, where its mounts changed, update() restarts the container.
    cfg = driver._dir(ctid) / "config"
    before = mount_lines(cfg.read_text())
    driver.update(_container_of(driver, ctid, tuple(a["name"] for a in apps) + tuple(manifest["unavailable"])))
    if mount_lines(cfg.read_text()) != before:
        driver.wait_ready(ctid)
    script = [f"chmod 0700 {q(root)}/env {q(root)}/accounts 2>/dev/null || true"]
    for a in apps:
        user, data = q(a["user"]), q(a["data_dir"])
        script += [f"id -u {user} >/dev/null 2>&1 || useradd --system --user-group --home-dir {data} "
                   f"--no-create-home --shell /usr/sbin/nologin {user}",
                   f"install -d -o {user} -g {user} -m 0700 {data}",
                   f"install -m 0644 {q(posixpath.join(root, 'units', a['unit']))} /etc/systemd/system/{q(a['unit'])}"]
    wanted = {a["unit"] for a in apps}
    # Units of apps no longer in the bundle: stopped and removed (their data dirs stay).
    script.append("for u in $(cd /etc/systemd/system && ls aic-*.service 2>/dev/null); do case \" "
                  + " ".join(sorted(wanted)) + " \" in *\" $u \"*) ;; *) systemctl disable --now $u; "
                  "rm -f /etc/systemd/system/$u;; esac; done")
    script.append("systemctl daemon-reload")
    driver.sh(ctid, "\n".join(script), timeout=300)
    if not apps:
        return "no app of this user runs natively"
    # Started together; a unit whose files changed since it started is restarted.
    old = driver.exec(ctid, ["sh", "-c", f"cat {q(root)}/{STATE}/*.sha 2>/dev/null"]).stdout.split()
    changed = [a["unit"] for a in apps if _digest(files, a["name"]) not in old]
    units = " ".join(q(a["unit"]) for a in apps)
    cmds = [f"systemctl enable --quiet {units}"]
    if changed:
        cmds.append("systemctl restart --no-block " + " ".join(map(q, changed)))
    cmds.append(f"systemctl start --no-block {units}")
    cmds.append(f"mkdir -p {q(root)}/{STATE}")
    cmds += [f"echo {_digest(files, a['name'])} > {q(root)}/{STATE}/{a['name']}.sha" for a in apps]
    driver.sh(ctid, "\n".join(cmds), timeout=120)
    probe = [{"name": a["name"], "unit": a["unit"], "expect": a["expect_status"],
              "url": f"http://{t.ip}:{a['port']}{a['health_path']}"} for a in apps]
    began = time.monotonic()
    res = driver.exec(ctid, ["python3", "-c", _PROBE, json.dumps(probe), str(READY_TIMEOUT)],
                      timeout=READY_TIMEOUT + 60)
    try:
        ready = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise TemporaryError(f"user {t.user}: the readiness probe failed: {res.stderr.strip()[-300:]}",
                             delay=5) from None
    bad = [a for a in apps if ready.get(a["name"]) is None]
    if bad:
        why = []
        for a in bad:
            state = "failed" if a["name"] in ready else f"not answering after {READY_TIMEOUT}s"
            # The app's own last words, not systemd's restart lines.
            tail = driver.exec(ctid, ["journalctl", f"_SYSTEMD_UNIT={a['unit']}", "-n", "40", "--no-pager", "-o",
                                      "cat"]).stdout
            lines = [ln for ln in tail.strip().splitlines() if ln.strip() and not ln.startswith(("│", "╭", "╰"))]
            why.append(f"{a['name']} {state} ({' | '.join(lines[-6:])[-600:]})")
        raise PermanentError(f"user {t.user}: apps did not come up: " + "; ".join(why))
    took = time.monotonic() - began
    accounts = make_accounts(driver, t, root, apps)
    return (f"{len(apps)} apps answer ({', '.join(f'{n} {s}s' for n, s in ready.items())}; all within "
            f"{took:.0f}s)" + (f"; not available natively: {', '.join(manifest['unavailable'])}"
                                if manifest.get("unavailable") else "")
            + (f"; accounts: {', '.join(f'{n} ' + ', '.join(f'{k} {v}' for k, v in r.items()) for n, r in accounts.items())}"
               if accounts else ""))


def _container_of(driver, ctid: int, apps: tuple[str, ...]) -> Container:
    """The container as its config says, with the user's apps of now (the config keeps those of
    its creation: the engine does not replace a container for a changed app list)."""
    meta = driver._meta(ctid)
    if meta is None:
        raise PermanentError(f"container {ctid} does not exist")
    return Container(ctid=int(ctid), ip=meta["ip"], prefixlen=driver.net.prefixlen, gateway=driver.net.gateway,
                     hostname=meta["hostname"], role=meta["role"], name=meta["name"],
                     services=apps, phase=0, memory_mb=meta["memory_mb"],
                     cores=meta["cores"], disk_gb=meta["disk_gb"], traefik_file="")
