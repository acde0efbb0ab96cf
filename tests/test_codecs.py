"""Values as bytes: each safe codec round-trips exactly; pickle is never read untrusted."""

from __future__ import annotations

import enum
import io
import math
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decloud_magics.codecs import (
    MB,
    Encoded,
    check_size,
    decode_value,
    encode_parts,
    encode_value,
    encoded_size,
)
from decloud_magics.errors import SerializationError, UnsafeValueError


def roundtrip(value: Any, *, allow_pickle: bool = False) -> tuple[Encoded, Any]:
    enc = encode_value("v", value, allow_pickle=allow_pickle)
    return enc, decode_value("v", enc, allow_pickle=allow_pickle)


def same(a: Any, b: Any) -> bool:
    """Equal in type and value, recursively, with nan equal to nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


class Marker:
    """Unpickling this writes a file: proof of whether pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.write_text, (self.path, "pickle ran"))


# -- json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        10**40,
        1.5,
        -0.0,
        float("nan"),
        float("inf"),
        float("-inf"),
        "",
        "héllo ✓",
        "lone \udcff surrogate",
        [],
        [1, "a", None, [2.5, [True]]],
        (),
        (1, (2, 3), [4, (5,)]),
        {},
        {"a": 1, "b": [1, 2], "c": {"d": (1, 2)}},
        {"t": [1], "d": {"f": "nan"}, "f": "inf"},  # user keys that look like our tags
        {"z": 1, "a": 2},  # key order is kept
    ],
)
def test_json_roundtrip_is_exact(value: Any) -> None:
    enc, back = roundtrip(value)
    assert enc.codec == "json"
    assert same(value, back)


def test_json_type_names() -> None:
    assert encode_value("v", (1, 2), allow_pickle=False).type_name == "tuple"
    assert encode_value("v", {"a": 1}, allow_pickle=False).type_name == "dict"


class Color(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize("value", [Color.RED, {1: "a"}, [1, {2, 3}], np.float64(1.5)])
def test_values_json_would_change_are_not_json(value: Any) -> None:
    enc = encode_value("v", value, allow_pickle=True)
    assert enc.codec != "json"
    back = decode_value("v", enc, allow_pickle=True)
    assert type(back) is type(value) and back == value


def test_cyclic_list_falls_back_to_pickle() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    enc, back = roundtrip(cyclic, allow_pickle=True)
    assert enc.codec == "pickle" and back[1] is back


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_json_roundtrip_property(value: Any) -> None:
    enc, back = roundtrip(value)
    assert enc.codec == "json"
    assert same(value, back)


@pytest.mark.parametrize("data", [b"{", b'{"x": 1}', b'{"t": 1}', b'{"f": "zero"}', b"\xff"])
def test_bad_json_is_a_serialization_error(data: bytes) -> None:
    with pytest.raises(SerializationError, match="Variable 'v' could not be decoded"):
        decode_value("v", Encoded("json", data, "dict"), allow_pickle=False)


# -- npy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.linspace(0, 1, 7, dtype=np.float32),
        np.array([1.0, np.nan, np.inf, -0.0]),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.arange(20).reshape(4, 5)[::2, 1::2],  # not contiguous
        np.array(3.5),  # 0-d array stays an array
        np.zeros((0, 3)),
        np.array([True, False]),
        np.array(["a", "bcd"]),
        np.array([b"x", b"yz"]),
        np.array(["2024-01-01", "NaT"], dtype="datetime64[ns]"),
        np.array([1 + 2j]),
        np.arange(4, dtype=">i4"),
        np.zeros(3, dtype=[("x", "<f8"), ("n", "<i2")]),
    ],
)
def test_npy_roundtrip(array: np.ndarray) -> None:
    enc, back = roundtrip(array)
    assert enc.codec == "npy"
    assert type(back) is np.ndarray
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    if back.size:
        back.flat[0] = back.flat[-1]  # writable, like np.load gives


@pytest.mark.parametrize(
    "scalar", [np.float64(2.5), np.int8(-3), np.bool_(True), np.datetime64("2024-01-01")]
)
def test_numpy_scalars_come_back_as_scalars(scalar: Any) -> None:
    enc, back = roundtrip(scalar)
    assert enc.codec == "npy"
    assert type(back) is type(scalar) and back == scalar


def test_large_array_is_one_copy_and_exact() -> None:
    array = np.random.default_rng(0).random(1_000_000)
    enc, back = roundtrip(array)
    assert encoded_size(enc) == array.nbytes + 128
    assert np.array_equal(back, array)


