"""SERVICE_IP_MAP.md from the plan. Pure code: nothing real or simulated."""

from aicommons.plan import resolve
from aicommons.render.service_map import render
from aicommons.spec import load_text
from aicommons.spec.default import render_site_yaml


def test_service_map_lists_every_shared_container_and_user():
    site, _ = load_text(render_site_yaml(users=5))
    r = resolve(site)
    text = render(r)
    for c in r.containers:
        assert f"| {c.ip} |" in text or f"{c.ip}," in text or f", {c.ip}" in text, c.hostname
    assert "`QDRANT_URI=http://10.0.5.101:6333`" in text
    assert "| user5 | 10.0.5.204 | 204 |" in text
    assert "`ai-USER.valuechainhackers.xyz`" in text
    # databases and caches have no HTTP domain
    pg = next(line for line in text.splitlines() if line.startswith("| PostgreSQL |"))
    assert "| - |" in pg
