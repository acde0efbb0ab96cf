"""The REST API behind the side panel, through a real jupyter_server and a real ledger.

Runs are written with the Ledger's own methods, as kernels write them, and
read back as the JSON a browser gets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from asyncio import AbstractEventLoop
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

# The fixtures only, imported into this module: as a pytest_plugins entry the
# plugin's autouse fixtures and async-test hooks would reach every later test
# module of the session.
from pytest_jupyter.jupyter_server import *
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from decloud_magics.ledger import Ledger, RunRecord
from decloud_magics.models import EventKind, RunEvent, Status, utcnow
from decloud_magics.networks import NetworkConfig, save_network

ETHER = 10**18
GWEI = 10**9
T0 = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DECLOUD_HOME of this test's own, as the server process would see it."""
    path = tmp_path / "decloud-home"
    path.mkdir()
    monkeypatch.setenv("DECLOUD_HOME", str(path))
    return path


@pytest.fixture
def ledger_file(request: pytest.FixtureRequest) -> str | None:
    """A ledger file name (under tmp_path) to configure instead of DECLOUD_HOME's, when parametrized."""
    return getattr(request, "param", None)


@pytest.fixture
def jp_server_config(home: Path, tmp_path: Path, ledger_file: str | None) -> Config:
    config = Config({"ServerApp": {"jpserver_extensions": {"decloud_magics.server": True}}})
    if ledger_file:
        config.DecloudServerApp.ledger_path = str(tmp_path / ledger_file)
    return config


@pytest.fixture
def ledger(home: Path) -> Iterator[Ledger]:
    with Ledger(home / "ledger.sqlite") as opened:
        yield opened


@pytest.fixture
def three_runs(ledger: Ledger, home: Path) -> Ledger:
    """A completed run with its events, one still running, and one failed on another coin."""
    save_network(
        NetworkConfig(
            name="gnosis",
            rpc_url="http://127.0.0.1:1",
            contract="0x" + "1" * 40,
            ipfs_api="http://127.0.0.1:2",
            symbol="xDAI",
        )
    )
    ledger.record_run(
        RunRecord(
            "a1b2c3",
            name="train",
            network="local",
            status=Status.CREATED,
            submitted_at=T0,
            price_wei=10**15 + 1,
            gas_used=0,
            gas_cost_wei=0,
            code="x = 1",
        )
    )
    events = [
        RunEvent(
            EventKind.CREATED,
            "a1b2c3",
            at=T0 + timedelta(seconds=1),
            block=7,
            tx_hash="0xaa",
            gas_used=52_000,
            price_wei=10**15 + 1,
            message="task 3 opened",
        ),
        RunEvent(
            EventKind.ORDER_PLACED,
            "a1b2c3",
            at=T0 + timedelta(seconds=2),
            block=8,
            gas_used=52_000,
            worker="0x" + "ab" * 20,
            message="claimed",
        ),
        RunEvent(EventKind.RUNNING, "a1b2c3", at=T0 + timedelta(seconds=3), gas_used=52_000),
        RunEvent(
            EventKind.COMPLETED,
            "a1b2c3",
            at=T0 + timedelta(seconds=9, microseconds=500000),
            block=9,
            gas_used=52_000,
            message="result verified",
        ),
    ]
    statuses = [Status.OPEN, Status.CLAIMED, Status.RUNNING, Status.COMPLETED]
    for event, status in zip(events, statuses):
        fields: dict[str, Any] = {"status": status, "gas_used": 52_000, "gas_cost_wei": 104_000 * GWEI}
        if status == Status.OPEN:
            fields["task_id"] = 3
        if status == Status.CLAIMED:
            fields.update(worker="0x" + "ab" * 20, started_at=event.at)
        if status == Status.COMPLETED:
            fields.update(completed_at=event.at, input_cid="bafyin", result_cid="bafyout")
        ledger.add_event(event, **fields)
    ledger.record_run(
        RunRecord(
            "d4e5f6",
            name="sweep",
            network="local",
            status=Status.RUNNING,
            task_id=4,
            submitted_at=T0 + timedelta(minutes=5),
            price_wei=12345678901234567890123,
        )
    )
    ledger.record_run(
        RunRecord(
            "0f0f0f",
            name=None,
            network="gnosis",
            status=Status.FAILED,
            submitted_at=T0 + timedelta(minutes=1),
            completed_at=T0 + timedelta(minutes=1, seconds=2),
            price_wei=ETHER,
            gas_cost_wei=0,
            error="50% of the inputs could not be read.",
        )
    )
    return ledger


