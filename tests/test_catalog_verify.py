"""Every setting aicommons renders is one its component reads at the pinned version (issue 14).

REAL: the render of a site with every catalog service and app; the recorded evidence
(src/aicommons/catalog/evidence.yaml: the file and the code that reads each setting in the
component's published package or source, collected from PyPI/npm packages and git snapshots at
the pinned tags); the native-runtime layers under /var/cache/aicommons/apps when they are built
(skipped otherwise, with the reason), where each recorded read must be found in the recorded
file; a tiny vendored stand-in layer (tests/data/catalog-layers) for the refusals;
PostgreSQL 15's pg_settings and Redis 7's CONFIG GET for their config keys
(fixtures `pg`, `redis_server`). Nothing here asks a registry: `aicommons catalog verify
--registries` does that.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import redis as redislib

from aicommons.catalog.verify import LAYERS, _layer, load_evidence, pinned_versions, rendered_settings, verify
from aicommons.plan import resolve
from aicommons.render import render_site
from aicommons.spec.default import render_site_yaml
from aicommons.spec.load import load_text


def _files(driver="proxmox"):
    site, index = load_text(render_site_yaml(users=1, driver=driver))
    return render_site(resolve(site, index=index), lambda scope, key: "x" * 40)


@pytest.fixture(scope="module")
def files():
    return _files()


def test_every_rendered_setting_is_read_by_its_component(files, tmp_path):
    rep = verify(files, pinned_versions(), layers=tmp_path)  # the recorded evidence alone
    assert rep.missing == {}
    assert {"openwebui", "n8n", "flowise", "langfuse", "qdrant", "garage", "searxng", "ollama"} <= set(rep.confirmed)
    # what could not be checked is exactly what the evidence file says, with its reason
    ev = load_evidence()
    assert set(rep.unchecked) == set(ev["unchecked"]) & set(rendered_settings(files))
    assert set(rep.live) == {"postgres", "redis"}
    assert all(where for comp in rep.confirmed.values() for where in comp.values())


def test_a_setting_the_component_does_not_read_is_caught(files, tmp_path):
    """The settings issue 14 found wrong, put back: each is reported by name."""
    import yaml

    from aicommons.render.files import RenderedFile

    path = next(p for p in files if p.startswith("users/") and p.endswith("docker-compose.yml"))
    doc = yaml.safe_load(files[path].content)
    doc["services"]["flowise"]["environment"]["FLOWISE_USERNAME"] = "admin"
    doc["services"]["openwebui"]["environment"]["LANGFUSE_HOST"] = "http://x"
    doc["services"]["n8n"]["environment"]["OLLAMA_HOST"] = "http://x"
    doc["services"]["n8n"]["environment"]["WEBHOOK_URL"] = "https://x/"  # deprecated in 2.32: N8N_WEBHOOK_URL
    bad = {**files, path: RenderedFile(path, yaml.safe_dump(doc))}
    rep = verify(bad, pinned_versions(), layers=tmp_path)
    assert rep.missing == {"flowise": ["FLOWISE_USERNAME"], "openwebui": ["LANGFUSE_HOST"],
                           "n8n": ["OLLAMA_HOST", "WEBHOOK_URL"]}


@pytest.mark.parametrize("app", ["chainforge", "jupyter", "openwebui", "n8n", "flowise", "code-server"])
def test_built_layers_are_grepped_for_the_settings(files, app):
    version = pinned_versions()[app]
    layer = _layer(app, version, LAYERS)
    if layer is None:
        pytest.skip(f"no native layer {app}-{version}-* is built under {LAYERS} (issue 12 builds them)")
    rep = verify(files, pinned_versions())
    if not rendered_settings(files).get(app):  # code-server: flags only (--auth none), no environment
        assert app not in rep.missing
        return
    # read in the layer itself (the recorded file contains the recorded read), or (recorded) by the
    # user's own code running there (Jupyter's OLLAMA_HOST); a compiled library's name is listed apart
    named = set(rep.named.get(app, []))
    assert app in rep.confirmed and all(w.startswith((f"layer {layer.name}", "user code: "))
                                        for k, w in rep.confirmed[app].items() if k not in named)
    assert app not in rep.missing and app not in rep.not_read


def test_postgres_keys_are_settings_of_the_real_server(files, pg):
    keys = sorted(rendered_settings(files)["postgres"])
    with psycopg.connect(pg.admin_dsn) as c:
        known = {n for (n,) in c.execute("SELECT name FROM pg_settings WHERE name = ANY(%s)", (keys,))}
    assert known == set(keys)


def test_redis_directives_are_settings_of_the_real_server(files, redis_server):
    keys = sorted(rendered_settings(files)["redis"])
    r = redislib.Redis(port=redis_server.port, username=redis_server.admin_user,
                       password=redis_server.admin_password, decode_responses=True)
    assert [k for k in keys if not r.config_get(k)] == []


# ---- evidence must be a read (issue 24) ------------------------------------------------------
DEMO_LAYERS = Path(__file__).parent / "data" / "catalog-layers"
DEMO_JS = "node_modules/demo/out/node/cli.js"


def _demo(found: dict) -> tuple[dict, dict]:
    from aicommons.render.files import RenderedFile

    files = {"users/u/docker-compose.yml": RenderedFile(
        "users/u/docker-compose.yml", "services:\n  demo:\n    environment:\n      PASSWORD: x\n")}
    ev = {"components": {"demo": {"version": "1.0.0", "read_at": "1.0.0", "source": "npm demo==1.0.0", "found": found}}}
    return files, ev


def test_evidence_that_is_not_a_read_is_refused():
    """Issue 24: code-server's PASSWORD was "found" in a C++ grammar file; a type declaration names a
    variable without reading it. Neither is evidence any more, with or without the layer."""
    for layers in (DEMO_LAYERS, Path("/nonexistent")):
        for file, read in (("lib/vscode/extensions/cpp/syntaxes/cpp.tmLanguage.json", "PASSWORD"),
                           ("node_modules/demo/out/node/cli.d.ts", "PASSWORD?: string"),
                           (DEMO_JS, "const password")):
            files, ev = _demo({"PASSWORD": {"file": file, "read": read}})
            rep = verify(files, {"demo": "1.0.0"}, evidence=ev, layers=layers)
            assert not rep.ok and "PASSWORD" not in rep.confirmed["demo"], (file, read)
            assert rep.not_read["demo"] == [f"PASSWORD: {file}: {read!r} is not a read of PASSWORD"]


def test_a_recorded_read_is_found_in_the_pinned_package():
    files, ev = _demo({"PASSWORD": {"file": DEMO_JS, "read": "process.env.PASSWORD"}})
    rep = verify(files, {"demo": "1.0.0"}, evidence=ev, layers=DEMO_LAYERS)
    assert rep.ok and rep.confirmed["demo"] == {
        "PASSWORD": f"layer demo-1.0.0-0123456789ab: {DEMO_JS}: process.env.PASSWORD"}
    # a read of the right form that the package does not contain (stale, or made up) is refused
    files, ev = _demo({"PASSWORD": {"file": DEMO_JS, "read": 'process.env["PASSWORD"]'}})
    rep = verify(files, {"demo": "1.0.0"}, evidence=ev, layers=DEMO_LAYERS)
    assert not rep.ok and "does not contain" in rep.not_read["demo"][0]
    # and a file the package does not have
    files, ev = _demo({"PASSWORD": {"file": "node_modules/demo/gone.js", "read": "process.env.PASSWORD"}})
    assert "is not in layer" in verify(files, {"demo": "1.0.0"}, evidence=ev, layers=DEMO_LAYERS).not_read["demo"][0]


def test_a_setting_without_a_record_is_missing_and_the_read_is_suggested():
    files, ev = _demo({})
    rep = verify(files, {"demo": "1.0.0"}, evidence=ev, layers=DEMO_LAYERS)
    assert rep.missing == {"demo": [f"PASSWORD (no record; read at {DEMO_JS}: process.env.PASSWORD)"]}


def test_older_name_only_records_are_listed_not_confirmed():
    files, ev = _demo({"PASSWORD": "lib/vscode/extensions/cpp/syntaxes/cpp.tmLanguage.json"})
    rep = verify(files, {"demo": "1.0.0"}, evidence=ev, layers=DEMO_LAYERS)
    assert rep.named == {"demo": ["PASSWORD"]} and "the read is not recorded" in rep.confirmed["demo"]["PASSWORD"]


@pytest.mark.parametrize("name,file,read,form", [
    ("X", "a.py", 'os.environ.get("X", "")', "os.environ"),
    ("X", "a.py", 'os.getenv("X")', "getenv"),
    ("X", "a.py", 'config("X", default="")', "decouple config()"),
    ("X_Y", "a.py", "    x_y: bool = True", "pydantic BaseSettings field"),
    ("X", "a.js", "process.env.X", "process.env"),
    ("X", "a.mjs", "process.env['X']", "process.env"),
    ("X", "a.js", "(0, decorators_1.Env)('X')", "@Env decorator"),
    ("X", "a.go", 'os.Getenv("X")', "os.Getenv"),
    ("X", "a.go", 'NumParallel = Uint("X", 1)', "envconfig Var/Uint/Bool/String"),
    ("X", "a.c", 'getenv("X")', "getenv()"),
    ("X", "a.sh", 'if [ -z "$X" ]', "shell variable"),
    ("X", "a.ts", "  X: z.string().optional(),", "zod env schema field"),
    ("s3_api.root_domain", "config.rs", "pub struct S3ApiConfig {\n\tpub root_domain: Option<String>,",
     "serde struct field"),
    ("server.port", "settings_defaults.py", "    'server': {\n        'port': SettingsValue((int, str), 8888),",
     "settings schema entry"),
    ("SEARXNG_PORT", "settings_defaults.py", "'port': SettingsValue((int, str), 8888, 'SEARXNG_PORT'),",
     "SettingsValue environment name"),
    ("use_default_settings", "loader.py", "x = user_settings.get('use_default_settings')", "settings .get()"),
    ("s3_api.root_domain", "config.rs", "pub root_domain_alt: String,", None),
    ("X", "a.ts", "  XY: z.string(),", None),
    ("X", "a.js", "process.env.XY", None),   # another variable
    ("X", "a.py", 'os.environ["X"] = "1"', None),  # a write, not a read
    ("X", "a.py", 'os.environ["X"] == "1"', "os.environ"),
    ("X", "a.js", "process.env.X = flags.X", None),
    ("X", "a.js", "process.env.X === '1'", "process.env"),
    ("X", "a.json", '"X"', None),
    ("X", "a.d.ts", "X?: string", None),
])
def test_read_forms(name, file, read, form):
    from aicommons.catalog.verify import read_form

    assert read_form(name, file, read) == form


def test_the_native_apps_evidence_is_reads():
    """Every record of the native apps (their layers are the pinned packages), Kotaemon, big-AGI,
    Ollama, Langfuse and the config-file keys of Qdrant, Garage and SearXNG (read at their tags) is
    a file + the code that reads the setting; the one compiled library name is the only exception."""
    from aicommons.catalog.verify import read_form

    comps = load_evidence()["components"]
    for comp in ("openwebui", "n8n", "flowise", "chainforge", "kotaemon", "big-agi", "ollama", "langfuse",
                 "qdrant", "garage", "searxng"):
        for key, rec in comps[comp]["found"].items():
            if (comp, key) == ("chainforge", "ORT_DISABLE_TELEMETRY"):
                assert isinstance(rec, str) and "compiled" in rec
                continue
            assert isinstance(rec, dict) and read_form(key, rec["file"], rec["read"]), (comp, key, rec)


# ---- values: what the component's code accepts (issue 24) -------------------------------------
def test_rendered_values_pass_their_components_rules(files, tmp_path):
    rep = verify(files, pinned_versions(), layers=tmp_path)
    assert rep.wrong == {} and rep.ok
    assert set(rep.values["langfuse"]) == {"ENCRYPTION_KEY", "NEXTAUTH_URL", "LANGFUSE_S3_MEDIA_UPLOAD_ENDPOINT",
                                           "LANGFUSE_S3_EVENT_UPLOAD_ENDPOINT"}
    assert rep.values["chainforge"] == {"OPENAI_BASE_URL": "public-url (lib/python3.11/site-packages/chainforge/flask_app.py)"}
    # issue 22: big-AGI's and Kotaemon's servers call the gateway inside the site
    assert rep.values["big-agi"] == {"LOCALAI_API_HOST": "internal-url (src/modules/llms/server/openai/openai.access.ts)"}
    assert rep.values["kotaemon"] == {"OPENAI_API_BASE": "internal-url (flowsettings.py)"}
    assert {"LOCALAI_API_HOST", "LOCALAI_API_KEY"} <= set(rep.confirmed["big-agi"])
    assert {"OPENAI_API_BASE", "OPENAI_API_KEY"} <= set(rep.confirmed["kotaemon"])


def test_the_findings_of_issue_24_fail_it(files, tmp_path):
    """Put back as they were rendered before: Kotaemon's Ollama URL without LOCAL_MODEL (never used),
    Langfuse's media endpoint at Garage's internal address (browsers get presigned URLs from it),
    ChainForge's model URL inside the site (the browser calls it), and a Langfuse key that is not hex."""
    import yaml

    from aicommons.render.files import RenderedFile

    bad = dict(files)
    user = next(p for p in files if p.startswith("users/") and p.endswith("docker-compose.yml"))
    doc = yaml.safe_load(files[user].content)
    doc["services"]["kotaemon"]["environment"]["KH_OLLAMA_URL"] = "http://10.0.5.100:11434/v1/"
    doc["services"]["chainforge"]["environment"]["OPENAI_BASE_URL"] = "http://10.0.5.100:11434/v1"
    bad[user] = RenderedFile(user, yaml.safe_dump(doc))
    lf = "services/langfuse/docker-compose.yml"
    doc = yaml.safe_load(files[lf].content)
    doc["services"]["langfuse-web"]["environment"]["LANGFUSE_S3_MEDIA_UPLOAD_ENDPOINT"] = "http://10.0.5.104:3900"
    bad[lf] = RenderedFile(lf, yaml.safe_dump(doc))
    dot = "services/langfuse/.env"
    bad[dot] = RenderedFile(dot, "\n".join("ENCRYPTION_KEY='" + "x" * 64 + "'" if ln.startswith("ENCRYPTION_KEY=") else ln
                                           for ln in files[dot].content.splitlines()))
    rep = verify(bad, pinned_versions(), layers=tmp_path)
    assert not rep.ok and rep.missing == {} and rep.not_read == {}
    wrong = {c: sorted(x.split(" ", 1)[0] for x in xs) for c, xs in rep.wrong.items()}
    assert wrong == {"kotaemon": ["KH_OLLAMA_URL"], "chainforge": ["OPENAI_BASE_URL"],
                     "langfuse": ["ENCRYPTION_KEY", "LANGFUSE_S3_MEDIA_UPLOAD_ENDPOINT"]}
    assert "is used only when LOCAL_MODEL is set" in rep.wrong["kotaemon"][0]
    assert "http://10.0.5.104:3900 is not a public https URL" in " ".join(rep.wrong["langfuse"])


