"""`aicommons catalog verify`: is every setting we render one its component reads?

`rendered_settings` lists, per component, each environment variable and config key the rendered
site gives it (pure: it reads the render output). Each is then looked up:

Evidence (evidence.yaml, next to this file) records, per setting, the file *and the code that
reads it*: `{file: …/DataSource.js, read: process.env.DATABASE_HOST}`. A record counts only when
`read` is a read of that setting in the file's language (`READ_FORMS`: `process.env.X`,
`os.environ.get("X")`, `getenv("X")`, …): a name in a grammar file, a type declaration (.d.ts) or
a README is refused as `not_read`. Each setting is then checked:

1. against the component's installed package, when its native-runtime layer is built
   (/var/cache/aicommons/apps/<app>-<version>-<hash>/): the recorded file must exist there and
   contain the recorded read (the pinned code, read now);
2. else on the record: where it was read in the component's own published package or source at
   the pinned version (package and file, or repository, tag and path), or the real server that
   loaded the file in our tests (`live`);
3. else it is reported unchecked, with the reason the evidence file gives for that component.

A setting with no record is `missing` (with a layer, `find_reads` suggests where it is read).
Older records that give only a file where the name occurs are reported as `named`: not a proof.

Values too (`values:` per component in evidence.yaml, each with the file and the code it comes
from): the rendered value of an environment setting (its `${X}` filled from the bundle's `.env`)
must pass the rule the component's code sets for it (`VALUE_RULES`): a key format it validates,
the reachability a URL needs (one a browser or a client outside the site calls must be a public
https name; one only the component's server calls stays inside the site), or the setting another
one switches on. A value that fails is `wrong`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    not_read: dict[str, list[str]] = field(default_factory=dict)        # evidence that is not a read: refused
    named: dict[str, list[str]] = field(default_factory=dict)           # only where the name occurs (older records)
    approximate: dict[str, str] = field(default_factory=dict)          # read at another version than pinned
    live: dict[str, tuple[list[str], str]] = field(default_factory=dict)  # checked against the real server (tests)
    unchecked: dict[str, tuple[list[str], str]] = field(default_factory=dict)  # component -> (settings, why)
    wrong: dict[str, list[str]] = field(default_factory=dict)           # a value its component's code refuses
    values: dict[str, dict[str, str]] = field(default_factory=dict)    # component -> setting -> the rule it passed

    @property
    def ok(self) -> bool:
        return not self.missing and not self.not_read and not self.wrong


# What a read of setting NAME looks like, per language (file suffixes). LOWER is the name in lower
# case (pydantic settings match environment names case-insensitively against field names).
_PY, _JS = (".py",), (".js", ".cjs", ".mjs", ".ts", ".tsx")
READ_FORMS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    # (an assignment - `os.environ["X"] = …`, `process.env.X = …` - sets it, never reads it)
    ("os.environ", _PY, r"""\bos\.environ(?:\.get)?\s*[\[(]\s*['"]NAME['"](?!\s*\]\s*=[^=])"""),
    ("getenv", _PY, r"""\bgetenv\s*\(\s*['"]NAME['"]"""),
    ("environ", _PY, r"""\benviron(?:\.get)?\s*[\[(]\s*['"]NAME['"](?!\s*\]\s*=[^=])"""),
    ("decouple config()", _PY, r"""\bconfig\s*\(\s*['"]NAME['"]"""),
    ("pydantic BaseSettings field", _PY, r"""^\s+LOWER\s*:"""),
    # a name -> label map whose names are then looked up one by one (chainforge's fetchEnvironAPIKeys)
    ("os.environ.get through a name map", _PY, r"""['"]NAME['"]\s*:\s*['"][^'"]*['"],[\s\S]*\bos\.environ\.get\(\s*key\s*\)"""),
    ("process.env", _JS, r"""\bprocess\.env(?:\.NAME\b|\[\s*['"`]NAME['"`]\s*\])(?!\s*=[^=])"""),
    # a field of a zod schema that is then parsed against process.env (langfuse's env.ts)
    ("zod env schema field", _JS, r"""^\s*NAME:\s*z\b"""),
    ("@Env decorator", _JS, r"""\bEnv\)?\s*\(\s*['"]NAME['"]"""),
    ("os.Getenv", (".go",), r'\bos\.(?:Getenv|LookupEnv)\s*\(\s*"NAME"'),
    # ollama's envconfig helpers: Var(key) is os.Getenv(key) trimmed; Uint/Bool/String wrap Var
    ("envconfig Var/Uint/Bool/String", (".go",), r'\b(?:Var|Uint|Uint64|Bool|String)\s*\(\s*"NAME"'),
    ("getenv()", (".c", ".cc", ".cpp", ".h"), r"""\b(?:secure_)?getenv\s*\(\s*"NAME"\s*\)"""),
    ("shell variable", (".sh",), r"""\$\{?NAME\b"""),
    # config-file keys (LEAF: the last part of a dotted key): the field of the struct serde fills
    # from the file (Qdrant, Garage), an entry of SearXNG's settings schema, a lookup in the settings
    ("serde struct field", (".rs",), r"""^\s*pub\s+LEAF\s*:"""),
    ("settings schema entry", _PY, r"""^\s*['"]LEAF['"]\s*:\s*SettingsValue\("""),
    ("SettingsValue environment name", _PY, r"""\bSettingsValue\([^\n]*['"]NAME['"]\s*\)"""),
    ("settings .get()", _PY, r"""settings\.get\(\s*['"]LEAF['"]"""),
)


def _form(label_or_regex: str, name: str) -> re.Pattern[str]:
    leaf = name.rsplit(".", 1)[-1]
    return re.compile(label_or_regex.replace("NAME", re.escape(name)).replace("LOWER", re.escape(name.lower()))
                      .replace("LEAF", re.escape(leaf)), re.M)


def read_form(name: str, file: str, read: str) -> str | None:
    """Which kind of read `read` (code from `file`) is of setting `name`, or None: not a read."""
    if file.endswith(".d.ts"):  # a type declaration names a variable, never reads it
        return None
    suffix = Path(file).suffix
    for label, suffixes, regex in READ_FORMS:
        if suffix in suffixes and _form(regex, name).search(read):
            return label
    return None


def find_reads(root: Path, names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """name -> (file relative to root, the code that reads it): the first read found under root.
    Used to suggest evidence, never as evidence (a read in some dependency is not the app's)."""
    todo = set(names)
    found: dict[str, tuple[str, str]] = {}
    suffixes = {s for _, sfx, _ in READ_FORMS for s in sfx}
    for p in sorted(root.rglob("*")):
        if not todo:
            break
        if p.suffix not in suffixes or p.name.endswith(".d.ts") or not p.is_file() or p.stat().st_size > 8_000_000:
            continue
        try:
            text = p.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        for n in [n for n in todo if n in text]:
            for _, sfx, regex in READ_FORMS:
                m = _form(regex, n).search(text) if p.suffix in sfx else None
                if m:
                    found[n] = (str(p.relative_to(root)), m.group(0).strip())
                    todo.discard(n)
                    break
    return found


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


def _dotenv(text: str) -> dict[str, str]:
    """A rendered `.env`: KEY='value' lines (shell-quoted by the renderer)."""
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = "".join(shlex.split(v)) if v.strip() else ""
    return out


def _fill(value: str, dotenv: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: dotenv.get(m.group(1), m.group(0)), value)


def rendered_env(files: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """component -> the environment of each of its compose entries ({variable: value}), `${X}`
    filled from the bundle's `.env` (left as written when the `.env` has no X)."""
    out: dict[str, list[dict[str, str]]] = {}
    for path, f in files.items():
        if not path.endswith(("docker-compose.yml", "compose.yaml")):
            continue
        dot = files.get(path.rsplit("/", 1)[0] + "/.env") if "/" in path else files.get(".env")
        secrets = _dotenv(dot.content) if dot is not None else {}
        doc = yaml.safe_load(f.content) or {}
        for name, svc in (doc.get("services") or {}).items():
            env = svc.get("environment") or {}
            pairs = env.items() if isinstance(env, Mapping) else (e.partition("=")[::2] for e in env)
            filled = {str(k): _fill(str(v), secrets) for k, v in pairs}
            if filled:
                out.setdefault(ENTRY_COMPONENT.get(name, name), []).append(filled)
    return out


def rendered_settings(files: Mapping[str, Any]) -> dict[str, set[str]]:
    """component -> the settings the rendered files give it (env names, config keys)."""
    out = {comp: {k for env in envs for k in env} for comp, envs in rendered_env(files).items()}
    for path, f in files.items():
        parts = path.split("/")
        if parts[0] == "services" and len(parts) > 2:
            host, rel = parts[1], "/".join(parts[2:])
            for service, specs in CONFIG_FILES.items():
                for want, fmt in specs:
                    if rel == want and (host == service or host.startswith(f"{service}-")):
                        out.setdefault(service, set()).update(_config_keys(f.content, fmt))
    return out


def reach(host: str | None) -> str:
    """"internal" (an address or name only the site's own network resolves or routes) or "public"."""
    if not host:
        return "internal"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "internal" if "." not in host or host.endswith((".internal", ".local", ".lan", ".localdomain")) else "public"
    return "internal" if ip.is_private or ip.is_loopback or ip.is_link_local else "public"


# hex:N: N hex digits; public-url: https on a public name (a browser or an outside client calls it);
# internal-url: an address inside the site (only the component's server calls it); with:OTHER: the
# component reads the setting only when OTHER is set too.
VALUE_RULES = ("hex:N", "public-url", "internal-url", "with:OTHER")


def _rule_fails(rule: str, value: str, env: Mapping[str, str]) -> str | None:
    """Why `value` breaks `rule` (one of VALUE_RULES), or None when it holds."""
    kind, _, arg = rule.partition(":")
    if kind == "hex":
        return None if re.fullmatch(rf"[0-9a-fA-F]{{{int(arg)}}}", value) else f"is not {arg} hex digits"
    if kind in ("public-url", "internal-url"):
        u = urlsplit(value)
        got = reach(u.hostname)
        if kind == "public-url" and (got != "public" or u.scheme != "https"):
            return f"{value} is not a public https URL, and a browser or a client outside the site calls it"
        if kind == "internal-url" and got != "internal":
            return f"{value} leaves the site, and only the component's own server calls it"
        return None
    if kind == "with":
        return None if arg in env else f"is used only when {arg} is set, and {arg} is not rendered"
    raise ValueError(f"unknown value rule {rule!r}: use one of {', '.join(VALUE_RULES)}")


def _check_values(comp: str, rec: Mapping[str, Any], envs: list[dict[str, str]], layer: Path | None,
                  rep: Report) -> None:
    """Each rule on each of the component's entries that sets the setting (Langfuse's web and worker)."""
    for key, rule_rec in sorted((rec.get("values") or {}).items()):
        rule, file, code = str(rule_rec["rule"]), str(rule_rec["file"]), str(rule_rec["code"])
        setting = [env for env in envs if key in env]
        if not setting:
            continue
        if layer is not None:  # the code the rule comes from must be in the pinned package
            path = layer / file
            if not path.is_file() or code not in path.read_text(encoding="utf-8", errors="ignore"):
                rep.not_read.setdefault(comp, []).append(f"{key}: the rule's code {code!r} is not in {file} of layer {layer.name}")
                continue
        whys = sorted({why for env in setting if (why := _rule_fails(rule, env[key], env))})
        if whys:
            rep.wrong.setdefault(comp, []).extend(f"{key} {why} ({rule}: {file}: {code})" for why in whys)
        else:
            rep.values.setdefault(comp, {})[key] = f"{rule} ({file})"


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


def _check_record(comp: str, key: str, rec: Any, layer: Path | None, source: str, rep: Report) -> str | None:
    """Where `key` is read, from its evidence record (checked against the layer when there is one)."""
    if isinstance(rec, str):  # an older record: a file where the name occurs, not the read
        rep.named.setdefault(comp, []).append(key)
        return f"{source}: {rec} (names it; the read is not recorded)"
    file, read = str(rec.get("file", "")), str(rec.get("read", ""))
    if read_form(key, file, read) is None:
        rep.not_read.setdefault(comp, []).append(f"{key}: {file}: {read!r} is not a read of {key}")
        return None
    if layer is None:
        return f"{source}: {file}: {read}"
    path = layer / file
    text = path.read_text(encoding="utf-8", errors="ignore") if path.is_file() else None
    if text is None or read not in text:
        rep.not_read.setdefault(comp, []).append(
            f"{key}: {file} {'does not contain ' + repr(read) if text is not None else 'is not in'} layer {layer.name}")
        return None
    return f"layer {layer.name}: {file}: {read}"


def verify(files: Mapping[str, Any], versions: Mapping[str, str], *, evidence: dict[str, Any] | None = None,
           layers: Path = LAYERS, suggest: bool = True) -> Report:
    """Check every rendered setting. `versions`: component -> the pinned version rendered."""
    ev = load_evidence() if evidence is None else evidence
    rep = Report()
    envs = rendered_env(files)
    for comp, keys in sorted(rendered_settings(files).items()):
        rec = ev.get("components", {}).get(comp)
        version = str(versions.get(comp, ""))
        layer = _layer(comp, version, layers) if version else None
        if rec is None or not _same_version(rec.get("version", ""), version or rec.get("version", "")):
            if comp in ev.get("live", {}):
                rep.live[comp] = (sorted(keys), ev["live"][comp])
            else:
                why = (ev.get("unchecked", {}).get(comp) or
                       (f"evidence is for {rec.get('version')}, the site pins {version}" if rec else "no evidence recorded"))
                rep.unchecked[comp] = (sorted(keys), why)
            continue
        if layer is None and not _same_version(rec.get("read_at", ""), rec.get("version", "")):
            rep.approximate[comp] = f"pinned {version}, read at {rec['read_at']} ({rec['source']})"
        found, user = rec.get("found") or {}, rec.get("for_user_code") or {}
        where: dict[str, str] = {}
        for k in sorted(keys):
            if k in found:
                got = _check_record(comp, k, found[k], layer, rec["source"], rep)
                if got:
                    where[k] = got
            elif k in user:  # for the user's own code running there, not the component (recorded why)
                where[k] = f"user code: {user[k]}"
        rep.confirmed[comp] = where
        _check_values(comp, rec, envs.get(comp, []), layer, rep)
        lost = sorted(set(keys) - set(where) - set(found))
        if lost:
            hints = find_reads(layer, lost) if layer is not None and suggest else {}
            rep.missing[comp] = [k + (f" (no record; read at {hints[k][0]}: {hints[k][1]})" if k in hints else "")
                                 for k in lost]
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
