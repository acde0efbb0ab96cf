"""The worker compiles the sandbox's runtime once, so no sandbox compiles it from source."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from decloud_magics.worker import bytecode, sandbox


def _package(root: Path) -> Path:
    pkg = root / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "formats.py").write_text("VALUE = 42\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "runtime.py").write_text("from ..formats import VALUE\n")
    return pkg


def test_compiles_every_module_once_even_without_bytecode_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # as PYTHONDONTWRITEBYTECODE=1 sets it
    pkg = _package(tmp_path)
    assert bytecode.compile_package(str(pkg))
    for source in ("formats.py", "sub/runtime.py", "__init__.py"):
        assert Path(importlib.util.cache_from_source(str(pkg / source))).is_file()
    (pkg / "late.py").write_text("")
    assert bytecode.compile_package(str(pkg))  # cached: the second call does nothing
    assert not Path(importlib.util.cache_from_source(str(pkg / "late.py"))).exists()


def test_leaves_another_interpreters_bytecode_to_it(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    assert not bytecode.compile_package(str(pkg), python="/usr/bin/false")
    assert not Path(importlib.util.cache_from_source(str(pkg / "formats.py"))).exists()


def test_a_sandbox_run_leaves_the_runtime_compiled() -> None:
    from decloud_magics.package import build_task_package

    _, task = build_task_package("y = 1", {})
    sandbox.run_in_sandbox(task, timeout=60)
    runtime = Path(sandbox._PACKAGE_DIR) / "worker" / "runtime.py"
    assert Path(importlib.util.cache_from_source(str(runtime))).is_file()
