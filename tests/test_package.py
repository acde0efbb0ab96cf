"""Task and result packages: deterministic bytes, defensive parsing, a digest without timings."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decloud_magics.codecs import MB, Encoded, decode_value, encode_value
from decloud_magics.errors import IntegrityError, SerializationError, UnsafeValueError, UsageError
from decloud_magics.package import (
    RemoteErrorInfo,
    ResultPackage,
    TaskPackage,
    build_task_package,
    decode_result,
    decode_task,
    decode_values,
    encode_result,
    encode_task,
    is_ipython_name,
    result_digest,
)


def sample_result(**changes: Any) -> ResultPackage:
    res = ResultPackage(
        stdout="hello\n",
        stderr="warn\n",
        displays=[{"data": {"text/plain": "42", "image/png": "iVBORw0KGgo="}, "metadata": {}}],
        values={
            "y": encode_value("y", 42, allow_pickle=False),
            "arr": encode_value("arr", np.arange(5.0), allow_pickle=False),
        },
        value_errors={"f": "'f' is a function defined by the cell; it comes back only with --trust-pickle."},
        error=None,
        exit_status=0,
        timings={"execute": 0.25, "wall": 0.5},
        truncated={"stdout": False, "stderr": False},
        failure=None,
        sandbox={"network_isolated": True},
    )
    for key, value in changes.items():
        setattr(res, key, value)
    return res


# -- building tasks -------------------------------------------------------------------


def test_build_task_package_picks_what_the_cell_reads() -> None:
    namespace = {"x": 21, "unused": 1, "np": np, "In": [], "_": 5, "_i3": "x", "max": 3}
    pkg, data = build_task_package("y = np.int64(x) * 2 + _ + max", namespace)
    assert list(pkg.inputs) == ["np", "x", "max"]  # '_' is IPython's; 'max' shadows a builtin in the notebook
    assert pkg.inputs["np"].codec == "module"
    assert pkg.outputs is None and pkg.allow_pickle_outputs is False
    assert data[:5] == b"DCLD\x02"
    assert decode_task(data) == pkg


def test_names_the_notebook_lacks_are_left_out() -> None:
    pkg, _ = build_task_package("print(undefined_here)", {})
    assert pkg.inputs == {}


def test_explicit_inputs_and_outputs() -> None:
    namespace = {"a": 1, "b": [1, 2]}
    pkg, data = build_task_package(
        "c = a", namespace, inputs=["b", "a", "b"], outputs=["c"], trust_pickle=True, name="demo"
    )
    assert list(pkg.inputs) == ["b", "a"]
    back = decode_task(data)
    assert back.outputs == ("c",) and back.allow_pickle_outputs is True and back.name == "demo"


def test_unknown_input_name_sentence() -> None:
    with pytest.raises(UsageError) as info:
        build_task_package("y = 1", {"a": 1}, inputs=["zz"])
    assert str(info.value) == "--in names 'zz', which is not defined in the notebook."
    with pytest.raises(UsageError, match="--in names 'p', 'q', which are not defined"):
        build_task_package("y = 1", {}, inputs=["p", "q"])


def test_bad_output_name() -> None:
    with pytest.raises(UsageError, match="--out names '1x', which is not a Python variable name."):
        build_task_package("y = 1", {}, outputs=["1x"])


def test_syntax_is_checked_before_anything_is_encoded() -> None:
    class Boom:
        def __reduce__(self) -> Any:
            raise AssertionError("encoded before the syntax check")

    with pytest.raises(UsageError, match="syntax error at line 1"):
        build_task_package("y = (x", {"x": Boom()})


def test_input_over_the_limit() -> None:
    with pytest.raises(SerializationError, match=r"^Input 'big' is 2.0 MB, over the 1.0 MB limit"):
        build_task_package("s = big.sum()", {"big": np.zeros(2 * MB // 8)}, max_input_bytes=1 * MB)
    namespace = {"a": np.zeros(MB // 16), "b": np.zeros(MB // 16), "c": np.zeros(MB // 16)}
    with pytest.raises(SerializationError, match=r"^The inputs total 1.5 MB \(largest: "):
        build_task_package("s = a + b + c", namespace, max_input_bytes=1 * MB)


def test_unserializable_input_fails_the_build(tmp_path: Path) -> None:
    with (
        open(tmp_path / "x", "w") as fh,
        pytest.raises(SerializationError, match="^Input 'fh' .* cannot be sent"),
    ):
        build_task_package("fh.write('x')", {"fh": fh})


def test_task_encoding_is_deterministic() -> None:
    namespace = {"df": pd.DataFrame({"a": [1, 2]}), "k": {"b": 1, "a": 2}}
    assert (
        build_task_package("r = df * k['a']", namespace)[1]
        == build_task_package("r = df * k['a']", namespace)[1]
    )


def test_manifest_layout() -> None:
    _, data = build_task_package("y = x", {"x": b"abc"})
    length = int.from_bytes(data[5:9], "big")
    manifest = json.loads(data[9 : 9 + length])
    (blob,) = manifest["blobs"]
    assert blob == {
        "role": "input",
        "name": "x",
        "codec": "bytes",
        "type_name": "bytes",
        "offset": 0,
        "length": 3,
    }
    assert data[9 + length :] == b"abc"


@pytest.mark.parametrize(
    "value",
    [
        np.random.default_rng(1).random((300, 7)),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(20).reshape(4, 5)[::2, 1::2],
        np.zeros((0, 3)),
        np.float32(1.5),
        pd.DataFrame({"a": range(5), "s": list("abcde")}),
        bytearray(b"mutable"),
        {"k": (1, 2.5)},
    ],
)
def test_inputs_are_views_of_the_one_package_copy(value: Any) -> None:
    pkg, data = build_task_package("y = v", {"v": value})
    enc = pkg.inputs["v"]
    assert isinstance(enc.data, memoryview) and enc.data.obj is data  # no second copy of the value
    assert encode_task(pkg) == data
    back = decode_task(data).inputs["v"]
    assert back == enc and back.data.tobytes() == encode_value("v", value, allow_pickle=True).data


def test_package_holds_the_value_as_it_was_when_built() -> None:
    array = np.arange(4.0)
    _, data = build_task_package("y = array", {"array": array})
    array[:] = -1  # packing copied the array's memory: later changes do not reach the package
    back = decode_value("array", decode_task(data).inputs["array"], allow_pickle=False)
    assert np.array_equal(back, np.arange(4.0))


def test_ipython_names() -> None:
    for name in (
        "_",
        "__",
        "___",
        "_i",
        "_ii",
        "_i7",
        "_7",
        "In",
        "Out",
        "get_ipython",
        "exit",
        "__name__",
        "_oh",
    ):
        assert is_ipython_name(name), name
    for name in ("_private", "x", "i", "data_1", "_index"):
        assert not is_ipython_name(name), name


# -- results ------------------------------------------------------------------------------


def test_result_roundtrip() -> None:
    res = sample_result(
        error=RemoteErrorInfo("ZeroDivisionError", "division by zero", ["Cell line 1", "----> 1 1/0"])
    )
    assert decode_result(encode_result(res)) == res


def test_decode_values() -> None:
    values = decode_values(decode_result(encode_result(sample_result())), trust_pickle=False)
    assert values["y"] == 42 and np.array_equal(values["arr"], np.arange(5.0))


def test_decode_values_refuses_pickle_or_collects_the_sentence(tmp_path: Path) -> None:
    class Marker:
        def __reduce__(self) -> Any:
            return (Path.write_text, (tmp_path / "ran", "x"))

    res = sample_result(
        values={
            "ok": encode_value("ok", 1, allow_pickle=False),
            "model": Encoded("pickle", pickle.dumps(Marker()), "sklearn.Model"),
        }
    )
    res = decode_result(encode_result(res))
    with pytest.raises(UnsafeValueError, match="Variable 'model' came back as a pickle"):
        decode_values(res, trust_pickle=False)
    errors: dict[str, str] = {}
    assert decode_values(res, trust_pickle=False, errors=errors) == {"ok": 1}
    assert "--trust-pickle" in errors["model"]
    assert not (tmp_path / "ran").exists()


def test_decode_values_only_keeps_requested_names() -> None:
    errors: dict[str, str] = {}
    values = decode_values(sample_result(), trust_pickle=False, only={"y"}, errors=errors)
    assert list(values) == ["y"] and "not requested" in errors["arr"]


def test_digest_ignores_timings_and_sandbox_notes() -> None:
    a = encode_result(sample_result())
    b = encode_result(
        sample_result(
            timings={"execute": 9.0, "wall": 12.0, "extra": 1.0}, sandbox={"network_isolated": False}
        )
    )
    assert a != b
    assert result_digest(a) == result_digest(b)
    assert len(result_digest(a)) == 32


@pytest.mark.parametrize(
    "change",
    [
        {"stdout": "hello!\n"},
        {"stderr": ""},
        {"exit_status": 1},
        {"failure": "The task was killed after its 2 s wall-clock timeout."},
        {"value_errors": {}},
        {"truncated": {"stdout": True, "stderr": False}},
        {"displays": []},
        {"values": {"y": encode_value("y", 43, allow_pickle=False)}},
        {"error": RemoteErrorInfo("E", "v", [])},
    ],
)
def test_digest_covers_everything_deterministic(change: dict[str, Any]) -> None:
    assert result_digest(encode_result(sample_result())) != result_digest(
        encode_result(sample_result(**change))
    )


def test_result_encoding_is_deterministic() -> None:
    assert encode_result(sample_result()) == encode_result(sample_result())


def test_result_without_trailer_is_accepted() -> None:
    data = encode_result(sample_result())
    body = data[: _body_end(data)]
    res = decode_result(body)
    assert res.timings == {} and res.stdout == "hello\n"
    assert result_digest(body) == result_digest(data)


def _body_end(data: bytes) -> int:
    length = int.from_bytes(data[5:9], "big")
    manifest = json.loads(data[9 : 9 + length])
    return 9 + length + sum(b["length"] for b in manifest["blobs"])


# -- hostile bytes -----------------------------------------------------------------------


def test_bad_magic_and_kinds() -> None:
    with pytest.raises(IntegrityError, match="not a decloud result package"):
        decode_result(b"PK\x03\x04 a zip file")
    with pytest.raises(IntegrityError, match="not a decloud task package"):
        decode_task(b"")
    task = encode_task(TaskPackage("x = 1"))
    with pytest.raises(IntegrityError, match="it is not a result manifest"):
        decode_result(task)
    with pytest.raises(IntegrityError, match="it is not a task manifest"):
        decode_task(encode_result(sample_result()))


def test_unknown_version() -> None:
    data = bytearray(encode_result(sample_result()))
    data[4] = 7
    with pytest.raises(SerializationError, match="format version 7, which this decloud_magics cannot read"):
        decode_result(bytes(data))


def test_oversized_manifest_length() -> None:
    data = bytearray(encode_result(sample_result()))
    data[5:9] = (2**32 - 1).to_bytes(4, "big")
    with pytest.raises(IntegrityError, match="manifest length points past the end"):
        decode_result(bytes(data))


@pytest.mark.parametrize("cut", [5, 9, 20, 200, -40, -1])
def test_truncated_packages(cut: int) -> None:
    data = encode_result(sample_result())
    with pytest.raises(IntegrityError, match="damaged|not a decloud"):
        decode_result(data[:cut])


def _as_format_1(data: bytes) -> bytes:
    """The same package as format 1 wrote it: a sha256 for every blob."""
    length = int.from_bytes(data[5:9], "big")
    manifest = json.loads(data[9 : 9 + length])
    start = 9 + length
    for b in manifest["blobs"]:
        b["sha256"] = hashlib.sha256(
            data[start + b["offset"] : start + b["offset"] + b["length"]]
        ).hexdigest()
    manifest["format"] = 1
    head = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return b"DCLD\x01" + len(head).to_bytes(4, "big") + head + data[start:]


def test_format_1_packages_are_still_read_and_their_blob_hashes_checked() -> None:
    _, task = build_task_package("y = x", {"x": np.arange(3.0)})
    old_task = _as_format_1(task)
    assert decode_task(old_task) == decode_task(task)
    old = _as_format_1(encode_result(sample_result()))
    assert decode_values(decode_result(old), trust_pickle=False)["y"] == 42
    flipped = bytearray(old)
    flipped[_body_end(old) - 3] ^= 0xFF
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        decode_result(bytes(flipped))
    decode_result(bytes(flipped), verify=False)  # after a check that covers every byte
    missing = _rewrite_manifest(old, lambda m: m["blobs"][0].pop("sha256"))
    with pytest.raises(IntegrityError, match="blob table is inconsistent"):
        decode_result(missing)


def test_format_2_blobs_are_covered_by_the_result_digest() -> None:
    data = encode_result(sample_result())
    flipped = bytearray(data)
    flipped[_body_end(data) - 3] ^= 0xFF
    decode_result(bytes(flipped))  # format 2 blobs carry no hash of their own...
    assert result_digest(bytes(flipped)) != result_digest(data)  # ...the chain's digest covers them


def _rewrite_manifest(data: bytes, edit: Any) -> bytes:
    length = int.from_bytes(data[5:9], "big")
    manifest = json.loads(data[9 : 9 + length])
    edit(manifest)
    head = json.dumps(manifest).encode()
    return data[:5] + len(head).to_bytes(4, "big") + head + data[9 + length :]


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.__setitem__("exit_status", "0"),
        lambda m: m.__setitem__("exit_status", True),
        lambda m: m.__setitem__("blobs", {}),
        lambda m: m["blobs"][0].__setitem__("offset", 1),
        lambda m: m["blobs"][0].__setitem__("length", -1),
        lambda m: m["blobs"][-1].__setitem__("length", 10**12),
        lambda m: m["blobs"][-1].__setitem__("name", "__import__('os')"),
        lambda m: m["blobs"][-1].__setitem__("role", "exploit"),
        lambda m: m["blobs"][-1].pop("codec"),
        lambda m: m.__setitem__("error", {"ename": 1}),
        lambda m: m.__setitem__("value_errors", {"not an identifier": "x"}),
        lambda m: m.pop("format"),
    ],
)
def test_inconsistent_manifests_are_integrity_errors(edit: Any) -> None:
    with pytest.raises(IntegrityError):
        decode_result(_rewrite_manifest(encode_result(sample_result()), edit))


def test_non_json_manifest() -> None:
    head = b"\xff{not json"
    with pytest.raises(IntegrityError, match="manifest is not valid JSON"):
        decode_result(b"DCLD\x01" + len(head).to_bytes(4, "big") + head)


def test_deeply_nested_manifest() -> None:
    head = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(IntegrityError):
        decode_result(b"DCLD\x01" + len(head).to_bytes(4, "big") + head)


def test_trailing_garbage() -> None:
    with pytest.raises(IntegrityError, match="unexpected bytes after its blobs"):
        decode_task(encode_task(TaskPackage("x = 1")) + b"junk")
    with pytest.raises(IntegrityError, match="trailer length is wrong"):
        decode_result(encode_result(sample_result()) + b"junk")


_OUR_ERRORS = (IntegrityError, SerializationError)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_our_errors(data: bytes) -> None:
    for parse in (decode_result, decode_task, result_digest):
        try:
            parse(data)
        except _OUR_ERRORS:
            pass
        try:
            parse(b"DCLD\x01" + data)
        except _OUR_ERRORS:
            pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_results_raise_only_our_errors(data: st.DataObject) -> None:
    original = bytearray(encode_result(sample_result()))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(original) - 1))
        original[pos] = data.draw(st.integers(0, 255))
    try:
        res = decode_result(bytes(original))
    except _OUR_ERRORS:
        return
    errors: dict[str, str] = {}
    decode_values(res, trust_pickle=False, errors=errors)  # values decode or explain, never crash
