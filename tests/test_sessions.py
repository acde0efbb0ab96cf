"""Node sessions settle the environment once and still honour it."""

from __future__ import annotations

from pathlib import Path

import pytest

from decloud_magics.sessions import node_session


def test_a_proxy_from_the_environment_is_kept_and_no_proxy_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    remote = node_session("https://rpc.example.org/v1")
    assert remote.proxies.get("https") == "http://proxy.example:3128"
    assert not remote.trust_env  # not read again on every request
    local = node_session("http://127.0.0.1:5001")
    assert not local.proxies


def test_ca_bundle_netrc_and_user_agent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine rpc.example.org login alice password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    session = node_session("https://rpc.example.org/v1", user_agent="decloud-test")
    assert session.auth == ("alice", "s3cret")
    assert session.verify == str(tmp_path / "ca.pem")
    assert session.headers["User-Agent"] == "decloud-test"
    assert node_session("https://other.example.org").auth is None


def test_a_session_still_reaches_a_node(monkeypatch: pytest.MonkeyPatch) -> None:
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(
            "HTTP_PROXY", "http://127.0.0.1:9"
        )  # a dead proxy: NO_PROXY must keep it out of the way
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        url = f"http://127.0.0.1:{server.server_port}/api"
        assert node_session(url).post(url, timeout=5).json() == {"ok": True}
    finally:
        server.shutdown()
