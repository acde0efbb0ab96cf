"""One value as bytes, in the safest format that carries it exactly.

Values cross between a notebook and a stranger's machine in both directions.
What comes back is untrusted, so every format here can be read without running
code: JSON for plain Python data, ``.npy`` (never with pickle) for arrays,
Arrow IPC for DataFrames, a name for modules, raw bytes for bytes. Pickle is
the last resort and is only ever *read* when the caller says the bytes come
from someone it trusts (``allow_pickle=True``): the requester's own inputs
inside the sandbox, or results the user chose to trust with ``--trust-pickle``.

JSON, ``.npy`` and Arrow have modules of their own (``json_codec``,
``npy_codec``, ``arrow_codec``); this one holds the small module and bytes
codecs and picks, value by value, the first format that fits.

numpy, pandas and pyarrow are imported only when a value needs them, so
``%load_ext`` and a plain-data sandbox start stay fast.
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from collections.abc import Callable
from typing import Any, Literal

from .arrow_codec import decode_arrow, encode_arrow
from .buffers import BytesLike
from .encoded import Encoded, EncodedParts, NoSafeFormat, Parts
from .errors import SerializationError, UnsafeValueError
from .json_codec import decode_json, encode_json
from .npy_codec import decode_npy, encode_npy

#: Bytes in one of the "MB" that limits and messages speak of.
MB = 1024 * 1024

Role = Literal["input", "output"]

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


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
        except NoSafeFormat:
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


# -- module and bytes --------------------------------------------------------


def _encode_module(value: Any) -> Parts:
    if not isinstance(value, types.ModuleType):
        raise NoSafeFormat
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
        raise NoSafeFormat
    return (value,)  # a bytearray is copied where the parts are joined, and only there


def _decode_bytes(data: BytesLike, type_name: str) -> Any:
    return bytearray(data) if type_name == "bytearray" else bytes(data)


# In order of preference; pickle, the last resort, is handled by encode_value itself.
_ENCODERS: tuple[tuple[str, Callable[[Any], Parts]], ...] = (("json", encode_json), ("npy", encode_npy))
_ENCODERS += (("arrow", encode_arrow), ("module", _encode_module), ("bytes", _encode_bytes))
_DECODERS = {"json": decode_json, "npy": decode_npy, "arrow": decode_arrow, "bytes": _decode_bytes}