def test_the_cli_fails_naming_a_refused_value(tmp_path, monkeypatch, capsys):
    from aicommons.cli import main

    site = tmp_path / "site.yaml"
    site.write_text(render_site_yaml(users=1, driver="proxmox"))
    assert main(["catalog", "verify", "-f", str(site)]) == 0  # no Ollama model to name: Kotaemon gets no URL
    import aicommons.render.compose as compose

    def old_kotaemon(self, app, port, data, _orig=compose._Wiring.app_env):  # the render before the fix
        e = _orig(self, app, port, data)
        return {**e, "KH_OLLAMA_URL": "http://10.0.5.100:11434/v1/"} if app.name == "kotaemon" else e
    monkeypatch.setattr(compose._Wiring, "app_env", old_kotaemon)
    capsys.readouterr()
    assert main(["catalog", "verify", "-f", str(site)]) != 0
    err = capsys.readouterr().err
    assert "rendered values their component's code refuses" in err and "KH_OLLAMA_URL is used only when LOCAL_MODEL" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("rule,value,env,fails", [
    ("hex:64", "ab" * 32, {}, False), ("hex:64", "ab" * 31, {}, True), ("hex:64", "xy" * 32, {}, True),
    ("public-url", "https://s3.example.org", {}, False), ("public-url", "http://s3.example.org", {}, True),
    ("public-url", "https://10.0.5.104:3900", {}, True), ("public-url", "http://garage:3900", {}, True),
    ("internal-url", "http://10.0.5.104:3900", {}, False), ("internal-url", "http://clickhouse:8123", {}, False),
    ("internal-url", "https://s3.example.org", {}, True), ("internal-url", "http://127.0.0.1:9000", {}, False),
    ("with:LOCAL_MODEL", "http://x/v1/", {"LOCAL_MODEL": "m"}, False), ("with:LOCAL_MODEL", "http://x/v1/", {}, True),
])
def test_value_rules(rule, value, env, fails):
    from aicommons.catalog.verify import _rule_fails

    assert (_rule_fails(rule, value, env) is not None) is fails


