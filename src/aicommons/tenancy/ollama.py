"""Ollama and SearXNG are shared with nothing per user. The site's model list is pulled once.

`POST /api/pull {"model", "stream": false}` blocks until the model is present; `GET /api/tags`
lists what is there (for `status`). Ollama has no server-side auth: its route is SSO-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from aicommons.errors import TemporaryError


@dataclass
class PullResult:
    model: str
    status: str  # "present", "pulled" or "failed: ..."


def list_models(url: str, *, transport: httpx.BaseTransport | None = None) -> list[str]:
    try:
        with httpx.Client(base_url=url, timeout=10, transport=transport) as c:
            r = c.get("/api/tags")
            r.raise_for_status()
    except httpx.TransportError as exc:
        raise TemporaryError(f"Ollama at {url} is not reachable: {exc}", delay=5.0) from None
    return [m.get("name") or m.get("model") for m in r.json().get("models", [])]


def _same(a: str, b: str) -> bool:
    norm = lambda n: n if ":" in n else f"{n}:latest"  # noqa: E731
    return norm(a) == norm(b)


def pull_models(url: str, models: list[str], *, timeout: float = 3600,
                transport: httpx.BaseTransport | None = None) -> list[PullResult]:
    """Pull each model not already present, once; one failure does not stop the others."""
    have = list_models(url, transport=transport)
    out = []
    with httpx.Client(base_url=url, timeout=timeout, transport=transport) as c:
        for m in models:
            if any(_same(m, h) for h in have):
                out.append(PullResult(m, "present"))
                continue
            try:
                r = c.post("/api/pull", json={"model": m, "stream": False})
                body = r.json() if r.content else {}
                ok = r.status_code == 200 and body.get("status") == "success"
                out.append(PullResult(m, "pulled" if ok else f"failed: {body.get('error') or r.status_code}"))
            except httpx.HTTPError as exc:
                out.append(PullResult(m, f"failed: {exc}"))
    return out
