"""The program that runs inside the sandbox process: one cell, like IPython would.

``sandbox.py`` starts it with a small bootstrap; everything here runs in the
child. It first locks itself in (resource limits, the process cgroup), then
reads the task package, runs the cell with ``<cell>`` as its file name so
tracebacks carry the cell's line numbers, and writes a partial result package
(values, displays, error) to a pipe the parent reads. The parent adds what
only it can know: the captured stdout/stderr, the exit status, the timings.
The error's traceback is built by ``tracebacks.py``, the displays by ``displays.py``;
both are imported with this module, before the process is confined.

The result goes through a pipe rather than a file because a pipe is not
subject to the file-size limit the cell runs under. Heavy modules (IPython,
matplotlib, pandas) are imported only when the cell's values need them.
"""

from __future__ import annotations

import ast
import builtins
import errno
import json
import os
import sys
import time
import types
from typing import Any

from ..analysis import cell_names
from ..codecs import check_size, decode_value, encode_value
from ..errors import SerializationError
from ..package import ResultPackage, decode_task, encode_result, is_ipython_name
from .displays import Displays
from .landlock import confine  # imported while the spare waits: ctypes is not free
from .tracebacks import error_info

_RESOURCE_NAMES = ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_CORE")
_MAIN_PID = 0  # the runtime's own pid; a process the cell forked has another one
_CONFINEMENT: dict[str, str | None] = {}  # "refused": why Landlock could not confine the task, or None


def main(config_json: str | None = None, config_fd: int = 0, cgroup_procs: str | None = None) -> None:
    """Run one task as described by the parent's JSON config; never returns.

    Without ``config_json`` the config comes on ``config_fd`` (stdin, or the
    config pipe of a process forked by the zygote): the process was started
    ahead of its task (a warm spare) and waits there, the interpreter up and
    this module imported, until the parent hands it a task. ``cgroup_procs``:
    the procs file of the pids cgroup to join first (an exec'd process; a
    forked one was moved there by its parent).
    """
    global _MAIN_PID
    if cgroup_procs is not None:
        join_cgroup(cgroup_procs)
    config = json.loads(config_json if config_json is not None else _read_config(config_fd))
    _enter_sandbox(config)
    started = time.perf_counter()
    main_pid = _MAIN_PID = os.getpid()
    result_fd = int(config["result_fd"])
    os.set_inheritable(result_fd, False)  # the cell's own subprocesses must not hold the result pipe
    res = ResultPackage()
    if "refused" in _CONFINEMENT:
        res.sandbox["files_confined"] = _CONFINEMENT["refused"] is None
    try:
        with open(config["task"], "rb") as fh:
            task = decode_task(fh.read())
        os.unlink(config["task"])
        status = _run(task, res, config)
    except BaseException as exc:  # noqa: BLE001 (an unreadable task, a broken input, a limit hit packing)
        if os.getpid() != main_pid:
            os._exit(0)
        stage = "package the cell's results" if res.timings else "start the cell"
        res.failure = _limit_failure(exc, config) or f"The worker could not {stage}: {exc}"
        status = 2
    res.timings["runtime"] = time.perf_counter() - started
    _flush()
    try:
        data = encode_result(res)
    except BaseException as exc:  # noqa: BLE001 (e.g. out of memory: still say why, without the values)
        data = encode_result(ResultPackage(failure=f"The worker could not package the cell's results: {exc}"))
        status = 3
    view = memoryview(data)
    while view:
        view = view[os.write(result_fd, view) :]
    _flush()
    os._exit(status)  # without waiting for threads the cell left running


def _read_config(fd: int = 0) -> str:
    """The parent's config, one line on ``fd``; then that pipe is closed (stdin emptied, as for a cold start).

    A line, not the end of the pipe: a process the worker forked may hold a copy
    of the pipe's write end, and the end would then never come.
    """
    chunks = [b""]
    while not chunks[-1].endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            raise SystemExit("the worker went away before it sent the task")
        chunks.append(chunk)
    if fd == 0:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # the cell reads EOF, and its subprocesses do not hold our pipe
        os.close(null)
    else:
        os.close(fd)
    return b"".join(chunks).decode("utf-8")


