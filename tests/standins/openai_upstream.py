"""A deterministic OpenAI-compatible model server (SIMULATED), for the gateway's tests and benchmark.

It speaks the protocol llama-server speaks at the pinned version: `POST /v1/chat/completions`
and `/v1/completions` (JSON, or server-sent events `data: {chunk}` ending with `data: [DONE]`;
with `stream_options.include_usage` a last chunk with empty `choices` carries `usage`, and every
other chunk has `"usage": null`), `POST /v1/embeddings`, `GET /v1/models`. Answers are a pure
function of the request (`answer`), so a test knows the exact usage the server reports.
A real HTTP server on 127.0.0.1 (the standard library's threading server).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _prompt_bytes(body: dict) -> tuple[int, int]:
    if "messages" in body:
        msgs = body["messages"]
        return sum(len(str(m.get("content", "")).encode()) for m in msgs), len(msgs)
    p = body.get("prompt", body.get("input", ""))
    items = p if isinstance(p, list) else [p]
    return sum(len(str(x).encode()) for x in items), len(items)


def answer(body: dict) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) reported for a request: at most its bytes (like a real
    tokenizer), and at most max_tokens completion tokens."""
    nbytes, parts = _prompt_bytes(body)
    prompt = (nbytes + 3) // 4 + 3 * parts
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or 16
    return prompt, min(cap, 5 + nbytes % 20)


class OpenAIUpstream:
    def __init__(self, token_delay: float = 0.0):
        self.token_delay = token_delay
        # When set, a stream waits after its first chunk until the gate opens (a test opens it
        # when that chunk has reached its client); `gate_timeouts` counts waits that gave up.
        self.gate: threading.Event | None = None
        self.gate_timeouts = 0
        self.break_after: int | None = None  # a stream's connection is dropped after this many chunks
        self.reported: list[tuple[int, int]] = []  # usage of every answer sent
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

            def log_message(self, *a):
                pass

            def _json(self, code: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n))
                with upstream.lock:
                    upstream.requests.append(body)
                if self.path == "/v1/embeddings":
                    prompt, _ = answer(body)
                    upstream._record(prompt, 0)
                    items = body["input"] if isinstance(body["input"], list) else [body["input"]]
                    self._json(200, {"object": "list", "model": body["model"],
                                     "data": [{"object": "embedding", "index": i, "embedding": [0.5, 0.5]}
                                              for i in range(len(items))],
                                     "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})
                    return
                if self.path not in ("/v1/chat/completions", "/v1/completions"):
                    self._json(404, {"error": {"message": "not found"}})
                    return
                prompt, completion = answer(body)
                usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
                chat = self.path == "/v1/chat/completions"
                if not body.get("stream"):
                    upstream._record(prompt, completion)
                    text = " ".join(f"w{i}" for i in range(completion))
                    choice = {"index": 0, "finish_reason": "length",
                              **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
                    self._json(200, {"id": "x", "object": "chat.completion" if chat else "text_completion",
                                     "model": body["model"], "choices": [choice], "usage": usage})
                    return
                include = bool((body.get("stream_options") or {}).get("include_usage"))
                # Chunked and kept alive, as llama-server's HTTP library (cpp-httplib) streams.
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                obj = "chat.completion.chunk" if chat else "text_completion"

                def send(data: bytes) -> None:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

                try:
                    for i in range(completion):
                        if upstream.token_delay:
                            time.sleep(upstream.token_delay)
                        delta = {"delta": {"content": f"w{i} "}} if chat else {"text": f"w{i} "}
                        chunk = {"id": "x", "object": obj, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": None, **delta}]}
                        if include:
                            chunk["usage"] = None
                        send(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                        if upstream.break_after is not None and i + 1 >= upstream.break_after:
                            self.wfile.flush()
                            self.connection.shutdown(2)  # SHUT_RDWR: gone mid-answer, no last chunk
                            self.close_connection = True
                            return
                        if i == 0 and upstream.gate is not None and not upstream.gate.wait(30):
                            with upstream.lock:
                                upstream.gate_timeouts += 1
                    if include:
                        send(b"data: " + json.dumps({"id": "x", "object": obj, "model": body["model"],
                                                     "choices": [], "usage": usage}).encode() + b"\n\n")
                    send(b"data: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    return
                upstream._record(prompt, completion)

        class Server(ThreadingHTTPServer):
            request_queue_size = 512  # the default 5 refuses a burst of parallel streams

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _record(self, prompt: int, completion: int) -> None:
        with self.lock:
            self.reported.append((prompt, completion))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
