"""Load site.yaml into a `Site`, turning every failure into `Problem`s with a YAML path and line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aicommons.errors import Problem, SiteInvalid
from aicommons.spec.models import Site

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_BYTES = 4 * 1024 * 1024  # a site file is a few hundred KB even at 5,000 users


# Tags pydantic puts in an error's location for a union told apart by kind (driver, models entry):
# not keys of the file, so left out of the path shown.
UNION_TAGS = ("proxmox", "lxc", "ollama-tag", "model-file")


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
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in UNION_TAGS))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_pattern_mismatch":
            msg = f"{msg}; got {err.get('input')!r}"
        fix = _FIXES.get(err["type"], "correct the value (see `aicommons schema`)")
        if err["type"] == "missing" and len(loc) == 3 and loc[0] == "users" and loc[2] == "email":
            msg = "every site user needs an e-mail address (sign-in, invitations and password resets use it)"
            fix = "add `email: name@example.org` to this user"
        out.append(
            Problem(
                path=format_path(loc),
                message=msg,
                fix=fix,
                line=index.line(loc),
            )
        )
    return out


MAX_DEPTH = 64  # a site file nests about 6 deep; libyaml's C parser recurses and can crash past ~30,000
_BRACKETS = re.compile(r"[\[\]{}]")
_INLINE = re.compile(r"(?:^|\s)(?:- |\? |-$)|: ")


def nesting_bound(text: str) -> int:
    """An upper bound of how deep the YAML nests, counted without parsing it (so libyaml never
    sees a document that would exhaust its stack): open flow brackets, plus per line the block
    levels its indentation is under and the inline `- ` / `key: ` indicators on it. Brackets in
    quoted text only raise the bound."""
    flow, worst = 0, 0
    levels: list[int] = []
    for line in text.splitlines():
        body = line.lstrip(" ")
        if not body or body.startswith("#"):
            continue
        indent = len(line) - len(body)
        if flow == 0:
            while levels and levels[-1] >= indent:
                levels.pop()
            levels.append(indent)
        peak = flow
        for m in _BRACKETS.finditer(body):
            flow = flow + 1 if m.group() in "[{" else max(0, flow - 1)
            peak = max(peak, flow)
        worst = max(worst, len(levels) + len(_INLINE.findall(body)) + peak)
    return worst


MAX_NODES = 500_000  # a 5,000-user site is about 100,000 nodes once aliases are expanded


def expanded_size(root: yaml.Node | None) -> int:
    """How many nodes the document has with every alias expanded, counted over the node graph
    (each shared node once, memoized), so an alias bomb (`b: [*a, *a, …]` nine levels deep: a
    few KB for billions of values) is measured without being expanded. A cycle counts as too big."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            if sizes[key] < 0:
                return MAX_NODES + 1  # an alias inside its own anchor
            return sizes[key]
        sizes[key] = -1
        if isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(v) for v in node.value)
        else:
            n = 1
        sizes[key] = n = min(n, MAX_NODES + 1)
        return n

    return size(root) if root is not None else 0


def _duplicate_keys(root: yaml.Node | None) -> list[Problem]:
    """Every mapping key written twice: YAML loaders keep the last silently (a second `users:`
    would replace the first, and the next apply delete those users)."""
    problems: list[Problem] = []
    todo: list[tuple[tuple[object, ...], yaml.Node]] = [((), root)] if root is not None else []
    while todo:
        loc, node = todo.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                key = getattr(k, "value", None)
                if isinstance(key, str):
                    line = k.start_mark.line + 1
                    if key in seen:
                        problems.append(Problem(format_path((*loc, key)), f"duplicate key {key!r} (lines {seen[key]} and "
                                                f"{line}); YAML would silently keep only the last",
                                                "merge the two into one key", line=line))
                    else:
                        seen[key] = line
                todo.append(((*loc, key), v))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(((*loc, i), v) for i, v in enumerate(node.value))
    return sorted(problems, key=lambda p: p.line or 0)


def parse_text(text: str) -> tuple[Any, LineIndex]:
    """YAML text -> (plain data, line index). Raises SiteInvalid on any YAML error."""
    depth = nesting_bound(text)
    if depth > MAX_DEPTH:
        raise SiteInvalid([Problem("", f"the YAML nests deeper than {MAX_DEPTH} levels (about {depth}); a site "
                                   "file nests a few levels", "is this the right file? flatten it")])
    # One pass with libyaml (when present): the node tree keeps line marks, and the data is
    # constructed from that same tree rather than parsing the text twice.
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if expanded_size(node) > MAX_NODES:
            raise SiteInvalid([Problem("", f"the YAML expands to more than {MAX_NODES:,} values (aliases `*name` "
                                       "repeating anchors); a site file is far smaller",
                                       "write the values out instead of nesting aliases")])
        dups = _duplicate_keys(node)
        if dups:
            raise SiteInvalid(dups)
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