def join_cgroup(procs_file: str) -> None:
    """Join the run's pids cgroup now, while the spare waits: the move takes milliseconds of kernel time.

    Called by an exec'd runtime at its start, and by a forked one's parent before its namespaces.

    Every process the cell starts inherits it. A refused move ends this process
    before it takes a task: the parent counts on the cap.
    """
    with open(procs_file, "w") as fh:
        fh.write(str(os.getpid()))


def _enter_sandbox(config: dict[str, Any]) -> None:
    """Apply the limits before any task byte is read.

    Set here, in the child, rather than in a ``preexec_fn``: a worker runs
    several sandboxes from threads, and ``preexec_fn`` is unsafe with threads.
    The hard limits are set too, so the cell cannot raise them again.
    """
    import resource

    for name, (soft, hard) in config.get("rlimits", {}).items():
        if name in _RESOURCE_NAMES:
            try:
                resource.setrlimit(getattr(resource, name), (int(soft), int(hard)))
            except (ValueError, OSError):  # a limit the platform refuses is left as it was
                pass
    if config.get("cpu_seconds"):
        # The soft CPU limit sends SIGXCPU; raising here stops the cell with a
        # clear error and still reports what it computed (the hard limit kills later).
        import signal

        signal.signal(signal.SIGXCPU, _cpu_limit_reached)
    rules = config.get("landlock")
    if rules is not None:  # None too when the process confined itself while it waited
        confine_files(rules)
    sys.argv = ["<cell>"]


def rehearse() -> None:
    """Run the runtime's own path once on a made-up cell, in a forked process that waits for its task.

    A fork shares the zygote's memory until it writes to it, and Python writes
    to every object it touches (reference counts): the first run of each code
    path copies page after page, 2-3 ms of faults on a trivial cell. Done here,
    while the process waits, that cost is paid before the task comes. Nothing
    of it stays: the namespace is thrown away and the real cell gets its own.
    """
    from ..package import TaskPackage, encode_task

    config = json.loads(json.dumps({"result_fd": 3, "task": "", "rlimits": {}, "landlock": None}))
    task = decode_task(encode_task(TaskPackage(code="value = 1 + 1", outputs=None)))
    namespace: dict[str, Any] = {"__builtins__": builtins}
    displays = Displays()
    _execute(task.code, namespace, displays)
    res = ResultPackage()
    _collect_outputs(task, namespace, res, 1 << 20)
    encode_result(res)
    _limit_failure(ValueError(), config)


def confine_files(rules: list[Any]) -> None:
    """From here on, files outside the scratch dir are read-only and the worker's own out of sight."""
    _CONFINEMENT["refused"] = confine([(str(path), str(kind)) for path, kind in rules])


class CPUTimeExceeded(BaseException):
    """Raised in the cell when it has used its CPU seconds (a BaseException, like KeyboardInterrupt)."""


def _cpu_limit_reached(signum: int, frame: Any) -> None:
    raise CPUTimeExceeded("the cell used all the CPU time the sandbox allows")


def _run(task: Any, res: ResultPackage, config: dict[str, Any]) -> int:
    main_module = types.ModuleType("__main__")
    sys.modules["__main__"] = main_module  # cell-defined functions and classes pickle as __main__.x
    namespace = main_module.__dict__
    namespace["__builtins__"] = builtins
    displays = Displays()
    namespace["display"] = displays.display
    if "IPython" in task.code:
        displays.route_ipython_display()
    t0 = time.perf_counter()
    for var, enc in task.inputs.items():
        # The requester's own data, unpickled only here in the sandbox.
        namespace[var] = decode_value(var, enc, allow_pickle=True)
    t1 = time.perf_counter()
    status = 0
    try:
        _execute(task.code, namespace, displays)
    except BaseException as exc:  # noqa: BLE001 (whatever the cell raises, SystemExit too, is its error)
        if os.getpid() != _MAIN_PID:
            os._exit(1)
        res.error = error_info(exc, task.code, confined=_CONFINEMENT.get("refused", "") is None)
        res.failure = _limit_failure(exc, config)
        status = 1
    if os.getpid() != _MAIN_PID:  # a process the cell forked ran off the end of the cell
        os._exit(0)
    t2 = res.timings["execute"] = time.perf_counter()  # marks the cell as run, for the failure sentence
    displays.add_open_figures()
    res.displays = displays.bundles
    _collect_outputs(task, namespace, res, int(config.get("max_output_bytes") or 1 << 62))
    res.timings.update(decode_inputs=t1 - t0, execute=t2 - t1, encode_outputs=time.perf_counter() - t2)
    return status


