"""`jsontext.parse`, the upstream answers' JSON reader: always what `json.loads` gives, value or error."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from infernet_tgi import jsontext

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
WRAPPERS = st.sampled_from(["{}", " {}", "{} ", "\n{}\r\n", "{}x", "{}{}", "\ufeff{}", "[{}]"])


def outcome(call: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "value", call(raw)
    except ValueError as exc:
        return "error", type(exc).__name__


@settings(max_examples=300, deadline=None)
@given(value=VALUES, wrapper=WRAPPERS, ensure_ascii=st.booleans())
def test_parse_is_json_loads(value: Any, wrapper: str, ensure_ascii: bool) -> None:
    raw = wrapper.replace("{}", json.dumps(value, ensure_ascii=ensure_ascii)).encode("utf-8")
    assert outcome(jsontext.parse, raw) == outcome(json.loads, raw)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=40))
def test_parse_is_json_loads_on_any_bytes(raw: bytes) -> None:
    assert repr(outcome(jsontext.parse, raw)) == repr(outcome(json.loads, raw))  # repr: NaN != NaN


def test_lone_surrogates_and_other_encodings_are_as_json_loads_has_them() -> None:
    for raw in (b'"\\ud800"', '{"a": 1}'.encode("utf-16"), b'\xef\xbb\xbf{"a": 1}', b"1e999", b"NaN"):
        assert repr(outcome(jsontext.parse, raw)) == repr(outcome(json.loads, raw))
