"""Deeply nested JSON from a worker must not crash the kernel, whatever the recursion limit."""

from __future__ import annotations

import sys

import pytest

from decloud_magics.codecs import Encoded, decode_value
from decloud_magics.errors import DecloudError
from decloud_magics.untrusted import json_depth, loads_json


@pytest.fixture
def web3_recursion_limit():  # type: ignore[no-untyped-def]
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)  # what web3's dependencies set when they are imported
    yield
    sys.setrecursionlimit(old)


def test_depth_ignores_brackets_inside_strings():
    assert json_depth(b'{"a": "[[[[[[", "b": [1, [2]]}') <= 3
    assert json_depth(b"[" * 300 + b"]" * 300) == 300
    assert json_depth(b'"[[["') == 0


def test_deep_documents_are_refused_not_parsed(web3_recursion_limit):
    deep = b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(ValueError, match="nested deeper"):
        loads_json(deep)
    with pytest.raises(DecloudError):
        decode_value("v", Encoded("json", deep, "list"), allow_pickle=False)


def test_ordinary_documents_parse():
    assert loads_json(b'{"x": [1, 2, {"y": "]]]"}]}') == {"x": [1, 2, {"y": "]]]"}]}
    big = b"[" + b",".join(b"[1,2]" for _ in range(10_000)) + b"]"
    assert len(loads_json(big)) == 10_000