def _execute(code: str, namespace: dict[str, Any], displays: Displays) -> None:
    """Run the cell; a last expression statement is shown, as IPython does."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(code, "<cell>", "exec", flags=flags | ast.PyCF_ONLY_AST, dont_inherit=True)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not _ends_with_semicolon(code, tree.body[-1]):
        last = tree.body.pop()
    _run_code(compile(tree, "<cell>", "exec", flags=flags, dont_inherit=True), namespace)
    if last is not None:
        value = _run_code(
            compile(ast.Expression(last.value), "<cell>", "eval", flags=flags, dont_inherit=True), namespace
        )
        if value is not None:
            namespace["_"] = value
            displays.bundles.append(displays.bundle(value))


def _run_code(code: types.CodeType, namespace: dict[str, Any]) -> Any:
    result = eval(code, namespace)
    if code.co_flags & 0x80 and result is not None:  # CO_COROUTINE: the cell used top-level await
        import asyncio

        return asyncio.new_event_loop().run_until_complete(result)
    return result


def _ends_with_semicolon(code: str, node: ast.stmt) -> bool:
    lines = code.splitlines()
    if not node.end_lineno or node.end_col_offset is None:
        return False
    rest = lines[node.end_lineno - 1].encode("utf-8")[node.end_col_offset :]  # offsets count UTF-8 bytes
    return rest.decode("utf-8", "replace").split("#")[0].strip().startswith(";")


def _collect_outputs(task: Any, namespace: dict[str, Any], res: ResultPackage, budget: int) -> None:
    explicit = task.outputs is not None
    names = task.outputs if explicit else [n for n in cell_names(task.code).assigns if not is_ipython_name(n)]
    for var in names:
        if var not in namespace:
            if explicit:
                res.value_errors[var] = f"'{var}' was never assigned by the cell."
            continue
        value = namespace[var]
        if not explicit and not task.allow_pickle_outputs and isinstance(value, (types.FunctionType, type)):
            kind = "class" if isinstance(value, type) else "function"
            res.value_errors[var] = (
                f"'{var}' is a {kind} defined by the cell; it comes back only with --trust-pickle, "
                "because restoring it means running pickle."
            )
            continue
        try:
            enc = encode_value(var, value, allow_pickle=task.allow_pickle_outputs, role="output")
            check_size(var, enc, budget, role="output")
        except SerializationError as exc:
            res.value_errors[var] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 (a value whose own methods fail while being encoded)
            res.value_errors[var] = f"'{var}' could not be encoded: {type(exc).__name__}: {exc}"
            continue
        budget -= len(enc.data)
        res.values[var] = enc


def _limit_failure(exc: BaseException, config: dict[str, Any]) -> str | None:
    """A sentence when the cell's exception is one of the sandbox's limits biting."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, CPUTimeExceeded):
            return f"The task was stopped after using its {config.get('cpu_seconds')} s of CPU time."
        if isinstance(seen, MemoryError):
            mb = config.get("memory_mb")
            limit = f"the sandbox's {mb} MB" if mb else "the memory available"
            return f"The cell ran out of memory: it needed more than {limit}."
        if isinstance(seen, OSError) and seen.errno == errno.EFBIG:
            return f"The cell tried to write a file larger than the sandbox's {config.get('file_size_mb')} MB limit."
        seen = seen.__cause__ or seen.__context__
    return None


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001, S110 (the cell may have replaced or closed them: nothing to flush)
            pass
