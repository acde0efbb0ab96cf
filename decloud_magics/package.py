"""Task and result packages: the bytes that travel through the content store.

Both are written in one container format, :mod:`decloud_magics.container`.
Encoding is deterministic, so two honest workers that run the same
deterministic cell produce byte-identical bodies and equal ``result_digest``s,
which is what validators compare on chain. Whatever differs between honest
runs (timings, how the sandbox was isolated) lives in the trailer, outside the
digest. Parsing assumes hostile bytes: every field is type-checked, and
nothing here ever unpickles.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import re
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .analysis import cell_names
from .codecs import MB, BytesLike, Encoded, EncodedParts, check_size, decode_value, encode_parts
from .container import FORMAT_VERSION, MAGIC, damaged, get_field, layout, pack, unpack
from .errors import SerializationError, UnsafeValueError, UsageError
from .untrusted import loads_json

__all__ = [
    "DEFAULT_MAX_INPUT_BYTES",
    "FORMAT_VERSION",
    "MAGIC",
    "RemoteErrorInfo",
    "ResultPackage",
    "TaskPackage",
    "build_task_package",
    "decode_result",
    "decode_task",
    "decode_values",
    "encode_result",
    "encode_task",
    "is_ipython_name",
    "result_digest",
    "task_pieces",
]

DEFAULT_MAX_INPUT_BYTES = 100 * MB
_IPYTHON_NAMES = frozenset(
    {"_", "__", "___", "In", "Out", "get_ipython", "exit", "quit", "_ih", "_oh", "_dh"}
)
_IPYTHON_HISTORY = re.compile(r"^_(i{1,3}|i?\d+)$")


@dataclass
class TaskPackage:
    """What a worker needs to run one cell.

    ``outputs`` None means every name the cell binds; ``allow_pickle_outputs``
    comes from the user's ``--trust-pickle`` and lets the worker return values
    that only pickle can carry.
    """

    code: str
    inputs: dict[str, Encoded] = field(default_factory=dict)
    outputs: tuple[str, ...] | None = None
    allow_pickle_outputs: bool = False
    python: str = f"{sys.version_info.major}.{sys.version_info.minor}"
    name: str | None = None


@dataclass
class RemoteErrorInfo:
    """The cell's exception: the user's frames only, numbered like the cell's lines."""

    ename: str
    evalue: str
    traceback: list[str] = field(default_factory=list)


@dataclass
class ResultPackage:
    """What a run produced. Untrusted when it arrives: decode values with ``decode_values``.

    ``timings`` and ``sandbox`` (how the worker isolated the run) differ between
    honest workers, so they sit outside ``result_digest``.
    """

    stdout: str = ""
    stderr: str = ""
    displays: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, Encoded] = field(default_factory=dict)
    value_errors: dict[str, str] = field(default_factory=dict)
    error: RemoteErrorInfo | None = None
    exit_status: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    truncated: dict[str, bool] = field(default_factory=dict)
    failure: str | None = None
    sandbox: dict[str, Any] = field(default_factory=dict)


def is_ipython_name(name: str) -> bool:
    """True for names IPython puts in a namespace (``_``, ``In``, ``_i3``, dunders): never a cell's data."""
    return (
        name in _IPYTHON_NAMES
        or bool(_IPYTHON_HISTORY.match(name))
        or (name.startswith("__") and name.endswith("__"))
    )


def _encode_task(
    code: str, namespace: Mapping[str, Any], inputs: Sequence[str] | None, outputs: Sequence[str] | None,
    trust_pickle: bool, name: str | None, max_input_bytes: int,
) -> tuple[TaskPackage, dict[str, EncodedParts]]:  # fmt: skip
    """The task's manifest fields and its inputs encoded, checked against the size limit."""
    names = cell_names(code)  # raises UsageError for syntax errors and IPython-only lines
    if inputs is None:
        chosen = [n for n in (*names.reads, *names.builtins) if n in namespace and not is_ipython_name(n)]
    else:
        chosen = list(dict.fromkeys(inputs))
        _check_identifiers("--in", chosen)
        missing = [n for n in chosen if n not in namespace]
        if missing:
            listed = ", ".join(f"'{n}'" for n in missing)
            which = "which is" if len(missing) == 1 else "which are"
            raise UsageError(f"--in names {listed}, {which} not defined in the notebook.")
    if outputs is not None:
        outputs = tuple(dict.fromkeys(outputs))
        _check_identifiers("--out", outputs)
    encoded: dict[str, EncodedParts] = {}
    for var in chosen:
        enc = encode_parts(var, namespace[var], allow_pickle=True, role="input")
        check_size(var, enc, max_input_bytes)
        encoded[var] = enc
    total = sum(e.nbytes for e in encoded.values())
    if total > max_input_bytes:
        biggest = ", ".join(
            f"'{n}' {e.nbytes / MB:.1f} MB"
            for n, e in sorted(encoded.items(), key=lambda i: -i[1].nbytes)[:3]
        )
        raise SerializationError(
            f"The inputs total {total / MB:.1f} MB (largest: {biggest}), over the {max_input_bytes / MB:.1f} MB limit: "
            "leave some out with --in, raise DecloudMagics.max_input_mb or pass smaller values."
        )
    pkg = TaskPackage(code, {}, outputs, bool(trust_pickle), name=name)
    return pkg, encoded


