"""The service catalog: the 33 shared services, Traefik and the 8 per-user apps, as data files."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TypeVar

import yaml

from aicommons.catalog.model import App, Service


@dataclass(frozen=True)
class Catalog:
    services: dict[str, Service]
    apps: dict[str, App]

    def service(self, name: str) -> Service:
        return self.services[name]

    def app(self, name: str) -> App:
        return self.apps[name]


M = TypeVar("M", Service, App)


def _load_dir(folder: str, model: type[M]) -> dict[str, M]:
    out: dict[str, M] = {}
    root = resources.files("aicommons.catalog") / folder
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".yaml"):
            continue
        data = yaml.safe_load(entry.read_text(encoding="utf-8"))
        item = model.model_validate(data)
        if item.name + ".yaml" != entry.name:
            raise ValueError(f"catalog file {entry.name} holds {item.name!r}")
        out[item.name] = item
    return out


@cache
def load_catalog() -> Catalog:
    """The built-in catalog (validated once per process)."""
    return Catalog(services=_load_dir("services", Service), apps=_load_dir("apps", App))


__all__ = ["App", "Catalog", "Service", "load_catalog"]
