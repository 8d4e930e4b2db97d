"""`aicommons catalog verify`: is every setting we render one its component reads?

`rendered_settings` lists, per component, each environment variable and config key the rendered
site gives it (pure: it reads the render output). Each is then looked up:

1. in the component's installed package, when the native-runtime layer is built
   (/var/cache/aicommons/apps/<app>-<version>-<hash>/: Python site-packages or node_modules):
   the setting's name must occur in its code (`grep_tree`);
2. else in the recorded evidence (evidence.yaml, next to this file): where the name was read in
   the component's own published package or source, at the pinned version (package and file,
   or repository, tag and path), or the real server that loaded the file in our tests;
3. else it is reported unchecked, with the reason the evidence file gives for that component.

A name searched for and not found is `missing`: a setting that component does not read.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EVIDENCE = Path(__file__).with_name("evidence.yaml")
LAYERS = Path(os.environ.get("AICOMMONS_APP_CACHE", "/var/cache/aicommons/apps"))

# Shared-compose entries that are one component under another name.
ENTRY_COMPONENT = {"langfuse-web": "langfuse", "langfuse-worker": "langfuse", "server": "authentik",
                   "worker": "authentik"}
# Rendered config files of shared services: (path under services/<host>/, format).
CONFIG_FILES = {"postgres": [("conf.d/aicommons.conf", "pgconf")], "redis": [("redis.conf", "redisconf")],
                "qdrant": [("config.yaml", "yaml")], "searxng": [("settings.yml", "yaml")],
                "ollama": [("systemd/override.conf", "systemd-env")], "garage": [("garage.toml", "toml")],
                "minio": [("minio.env", "env")]}


@dataclass
class Report:
    confirmed: dict[str, dict[str, str]] = field(default_factory=dict)  # component -> setting -> where
    missing: dict[str, list[str]] = field(default_factory=dict)         # searched, not found: wrong
    approximate: dict[str, str] = field(default_factory=dict)          # read at another version than pinned
    live: dict[str, tuple[list[str], str]] = field(default_factory=dict)  # checked against the real server (tests)
    unchecked: dict[str, tuple[list[str], str]] = field(default_factory=dict)  # component -> (settings, why)

    @property
    def ok(self) -> bool:
        return not self.missing


def _flatten(doc: object, prefix: str = "") -> list[str]:
    if not isinstance(doc, Mapping):
        return [prefix] if prefix else []
    out = []
    for k, v in doc.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out += _flatten(v, key) if isinstance(v, Mapping) and v else [key]
    return out


def _config_keys(text: str, fmt: str) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(("#", "["))]
    if fmt == "pgconf":
        return [ln.split("=", 1)[0].strip() for ln in lines if "=" in ln]
    if fmt == "redisconf":
        return [ln.split()[0] for ln in lines]
    if fmt == "env":
        return [ln.split("=", 1)[0] for ln in lines if "=" in ln]
    if fmt == "systemd-env":
        return [m.group(1) for m in re.finditer(r'Environment="([A-Z0-9_]+)=', text)]
    if fmt == "toml":
        return _flatten(tomllib.loads(text))
    return _flatten(yaml.safe_load(text) or {})


def rendered_settings(files: Mapping[str, Any]) -> dict[str, set[str]]:
    """component -> the settings the rendered files give it (env names, config keys)."""
    out: dict[str, set[str]] = {}
    for path, f in files.items():
        parts = path.split("/")
        if path.endswith(("docker-compose.yml", "compose.yaml")):
            doc = yaml.safe_load(f.content) or {}
            for name, svc in (doc.get("services") or {}).items():
                env = svc.get("environment") or {}
                keys = list(env) if isinstance(env, Mapping) else [e.split("=", 1)[0] for e in env]
                if keys:
                    out.setdefault(ENTRY_COMPONENT.get(name, name), set()).update(keys)
        elif parts[0] == "services" and len(parts) > 2:
            host, rel = parts[1], "/".join(parts[2:])
            for service, specs in CONFIG_FILES.items():
                for want, fmt in specs:
                    if rel == want and (host == service or host.startswith(f"{service}-")):
                        out.setdefault(service, set()).update(_config_keys(f.content, fmt))
    return out


def grep_tree(root: Path, names: Iterable[str],
              suffixes: tuple[str, ...] = (".py", ".js", ".cjs", ".mjs", ".ts", ".json")) -> dict[str, str]:
    """name -> first file (relative to root) that names it as a whole word: the package reads it there."""
    todo = set(names)
    found: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if not todo:
            break
        if not p.is_file() or p.suffix not in suffixes or p.stat().st_size > 8_000_000:
            continue
        try:
            text = p.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        for n in [n for n in todo if n in text and re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", text)]:
            found[n] = str(p.relative_to(root))
            todo.discard(n)
    return found


def _layer(app: str, version: str, layers: Path) -> Path | None:
    """The built native layer <app>-<version>-<hash>/ (with its `ready` marker), if any."""
    hits = sorted(d for d in layers.glob(f"{app}-*-*") if d.is_dir() and (d / "ready").exists()
                  and _same_version(d.name[len(app) + 1:].rsplit("-", 1)[0], version))
    return hits[-1] if hits else None


def load_evidence(path: Path = EVIDENCE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _same_version(a: str, b: str) -> bool:
    """v4.132.0 == 4.132.0, 0.3.6.0 == 0.3.6 (PyPI normalises trailing zero segments)."""
    def norm(v: str) -> str:
        v = str(v).removeprefix("v")
        while v.count(".") > 2 and v.endswith(".0"):
            v = v[:-2]
        return v
    return norm(a) == norm(b)


def verify(files: Mapping[str, Any], versions: Mapping[str, str], *, evidence: dict[str, Any] | None = None,
           layers: Path = LAYERS) -> Report:
    """Check every rendered setting. `versions`: component -> the pinned version rendered."""
    ev = load_evidence() if evidence is None else evidence
    rep = Report()
    for comp, keys in sorted(rendered_settings(files).items()):
        rec = ev.get("components", {}).get(comp)
        version = str(versions.get(comp, ""))
        layer = _layer(comp, version, layers) if version else None
        if layer is not None:
            where = {k: f"layer {layer.name}: {v}" for k, v in grep_tree(layer, keys).items()}
            if rec is not None and _same_version(rec.get("version", ""), version):
                # what a whole-word grep of text files cannot see (a compiled library, a settings
                # field read case-insensitively, the user's own code): the recorded reading
                found, user = rec.get("found") or {}, rec.get("for_user_code") or {}
                where.update({k: f"layer {layer.name}: {found[k]}" for k in keys if k not in where and k in found})
                where.update({k: f"user code: {user[k]}" for k in keys if k not in where and k in user})
        elif rec is not None and _same_version(rec.get("version", ""), version or rec.get("version", "")):
            found = {**(rec.get("found") or {}), **(rec.get("for_user_code") or {})}
            where = {k: f"{rec['source']}: {found[k]}" for k in keys if k in found}
            if not _same_version(rec.get("read_at", ""), rec.get("version", "")):
                rep.approximate[comp] = f"pinned {version}, read at {rec['read_at']} ({rec['source']})"
        elif comp in ev.get("live", {}):
            rep.live[comp] = (sorted(keys), ev["live"][comp])
            continue
        else:
            why = (ev.get("unchecked", {}).get(comp) or
                   (f"evidence is for {rec.get('version')}, the site pins {version}" if rec else "no evidence recorded"))
            rep.unchecked[comp] = (sorted(keys), why)
            continue
        rep.confirmed[comp] = where
        lost = sorted(set(keys) - set(where))
        if lost:
            rep.missing[comp] = lost
    return rep


def pinned_versions() -> dict[str, str]:
    """component -> the version the catalog pins (an app's native package version when it has one)."""
    from aicommons.catalog import load_catalog

    cat = load_catalog()
    out = {n: (a.native.version if a.native and a.native.version else a.version) for n, a in cat.apps.items()}
    out.update({n: s.version for n, s in cat.services.items()})
    return out


def registry_checks(timeout: float = 10) -> list[tuple[str, str, str]]:
    """(what, pin, result) for each pin a registry reachable here can confirm: PyPI and npm packages
    of the apps' native runtime, Debian packages of `apt` recipes. Container images are on registries
    this host cannot reach: listed as such."""
    import shutil
    import subprocess

    import httpx

    from aicommons.catalog import load_catalog

    cat = load_catalog()
    out = []
    with httpx.Client(timeout=timeout) as http:
        def probe(url: str) -> str:
            try:
                return {200: "exists", 404: "NOT FOUND"}.get(http.get(url).status_code, "unexpected answer")
            except httpx.HTTPError as exc:
                return f"not reachable ({type(exc).__name__})"
        for a in cat.apps.values():
            n = a.native
            if n and n.source == "pypi" and n.package:
                out.append((f"PyPI {n.package}", n.version, probe(f"https://pypi.org/pypi/{n.package}/{n.version}/json")))
            elif n and n.source == "npm" and n.package:
                out.append((f"npm {n.package}", n.version, probe(f"https://registry.npmjs.org/{n.package}/{n.version}")))
            out.append((f"image {a.image}", a.version, "not checkable here (no container registry is reachable)"))
    for s in cat.services.values():
        if s.install.method == "apt":
            for p in s.install.packages:
                have = shutil.which("apt-cache") and subprocess.run(
                    ["apt-cache", "show", "--no-all-versions", p], capture_output=True, text=True).returncode == 0
                out.append((f"Debian {p}", "bookworm", "exists" if have else "NOT FOUND"))
        elif s.install.image:
            out.append((f"image {s.install.image}", s.version, "not checkable here (no container registry is reachable)"))
    return out