def test_a_rule_is_checked_against_the_pinned_package():
    """With the layer built, the code a value rule cites must be in the cited file, like a read."""
    rule = {"PASSWORD": {"rule": "hex:4", "file": DEMO_JS, "code": "process.env.PASSWORD"}}
    files, ev = _demo({"PASSWORD": {"file": DEMO_JS, "read": "process.env.PASSWORD"}})
    ev["components"]["demo"]["values"] = rule
    rep = verify(files, {"demo": "1.0.0"}, evidence=ev, layers=DEMO_LAYERS)
    assert rep.wrong == {"demo": [f"PASSWORD is not 4 hex digits (hex:4: {DEMO_JS}: process.env.PASSWORD)"]}
    rule["PASSWORD"]["code"] = "PASSWORD must be hex"  # not in the package: the rule is refused, not applied
    rep = verify(files, {"demo": "1.0.0"}, evidence=ev, layers=DEMO_LAYERS)
    assert rep.wrong == {} and "the rule's code 'PASSWORD must be hex' is not in" in rep.not_read["demo"][0]


def test_every_value_rule_in_the_evidence_is_known():
    from aicommons.catalog.verify import _rule_fails

    for comp, rec in load_evidence()["components"].items():
        for key, rule in (rec.get("values") or {}).items():
            assert set(rule) == {"rule", "file", "code"} and key in rec["found"], (comp, key)
            _rule_fails(rule["rule"], "x", {})  # raises on a rule verify does not know
