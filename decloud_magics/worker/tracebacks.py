"""The remote traceback of a cell's error, as IPython would print it, minus decloud's own frames.

Honest workers must report the same bytes for the same error, so library
paths are cut to their ``sys.path``-relative part and memory addresses masked.
"""

from __future__ import annotations

import os
import re
import sys
import traceback

from ..package import RemoteErrorInfo

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A memory address in a repr: it differs on every run, so it is masked wherever a worker reports text.
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_CONFINED_NOTE = (
    "Note: the cell runs confined on the worker: it may write only in its own folder (its working "
    "directory) and cannot read the worker's files; pass data in as notebook variables (--in) instead."
)


def error_info(exc: BaseException, code: str, confined: bool) -> RemoteErrorInfo:
    """The exception as IPython would print it, minus every frame of decloud's own.

    ``confined``: Landlock confined the cell's files, so a PermissionError gets a note saying why.
    """
    lines = code.splitlines()
    chain: list[tuple[BaseException, str | None]] = []
    seen: BaseException | None = exc
    note: str | None = None
    while seen is not None and len(chain) < 10:
        chain.append((seen, note))
        if seen.__cause__ is not None:
            note, seen = (
                "The above exception was the direct cause of the following exception:",
                seen.__cause__,
            )
        elif seen.__context__ is not None and not seen.__suppress_context__:
            note, seen = (
                "During handling of the above exception, another exception occurred:",
                seen.__context__,
            )
        else:
            seen = None
    out: list[str] = []
    for item, note in reversed(chain):
        out.append("-" * 75)
        out.append(f"{type(item).__name__:<42}Traceback (most recent call last)")
        for frame in traceback.extract_tb(item.__traceback__):
            if frame.filename.startswith(_PACKAGE_DIR):
                continue
            out.append(_frame_text(frame, lines))
        if isinstance(item, SyntaxError) and item.filename == "<cell>":
            out.append(f"Cell line {item.lineno}\n    {(item.text or '').rstrip()}")
        out.append(f"{type(item).__name__}: {item}" if str(item) else type(item).__name__)
        if note:
            out.append(note)
    if isinstance(exc, PermissionError) and confined:
        out.append(_CONFINED_NOTE)
    # Memory addresses differ on every run; honest workers must report the same bytes.
    return RemoteErrorInfo(
        type(exc).__name__, ADDRESS.sub(" at 0x…", str(exc)), [ADDRESS.sub(" at 0x…", t) for t in out]
    )


def _frame_text(frame: traceback.FrameSummary, cell_lines: list[str]) -> str:
    where = "" if frame.name == "<module>" else f", in {frame.name}"
    lineno = frame.lineno or 0
    if frame.filename == "<cell>":
        first = max(1, lineno - 2)
        body = [
            f"{'---->' if n == lineno else '     '} {n:<2}{cell_lines[n - 1] if n <= len(cell_lines) else ''}"
            for n in range(first, lineno + 1)
        ]
        return "\n".join([f"Cell line {lineno}{where}", *body])
    source = (frame.line or "").strip()
    return f"File {_short_path(frame.filename)}:{lineno}{where}\n---->  {source}"


def _short_path(path: str) -> str:
    """A library file relative to its sys.path entry, so honest workers print the same text."""
    best = ""
    for entry in sys.path:
        if entry and path.startswith(entry.rstrip("/") + "/") and len(entry) > len(best):
            best = entry.rstrip("/") + "/"
    return path[len(best) :] if best else os.path.basename(path)
