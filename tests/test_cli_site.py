"""The site commands end to end through the real CLI entry point (in-process and as a subprocess).
Nothing simulated: init writes a file, validate/plan read it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aicommons.cli import main

EXE = [sys.executable, "-m", "aicommons.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=env, timeout=120)


def test_init_then_plan_json_has_the_seed(tmp_path: Path):
    site = tmp_path / "site.yaml"
    assert main(["init", "--out", str(site)]) == 0
    text = site.read_text()
    assert "# aicommons site file" in text
    assert "  ollama: {}  # Ollama, 10.0.5.100 (fixed by the reference architecture)" in text
    p = run("plan", "-f", str(site), "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["reference_figures"]["user_containers"] == "50"
    assert "seed" not in (text + p.stdout).lower()  # the product says "reference architecture"
    roles = [c["role"] for c in data["containers"]]
    assert roles.count("shared") == 33 + 2 and roles.count("user") == 50  # the seed's 33, the portal, the gateway
    first = {c["hostname"]: c for c in data["containers"]}
    assert first["ollama"]["ctid"] == 100 and first["ollama"]["ip"] == "10.0.5.100"
    assert {"ctid", "ip", "hostname", "role", "services"} <= set(data["containers"][0])
    assert {"host", "url"} <= set(data["routes"][0])
    urls = {r["host"]: r["url"] for r in data["routes"]}
    assert urls["ai-user1.valuechainhackers.xyz"] == "http://10.0.5.200:8080"
    assert urls["n8n-user2.valuechainhackers.xyz"] == "http://10.0.5.201:5678"
    assert urls["ollama.valuechainhackers.xyz"] == "http://10.0.5.100:11434"
    assert sum(len(c["services"]) for c in data["containers"] if c["role"] == "user") == 400
    # the certificates Let's Encrypt is asked for: 5 SAN certificates, all new (no state yet)
    certs = data["certificates"]
    assert len(certs) == 5 and {c["change"] for c in certs} == {"new"} and all(len(c["hosts"]) <= 100 for c in certs)
    assert sum(len(c["hosts"]) for c in certs) == len({r["host"] for r in data["routes"]}) + 1  # + traefik.<domain>
    assert data["operator_sources"] and "10.0.0.0/16" not in data["operator_sources"]


def test_plan_table_is_readable(tmp_path: Path):
    site = tmp_path / "site.yaml"
    main(["init", "--out", str(site), "--users", "4", "--domain", "example.org"])
    p = run("plan", "-f", str(site))
    assert p.returncode == 0, p.stderr
    assert "ai-user1.example.org" in p.stdout and "totals" in p.stdout
    assert "certificates (1)" in p.stdout and "cert-1" in p.stdout
    assert "Traceback" not in p.stderr
    # init's placeholder Proxmox host is never dialled: reality is not read, and the plan says why
    assert "placeholder" in p.stderr and "driver.api_url" in p.stderr


def test_init_refuses_to_overwrite(tmp_path: Path):
    site = tmp_path / "site.yaml"
    site.write_text("keep me")
    p = run("init", "--out", str(site))
    assert p.returncode == 1 and "--force" in p.stderr
    assert site.read_text() == "keep me"


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\x01binary", b"users: [", b"- a\n- b\n", b"name: [1, 2]\n", b"\xff\xfe not utf8",
     b"a: " + b"[" * 5000, b"x: 1\n" * 1_000_000],
    ids=["empty", "binary", "broken-yaml", "list", "wrong-type", "not-utf8", "deep", "huge"],
)
def test_validate_never_tracebacks(tmp_path: Path, content: bytes):
    site = tmp_path / "site.yaml"
    site.write_bytes(content)
    p = run("validate", "-f", str(site))
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "error:" in p.stderr


def test_validate_ok_and_problems(tmp_path: Path):
    site = tmp_path / "site.yaml"
    main(["init", "--out", str(site), "--users", "3"])
    assert run("validate", "-f", str(site)).returncode == 0
    text = site.read_text().replace("  qdrant: {}", "  qdrant: {address: 10.0.5.100}")
    site.write_text(text)
    p = run("validate", "-f", str(site))
    assert p.returncode == 2
    assert "services.qdrant.address (line" in p.stderr and "fix:" in p.stderr


def test_missing_file_is_clean(tmp_path: Path):
    p = run("plan", "-f", str(tmp_path / "nope.yaml"))
    assert p.returncode == 2 and "no such file" in p.stderr and "Traceback" not in p.stderr


def test_schema_is_json_schema():
    p = run("schema")
    data = json.loads(p.stdout)
    assert data["title"] == "Site" and "users" in data["properties"]
