"""The fast YAML path (render/common.py): FastDumper writes exactly what PyYAML's SafeDumper writes,
and memo_dump's cache never hands back text for a different document.

Real: PyYAML (libyaml emitter) as the reference; documents are the rendered site's own files and
generated ones (hypothesis). Nothing is simulated.
"""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aicommons.render import render_site
from aicommons.render.authentik import TagLoader
from aicommons.render.common import FastDumper, _Dumper, dump_yaml, memo_dump
from tests.test_traefik_harness import FakeSecrets, make_site

OPTS = {"sort_keys": False, "default_flow_style": False, "width": 120, "allow_unicode": True}
TRICKY = ["", "null", "Null", "~", "1", "0o17", "0x1f", "1e3", "1_000", ".inf", "-.nan", "true", "yes", "off",
          "2024-01-01", "a: b", "- x", "#c", "x #c", "'q'", '"q"', "${VAR}", "*", "&a", "!tag", "%", "@", "`",
          "multi\nline", "trailing\n", " lead", "tail ", "ünïcode", "tab\there", ":", "?", "|", ">", "{", "["]


class _Safe(yaml.CSafeDumper):  # the reference: PyYAML's own safe representer, no anchors
    def ignore_aliases(self, data):
        return True


class _Literal(_Safe):  # ... and multi-line strings as `|` blocks (what dump_yaml promises)
    pass


_Literal.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s,
                                                               style="|" if "\n" in s else None))


def _ref(data, **opts) -> str:
    return yaml.dump(data, Dumper=_Literal, **opts)


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(TRICKY), st.text(max_size=12),
                    st.floats(allow_nan=False))
docs = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=4)),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(docs)
def test_fast_dumper_writes_what_safe_dumper_writes(doc):
    opts = {**OPTS, "allow_unicode": False}
    assert yaml.dump(doc, Dumper=FastDumper, **opts) == yaml.dump(doc, Dumper=_Safe, **opts)


@settings(max_examples=200, deadline=None)
@given(docs)
def test_dump_yaml_round_trips_and_memo_matches_a_fresh_dump(doc):
    text = dump_yaml(doc)
    assert dump_yaml(doc) == text  # second call: from the cache
    assert text == yaml.dump(doc, Dumper=_Dumper, **OPTS) == _ref(doc, **OPTS)
    back = yaml.safe_load(text)
    assert back == doc or (isinstance(doc, float) and math.isnan(doc))


def test_rendered_site_files_are_what_safe_dumper_writes():
    files = render_site(make_site(4), FakeSecrets())
    checked = 0
    for path, f in files.items():
        if not path.endswith((".yml", ".yaml")) or "/blueprints/" in path:
            continue
        data = yaml.safe_load(f.content)
        assert dump_yaml(data) == _ref(data, **OPTS), path
        checked += 1
    assert checked > 10


@pytest.mark.parametrize("a,b", [({"k": 1}, {"k": "1"}), ({"k": True}, {"k": "true"}), ({"k": None}, {"k": "null"}),
                                 ({1: "x"}, {"1": "x"}), ([1.0], [1]), ({"a": 1, "b": 2}, {"b": 2, "a": 1})])
def test_memo_never_confuses_look_alike_documents(a, b):
    assert dump_yaml(a) != dump_yaml(b)
    assert dump_yaml(b) == _ref(b, **OPTS) and dump_yaml(a) == _ref(a, **OPTS)


def test_memo_keys_include_the_options():
    doc = {"k": ["x", "y"], "long": " ".join(["word"] * 30)}
    for opts in ({"default_flow_style": True}, {"default_flow_style": False}, {"width": 20}, {"width": 200}):
        assert memo_dump(doc, FastDumper, **opts) == yaml.dump(doc, Dumper=_Safe, **opts), opts
    assert memo_dump(doc, FastDumper, width=20) != memo_dump(doc, FastDumper, width=200)
    assert memo_dump(doc, FastDumper, default_flow_style=True) != memo_dump(doc, FastDumper, default_flow_style=False)


def test_blueprints_keep_their_tags():
    files = render_site(make_site(2), FakeSecrets())
    bp = files["services/authentik/blueprints/user-user1.yaml"].content
    assert "!Find" in bp and "!KeyOf" in bp
    assert yaml.load(bp, Loader=TagLoader)["entries"]  # noqa: S506