def build_task_package(
    code: str,
    namespace: Mapping[str, Any],
    *,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    trust_pickle: bool = False,
    name: str | None = None,
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
) -> tuple[TaskPackage, bytes | memoryview]:
    """Package a cell and the notebook variables it reads; nothing is sent on error.

    Inputs default to the names the cell reads that the notebook defines;
    ``inputs`` (the user's ``--in``) replaces that choice. Inputs may be
    pickled: they are the requester's own data and are unpickled only inside
    the worker's sandbox.

    >>> pkg, data = build_task_package("y = x * 2", {"x": 21})
    >>> list(pkg.inputs), data[:5]
    (['x'], b'DCLD\\x02')
    """
    pkg, encoded = _encode_task(code, namespace, inputs, outputs, trust_pickle, name, max_input_bytes)
    data, views = pack(_task_manifest(pkg), [(_input_entry(n, e), e.parts) for n, e in encoded.items()])
    # The inputs are read back as views of the package: its one copy of each value serves both.
    pkg.inputs = {n: Encoded(e.codec, view, e.type_name) for (n, e), view in zip(encoded.items(), views)}
    return pkg, data


def task_pieces(
    code: str, namespace: Mapping[str, Any], **options: Any
) -> tuple[tuple[str, ...] | None, list[BytesLike]]:
    """The package ``build_task_package`` makes (same options), as pieces end to end; and its outputs.

    ``Store.put`` takes the pieces as they are, so a notebook's large value is
    copied once, into the store, and never into a package buffer first.
    """
    defaults = {"inputs": None, "outputs": None, "trust_pickle": False, "name": None,
                "max_input_bytes": DEFAULT_MAX_INPUT_BYTES}  # fmt: skip
    pkg, encoded = _encode_task(code, namespace, **{**defaults, **options})
    pieces, _start, _entries = layout(
        _task_manifest(pkg), [(_input_entry(n, e), e.parts) for n, e in encoded.items()]
    )
    return pkg.outputs, pieces


def _check_identifiers(flag: str, names: Sequence[str]) -> None:
    for var in names:
        if not isinstance(var, str) or not var.isidentifier() or keyword.iskeyword(var):
            raise UsageError(f"{flag} names '{var}', which is not a Python variable name.")


def encode_task(pkg: TaskPackage) -> bytes | memoryview:
    """The task as deterministic bytes, ready for the content store."""
    blobs = [(_input_entry(n, e), (e.data,)) for n, e in pkg.inputs.items()]
    return pack(_task_manifest(pkg), blobs)[0]


def _task_manifest(pkg: TaskPackage) -> dict[str, Any]:
    return {
        "kind": "task",
        "code": pkg.code,
        "outputs": None if pkg.outputs is None else list(pkg.outputs),
        "allow_pickle_outputs": bool(pkg.allow_pickle_outputs),
        "python": pkg.python,
        "name": pkg.name,
    }


def _input_entry(name: str, enc: Encoded | EncodedParts) -> dict[str, Any]:
    return {"role": "input", "name": name, "codec": enc.codec, "type_name": enc.type_name}


def decode_task(data: BytesLike, *, verify: bool = True) -> TaskPackage:
    """Parse task bytes; raises ``IntegrityError``/``SerializationError``, never unpickles.

    Values are read-only views of ``data``, not copies. ``verify`` only
    matters for format 1 packages, whose per-blob sha256 it checks (pass False
    for bytes whose CID the store has just verified, which covers them).
    """
    manifest, blobs, _trailer, _end = unpack(data, "task", verify)
    outputs = get_field(manifest, "outputs", (list, type(None)), "task")
    if outputs is not None:
        outputs = tuple(_name(o, "task") for o in outputs)
    inputs = {}
    for entry, blob in blobs:
        if entry.get("role") != "input":
            raise damaged("task", "a blob has an unknown role")
        inputs[_name(entry.get("name"), "task")] = _encoded(entry, blob)
    return TaskPackage(
        code=get_field(manifest, "code", str, "task"),
        inputs=inputs,
        outputs=outputs,
        allow_pickle_outputs=get_field(manifest, "allow_pickle_outputs", bool, "task"),
        python=get_field(manifest, "python", str, "task"),
        name=get_field(manifest, "name", (str, type(None)), "task"),
    )


