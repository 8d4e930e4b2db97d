"""Apps are wired to the model gateway with the person's key, one app label each (pure render:
nothing runs; a Proxmox site, where the gateway is deployed). Open WebUI chats and embeds through
it, Jupyter and code-server get the OpenAI SDK's variables, ChainForge (whose page calls the model
from the browser) the gateway's public route."""

from __future__ import annotations

from aicommons.catalog import load_catalog
from aicommons.plan.policy import gateway_key
from aicommons.plan.resolve import resolve
from aicommons.render.compose import app_environment
from aicommons.spec.load import load_text

SITE = """version: 1
name: gwrender
domain: example.org
driver: {{kind: proxmox, api_url: "https://pve.example.org:8006", token_id: "root@pam!aic", token_secret: "env:X", nodes: [pve1]}}
services: {{postgres: {{}}, redis: {{}}, qdrant: {{}}, garage: {{}}, ollama: {{}}, searxng: {{}}, langfuse: {{}}{gw}}}
user_template: {{apps: [openwebui, jupyter, code-server, chainforge]}}
embedding: {{model: smollm2-embed, engine: openai, dimensions: 576}}
gateway:
  upstreams: [{{url: "http://10.0.5.100:8080/v1", models: [smollm2, smollm2-embed]}}]
users: [{{name: ann, email: ann@example.org}}]
"""


def env_of(gw: bool, app: str) -> tuple[dict, dict]:
    site, _ = load_text(SITE.format(gw=", gateway: {}" if gw else ""))
    r = resolve(site)
    t = r.tenant("ann")
    return app_environment(r, t, load_catalog().apps[app], lambda scope, key: f"<{scope}:{key}>", port=1, data=None)


def test_apps_reach_models_through_the_gateway_with_their_own_label():
    key = gateway_key("ann", "<ann:gateway_key>")
    e, secrets = env_of(True, "openwebui")
    assert e["ENABLE_OPENAI_API"] == "true" and e["ENABLE_OLLAMA_API"] == "false"
    assert e["OPENAI_API_BASE_URLS"] == e["RAG_OPENAI_API_BASE_URL"] == "http://10.0.5.137:4000/v1"
    assert e["OPENAI_API_KEYS"] == e["RAG_OPENAI_API_KEY"] == "${GATEWAY_KEY_OPENWEBUI}"
    assert secrets["GATEWAY_KEY_OPENWEBUI"] == f"{key}~openwebui"
    for app in ("jupyter", "code-server"):
        e, secrets = env_of(True, app)
        assert e["OPENAI_BASE_URL"] == "http://10.0.5.137:4000/v1"
        assert secrets[e["OPENAI_API_KEY"][2:-1]] == f"{key}~{app}"
    e, secrets = env_of(True, "chainforge")
    assert e["OPENAI_BASE_URL"] == "https://models.example.org/v1"  # the browser's way in
    assert secrets["GATEWAY_KEY_CHAINFORGE"] == f"{key}~chainforge"


def test_big_agi_and_kotaemon_get_the_persons_key_with_their_own_label():
    key = gateway_key("ann", "<ann:gateway_key>")
    e, secrets = env_of(True, "big-agi")
    assert e["LOCALAI_API_HOST"] == "http://10.0.5.137:4000"  # it adds /v1/... itself
    assert secrets[e["LOCALAI_API_KEY"][2:-1]] == f"{key}~big-agi" and "OLLAMA_API_HOST" not in e
    e, secrets = env_of(True, "kotaemon")
    assert secrets[e["OPENAI_API_KEY"][2:-1]] == f"{key}~kotaemon"
    # the models as the gateway names them (gateway.upstreams): the embedding one is site.embedding
    assert (e["OPENAI_CHAT_MODEL"], e["OPENAI_EMBEDDINGS_MODEL"]) == ("smollm2", "smollm2-embed")


def test_an_lxc_site_runs_the_gateway_so_apps_are_sent_there():
    text = "\n".join("driver: {kind: lxc}" if line.startswith("driver:") else line
                     for line in SITE.format(gw=", gateway: {}").splitlines())
    site, _ = load_text(text)
    r = resolve(site)
    assert "gateway" not in r.undeployed  # from this checkout's runtime, like the portal
    e, _ = app_environment(r, r.tenant("ann"), load_catalog().apps["openwebui"], lambda s, k: "x", port=1, data=None)
    assert e["OPENAI_API_BASE_URLS"] == "http://10.0.5.137:4000/v1"


def test_without_a_gateway_apps_keep_their_direct_wiring():
    e, secrets = env_of(False, "openwebui")
    assert "OPENAI_API_BASE_URLS" not in e and e["ENABLE_OLLAMA_API"] == "true"
    assert not any(k.startswith("GATEWAY_KEY") for k in secrets)
    assert "OPENAI_API_KEY" not in env_of(False, "jupyter")[0]
    assert env_of(False, "big-agi")[0] == {"OLLAMA_API_HOST": "http://10.0.5.100:11434"}
    assert "OPENAI_API_KEY" not in env_of(False, "kotaemon")[0]
