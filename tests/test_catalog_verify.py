"""Every setting aicommons renders is one its component reads at the pinned version (issue 14).

REAL: the render of a site with every catalog service and app; the recorded evidence
(src/aicommons/catalog/evidence.yaml: where each name was read in the component's published
package or source, collected from PyPI/npm packages and git snapshots at the pinned tags); the
native-runtime layers under /var/cache/aicommons/apps when they are built (skipped otherwise,
with the reason); PostgreSQL 15's pg_settings and Redis 7's CONFIG GET for their config keys
(fixtures `pg`, `redis_server`). Nothing here asks a registry: `aicommons catalog verify
--registries` does that.
"""

from __future__ import annotations

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
    # read in the layer itself, or (recorded) by the user's own code running there (Jupyter's OLLAMA_HOST)
    assert app in rep.confirmed and all(w.startswith((f"layer {layer.name}", "user code: "))
                                        for w in rep.confirmed[app].values())
    assert app not in rep.missing


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
