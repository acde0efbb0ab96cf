"""Parsing bytes that came from someone else, without letting them crash us.

``json.loads`` recurses in C; web3's dependencies raise Python's recursion
limit to 100,000, and at that depth a nested document overflows the C stack
and kills the kernel. So the nesting is measured before parsing.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 200

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (strings ignored)."""
    opens = raw.count(b"[") + raw.count(b"{")
    if opens == 0:
        return 0
    bare = _STRING.sub(b'""', raw)
    if bare.count(b"[") + bare.count(b"{") <= MAX_DEPTH:
        return bare.count(b"[") + bare.count(b"{")  # an upper bound, and already within the limit
    import numpy as np

    codes = np.frombuffer(bare, dtype=np.uint8)
    step = ((codes == 0x5B) | (codes == 0x7B)).astype(np.int32) - ((codes == 0x5D) | (codes == 0x7D))
    return int(np.cumsum(step).max())


def loads_json(data: bytes | bytearray | memoryview | str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for untrusted input: ValueError for bad or too deeply nested documents."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if json_depth(raw) > max_depth:
        raise ValueError(f"the JSON is nested deeper than {max_depth} levels")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