@pytest.mark.parametrize(
    "value",
    [
        np.arange(12.0).reshape(3, 4),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.arange(20).reshape(4, 5)[::2, 1::2],
        np.zeros((0, 3)),
        np.int8(-3),
        pd.DataFrame({"a": [1, 2], "s": ["x", None]}),
        pd.Series([1.5, 2.5], name="s"),
        b"raw",
        bytearray(b"raw"),
        [1, "two", None],
        np,
        {1, 2},
    ],
)
def test_parts_join_to_what_encode_value_gives(value: Any) -> None:
    parts = encode_parts("v", value, allow_pickle=True)
    enc = encode_value("v", value, allow_pickle=True)
    assert (parts.codec, parts.type_name) == (enc.codec, enc.type_name)
    assert b"".join(parts.parts) == enc.data and type(enc.data) is bytes
    assert parts.nbytes == encoded_size(parts) == encoded_size(enc) == len(enc.data)


def test_array_parts_are_the_array_s_own_memory() -> None:
    array = np.random.default_rng(0).random(1000)
    header, body = encode_parts("a", array, allow_pickle=False).parts
    assert np.shares_memory(np.frombuffer(body, dtype=np.uint8), array)
    assert bytes(header).startswith(b"\x93NUMPY") and memoryview(body).nbytes == array.nbytes


