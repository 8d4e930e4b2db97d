"""What the model server runs (pure): one llama-server per model file of `models:`.

Each model gets its own port (the catalog's `model-N` ports, in `models:` order) and its own
threads: the container's cores shared out evenly, never more threads than cores. llama.cpp's
default (threads = the host's cores) collapsed to 0.1 tokens/s on a busy 2-core host: its workers
spin at barriers, so they must not outnumber the cores they are given (the driver pins the
container to that many cores).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aicommons.catalog import Catalog
from aicommons.spec.models import Site
from aicommons.spec.served import ServedModel

if TYPE_CHECKING:
    from aicommons.plan.model import ResolvedSite

SERVICE = "llama-server"
Problem = tuple[tuple[object, ...], str, str]  # (location in site.yaml, message, fix)
# Requests each llama-server serves at once (`--parallel`): they share its threads.
PARALLEL = 2


@dataclass(frozen=True, slots=True)
class ModelUnit:
    model: ServedModel
    port: int
    threads: int

    @property
    def unit(self) -> str:
        return f"aic-model-{self.model.name}"


def client_addresses(site: Site, catalog: Catalog) -> tuple[str, ...]:
    """Addresses of the services allowed to reach the model server (its catalog `clients`, e.g.
    the gateway) that this site enables."""
    return service_addresses(site, catalog, catalog.services[SERVICE].clients)


def service_addresses(site: Site, catalog: Catalog, names: Iterable[str]) -> tuple[str, ...]:
    """Addresses of the named shared services this site enables: their `address:` override, else
    the catalog's octet."""
    out = []
    for name in names:
        ov, svc = site.services.get(name), catalog.services.get(name)
        if ov is None or not ov.enabled or svc is None:
            continue
        if ov.address is not None:
            out.append(str(ov.address))
        elif svc.octet is not None:
            out.append(str(site.network.subnet.network_address + svc.octet))
    return tuple(out)


def model_ports(catalog: Catalog) -> list[int]:
    return [p.port for p in catalog.services[SERVICE].ports if p.name.startswith("model-")]


def serving(site: Site) -> bool:
    """The site runs llama-server (its model server)."""
    ov = site.services.get(SERVICE)
    return ov is not None and ov.enabled


def server_cores(site: Site, catalog: Catalog) -> int:
    """The model server container's cores (its `resources.cores` override, else the catalog's)."""
    ov = site.services.get(SERVICE)
    res = ov.resources if ov is not None else None
    return (res.cores if res is not None and res.cores else None) or catalog.services[SERVICE].resources.cores


def model_units(site: Site, catalog: Catalog) -> list[ModelUnit]:
    models = site.model_files
    if not models:
        return []
    cores = server_cores(site, catalog)
    ports = model_ports(catalog)
    threads = max(1, cores // len(models))
    return [ModelUnit(m, port, threads) for m, port in zip(models, ports, strict=False)]


def check(site: Site, catalog: Catalog) -> list[Problem]:
    """Problems of `models:` for this site: (location, message, fix)."""
    out: list[Problem] = []
    cores = server_cores(site, catalog)
    serving_ = serving(site)
    ollama = site.services.get("ollama")
    if serving_ and ollama is not None and ollama.enabled:
        out.append((("services", SERVICE), "llama-server and ollama both take the model server's address "
                    "(10.0.5.100 in the reference architecture)", "enable one of them"))
    if serving_ and site.driver.kind != "lxc":
        out.append((("services", SERVICE), "llama-server is deployed by the lxc driver only (its layer is "
                    "built on the host)", "use ollama on Proxmox"))
    for i, m in enumerate(site.models):
        loc = ("models", i)
        if isinstance(m, str):
            if serving_:
                out.append((loc, f"{m!r} is an Ollama tag, and this site's model server is llama-server, "
                            "which serves model files", "give {name, kind, package + file | path, sha256}"))
        elif not serving_:
            out.append((loc, f"model {m.name!r} is a file, served by llama-server, which this site does "
                        "not enable", f"enable services.{SERVICE} (lxc driver), or use an Ollama tag"))
    n_files = len(site.model_files)
    if serving_ and n_files > len(model_ports(catalog)):
        out.append((("models",), f"{n_files} model files; llama-server has ports for "
                    f"{len(model_ports(catalog))}", "serve fewer models"))
    if serving_ and n_files > cores:
        out.append((("services", SERVICE, "resources", "cores"), f"{n_files} models need at least one core "
                    f"each; llama-server has {cores}", f"set services.{SERVICE}.resources.cores: {n_files}"))
    return out


def notes(site: Site) -> list[str]:
    """What `plan` says about the models: an embedding model that is a chat model's own file is a
    stand-in (no registry package ships an embedding model as GGUF)."""
    chat_files = {(m.package, m.file, m.path) for m in site.model_files if m.kind == "chat"}
    return [f"model {m.name}: embeddings from the chat model's own file ({m.file or m.path}, "
            f"{m.pooling or 'its default'} pooling) — a stand-in for an embedding model, quality not evaluated"
            for m in site.model_files if m.kind == "embedding" and (m.package, m.file, m.path) in chat_files]


def upstreams(resolved: ResolvedSite) -> dict[str, tuple[str, str]]:
    """What the gateway forwards to: model name -> (OpenAI base URL at the model server, kind).
    llama-server's model files, else the tags the site's Ollama pulls (its /v1 serves them all; the
    site's `embedding.model` is the one of kind embedding)."""
    ep = resolved.endpoints.get(SERVICE)
    if ep is not None:
        return {u.model.name: (f"http://{ep.host}:{u.port}/v1", u.model.kind) for u in resolved.model_units}
    ep = resolved.endpoints.get("ollama")
    if ep is None or "ollama" in resolved.undeployed or "api" not in ep.ports:
        return {}
    url, emb = f"http://{ep.host}:{ep.ports['api']}/v1", resolved.site.embedding.model
    return {tag: (url, "embedding" if tag == emb else "chat") for tag in resolved.site.ollama_tags}


def gateway_routes(resolved: ResolvedSite) -> dict[str, str]:
    """What the gateway offers: model -> upstream /v1 URL. `gateway.upstreams` when the site file
    names them, else the site's own model server's models (`upstreams`: llama-server's or
    Ollama's): a default site needs no gateway settings."""
    named = {m: up.url.rstrip("/") for up in resolved.site.gateway.upstreams for m in up.models}
    return named or {name: url for name, (url, _kind) in upstreams(resolved).items()}


def gateway_models(resolved: ResolvedSite) -> tuple[str | None, str | None]:
    """(chat model, embedding model) for an app that takes one of each by name, as the gateway
    offers them, or None where it offers no such model. The embedding model is the site's
    `embedding.model` when the gateway serves it; the chat model is the first other model (of the
    site's own model server: the first of kind chat; `gateway.upstreams` do not say a kind)."""
    routes = gateway_routes(resolved)
    emb = resolved.site.embedding.model if resolved.site.embedding.model in routes else None
    kinds = {name: kind for name, (_url, kind) in upstreams(resolved).items()}
    chat = next((m for m in routes if m != emb and kinds.get(m, "chat") == "chat"), None)
    return chat, emb
