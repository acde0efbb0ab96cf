"""New-block notices from a real anvil over WebSocket; an HTTP-only endpoint leaves polling alone."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import pytest
from devnet_fixture import TOOLS, anvil  # noqa: F401 (a fixture)

from decloud_magics.chain.heads import HeadWatcher, ws_url
from decloud_magics.devnet import chain_node


def test_ws_url_follows_the_rpc_url() -> None:
    assert ws_url("http://127.0.0.1:8545") == "ws://127.0.0.1:8545"
    assert ws_url("https://node.example.org/v1/key") == "wss://node.example.org/v1/key"
    assert ws_url("wss://node.example.org") == "wss://node.example.org"
    assert ws_url("/tmp/geth.ipc") is None


def test_each_mined_block_wakes_the_watcher(anvil: chain_node.AnvilNode) -> None:  # noqa: F811 (a fixture)
    woken = threading.Event()
    watcher = HeadWatcher(anvil.rpc_url, woken.set).start()
    try:
        assert watcher.subscribed.wait(10), "the watcher never subscribed"
        for _ in range(3):
            woken.clear()
            sent = time.monotonic()
            chain_node.rpc_call(anvil.rpc_url, "evm_mine")
            assert woken.wait(5), "a mined block did not wake the watcher"
            assert time.monotonic() - sent < 5
        assert watcher.blocks >= 3
    finally:
        watcher.close()
    assert not watcher._thread.is_alive()


def test_a_restarted_node_is_watched_again(tmp_path: Path) -> None:
    try:
        chain_node.ensure_anvil_installed(TOOLS)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"ANVIL IS NOT INSTALLED ({exc}): chain-heads tests did not run")
    port = chain_node.pick_port(0)
    node = chain_node.AnvilNode(TOOLS, tmp_path / "anvil.log", port=port)
    node.start()
    woken = threading.Event()
    watcher = HeadWatcher(node.rpc_url, woken.set).start()
    try:
        assert watcher.subscribed.wait(10)
        node.stop()
        node = chain_node.AnvilNode(TOOLS, tmp_path / "anvil.log", port=port)
        node.start()
        assert watcher.subscribed.wait(15), "the watcher did not come back after the node restarted"
        woken.clear()
        chain_node.rpc_call(node.rpc_url, "evm_mine")
        assert woken.wait(5)
    finally:
        watcher.close()
        node.stop()


def test_an_http_only_endpoint_gives_up_quietly() -> None:
    class JsonRpcOnly(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(400)  # no WebSocket upgrade here
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), JsonRpcOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        calls: list[int] = []
        watcher = HeadWatcher(f"http://127.0.0.1:{server.server_port}", lambda: calls.append(1)).start()
        assert watcher.gave_up.wait(10)
        assert not watcher.subscribed.is_set() and not calls
        watcher.close()
    finally:
        server.shutdown()