class Api:
    """GETs under ``/decloud`` through pytest_jupyter's ``jp_fetch``, with its token."""

    def __init__(self, fetch: Any, loop: AbstractEventLoop) -> None:
        self._fetch = fetch
        self._loop = loop

    def json(self, *parts: str, **params: str) -> Any:
        response = self._loop.run_until_complete(self._fetch("decloud", *parts, params=params, method="GET"))
        assert response.code == 200
        assert response.headers["Content-Type"].startswith("application/json")
        return json.loads(response.body)

    def error(self, *parts: str, headers: dict[str, str] | None = None, **params: str) -> tuple[int, Any]:
        with pytest.raises(HTTPClientError) as info:
            self._loop.run_until_complete(
                self._fetch("decloud", *parts, params=params, headers=headers, method="GET")
            )
        assert info.value.response is not None
        body = info.value.response.body
        return info.value.code, json.loads(body) if body else None


@pytest.fixture
def api(jp_fetch: Any, jp_asyncio_loop: AbstractEventLoop) -> Api:
    return Api(jp_fetch, jp_asyncio_loop)


# -- the list ----------------------------------------------------------------


def test_runs_are_newest_first_with_exact_money_and_utc_times(api: Api, three_runs: Ledger) -> None:
    body = api.json("runs")

    assert body["total"] == 3
    assert [run["id"] for run in body["runs"]] == ["d4e5f6", "0f0f0f", "a1b2c3"]
    assert body["runs"][2] == {
        "id": "a1b2c3",
        "name": "train",
        "network": "local",
        "unit": "ETH",
        "status": "completed",
        "final": True,
        "task_id": 3,
        "submitted_at": "2024-05-01T12:00:00.250000+00:00",
        "started_at": "2024-05-01T12:00:02.250000+00:00",
        "completed_at": "2024-05-01T12:00:09.750000+00:00",
        "duration_s": 9.5,
        "price": "0.001000000000000001",
        "gas_used": 52000,
        "gas_cost": "0.000104",
        "total_cost": "0.001104000000000001",
        "refunded": None,
        "worker": "0x" + "ab" * 20,
        "input_cid": "bafyin",
        "result_cid": "bafyout",
        "error": None,
    }
    running, failed = body["runs"][0], body["runs"][1]
    assert running["price"] == "12345.678901234567890123"  # beyond a double's 17 digits, still exact
    assert running["total_cost"] == "12345.678901234567890123"
    assert (running["status"], running["final"], running["completed_at"], running["duration_s"]) == (
        "running",
        False,
        None,
        None,
    )
    assert (failed["unit"], failed["price"], failed["gas_cost"], failed["total_cost"]) == (
        "xDAI",
        "1",
        "0",
        "1",
    )
    assert failed["error"] == "50% of the inputs could not be read."
    assert "code" not in body["runs"][2]  # the cell's source stays in the notebook's ledger


def test_filters_and_limit(api: Api, three_runs: Ledger) -> None:
    local = api.json("runs", network="local")
    assert [run["id"] for run in local["runs"]] == ["d4e5f6", "a1b2c3"]

    ended = api.json("runs", status="completed,FAILED")
    assert [run["id"] for run in ended["runs"]] == ["0f0f0f", "a1b2c3"]

    newest = api.json("runs", limit="1")
    assert ([run["id"] for run in newest["runs"]], newest["total"]) == (["d4e5f6"], 3)

    nothing = api.json("runs", network="local", status="failed")
    assert nothing == {"runs": [], "total": 0}

    everything = api.json("runs", network="", status="")  # empty form fields mean "any"
    assert everything["total"] == 3

    cache_busted = api.json("runs", **{"1716000000000": ""})  # JupyterLab's ServerConnection
    assert cache_busted["total"] == 3


def test_a_run_recorded_while_the_server_runs_shows_on_the_next_request(api: Api, three_runs: Ledger) -> None:
    before = api.json("runs")
    three_runs.record_run(RunRecord("feed01", name="late", network="local", submitted_at=utcnow()))
    after = api.json("runs")
    assert (before["total"], after["total"]) == (3, 4)
    assert after["runs"][0]["name"] == "late"
    assert after["runs"][0]["status"] == "created"


# -- one run -----------------------------------------------------------------


