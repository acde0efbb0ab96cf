"""The private key never appears in outputs, logs, the ledger, exceptions or saved notebooks.

A known key is put where users put theirs (the environment, a .env file, a
worker's key file) and every path that touches it is run, including the ones
that fail; then everything they produced is scanned for it, with and without 0x.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from decloud_magics.keys import PrivateKey, load_private_key, redact
from decloud_magics.networks import NetworkConfig, save_network

KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
KEY = "0x" + KEY_HEX


def assert_no_key(text: str, where: str) -> None:
    lowered = text.lower()
    assert KEY_HEX not in lowered, f"the key leaked into {where}"


@pytest.fixture
def known_key(monkeypatch, decloud_home):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DECLOUD_PRIVATE_KEY", KEY)
    save_network(NetworkConfig(name="offline", rpc_url="http://127.0.0.1:9", contract="0x" + "11" * 20,
                               ipfs_api="http://127.0.0.1:9"))  # fmt: skip
    return KEY


def test_private_key_hides_itself():
    key = PrivateKey(KEY, "test")
    assert_no_key(repr(key), "repr")
    assert_no_key(str(key), "str")
    assert_no_key(f"{key!r} {key}", "f-string")
    with pytest.raises(TypeError):
        pickle.dumps(key)
    assert_no_key(redact(f"signing with {KEY} and {KEY_HEX.upper()}", key), "redacted text")


def test_key_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("DECLOUD_PRIVATE_KEY", raising=False)
    (tmp_path / ".env").write_text(f"export DECLOUD_PRIVATE_KEY='{KEY}'\n")
    key = load_private_key(env={}, cwd=tmp_path)
    assert key is not None and key.reveal() == KEY and ".env" in key.source
    with pytest.raises(Exception) as info:
        PrivateKey(KEY_HEX[:-2] + "zz", "a broken source")
    assert_no_key(str(info.value), "the error for a malformed key")


def test_every_path_with_a_known_key(known_key, shell, run_cell, caplog, tmp_path, decloud_home):
    caplog.set_level(logging.DEBUG)
    texts: list[tuple[str, str]] = []
    cells = [
        "%%decloud run --network offline\nx = 1",
        "%decloud network list",
        "%decloud network use offline",
        "%decloud wallet",
        "%decloud history",
        "%decloud refund",
        "%decloud budget",
        "%decloud network use local",
        "%%decloud run --name with-key-in-env\nimport os\nsecret = os.environ.get('DECLOUD_PRIVATE_KEY')",
        "%%decloud run\nraise RuntimeError('boom')",
        "%decloud history",
    ]
    nb = nbformat.v4.new_notebook()
    for cell in cells:
        result, out = run_cell(cell)
        error = result.error_in_exec
        texts.append((f"output of {cell!r}", out.stdout + out.stderr + "".join(str(o.data) for o in out.outputs)))
        if error is not None:
            texts.append((f"exception of {cell!r}", repr(error) + str(error)))
            rendered = getattr(error, "_render_traceback_", None)
            if rendered:
                texts.append((f"traceback of {cell!r}", "\n".join(rendered())))
        nb.cells.append(nbformat.v4.new_code_cell(cell, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text=out.stdout),
            nbformat.v4.new_output("stream", name="stderr", text=out.stderr),
        ]))  # fmt: skip
    # the sandbox never sees the notebook's environment, so the key did not travel there either
    assert shell.user_ns.get("secret") is None
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)
    texts.append(("the saved notebook", path.read_text()))
    texts.append(("the log", "\n".join(r.getMessage() for r in caplog.records)))
    for file in Path(decloud_home).rglob("*"):
        if file.is_file() and file.stat().st_size < 50_000_000:
            texts.append((str(file), file.read_bytes().decode("latin-1")))
    for where, text in texts:
        assert_no_key(text, where)


def test_cli_paths_with_a_known_key(known_key, tmp_path, decloud_home):
    script = tmp_path / "job.py"
    script.write_text("y = 2\n")
    key_file = tmp_path / "worker.key"
    key_file.write_text(KEY + "\n")
    import os

    env = {**os.environ, "DECLOUD_PRIVATE_KEY": KEY, "DECLOUD_HOME": str(decloud_home)}
    commands = [
        [sys.executable, "-m", "decloud_magics.cli", "run", str(script), "--network", "offline"],
        [sys.executable, "-m", "decloud_magics.cli", "worker", "--network", "offline", "--key-file", str(key_file)],
        [sys.executable, "-m", "decloud_magics.cli", "worker", "--network", "nowhere", "--key-file", str(key_file)],
    ]
    for command in commands:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode != 0  # each fails: the node is unreachable or the network unknown
        assert done.stderr.strip(), "a failure must say something"
        assert "Traceback" not in done.stderr, done.stderr
        assert_no_key(done.stdout + done.stderr, " ".join(command[3:5]))
