"""One value as bytes, in the safest format that carries it exactly.

Values cross between a notebook and a stranger's machine in both directions.
What comes back is untrusted, so every format here can be read without running
code: JSON for plain Python data, ``.npy`` (never with pickle) for arrays,
Arrow IPC for DataFrames, a name for modules, raw bytes for bytes. Pickle is
the last resort and is only ever *read* when the caller says the bytes come
from someone it trusts (``allow_pickle=True``): the requester's own inputs
inside the sandbox, or results the user chose to trust with ``--trust-pickle``.

numpy, pandas and pyarrow are imported only when a value needs them, so
``%load_ext`` and a plain-data sandbox start stay fast.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .buffers import BytesLike, fresh_buffer
from .errors import SerializationError, UnsafeValueError
from .untrusted import loads_json

#: Bytes in one of the "MB" that limits and messages speak of.
MB = 1024 * 1024

Role = Literal["input", "output"]

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ARROW_META_KEY = b"decloud"


#: ``Encoded.data`` is ``BytesLike``: a decoded package hands out zero-copy slices of itself.
Parts = tuple[BytesLike, ...]


@dataclass(frozen=True)
class Encoded:
    """A value as bytes: ``codec`` says how to read ``data``; ``type_name`` is what it was.

    ``data`` is ``bytes`` when encoded here and a read-only ``memoryview`` into
    the package when decoded from one, which saves a copy of every large value.
    """

    codec: str
    data: BytesLike
    type_name: str


@dataclass(frozen=True)
class EncodedParts:
    """A value as buffers to be written one after another, before they are joined.

    The parts may share memory with the value itself (an array's data, an
    Arrow buffer), so a package can copy them once, straight into its own
    bytes; use them before the value changes.
    """

    codec: str
    parts: Parts
    type_name: str

    @property
    def nbytes(self) -> int:
        return sum(memoryview(p).nbytes for p in self.parts)

    def joined(self) -> Encoded:
        """The value as one ``bytes``: one copy of the parts, none for a single ``bytes``."""
        if len(self.parts) == 1 and type(self.parts[0]) is bytes:
            return Encoded(self.codec, self.parts[0], self.type_name)
        return Encoded(self.codec, b"".join(self.parts), self.type_name)


class _NoSafeFormat(Exception):
    """Internal: this codec cannot carry the value exactly; try the next one."""


def type_name_of(value: Any) -> str:
    """``pandas.DataFrame``-style name of a value's type, for manifests and messages."""
    cls = type(value)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    if module.startswith("pandas.") and getattr(sys.modules.get("pandas"), cls.__name__, None) is cls:
        module = "pandas"  # pandas.core.frame.DataFrame is pandas.DataFrame to its users
    return f"{module}.{cls.__qualname__}"


def _a(type_name: str) -> str:
    return ("an " if type_name[:1].lower() in "aeiou" else "a ") + type_name


def encode_value(name: str, value: Any, *, allow_pickle: bool, role: Role = "input") -> Encoded:
    """Encode ``value`` with the first safe codec that carries it exactly.

    ``allow_pickle`` permits cloudpickle as the last resort; ``role`` only
    shapes the error sentence (an input goes to a worker, an output comes back).

    >>> encode_value("n", (1, 2.5, None), allow_pickle=False).codec
    'json'
    """
    return encode_parts(name, value, allow_pickle=allow_pickle, role=role).joined()


