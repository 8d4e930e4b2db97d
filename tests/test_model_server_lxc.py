"""The model server container on plain LXC: llama-server answering at 10.0.5.100 inside the site's
namespace, from its layers, on cores of its own, reachable only from its clients.

Real: LxcDriver with its cached Debian 12 template, the namespace, bridge and iptables rules,
the llama-server layer (built by `aicommons apps build`) and the SmolLM2 model layer bound
read-only, the systemd units the driver writes, the cpuset, curl from the namespace (where the
control plane sits) and Python's urllib from the gateway's address and from an app's container. Nothing is simulated. Skipped
when this host cannot run LXC or the llama-server layer is not built.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from aicommons.drivers import modellayers
from aicommons.drivers.lxc import limits
from aicommons.drivers.lxc.driver import LxcDriver
from aicommons.plan.model import Container
from aicommons.spec.models import Site
from aicommons.spec.served import DEFAULT_LXC_MODELS
from tests.test_lxc_driver import lxc_unavailable

CACHE_DIR = os.environ.get("AICOMMONS_CACHE_DIR", "/var/cache/aicommons")
NS = f"aicm{os.getpid() % 100000}"


def _why_not() -> str | None:
    if why := lxc_unavailable():
        return why
    if not modellayers.is_ready(modellayers.server_layer_dir(CACHE_DIR)):
        return "the llama-server layer is not built; `aicommons apps build` builds it"
    return None


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))]


def ct(ctid: int, name: str, role: str = "shared", cores: int = 1) -> Container:
    return Container(ctid=ctid, ip=f"10.0.5.{ctid}", prefixlen=24, gateway="10.0.5.1", hostname=name, role=role,
                     name=name, services=(name,) if role == "shared" else (), phase=1, memory_mb=1024,
                     cores=cores, disk_gb=4, traefik_file="")


@pytest.fixture(scope="module")
def drv():
    # not under pytest's 0700 basetemp: the containers' root (an unprivileged host uid) must reach its rootfs
    lxcpath = Path(tempfile.mkdtemp(prefix=f"{NS}-", dir="/var/tmp"), "lxc")
    lxcpath.parent.chmod(0o755)
    site = Site.model_validate({
        "name": "modeltest", "domain": "example.org",
        "driver": {"kind": "lxc", "netns": NS, "lxcpath": str(lxcpath), "cache_dir": CACHE_DIR},
        "services": {"llama-server": {}, "gateway": {}}, "user_template": {"apps": []},
        "models": [m.model_dump(exclude_none=True) for m in DEFAULT_LXC_MODELS]})
    d = LxcDriver.from_site(site, log=print, traefik_dir=None, join=False, secrets=lambda scope, key: "unused")
    yield d
    d.down()
    shutil.rmtree(lxcpath.parent, ignore_errors=True)


def in_ns(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", NS, *argv], capture_output=True, text=True, timeout=300)


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        out |= set(range(int(a), int(b or a) + 1))
    return out


def post(url: str, body: dict, where=in_ns) -> tuple[int, str]:
    r = where("curl", "-sS", "--max-time", "120", "-o", "-", "-w", "\n%{http_code}", "-H",
              "Content-Type: application/json", "-d", json.dumps(body), url)
    out, _, code = r.stdout.rpartition("\n")
    return int(code or 0), out


def test_the_model_server_answers_at_its_address_on_cores_of_its_own(drv: LxcDriver):
    cores = 2 if len(limits.host_cpus()) >= 2 else 1
    drv.create(ct(100, "llama-server", cores=cores))
    drv.start(100)
    drv.wait_ready(100, timeout=300)  # installs: user, one unit per model, firewall; waits for both ports
    assert drv.outcomes["llama-server"].status == "installed", drv.outcomes["llama-server"].reason
    # From the namespace (the control plane's place): a real chat completion and an embedding.
    code, body = post("http://10.0.5.100:8080/v1/chat/completions", {
        "model": "smollm2", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]})
    assert code == 200, body
    answer = json.loads(body)
    assert answer["choices"][0]["message"]["content"].strip() and answer["usage"]["completion_tokens"] >= 1
    code, body = post("http://10.0.5.100:8081/v1/embeddings", {"model": "smollm2-embed", "input": "hello"})
    assert code == 200 and len(json.loads(body)["data"][0]["embedding"]) == 576, body
    # Bound to the container address only, with the plan's threads (never more than its cores).
    listening = drv.exec(100, ["ss", "-ltnH"]).stdout
    assert "10.0.5.100:8080" in listening and "0.0.0.0:8080" not in listening and "*:8080" not in listening
    cmdline = drv.exec(100, ["sh", "-c", "cat /proc/$(systemctl show -p MainPID --value aic-model-smollm2)/cmdline "
                                         "| tr '\\0' ' '"]).stdout
    threads = int(cmdline.split("--threads ")[1].split()[0])
    assert threads <= cores and "--metrics" in cmdline and "--alias smollm2" in cmdline
    pinned = (limits.ROOT / "cpuset" / "aicommons" / NS / "100" / "cpuset.cpus").read_text().strip()
    assert _cpus(pinned) == set(limits.host_cpus()[-cores:])
    mounts = drv.exec(100, ["sh", "-c", "grep /opt/aicommons /proc/mounts"]).stdout
    assert all(" ro," in line for line in mounts.splitlines()) and mounts.count("\n") >= 2  # layers read-only


def test_only_its_clients_reach_it(drv: LxcDriver):
    """The site bridge's filter (loaded with the namespace) lets the gateway's address alone reach
    the model ports: a container at 10.0.5.137 gets 200, an app's container is dropped."""
    for ctid, role in ((137, "shared"), (201, "user")):
        drv.create(ct(ctid, f"probe{ctid}", role=role))  # no catalog service of that name: nothing installed
        drv.start(ctid)
        drv.wait_ready(ctid, timeout=120)
    probe = ["python3", "-c", "import urllib.request\ntry:\n print(urllib.request.urlopen("
             "'http://10.0.5.100:8080/health', timeout=5).status)\nexcept OSError as e:\n print('000', e)"]
    assert drv.exec(137, probe, timeout=60).stdout.strip() == "200"  # the gateway's address
    blocked = drv.exec(201, probe, timeout=60)
    assert blocked.stdout.startswith("000"), blocked  # dropped: an app may not reach the model server
