"""Load site.yaml into a `Site`, turning every failure into `Problem`s with a YAML path and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aicommons.errors import Problem, SiteInvalid
from aicommons.spec.models import Site

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_BYTES = 4 * 1024 * 1024  # a site file is a few hundred KB even at 5,000 users


def format_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class LineIndex:
    """Maps a path (tuple of keys / indexes) to the line where YAML wrote it."""

    def __init__(self, node: yaml.Node | None):
        self.root = node

    def line(self, loc: tuple[Any, ...]) -> int | None:
        node, best = self.root, None
        if node is None:
            return None
        best = node.start_mark.line + 1
        for part in loc:
            nxt = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if getattr(k, "value", None) == str(part):
                        nxt, best = v, k.start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                nxt = node.value[part]
                best = nxt.start_mark.line + 1
            if nxt is None:
                break
            node = nxt
        return best


_FIXES = {
    "extra_forbidden": "remove it, or check its spelling against `aicommons schema`",
    "missing": "add it (see `aicommons schema` or `aicommons init` for an example)",
    "literal_error": "use one of the allowed values",
    "string_pattern_mismatch": "change it to match the pattern shown",
    "ip_v4_address": "write a dotted IPv4 address such as 10.0.5.120",
    "ip_v4_network": "write a network such as 10.0.5.0/24",
    "int_parsing": "write a whole number",
    "union_tag_invalid": "set driver.kind to `proxmox` or `lxc`",
}


def problems_from_validation(exc: ValidationError, index: LineIndex) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("proxmox", "lxc")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_pattern_mismatch":
            msg = f"{msg}; got {err.get('input')!r}"
        out.append(
            Problem(
                path=format_path(loc),
                message=msg,
                fix=_FIXES.get(err["type"], "correct the value (see `aicommons schema`)"),
                line=index.line(loc),
            )
        )
    return out


def parse_text(text: str) -> tuple[Any, LineIndex]:
    """YAML text -> (plain data, line index). Raises SiteInvalid on any YAML error."""
    # One pass with libyaml (when present): the node tree keeps line marks, and the data is
    # constructed from that same tree rather than parsing the text twice.
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SiteInvalid(
            [
                Problem(
                    path="",
                    message=f"not valid YAML: {getattr(exc, 'problem', None) or exc}",
                    fix="fix the YAML syntax at that line (indentation, quotes, colons)",
                    line=mark.line + 1 if mark else None,
                )
            ]
        ) from None
    except RecursionError:
        raise SiteInvalid([Problem("", "YAML nests too deeply", "flatten the file")]) from None
    finally:
        loader.dispose()
    return data, LineIndex(node)


def load_text(text: str) -> tuple[Site, LineIndex]:
    data, index = parse_text(text)
    if data is None:
        raise SiteInvalid([Problem("", "the site file is empty", "run `aicommons init` to write one")])
    if not isinstance(data, dict):
        raise SiteInvalid(
            [Problem("", f"the top level must be a mapping, not {type(data).__name__}",
                     "start from `aicommons init`", line=1)]
        )
    try:
        return Site.model_validate(data), index
    except ValidationError as exc:
        raise SiteInvalid(problems_from_validation(exc, index)) from None


def read_site_text(path: Path) -> str:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SiteInvalid([Problem(str(path), "no such file", "run `aicommons init` or pass -f FILE")]) from None
    except OSError as exc:
        raise SiteInvalid([Problem(str(path), f"cannot read: {exc.strerror}", "check the path and permissions")]) from None
    if size > MAX_BYTES:
        raise SiteInvalid(
            [Problem(str(path), f"file is {size} bytes; a site file is at most {MAX_BYTES}", "is this the right file?")]
        )
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise SiteInvalid([Problem(str(path), "file is binary, not YAML", "pass the site.yaml file")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SiteInvalid([Problem(str(path), f"not UTF-8 text (byte {exc.start})", "save the file as UTF-8")]) from None


def load_site(path: str | Path) -> tuple[Site, LineIndex]:
    return load_text(read_site_text(Path(path)))