def encode_parts(name: str, value: Any, *, allow_pickle: bool, role: Role = "input") -> EncodedParts:
    """Like ``encode_value``, but the bytes stay in parts that may share the value's memory.

    A package writes the parts straight into itself, which saves a copy of
    every large array or frame.

    >>> enc = encode_parts("a", bytearray(b"ab"), allow_pickle=False)
    >>> enc.codec, enc.nbytes
    ('bytes', 2)
    """
    type_name = type_name_of(value)
    for codec, encoder in _ENCODERS:
        try:
            return EncodedParts(codec, encoder(value), type_name)
        except _NoSafeFormat:
            continue
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001, S112 (a safe codec tripping on an odd value cannot carry it)
            continue
    if not allow_pickle:
        what = "a function or class" if isinstance(value, (types.FunctionType, type)) else _a(type_name)
        raise SerializationError(
            f"Output '{name}' ({what}) has no safe format (JSON, .npy or Arrow): "
            "rerun with --trust-pickle to bring it back as a pickle."
        )
    try:
        import cloudpickle

        return EncodedParts("pickle", (cloudpickle.dumps(value, protocol=5),), type_name)
    except Exception as exc:  # noqa: BLE001 (pickling runs arbitrary __reduce__ code: any error is possible)
        reason = _short(exc)
        if role == "input":
            raise SerializationError(
                f"Input '{name}' ({_a(type_name)}) cannot be sent to a worker: {reason}. "
                "Leave it out with --in, or convert it to data first."
            ) from None
        raise SerializationError(
            f"Output '{name}' ({_a(type_name)}) cannot be sent back to the notebook: {reason}."
        ) from None