def encode_result(res: ResultPackage) -> bytes | memoryview:
    """The result as bytes: a deterministic body, then the timings trailer."""
    error = (
        None
        if res.error is None
        else {"ename": res.error.ename, "evalue": res.error.evalue, "traceback": list(res.error.traceback)}
    )
    manifest = {
        "kind": "result",
        "exit_status": int(res.exit_status),
        "failure": res.failure,
        "error": error,
        "truncated": {k: bool(v) for k, v in res.truncated.items()},
        "value_errors": dict(res.value_errors),
    }
    displays = json.dumps(res.displays, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )
    blobs: list[tuple[dict[str, Any], tuple[BytesLike, ...]]] = [
        ({"role": "stdout"}, (res.stdout.encode("utf-8", "replace"),)),
        ({"role": "stderr"}, (res.stderr.encode("utf-8", "replace"),)),
        ({"role": "displays"}, (displays,)),
    ]
    blobs += [
        ({"role": "value", "name": n, "codec": e.codec, "type_name": e.type_name}, (e.data,))
        for n, e in res.values.items()
    ]
    trailer = {"timings": {k: float(v) for k, v in res.timings.items()}, "sandbox": dict(res.sandbox)}
    return pack(manifest, blobs, trailer)[0]


def decode_result(data: BytesLike, *, verify: bool = True) -> ResultPackage:
    """Parse result bytes from a worker; raises ``IntegrityError``/``SerializationError`` only.

    ``verify`` only matters for format 1 packages, whose per-blob sha256 it
    checks (pass False for bytes already matched against ``result_digest``,
    which covers every blob).
    """
    manifest, blobs, trailer, _end = unpack(data, "result", verify)
    res = ResultPackage(
        exit_status=get_field(manifest, "exit_status", int, "result"),
        failure=get_field(manifest, "failure", (str, type(None)), "result"),
    )
    truncated = get_field(manifest, "truncated", dict, "result")
    res.truncated = {str(k): v for k, v in truncated.items() if isinstance(v, bool)}
    value_errors = get_field(manifest, "value_errors", dict, "result")
    res.value_errors = {_name(k, "result"): str(v) for k, v in value_errors.items()}
    error = get_field(manifest, "error", (dict, type(None)), "result")
    if error is not None:
        tb = get_field(error, "traceback", list, "result")
        res.error = RemoteErrorInfo(
            get_field(error, "ename", str, "result"),
            get_field(error, "evalue", str, "result"),
            [str(t) for t in tb],
        )
    for entry, blob in blobs:
        role = entry.get("role")
        if role in ("stdout", "stderr"):
            setattr(res, role, bytes(blob).decode("utf-8", "replace"))
        elif role == "displays":
            res.displays = _displays(blob)
        elif role == "value":
            res.values[_name(entry.get("name"), "result")] = _encoded(entry, blob)
        else:
            raise damaged("result", "a blob has an unknown role")
    if trailer is not None:
        timings = trailer.get("timings", {})
        if isinstance(timings, dict):
            res.timings = {
                str(k): float(v)
                for k, v in timings.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        if isinstance(trailer.get("sandbox"), dict):
            res.sandbox = trailer["sandbox"]
    return res


def result_digest(data: BytesLike) -> bytes:
    """sha256 of a result's deterministic body (manifest and blobs, not the timings trailer).

    Honest workers running the same deterministic cell produce equal digests;
    this is the value a worker submits on chain and a client checks.
    """
    _manifest, _blobs, _trailer, end = unpack(data, "result", verify=False)
    return hashlib.sha256(memoryview(data)[:end]).digest()


def decode_values(
    res: ResultPackage,
    *,
    trust_pickle: bool,
    errors: dict[str, str] | None = None,
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """The result's variables as Python objects.

    Without ``trust_pickle`` a pickled value raises ``UnsafeValueError``; pass
    an ``errors`` dict to collect such sentences per name instead and keep the
    values that did decode. ``only`` drops names the caller did not ask for, so
    a worker cannot plant unexpected names in the notebook.
    """
    values: dict[str, Any] = {}
    for var, enc in res.values.items():
        if only is not None and var not in only:
            if errors is not None:
                errors[var] = f"'{var}' was not requested from the worker, so it was ignored."
            continue
        try:
            values[var] = decode_value(var, enc, allow_pickle=trust_pickle)
        except (UnsafeValueError, SerializationError) as exc:
            if errors is None:
                raise
            errors[var] = str(exc)
    return values


def _name(value: Any, kind: str) -> str:
    if not isinstance(value, str) or not value.isidentifier() or keyword.iskeyword(value):
        raise damaged(kind, "it names a variable that is not a Python identifier")
    return value


def _encoded(entry: dict[str, Any], blob: memoryview) -> Encoded:
    codec, type_name = entry.get("codec"), entry.get("type_name")
    if not isinstance(codec, str) or not isinstance(type_name, str):
        raise damaged("package", "a value has no codec or type name")
    return Encoded(codec, blob, type_name)


def _displays(blob: memoryview) -> list[dict[str, Any]]:
    try:
        displays = loads_json(blob)
    except (ValueError, RecursionError):
        raise damaged("result", "its displays are not valid JSON") from None
    if not isinstance(displays, list) or not all(
        isinstance(d, dict) and isinstance(d.get("data"), dict) and isinstance(d.get("metadata", {}), dict)
        for d in displays
    ):
        raise damaged("result", "its displays are not MIME bundles")
    return displays
