"""An upper bound of a request's tokens, known before the model sees it.

A byte-level BPE token covers at least one byte of text, so a prompt's UTF-8 length bounds its
tokens; each message adds its chat-template markers (a few special tokens), hence the per-message
allowance. Over-estimating only holds back budget until the request settles."""

from __future__ import annotations

import json
from typing import Any

PER_MESSAGE = 8
PER_REQUEST = 16


def _bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if value is None:
        return 0
    return len(json.dumps(value, ensure_ascii=False).encode())


def chat_prompt(body: dict) -> int:
    msgs = body.get("messages") or []
    n = PER_REQUEST + sum(PER_MESSAGE + _bytes(m.get("content")) + _bytes(m.get("name"))
                          + _bytes(m.get("tool_calls")) for m in msgs if isinstance(m, dict))
    return n + _bytes(body.get("tools"))


def text_prompt(body: dict, field: str) -> int:
    value = body.get(field)
    if isinstance(value, list):
        return PER_REQUEST + sum(PER_MESSAGE + _bytes(v) for v in value)
    return PER_REQUEST + _bytes(value)
