"""Bytecode for the sandbox's runtime, kept even where Python would keep none.

Every task runs in a fresh interpreter that imports decloud's formats and
runtime, and the sandbox writes no ``.pyc`` files (a task must not leave
bytecode behind for the next one). Where the package has none of its own
(a source checkout under ``PYTHONDONTWRITEBYTECODE=1``, which many container
images set), each sandbox compiled those modules from source: about 28 ms of
CPU per task here, a third of the sandbox's start. The worker compiles the
package once, into its standard ``__pycache__`` folders, as ``pip install``
does; Python checks each file's source time and size before using it.
"""

from __future__ import annotations

import compileall
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)


@functools.cache
def compile_package(package_dir: str, python: str = sys.executable) -> bool:
    """Compile ``package_dir``'s modules for ``python`` once per process; False if it could not.

    Only this interpreter's own bytecode can be written here: for another
    ``python`` the sandbox compiles as before. A read-only install (whose
    installer compiled it already) is left as it is.
    """
    if os.path.realpath(python) != os.path.realpath(sys.executable) or not os.access(package_dir, os.W_OK):
        return False
    try:
        compiled = compileall.compile_dir(package_dir, quiet=2, workers=1)
    except OSError as exc:
        log.debug("could not compile %s for the sandbox: %s", package_dir, exc)
        return False
    return bool(compiled)
