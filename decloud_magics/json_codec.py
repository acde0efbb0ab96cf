"""Plain Python data as tagged JSON.

Every JSON object is a one-key wrapper ({"d": dict}, {"t": tuple}, {"f": "nan"}),
so no user key can be mistaken for a tag and tuples, non-finite floats and
dicts come back as they left.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .buffers import BytesLike
from .encoded import NoSafeFormat, Parts
from .untrusted import loads_json


def to_tree(value: Any) -> Any:
    """The JSON tree that carries ``value``; raises ``NoSafeFormat`` for anything but plain data."""
    kind = type(value)  # exact types only: a subclass (IntEnum, np.float64) would not come back as itself
    if value is None or kind is bool or kind is int or kind is str:
        return value
    if kind is float:
        return value if math.isfinite(value) else {"f": repr(value)}
    if kind is list:
        return [to_tree(v) for v in value]
    if kind is tuple:
        return {"t": [to_tree(v) for v in value]}
    if kind is dict:
        if not all(type(k) is str for k in value):
            raise NoSafeFormat
        return {"d": {k: to_tree(v) for k, v in value.items()}}
    raise NoSafeFormat


def from_tree(node: Any) -> Any:
    """The value a tree from ``to_tree`` carries; raises ``ValueError`` for an unknown tag."""
    if type(node) is list:
        return [from_tree(v) for v in node]
    if type(node) is not dict:
        return node
    if len(node) != 1:
        raise ValueError("a JSON object is not a tagged value")
    ((tag, inner),) = node.items()
    if tag == "d" and type(inner) is dict:
        return {k: from_tree(v) for k, v in inner.items()}
    if tag == "t" and type(inner) is list:
        return tuple(from_tree(v) for v in inner)
    if tag == "f" and inner in ("nan", "inf", "-inf"):
        return float(inner)
    raise ValueError(f"unknown JSON tag {tag[:20]!r}")


def encode_json(value: Any) -> Parts:
    """Plain data as compact UTF-8 JSON."""
    try:
        tree = to_tree(value)
        try:
            text = json.dumps(tree, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            return (text.encode("utf-8"),)
        except UnicodeEncodeError:  # lone surrogates survive only as \\u escapes
            return (json.dumps(tree, separators=(",", ":"), allow_nan=False).encode("ascii"),)
    except (RecursionError, ValueError):  # cycles, deep nesting, ints past the digit limit
        raise NoSafeFormat from None


def decode_json(data: BytesLike, type_name: str) -> Any:
    """Plain data back from its JSON bytes."""
    return from_tree(loads_json(data))