def test_check_size_reads_parts_without_joining_them() -> None:
    parts = encode_parts("big", np.zeros(2 * MB // 8), allow_pickle=False)
    with pytest.raises(SerializationError, match=r"^Input 'big' is 2.0 MB, over the 1.0 MB limit"):
        check_size("big", parts, 1 * MB)


def test_object_arrays_are_not_npy() -> None:
    array = np.array([{"a": 1}, None], dtype=object)
    with pytest.raises(SerializationError, match="has no safe format"):
        encode_value("arr", array, allow_pickle=False, role="output")
    enc = encode_value("arr", array, allow_pickle=True)
    assert enc.codec == "pickle"


def test_npy_with_pickled_objects_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    np.save(buf, np.array([Marker(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(SerializationError, match="Variable 'v' could not be decoded"):
        decode_value("v", Encoded("npy", buf.getvalue(), "numpy.ndarray"), allow_pickle=True)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [3, 20, 140])
def test_truncated_npy_is_a_serialization_error(cut: int) -> None:
    enc = encode_value("v", np.arange(10), allow_pickle=False)
    with pytest.raises(SerializationError):
        decode_value("v", Encoded("npy", enc.data[:cut], enc.type_name), allow_pickle=False)


# -- arrow (DataFrames and Series) ---------------------------------------------------


def frames() -> dict[str, pd.DataFrame]:
    n = 5
    return {
        "numbers": pd.DataFrame(
            {c: np.arange(n).astype(c) for c in ["int8", "uint64", "float32", "float64", "bool"]}
        ),
        "nullable": pd.DataFrame(
            {
                "I": pd.array([1, None, 3, 4, 5], dtype="Int64"),
                "b": pd.array([True, None, False, True, False], dtype="boolean"),
            }
        ),
        "strings": pd.DataFrame({"s": ["a", "b", None, "d", "e"]}),
        "object_strings": pd.DataFrame({"s": pd.Series(list("abcde"), dtype=object)}),
        "categorical": pd.DataFrame({"c": pd.Categorical(["a", "b", "a", "c", "b"], ordered=True)}),
        "datetimes": pd.DataFrame(
            {
                "t": pd.date_range("2024", periods=n, freq="D"),
                "tz": pd.date_range("2024", periods=n, tz="Europe/Paris"),
                "td": pd.to_timedelta(np.arange(n), unit="s"),
            }
        ),
        "nan": pd.DataFrame({"x": [1.0, np.nan, np.inf, -np.inf, -0.0]}),
        "named_index": pd.DataFrame({"x": range(n)}, index=pd.Index(list("abcde"), name="key")),
        "int_index": pd.DataFrame({"x": range(n)}, index=[10, 20, 30, 40, 50]),
        "datetime_index_with_freq": pd.DataFrame(
            {"x": range(n)}, index=pd.date_range("2024", periods=n, name="when")
        ),
        "range_index_step": pd.DataFrame({"x": range(n)}, index=pd.RangeIndex(5, 15, 2)),
        "multiindex": pd.DataFrame(
            {"x": range(4)}, index=pd.MultiIndex.from_product([["a", "b"], [1, 2]], names=["k", "n"])
        ),
        "int_columns": pd.DataFrame(np.ones((2, 3))),
        "mixed_columns": pd.DataFrame({0: [1], "a": [2], 2.5: [3]}),
        "duplicate_columns": pd.DataFrame([[1, 2]], columns=["a", "a"]),
        "tuple_columns": pd.DataFrame({("a", "b"): [1], ("a", "c"): [2]}),
        "multiindex_columns": pd.DataFrame(
            np.ones((2, 4)), columns=pd.MultiIndex.from_product([["a", "b"], ["x", "y"]])
        ),
        "named_columns": pd.DataFrame({"a": [1]}).rename_axis(columns="cols"),
        "empty": pd.DataFrame(),
        "no_rows": pd.DataFrame({"a": pd.Series([], dtype="float32")}),
        "period": pd.DataFrame({"p": pd.period_range("2024", periods=3, freq="M")}),
        "bytes_objects": pd.DataFrame({"o": [b"a", b"b"]}),
    }


@pytest.mark.parametrize("key", list(frames()))
def test_dataframe_roundtrip(key: str) -> None:
    frame = frames()[key]
    enc, back = roundtrip(frame)
    assert enc.codec == "arrow"
    assert enc.type_name == "pandas.DataFrame"
    pd.testing.assert_frame_equal(
        back, frame, check_exact=True, check_column_type=True, check_index_type=True
    )
    assert back.columns.names == frame.columns.names


def test_dataframe_attrs_survive() -> None:
    frame = pd.DataFrame({"a": [1]})
    frame.attrs["source"] = "sensor"
    assert roundtrip(frame)[1].attrs == {"source": "sensor"}


@pytest.mark.parametrize(
    "series",
    [
        pd.Series([1.0, np.nan], name="x"),
        pd.Series([1, 2], name=None),
        pd.Series([1, 2], name=7),
        pd.Series(["a", "b"], index=pd.Index(["r1", "r2"], name="row"), name=("a", "b")),
        pd.Series(pd.Categorical(["u", "v"])),
    ],
)
def test_series_roundtrip(series: pd.Series) -> None:
    enc, back = roundtrip(series)
    assert enc.codec == "arrow" and enc.type_name == "pandas.Series"
    pd.testing.assert_series_equal(back, series, check_exact=True)


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"c": np.ones(3, dtype=complex)}),
        pd.DataFrame({"o": [1, "a", None]}),
        pd.DataFrame({"o": [[1, 2], [3]]}),
        pd.DataFrame({"o": [{"a": 1}, {"b": 2}]}),
        pd.DataFrame({pd.Timestamp("2024"): [1]}),
        pd.DataFrame({"s": pd.arrays.SparseArray([0, 0, 1])}),
    ],
)
def test_frames_arrow_would_change_fall_back(frame: pd.DataFrame) -> None:
    with pytest.raises(SerializationError, match="--trust-pickle"):
        encode_value("df", frame, allow_pickle=False, role="output")
    enc, back = roundtrip(frame, allow_pickle=True)
    assert enc.codec == "pickle"
    pd.testing.assert_frame_equal(back, frame)


def test_corrupt_arrow_is_a_serialization_error() -> None:
    enc = encode_value("df", pd.DataFrame({"a": range(100)}), allow_pickle=False)
    for data in (enc.data[:50], enc.data[: len(enc.data) // 2], b"\x00" * 64):
        with pytest.raises(SerializationError, match="Variable 'df' could not be decoded"):
            decode_value("df", Encoded("arrow", data, enc.type_name), allow_pickle=False)


# -- modules and bytes ----------------------------------------------------------------


def test_module_travels_by_name() -> None:
    enc, back = roundtrip(np)
    assert enc == Encoded("module", b"numpy", "module")
    assert back is np


def test_untrusted_module_is_imported_only_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker may name a script that sits next to the notebook: importing it would run it.
    marker = tmp_path / "ran"
    (tmp_path / "cleanup_script.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        UnsafeValueError, match="came back as the module cleanup_script, which is not an installed package"
    ):
        decode_value("m", Encoded("module", b"cleanup_script", "module"), allow_pickle=False)
    assert not marker.exists()
    with pytest.raises(UnsafeValueError, match="not an installed package"):
        decode_value("m", Encoded("module", b"antigravity", "module"), allow_pickle=False)
    sys.modules.pop("colorsys", None)
    assert (
        decode_value("m", Encoded("module", b"colorsys", "module"), allow_pickle=False).__name__ == "colorsys"
    )


def test_trusted_module_is_imported_and_bad_names_refused() -> None:
    sys.modules.pop("colorsys", None)
    assert (
        decode_value("m", Encoded("module", b"colorsys", "module"), allow_pickle=True).__name__ == "colorsys"
    )
    with pytest.raises(SerializationError, match="not a module name"):
        decode_value("m", Encoded("module", b"../etc/passwd", "module"), allow_pickle=True)
    with pytest.raises(SerializationError, match="cannot be imported"):
        decode_value("m", Encoded("module", b"no_such_module_abc", "module"), allow_pickle=True)


def test_bytes_and_bytearray() -> None:
    enc, back = roundtrip(b"\x00\xffraw")
    assert enc.codec == "bytes" and back == b"\x00\xffraw" and type(back) is bytes
    enc, back = roundtrip(bytearray(b"abc"))
    assert enc.codec == "bytes" and back == bytearray(b"abc") and type(back) is bytearray


# -- pickle ---------------------------------------------------------------------------


def test_functions_pickle_only_when_allowed() -> None:
    offset = 3
    with pytest.raises(SerializationError, match=r"Output 'f' \(a function or class\) has no safe format"):
        encode_value("f", lambda x: x + offset, allow_pickle=False, role="output")
    enc, back = roundtrip(lambda x: x + offset, allow_pickle=True)
    assert enc.codec == "pickle" and back(1) == 4


def test_pickle_is_refused_without_trust_with_the_documented_sentence() -> None:
    enc = Encoded("pickle", pickle.dumps({1, 2}), "sklearn.linear_model.LinearRegression")
    with pytest.raises(UnsafeValueError) as info:
        decode_value("model", enc, allow_pickle=False)
    assert str(info.value) == (
        "Variable 'model' came back as a pickle (a sklearn.linear_model.LinearRegression); decloud does not "
        "unpickle a worker's bytes: rerun with --trust-pickle if you trust the worker."
    )


@pytest.mark.parametrize("codec", ["pickle", "json", "npy", "arrow", "module", "unknown"])
def test_a_malicious_pickle_never_runs_by_default(tmp_path: Path, codec: str) -> None:
    marker = tmp_path / "ran"
    payload = pickle.dumps(Marker(marker))
    with pytest.raises(SerializationError):  # UnsafeValueError is a SerializationError
        decode_value("v", Encoded(codec, payload, "builtins.object"), allow_pickle=False)
    assert (
        decode_value("v", Encoded("bytes", payload, "bytes"), allow_pickle=False) == payload
    )  # bytes stay bytes
    assert not marker.exists()


def test_trusted_pickle_does_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    decode_value("v", Encoded("pickle", pickle.dumps(Marker(marker)), "x"), allow_pickle=True)
    assert marker.read_text() == "pickle ran"


def test_unserializable_input_sentence(tmp_path: Path) -> None:
    with open(tmp_path / "f.txt", "w") as handle, pytest.raises(SerializationError) as info:
        encode_value("f", handle, allow_pickle=True)
    message = str(info.value)
    assert message.startswith("Input 'f' (a _io.TextIOWrapper) cannot be sent to a worker: ")
    assert message.endswith("Leave it out with --in, or convert it to data first.")


def test_unserializable_output_sentence() -> None:
    import threading

    with pytest.raises(SerializationError, match=r"^Output 'lock' \(a _thread.lock\) cannot be sent back"):
        encode_value("lock", threading.Lock(), allow_pickle=True, role="output")


def test_unknown_codec() -> None:
    with pytest.raises(
        SerializationError, match="format 'zstd-frame', which this decloud_magics cannot read"
    ):
        decode_value("v", Encoded("zstd-frame", b"", "x"), allow_pickle=False)


# -- sizes ------------------------------------------------------------------------------


def test_check_size_sentence() -> None:
    enc = Encoded("bytes", b"\0" * int(1.2 * MB), "bytes")
    check_size("big", enc, 2 * MB)
    with pytest.raises(SerializationError) as info:
        check_size("big", enc, 1 * MB)
    assert str(info.value) == (
        "Input 'big' is 1.2 MB, over the 1.0 MB limit: leave it out with --in, "
        "raise DecloudMagics.max_input_mb or pass a smaller value."
    )
    with pytest.raises(
        SerializationError, match="^Output 'big' is 1.2 MB, over the worker's 1.0 MB result limit"
    ):
        check_size("big", enc, 1 * MB, role="output")


def test_codecs_import_is_cheap() -> None:
    import subprocess

    code = (
        "import sys; import decloud_magics.codecs, decloud_magics.package, decloud_magics.analysis;"
        "heavy = [m for m in ('numpy', 'pandas', 'pyarrow', 'IPython', 'cloudpickle', 'web3') if m in sys.modules];"
        "print(heavy)"
    )
    root = str(Path(__file__).resolve().parents[1])
    boot = f"import sys,types;p=types.ModuleType('decloud_magics');p.__path__=[{root + '/decloud_magics'!r}];sys.modules['decloud_magics']=p;"
    out = subprocess.run(
        [sys.executable, "-c", boot + code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
