"""Fresh buffers for large payloads: correct bytes whatever memory backs them."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from decloud_magics.buffers import LARGE, fresh_buffer, join
from decloud_magics.codecs import decode_value
from decloud_magics.package import build_task_package, decode_task, task_pieces


@pytest.mark.parametrize("size", [0, 10, LARGE - 1, LARGE, LARGE + 4097])
def test_fresh_buffer_is_writable_and_zeroed(size: int) -> None:
    buf = fresh_buffer(size)
    assert buf.nbytes == size and not buf.readonly
    assert not any(buf[:: max(1, size // 997)])  # zero-filled, sampled across the whole span
    if size:
        buf[-1] = 7
        assert buf[-1] == 7


@pytest.mark.skipif(not hasattr(mmap, "MAP_ANONYMOUS"), reason="private anonymous mappings are POSIX")
def test_large_buffers_are_private_anonymous_memory() -> None:
    buf = fresh_buffer(LARGE)
    assert isinstance(buf.obj, mmap.mmap)
    assert isinstance(fresh_buffer(LARGE - 1).obj, bytearray)


def test_join_small_gives_bytes_and_large_a_read_only_view() -> None:
    assert join([b"ab", bytearray(b"c"), memoryview(b"de")]) == b"abcde"
    assert type(join([b"ab"])) is bytes
    head = b"header"
    body = np.arange(LARGE // 8 + 3, dtype=np.int64)
    out = join([head, memoryview(body)])
    assert isinstance(out, memoryview) and out.readonly
    assert out.nbytes == len(head) + body.nbytes
    assert bytes(out[: len(head)]) == head
    assert np.array_equal(np.frombuffer(out[len(head) :], dtype=np.int64), body)


def test_a_large_package_round_trips_and_hands_back_a_writable_copy() -> None:
    x = np.random.default_rng(1).random(LARGE // 8 * 2)
    _pkg, data = build_task_package("y = x", {"x": x})
    assert isinstance(data, memoryview)
    back = decode_value("x", decode_task(data).inputs["x"], allow_pickle=False)
    assert np.array_equal(back, x) and back.flags.writeable
    back[0] = -1.0  # the user's copy: the package is untouched
    assert decode_value("x", decode_task(data).inputs["x"], allow_pickle=False)[0] == x[0]


def test_task_pieces_are_the_package_end_to_end_without_copying_the_value() -> None:
    x = np.arange(LARGE // 8 + 5, dtype=np.float64)
    pkg, data = build_task_package("y = x", {"x": x}, outputs=["y"])
    outputs, pieces = task_pieces("y = x", {"x": x}, outputs=["y"])
    assert outputs == pkg.outputs == ("y",)
    assert b"".join(pieces) == data
    assert any(np.shares_memory(np.frombuffer(p, dtype=np.uint8), x) for p in pieces if len(p) > 64)
    with pytest.raises(TypeError):
        task_pieces("y = x", {"x": x}, output=["y"])  # a misspelt option is not ignored
