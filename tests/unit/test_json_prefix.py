"""`.create` refused at the write that makes valid JSON impossible (fs/json_prefix.py)."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from fs360.fs.json_prefix import json_object_prefix_error

values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                      | st.text(max_size=8),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                  max_size=3), max_leaves=8)


@pytest.mark.slow(10)
@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=6), values, max_size=4), st.booleans())
def test_every_prefix_of_a_json_object_is_accepted(obj, indent):
    text = json.dumps(obj, indent=2 if indent else None, ensure_ascii=False) + "\n"
    for end in range(len(text) + 1):
        assert json_object_prefix_error(text[:end]) == "", text[:end]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_a_refused_prefix_is_never_valid_json_however_it_goes_on(text):
    """Soundness on random text: what the scanner refuses, json refuses too, with any ending."""
    if json_object_prefix_error(text):
        for ending in ("", "}", '"}', "]}", '0}', ' null}', '"]}'):
            with pytest.raises(ValueError):
                value = json.loads(text + ending)
                if not isinstance(value, dict):
                    raise ValueError("not an object")


@pytest.mark.parametrize("text, reason", [
    ("{bad", "expected a field name"),
    ("[1]", "must be a JSON object"),
    ('{"a": tru3', "not a JSON value"),
    ('{"a": 01', "not a JSON value"),
    ('{"a" 1', "expected ':'"),
    ('{"a": 1 "b"', "expected ','"),
    ('{"a": "\\x"', "invalid escape"),
    ('{} x', "text after the JSON object"),
    ('{"a": 1.e', "not a JSON value"),
])
def test_impossible_prefixes_say_why(text, reason):
    assert reason in json_object_prefix_error(text)


def test_ordinary_markers_pass():
    for text in ("", "\n", "{", '{"title": "Office, 3rd floor", "privacy_mode": 1}\n', '{"a": -1.5e+3, "b": [true, null]}'):
        assert json_object_prefix_error(text) == ""