def decode_value(name: str, encoded: Encoded, *, allow_pickle: bool) -> Any:
    """Rebuild a value; pickle is read only when ``allow_pickle`` is true.

    Raises ``UnsafeValueError`` for a pickle that is not trusted, and
    ``SerializationError`` for bytes that do not decode.
    """
    codec = encoded.codec
    if codec == "pickle":
        if not allow_pickle:
            raise UnsafeValueError(
                f"Variable '{name}' came back as a pickle ({_a(encoded.type_name)}); decloud does not unpickle "
                "a worker's bytes: rerun with --trust-pickle if you trust the worker."
            )
        import pickle

        try:
            return pickle.loads(encoded.data)
        except Exception as exc:  # noqa: BLE001 (unpickling runs arbitrary code: any error is possible)
            raise SerializationError(
                f"Variable '{name}' ({_a(encoded.type_name)}) could not be unpickled: {_short(exc)}; "
                "install the same packages on both sides or convert the value to data."
            ) from None
    if codec == "module":
        return _decode_module(name, encoded, allow_pickle)
    decoder = _DECODERS.get(codec)
    if decoder is None:
        raise SerializationError(
            f"Variable '{name}' uses the format '{codec[:40]}', which this decloud_magics cannot read; "
            "upgrade decloud_magics."
        )
    try:
        return decoder(encoded.data, encoded.type_name)
    except (SerializationError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 (untrusted bytes: any parser error means "corrupt")
        raise SerializationError(
            f"Variable '{name}' could not be decoded from its {codec} bytes ({_short(exc)}); "
            "the package is damaged: run the cell again."
        ) from None


def encoded_size(encoded: Encoded | EncodedParts) -> int:
    """Bytes the value takes in a package."""
    if isinstance(encoded, EncodedParts):
        return encoded.nbytes
    return memoryview(encoded.data).nbytes


def check_size(name: str, encoded: Encoded | EncodedParts, limit_bytes: int, *, role: Role = "input") -> None:
    """Refuse a value over the limit before it is stored or sent."""
    size = encoded_size(encoded)
    if size > limit_bytes and role == "input":
        raise SerializationError(
            f"Input '{name}' is {size / MB:.1f} MB, over the {limit_bytes / MB:.1f} MB limit: "
            "leave it out with --in, raise DecloudMagics.max_input_mb or pass a smaller value."
        )
    if size > limit_bytes:
        raise SerializationError(
            f"Output '{name}' is {size / MB:.1f} MB, over the worker's {limit_bytes / MB:.1f} MB result limit: "
            "return a smaller value (e.g. a summary) or save it elsewhere."
        )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


# -- json ------------------------------------------------------------------
# Plain data travels as tagged JSON: every JSON object is a one-key wrapper
# ({"d": dict}, {"t": tuple}, {"f": "nan"}), so no user key can be mistaken
# for a tag and tuples, non-finite floats and dicts come back as they left.


def _to_tree(value: Any) -> Any:
    kind = type(value)  # exact types only: a subclass (IntEnum, np.float64) would not come back as itself
    if value is None or kind is bool or kind is int or kind is str:
        return value
    if kind is float:
        return value if math.isfinite(value) else {"f": repr(value)}
    if kind is list:
        return [_to_tree(v) for v in value]
    if kind is tuple:
        return {"t": [_to_tree(v) for v in value]}
    if kind is dict:
        if not all(type(k) is str for k in value):
            raise _NoSafeFormat
        return {"d": {k: _to_tree(v) for k, v in value.items()}}
    raise _NoSafeFormat


def _from_tree(node: Any) -> Any:
    if type(node) is list:
        return [_from_tree(v) for v in node]
    if type(node) is not dict:
        return node
    if len(node) != 1:
        raise ValueError("a JSON object is not a tagged value")
    ((tag, inner),) = node.items()
    if tag == "d" and type(inner) is dict:
        return {k: _from_tree(v) for k, v in inner.items()}
    if tag == "t" and type(inner) is list:
        return tuple(_from_tree(v) for v in inner)
    if tag == "f" and inner in ("nan", "inf", "-inf"):
        return float(inner)
    raise ValueError(f"unknown JSON tag {tag[:20]!r}")


def _encode_json(value: Any) -> Parts:
    try:
        tree = _to_tree(value)
        try:
            text = json.dumps(tree, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            return (text.encode("utf-8"),)
        except UnicodeEncodeError:  # lone surrogates survive only as \\u escapes
            return (json.dumps(tree, separators=(",", ":"), allow_nan=False).encode("ascii"),)
    except (RecursionError, ValueError):  # cycles, deep nesting, ints past the digit limit
        raise _NoSafeFormat from None


def _decode_json(data: BytesLike, type_name: str) -> Any:
    return _from_tree(loads_json(data))


# -- npy ---------------------------------------------------------------------


def _encode_npy(value: Any) -> Parts:
    np = sys.modules.get("numpy")
    if np is None:  # numpy was never imported, so the value cannot be one of its types
        raise _NoSafeFormat
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        value = np.asarray(value)
    elif type(value) not in (np.ndarray, np.memmap):
        raise _NoSafeFormat
    if value.dtype.hasobject:
        raise _NoSafeFormat
    fmt = np.lib.format
    if not (value.flags.c_contiguous or value.flags.f_contiguous):
        value = np.ascontiguousarray(value)
    header = fmt.header_data_from_array_1_0(value)
    head = io.BytesIO()
    try:
        fmt.write_array_header_1_0(head, header)
    except ValueError:  # a very wide structured dtype needs the 2.0 header
        fmt.write_array_header_2_0(head, header)
    flat = value.T if header["fortran_order"] else value
    body = flat.reshape(-1).view(np.uint8) if value.size else b""
    # The array's own memory, not a copy: whoever joins the parts copies it once.
    return (head.getvalue(), memoryview(body))


def _decode_npy(data: BytesLike, type_name: str) -> Any:
    import numpy as np

    fmt = np.lib.format
    stream = io.BytesIO(bytes(data[: 65536 + 64]))  # the header only: the data is read in place below
    version = fmt.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(stream, max_header_size=65536)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(stream, max_header_size=65536)
    else:
        raise ValueError(f"npy version {version} is not supported")
    if dtype.hasobject:
        raise ValueError("the array holds Python objects, which only pickle can restore")
    count = math.prod(shape)
    offset = stream.tell()
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError("the array data does not match its header")
    # One copy, into memory the array then owns: writable, like np.load gives. A
    # memcpy does not care where the data sits in the package; numpy's own copy
    # of a misaligned float64 buffer runs element by element, about 10x slower.
    raw = fresh_buffer(count * dtype.itemsize)
    raw[:] = memoryview(data).cast("B")[offset:]
    flat = np.frombuffer(raw, dtype=dtype, count=count)
    array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    if array.ndim == 0 and type_name not in ("numpy.ndarray", "numpy.memmap"):
        return array[()]  # it left as a numpy scalar
    return array


# -- arrow -------------------------------------------------------------------
# DataFrames travel as an Arrow IPC stream: Arrow keeps dtypes, the index and
# the column names through pandas' own metadata, and reading it is close to a
# memcpy (Parquet was 5-10x slower on a 1M-row frame for no safety gain).
# Our own metadata restores what Arrow cannot: non-string or duplicate column
# names, object-dtype string columns, a Series' name, a DatetimeIndex's freq.


def _encode_arrow(value: Any) -> Parts:
    pd = sys.modules.get("pandas")
    if pd is None or type(value) not in (pd.DataFrame, pd.Series):
        raise _NoSafeFormat
    import pyarrow as pa

    meta: dict[str, Any] = {"kind": "frame"}
    if type(value) is pd.Series:
        meta = {"kind": "series", "name": _to_tree(value.name)}
        value = value.to_frame(name="__decloud_series__")
    frame = value
    columns = frame.columns
    if isinstance(columns, pd.MultiIndex):
        pass  # Arrow's pandas metadata carries these (string levels) itself
    elif isinstance(columns, pd.RangeIndex) or not (
        columns.is_unique and all(type(c) is str for c in columns)
    ):
        if isinstance(columns, pd.RangeIndex):
            meta["columns"] = {"range": [columns.start, columns.stop, columns.step]}
        else:
            meta["columns"] = {"names": _to_tree(list(columns)), "dtype": str(columns.dtype)}
        meta["columns"]["name"] = _to_tree(columns.name)
        frame = frame.set_axis([f"__decloud_col_{i}__" for i in range(len(columns))], axis=1)
    object_columns = []
    for i in range(frame.shape[1]):
        column = frame.iloc[:, i]
        if column.dtype == object:
            kind = pd.api.types.infer_dtype(column, skipna=True)
            if kind not in ("string", "empty", "bytes"):
                raise _NoSafeFormat  # mixed objects, lists, dicts: Arrow would change them
            object_columns.append(i)
    meta["object_columns"] = object_columns
    index = frame.index
    if index.dtype == object and not isinstance(index, pd.MultiIndex):
        if pd.api.types.infer_dtype(index, skipna=True) not in ("string", "empty"):
            raise _NoSafeFormat
        meta["object_index"] = True
    freq = getattr(index, "freqstr", None)
    if freq:
        meta["freq"] = freq
    try:
        table = pa.Table.from_pandas(frame)
    except (pa.ArrowException, TypeError, ValueError):  # complex, sparse, mixed types
        raise _NoSafeFormat from None
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[_ARROW_META_KEY] = json.dumps(meta, separators=(",", ":")).encode()
    table = table.replace_schema_metadata(schema_meta)
    # Measured first, then written once into a buffer of the right size: a
    # growing stream would copy the data again each time it doubled.
    mock = pa.MockOutputStream()
    with pa.ipc.new_stream(mock, table.schema) as writer:
        writer.write_table(table)
    buffer = pa.allocate_buffer(mock.size())
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(buffer), table.schema) as writer:
        writer.write_table(table)
    return (memoryview(buffer),)  # Arrow's buffer itself: to_pybytes() would copy it


def _decode_arrow(data: BytesLike, type_name: str) -> Any:
    import pandas as pd
    import pyarrow as pa

    with pa.ipc.open_stream(pa.BufferReader(data)) as reader:
        table = reader.read_all()
    table.validate(full=True)  # Arrow's advice for untrusted IPC: check offsets before touching data
    meta = loads_json((table.schema.metadata or {}).get(_ARROW_META_KEY, b'{"kind":"frame"}'))
    frame = table.to_pandas()
    for i in meta.get("object_columns", []):
        frame.isetitem(int(i), frame.iloc[:, int(i)].astype(object))
    if meta.get("object_index"):
        frame.index = frame.index.astype(object)
    if meta.get("freq"):
        frame.index = type(frame.index)(frame.index, freq=str(meta["freq"]))
    columns = meta.get("columns")
    if columns is not None:
        if "range" in columns:
            start, stop, step = (int(v) for v in columns["range"])
            new = pd.Index(range(start, stop, step), name=_from_tree(columns.get("name")))
        else:
            names = _from_tree(columns["names"])
            new = pd.Index(names, name=_from_tree(columns.get("name")), tupleize_cols=False, dtype=object)
            if columns.get("dtype") != "object":
                new = new.astype(str(columns["dtype"]))
        if len(new) != frame.shape[1]:
            raise ValueError("the column names do not match the columns")
        frame.columns = new
    if meta.get("kind") == "series":
        if frame.shape[1] != 1:
            raise ValueError("a Series must come as one column")
        series = frame.iloc[:, 0]
        series.name = _from_tree(meta.get("name"))
        return series
    return frame


# -- module and bytes --------------------------------------------------------


def _encode_module(value: Any) -> Parts:
    if not isinstance(value, types.ModuleType):
        raise _NoSafeFormat
    return (value.__name__.encode("utf-8"),)


def _decode_module(name: str, encoded: Encoded, trusted: bool) -> Any:
    module = bytes(encoded.data).decode("utf-8", "replace")
    if not _MODULE_NAME.match(module):
        raise SerializationError(
            f"Variable '{name}' names a module '{module[:60]}' that is not a module name."
        )
    if module in sys.modules:
        return sys.modules[module]
    top = module.split(".")[0]
    if not trusted and (top in _SIDE_EFFECT_MODULES or not _installed(top)):
        # Importing runs a module's code, and a worker could name any script on
        # this machine (one next to the notebook, say): only installed packages.
        raise UnsafeValueError(
            f"Variable '{name}' came back as the module {module}, which is not an installed package here; "
            f"decloud does not import it on a worker's word: run `import {module}` yourself if you want it."
        )
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 (the module's own code failed while importing)
        raise SerializationError(
            f"Variable '{name}' is the module {module}, which cannot be imported here ({_short(exc)}); "
            "install it or leave it out."
        ) from None


_SIDE_EFFECT_MODULES = frozenset({"antigravity", "this", "__hello__", "__phello__", "idlelib", "turtledemo"})


def _installed(top: str) -> bool:
    """Whether a top-level module lives in the interpreter's stdlib or site-packages (not in cwd)."""
    import importlib.util
    import os
    import site
    import sysconfig

    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if spec.origin in ("built-in", "frozen"):
        return True
    places = [spec.origin] if spec.origin else list(spec.submodule_search_locations or [])
    dirs = [p for k, p in sysconfig.get_paths().items() if k.endswith(("lib", "stdlib"))]
    dirs += [*site.getsitepackages(), site.getusersitepackages()]
    roots = {os.path.realpath(p) + os.sep for p in dirs}
    return bool(places) and all(any(os.path.realpath(p).startswith(r) for r in roots) for p in places)


def _encode_bytes(value: Any) -> Parts:
    if type(value) not in (bytes, bytearray):
        raise _NoSafeFormat
    return (value,)  # a bytearray is copied where the parts are joined, and only there


def _decode_bytes(data: BytesLike, type_name: str) -> Any:
    return bytearray(data) if type_name == "bytearray" else bytes(data)


# In order of preference; pickle, the last resort, is handled by encode_value itself.
_ENCODERS: tuple[tuple[str, Callable[[Any], Parts]], ...] = (("json", _encode_json), ("npy", _encode_npy))
_ENCODERS += (("arrow", _encode_arrow), ("module", _encode_module), ("bytes", _encode_bytes))
_DECODERS = {"json": _decode_json, "npy": _decode_npy, "arrow": _decode_arrow, "bytes": _decode_bytes}
