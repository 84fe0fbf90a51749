"""sabot._core.jsonscan.measure against a reference computed from the parsed document."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sabot._core.jsonscan import measure

# strings full of the characters the scanner must not count inside strings
TRICKY = st.text(alphabet=st.sampled_from(list('ab[]{},:"\\\n é')), max_size=8)
LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TRICKY
DOCUMENTS = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TRICKY, inner, max_size=5),
                         max_leaves=40)


def reference(value):
    """(deepest nesting, containers + commas) of a parsed document, by walking it."""
    if isinstance(value, list):
        inner = [reference(v) for v in value]
        return (1 + max((d for d, _ in inner), default=0),
                1 + max(len(value) - 1, 0) + sum(n for _, n in inner))
    if isinstance(value, dict):
        inner = [reference(v) for v in value.values()]
        return (1 + max((d for d, _ in inner), default=0),
                1 + max(len(value) - 1, 0) + sum(n for _, n in inner))
    return 0, 0


@settings(max_examples=400, deadline=None)
@given(DOCUMENTS, st.booleans())
def test_measure_matches_the_parsed_document(document, ascii_only):
    raw = json.dumps(document, ensure_ascii=ascii_only).encode()
    assert measure(raw) == reference(document)


def test_the_scan_stops_once_a_limit_is_passed():
    deep = b"[" * 1000 + b"]" * 1000
    assert measure(deep) == (1000, 1000)
    depth, _ = measure(deep, max_depth=64)
    assert depth == 65
    wide = b"[" + b"[]," * 1_000_000 + b"[]]"
    assert measure(wide) == (2, 2_000_002)
    _, items = measure(wide, max_items=1000)
    assert items == 1001


def test_empty_and_non_json_input():
    assert measure(b"") == (0, 0)
    assert measure(b"not json at all") == (0, 0)   # structure only; the parser judges the rest
    assert measure(bytearray(b"[1,2]")) == (1, 2)
    assert measure(memoryview(b'["a,b"]')) == (1, 1)