def test_one_run_with_its_events_in_order(api: Api, three_runs: Ledger) -> None:
    body = api.json("runs", "a1b2c3")

    assert body["run"]["id"] == "a1b2c3"
    assert body["run"]["total_cost"] == "0.001104000000000001"
    assert [event["kind"] for event in body["events"]] == ["created", "order_placed", "running", "completed"]
    assert body["events"][0] == {
        "kind": "created",
        "at": "2024-05-01T12:00:01.250000+00:00",
        "block": 7,
        "tx_hash": "0xaa",
        "gas_used": 52000,
        "price": "0.001000000000000001",
        "worker": None,
        "message": "task 3 opened",
    }
    assert body["events"][1]["worker"] == "0x" + "ab" * 20
    assert body["events"][3]["message"] == "result verified"

    quiet = api.json("runs", "d4e5f6")
    assert quiet["events"] == []


def test_unknown_run_is_404_with_a_message(api: Api, three_runs: Ledger) -> None:
    code, body = api.error("runs", "a1b2")  # a prefix is not an id here
    assert code == 404
    assert "a1b2" in body["message"]
    assert body["message"].endswith(".")


# -- bad requests ------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"limit": "abc"}, ["limit", "abc"]),
        ({"limit": "0"}, ["limit", "1 to 1000"]),
        ({"limit": "-3"}, ["limit", "-3"]),
        ({"limit": "1001"}, ["limit", "1001"]),
        ({"limit": "2.5"}, ["limit", "2.5"]),
        ({"status": "done"}, ["status", "done", "completed"]),
        ({"status": "completed,nope"}, ["nope"]),
        ({"stauts": "completed"}, ["stauts", "status"]),
    ],
)
def test_bad_query_values_are_400_with_one_sentence(
    api: Api, three_runs: Ledger, params: dict[str, str], names: list[str]
) -> None:
    code, body = api.error("runs", **params)
    assert code == 400
    message = body["message"]
    assert all(name in message for name in names), message
    assert message.endswith(".") and message.count(". ") == 0, message


def test_requests_without_credentials_are_refused(api: Api, three_runs: Ledger) -> None:
    code, _ = api.error("runs", headers={"Authorization": "token not-the-token"})
    assert code == 403


# -- summary -----------------------------------------------------------------


def test_summary_counts_and_spending_per_network(api: Api, three_runs: Ledger) -> None:
    recent = utcnow()
    three_runs.record_run(
        RunRecord(
            "c0ffee",
            name="fresh",
            network="local",
            status=Status.NOT_PROCESSED,
            task_id=9,
            submitted_at=recent,
            completed_at=recent,
            price_wei=2 * 10**15,
            gas_cost_wei=3 * GWEI,
            refunded_wei=2 * 10**15,
        )
    )
    body = api.json("summary")

    assert body["runs"] == 4
    assert body["in_flight"] == 1
    assert body["statuses"] == {
        "created": 0,
        "open": 0,
        "claimed": 0,
        "running": 1,
        "completed": 1,
        "not_processed": 1,
        "failed": 1,
        "cancelled": 0,
        "disputed": 0,
    }
    assert body["mean_duration_s"] == 9.5
    as_of = datetime.fromisoformat(body["as_of"])
    midnight = as_of.replace(hour=0, minute=0, second=0, microsecond=0)
    fresh_today = "0.000000003" if recent >= midnight else "0"
    # Budget arithmetic: the refunded price is not spent; a run that failed
    # before reaching the chain (no task id) escrowed nothing.
    assert body["spending"] == [
        {"network": "gnosis", "unit": "xDAI", "hour": "0", "today": "0", "total": "0"},
        {
            "network": "local",
            "unit": "ETH",
            "hour": "0.000000003",
            "today": fresh_today,
            "total": "12345.680005237567890124",
        },
    ]


# -- where the ledger lives ----------------------------------------------------


def test_no_ledger_yet_is_an_empty_history_and_is_not_created(api: Api, home: Path) -> None:
    assert api.json("runs") == {"runs": [], "total": 0}
    summary = api.json("summary")
    assert (summary["runs"], summary["in_flight"], summary["spending"]) == (0, 0, [])
    code, _ = api.error("runs", "a1b2c3")
    assert code == 404
    assert not (home / "ledger.sqlite").exists()  # the server only reads: kernels create the ledger


@pytest.mark.parametrize("ledger_file", ["elsewhere.sqlite"], indirect=True)
def test_ledger_path_is_configurable(api: Api, tmp_path: Path, ledger_file: str) -> None:
    with Ledger(tmp_path / ledger_file) as other:
        other.record_run(RunRecord("abcdef", name="configured", network="local", submitted_at=T0))
    body = api.json("runs")
    assert [run["name"] for run in body["runs"]] == ["configured"]


def test_the_server_layer_never_imports_ipython_or_widgets() -> None:
    code = (
        "import sys, decloud_magics.server.app, decloud_magics.server.reader;"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipywidgets', 'pandas'));"
        "print(loaded)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
