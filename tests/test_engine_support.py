"""Helpers for the engine tests (no tests here): a site on disk, the file-backed fakes, and a
small renderer that writes Traefik files and per-user bundles holding secrets, so the engine's
file paths are exercised whether or not the real renderer is complete.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from aicommons.drivers.fake import FakeDriver
from aicommons.render.files import RenderedFile
from aicommons.tenancy.fake import fake_backends


def write_site(path: Path, users: int = 3, driver: str = "lxc") -> Path:
    from aicommons.spec.default import LXC_CORE, render_site_yaml

    path.write_text(render_site_yaml(users=users, driver=driver, services=LXC_CORE if driver == "lxc" else None))
    return path


def edit_site(path: Path, fn) -> None:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_renderer(resolved, secrets) -> dict:
    files = {}
    by_file: dict[str, list] = {}
    for r in resolved.routes:
        by_file.setdefault(r.traefik_file, []).append(r)
    for name, routes in by_file.items():
        body = {"http": {"routers": {f"r{i}": {"rule": f"Host(`{r.host}`)", "service": f"s{i}"}
                                     for i, r in enumerate(routes)},
                         "services": {f"s{i}": {"loadBalancer": {"servers": [{"url": r.url}]}}
                                      for i, r in enumerate(routes)}}}
        files[f"traefik/dynamic/{name}"] = RenderedFile(f"traefik/dynamic/{name}", yaml.safe_dump(body))
    for t in resolved.tenants:
        env = "".join(f"{k.upper()}={secrets(t.user, k)}\n" for k in ("postgres_password", "redis_password"))
        files[f"users/{t.user}/.env"] = RenderedFile(f"users/{t.user}/.env", env, 0o600)
        compose = yaml.safe_dump({"services": {a: {"image": a, "env_file": ".env"} for a in t.apps}})
        files[f"users/{t.user}/docker-compose.yml"] = RenderedFile(f"users/{t.user}/docker-compose.yml", compose)
    return files


test_renderer.__test__ = False  # a helper, not a test


def fakes(directory: Path, driver_variants=None, backend_variants=None, delay: float = 0.0):
    return FakeDriver(directory, driver_variants, delay), fake_backends(directory, backend_variants)


def apply(site: Path, fake_dir: Path, **kw):
    from aicommons.engine.api import apply_site

    driver, backends = fakes(fake_dir, kw.pop("driver_variants", None), kw.pop("backend_variants", None),
                             kw.pop("delay", 0.0))
    kw.setdefault("renderer", test_renderer)
    return apply_site(site, driver=driver, backends=backends, **kw)


def plan(site: Path, fake_dir: Path, **kw):
    from aicommons.engine.api import plan_site

    driver, backends = fakes(fake_dir)
    kw.setdefault("renderer", test_renderer)
    return plan_site(site, driver=driver, backends=backends, **kw)
