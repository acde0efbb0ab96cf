"""The ledger: storage round trips, the pandas views, the budget sums, and
concurrent writers (threads and separate processes) losing nothing."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Context, Decimal, localcontext
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decloud_magics import frames
from decloud_magics.errors import ConfigError, UsageError
from decloud_magics.frames import EVENT_COLUMNS, HISTORY_COLUMNS, SUMMARY_COLUMNS, parse_since
from decloud_magics.ledger import SCHEMA_VERSION, Ledger, RunRecord, run_spent_wei
from decloud_magics.models import EventKind, RunEvent, Status, utcnow

ETHER = 10**18
GWEI = 10**9
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.sqlite") as opened:
        yield opened


def make_run(run_id: str | None = None, **fields: object) -> RunRecord:
    fields.setdefault("network", "local")
    fields.setdefault("submitted_at", utcnow())
    return RunRecord(run_id=run_id or uuid.uuid4().hex, **fields)  # type: ignore[arg-type]


# -- schema and files ------------------------------------------------------


def test_default_path_is_in_decloud_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECLOUD_HOME", str(tmp_path / "home"))
    with Ledger() as ledger:
        assert ledger.path == tmp_path / "home" / "ledger.sqlite"
        ledger.record_run(make_run("ab"))
    assert (tmp_path / "home" / "ledger.sqlite").exists()


def test_file_is_wal_versioned_and_indexed(ledger: Ledger) -> None:
    assert ledger.query("PRAGMA journal_mode") == [("wal",)]
    assert ledger.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert ledger.query("PRAGMA busy_timeout")[0][0] >= 5000
    indexes = ledger.query(
        "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    )
    indexed = {(table, ledger.query(f"PRAGMA index_info({name})")[0][2]) for table, name in indexes}
    assert {
        ("runs", "submitted_at"),
        ("runs", "status"),
        ("runs", "network"),
        ("events", "run_id"),
    } <= indexed


def test_newer_schema_is_refused_with_a_sentence(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="newer decloud"):
        Ledger(path).get_run("x")


def test_a_file_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a readable decloud ledger"):
        Ledger(path).get_run("x")


def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as first:
        first.record_run(make_run("feed01", price_wei=3 * ETHER))
        first.add_event(RunEvent(EventKind.CREATED, "feed01", at=NOW))
        first.set_setting("budget", {"per_day_wei": "5"})
    with Ledger(path) as second:
        run = second.get_run("feed01")
        assert run is not None and run.price_wei == 3 * ETHER
        assert [e.kind for e in second.events("feed01")] == [EventKind.CREATED]
        assert second.get_setting("budget") == {"per_day_wei": "5"}
        assert len(second.history_frame()) == 1


def test_importing_the_ledger_does_not_import_pandas() -> None:
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys, decloud_magics.ledger; "
        "print(sorted(m for m in ('pandas', 'numpy', 'web3', 'IPython') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- runs ------------------------------------------------------------------


def test_run_round_trips_every_field(ledger: Ledger) -> None:
    run = RunRecord(
        run_id="0a1b2c",
        name="train",
        network="devnet",
        task_id=7,
        contract="0x" + "c" * 40,
        requester="0x" + "d" * 40,
        status=Status.COMPLETED,
        submitted_at=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc),
        started_at=datetime(2024, 5, 1, 14, 0, 1, tzinfo=timezone(timedelta(hours=2))),  # 12:00:01 UTC
        completed_at=datetime(2024, 5, 1, 12, 0, 30, 5, tzinfo=timezone.utc),
        price_wei=2**70,  # far past int64: must survive as text
        gas_used=123_456,
        gas_cost_wei=123_456 * 30 * GWEI,
        worker="0x" + "e" * 40,
        input_cid="bafyin",
        result_cid="bafyout",
        result_digest="ab" * 32,
        error=None,
        cell_hash="f" * 64,
        code="x = 1\nprint(x)",
        outputs=["x", "df"],
        options={"validators": 2, "timeout": 60.5},
        refunded_wei=0,
        validators=2,
        deadline=datetime(2024, 5, 2, tzinfo=timezone.utc),
    )
    ledger.record_run(run)
    back = ledger.get_run("0a1b2c")
    assert back == RunRecord(
        **{**run.__dict__, "started_at": datetime(2024, 5, 1, 12, 0, 1, tzinfo=timezone.utc)}
    )
    assert back is not None
    assert back.submitted_at.tzinfo is timezone.utc and back.started_at is not None
    assert back.started_at.utcoffset() == timedelta(0)
    assert isinstance(back.status, Status) and back.is_final
    assert ledger.get_run("nope") is None


def test_duplicate_run_id_is_refused(ledger: Ledger) -> None:
    ledger.record_run(make_run("aa"))
    with pytest.raises(ValueError, match="already in the ledger"):
        ledger.record_run(make_run("aa"))
    with pytest.raises(ValueError, match="already in the ledger"):
        ledger.record_runs([make_run("bb"), make_run("aa")])
    assert ledger.get_run("bb") is None  # the batch is all or nothing


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("submitted_at", datetime(2024, 1, 1), ValueError),  # naive: would be read as local time
        ("price_wei", 1.5, TypeError),  # money is never a float
        ("price_wei", Decimal("0.1"), TypeError),
        ("price_wei", -1, ValueError),
        ("price_wei", True, TypeError),
        ("status", "lost", ValueError),
        ("worker", b"0xabc", TypeError),
    ],
)
def test_bad_values_are_refused_before_they_are_stored(
    ledger: Ledger, field: str, value: object, error: type
) -> None:
    with pytest.raises(error):
        ledger.record_run(make_run("aa", **{field: value}))
    assert ledger.get_run("aa") is None


def test_update_run_converts_values(ledger: Ledger) -> None:
    ledger.record_run(make_run("aa", submitted_at=NOW))
    ledger.update_run(
        "aa",
        status="running",
        started_at=NOW + timedelta(seconds=2),
        gas_used=50_000,
        gas_cost_wei=2**64 + 1,
        outputs=["y"],
        error="boom",
    )
    run = ledger.get_run("aa")
    assert run is not None
    assert run.status is Status.RUNNING
    assert run.started_at == NOW + timedelta(seconds=2)
    assert run.gas_cost_wei == 2**64 + 1
    assert run.outputs == ["y"] and run.error == "boom" and run.gas_used == 50_000
    ledger.update_run("aa")  # nothing to change is fine


def test_update_run_rejects_unknown_fields_and_runs(ledger: Ledger) -> None:
    ledger.record_run(make_run("aa"))
    with pytest.raises(ValueError, match="no column stauts"):
        ledger.update_run("aa", stauts="completed")
    with pytest.raises(ValueError, match="run_id"):
        ledger.update_run("aa", run_id="bb")  # the key is not a field you can change
    with pytest.raises(UsageError, match="no run 'zz'"):
        ledger.update_run("zz", status="completed")
    with pytest.raises(ValueError, match="cannot be None"):
        ledger.update_run("aa", status=None)
    run = ledger.get_run("aa")
    assert run is not None and run.status is Status.CREATED


def test_find_run_by_prefix(ledger: Ledger) -> None:
    ledger.record_runs([make_run("a3f001"), make_run("a3f002"), make_run("b70000"), make_run("a3")])
    assert ledger.find_run("b7").run_id == "b70000"
    assert ledger.find_run("  B7 ").run_id == "b70000"  # users paste with spaces and capitals
    assert ledger.find_run("a3f001").run_id == "a3f001"
    assert ledger.find_run("a3").run_id == "a3"  # an exact id wins over longer ones it prefixes
    assert ledger.find_runs("a3f002").run_id == "a3f002"
    with pytest.raises(UsageError, match=r"'a3f' matches more than one run \(a3f001, a3f002\)"):
        ledger.find_run("a3f")
    with pytest.raises(UsageError, match="No run id starts with 'c'"):
        ledger.find_run("c")
    with pytest.raises(UsageError, match="Give a run id"):
        ledger.find_run("  ")


def test_runs_in_flight(ledger: Ledger) -> None:
    for i, status in enumerate(Status):
        ledger.record_run(
            make_run(
                f"{i:02x}",
                status=status,
                network="local" if i % 2 else "devnet",
                submitted_at=NOW + timedelta(seconds=i),
            )
        )
    flying = ledger.runs_in_flight()
    assert [r.status for r in flying] == [Status.CREATED, Status.OPEN, Status.CLAIMED, Status.RUNNING]
    assert all(not r.is_final for r in flying)
    assert {r.status for r in ledger.runs_in_flight(network="devnet")} == {Status.CREATED, Status.CLAIMED}


# -- events ----------------------------------------------------------------


def test_events_round_trip_in_time_order(ledger: Ledger) -> None:
    ledger.record_run(make_run("aa"))
    late = RunEvent(
        EventKind.COMPLETED,
        "aa",
        at=NOW + timedelta(seconds=9),
        block=12,
        tx_hash="0x" + "1" * 64,
        gas_used=90_000,
        price_wei=2**80,
        worker="0xw",
        message="done",
        data={"digest": "ab", "n": 2},
    )
    early = RunEvent(EventKind.CREATED, "aa", at=NOW, block=10, gas_used=50_000, price_wei=ETHER // 1000)
    ledger.add_event(late)
    ledger.add_event(early)
    ledger.add_event(RunEvent(EventKind.CREATED, "other", at=NOW))
    assert ledger.events("aa") == [early, late]
    assert ledger.events("nothing") == []


def test_add_event_can_update_the_run_in_the_same_transaction(ledger: Ledger) -> None:
    ledger.record_run(make_run("aa"))
    ledger.add_event(
        RunEvent(EventKind.RUNNING, "aa", at=NOW, worker="0xw"), status=Status.RUNNING, worker="0xw"
    )
    run = ledger.get_run("aa")
    assert run is not None and (run.status, run.worker) == (Status.RUNNING, "0xw")
    with pytest.raises(ValueError):
        ledger.add_event(RunEvent(EventKind.FAILED, "aa", at=NOW), statuss="failed")
    assert len(ledger.events("aa")) == 1  # the refused update took its event with it


def test_event_data_that_is_not_json_is_kept_as_text(ledger: Ledger) -> None:
    ledger.add_event(RunEvent(EventKind.STDOUT, "aa", at=NOW, data={"path": Path("/x"), "when": NOW}))
    assert ledger.events("aa")[0].data == {"path": "/x", "when": str(NOW)}


# -- spending --------------------------------------------------------------


def test_spent_wei_counts_what_left_the_wallet(ledger: Ledger) -> None:
    gas = 21_000 * GWEI
    price = ETHER // 100
    ledger.record_runs(
        [
            make_run(
                "01", status=Status.COMPLETED, task_id=1, price_wei=price, gas_cost_wei=gas, submitted_at=NOW
            ),
            # In flight: the escrowed price is gone from the wallet until it comes back.
            make_run(
                "02", status=Status.RUNNING, task_id=2, price_wei=price, gas_cost_wei=gas, submitted_at=NOW
            ),
            make_run("03", status=Status.CREATED, price_wei=price, submitted_at=NOW),
            # Refunded: only the gas counts.
            make_run(
                "04",
                status=Status.CANCELLED,
                task_id=4,
                price_wei=price,
                gas_cost_wei=gas,
                refunded_wei=price,
                submitted_at=NOW,
            ),
            make_run(
                "05",
                status=Status.NOT_PROCESSED,
                task_id=5,
                price_wei=price,
                gas_cost_wei=gas,
                refunded_wei=price,
                submitted_at=NOW,
            ),
            make_run(
                "06",
                status=Status.DISPUTED,
                task_id=6,
                price_wei=price,
                gas_cost_wei=gas,
                refunded_wei=price,
                submitted_at=NOW,
            ),
            # Not processed and not reclaimed yet: the escrow is still out.
            make_run(
                "07",
                status=Status.NOT_PROCESSED,
                task_id=7,
                price_wei=price,
                gas_cost_wei=gas,
                submitted_at=NOW,
            ),
            # Failed before reaching the chain: nothing was escrowed.
            make_run("08", status=Status.FAILED, price_wei=price, error="bad input", submitted_at=NOW),
            # Another network, and an older run.
            make_run(
                "09", network="devnet", status=Status.COMPLETED, task_id=9, price_wei=price, submitted_at=NOW
            ),
            make_run(
                "0a",
                status=Status.COMPLETED,
                task_id=10,
                price_wei=price,
                submitted_at=NOW - timedelta(days=2),
            ),
        ]
    )
    local_recent = (price + gas) * 2 + price + gas * 3 + price + gas
    assert ledger.spent_wei(since=NOW - timedelta(hours=1), network="local") == local_recent
    assert ledger.spent_wei(since=NOW - timedelta(hours=1)) == local_recent + price
    assert ledger.spent_wei() == local_recent + 2 * price
    assert ledger.spent_wei(since=NOW + timedelta(seconds=1)) == 0
    ledger.update_run("07", refunded_wei=price)
    assert ledger.spent_wei(network="local", since=NOW) == local_recent - price


def test_run_spent_wei_never_counts_more_refund_than_price() -> None:
    assert run_spent_wei(Status.DISPUTED, 1, 10, 3, 25) == 3
    assert run_spent_wei("running", None, "10", None, None) == 10
    assert make_run(status=Status.FAILED, price_wei=10, gas_cost_wei=2).spent_wei == 2


# -- settings --------------------------------------------------------------


def test_settings_round_trip_and_default(ledger: Ledger) -> None:
    assert ledger.get_setting("budget") is None
    assert ledger.get_setting("budget", {"none": True}) == {"none": True}
    ledger.set_setting("budget", {"per_day_wei": str(2**70), "warn_at": 0.8})
    ledger.set_setting("budget", {"per_day_wei": str(2**71), "warn_at": 0.9})  # replaces
    assert ledger.get_setting("budget") == {"per_day_wei": str(2**71), "warn_at": 0.9}


# -- frames ----------------------------------------------------------------


def assert_history_dtypes(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == list(HISTORY_COLUMNS)
    for name in ("submitted_at", "started_at", "completed_at"):
        assert isinstance(frame[name].dtype, pd.DatetimeTZDtype), name
        assert str(frame[name].dt.tz) == "UTC"
    assert frame["duration_s"].dtype == "float64"
    assert frame["gas_used"].dtype == "Int64"
    for name in ("price", "gas_cost", "total_cost"):
        assert frame[name].dtype == object
        assert all(type(v) is Decimal for v in frame[name]), name
    for name in (
        "run_id",
        "name",
        "network",
        "status",
        "worker",
        "input_cid",
        "result_cid",
        "error",
        "cell_hash",
    ):
        assert pd.api.types.is_string_dtype(frame[name].dtype), name


def test_history_frame_columns_dtypes_and_order(ledger: Ledger) -> None:
    ledger.record_runs(
        [
            make_run(
                "old",
                name="a",
                status=Status.COMPLETED,
                submitted_at=NOW,
                started_at=NOW + timedelta(seconds=1),
                completed_at=NOW + timedelta(seconds=31.5),
                price_wei=ETHER // 1000,
                gas_used=100_000,
                gas_cost_wei=100_000 * 20 * GWEI,
            ),
            make_run(
                "new",
                name="b",
                status=Status.RUNNING,
                submitted_at=NOW + timedelta(minutes=5),
                price_wei=2**90,
            ),
            make_run(
                "tie", name="c", submitted_at=NOW + timedelta(minutes=5)
            ),  # same instant: later insert first
        ]
    )
    frame = ledger.history_frame()
    assert_history_dtypes(frame)
    assert list(frame["run_id"]) == ["tie", "new", "old"]
    old = frame.set_index("run_id").loc["old"]
    assert old["submitted_at"] == pd.Timestamp(NOW)
    assert old["duration_s"] == 31.5
    assert old["price"] == Decimal("0.001")
    assert old["gas_cost"] == Decimal("0.002")
    assert old["total_cost"] == Decimal("0.003")
    assert old["gas_used"] == 100_000
    new = frame.set_index("run_id").loc["new"]
    assert new["price"] * ETHER == 2**90  # exact, however large
    assert pd.isna(new["completed_at"]) and pd.isna(new["duration_s"]) and pd.isna(new["gas_used"])
    assert new["gas_cost"] == 0 and new["total_cost"] == new["price"]
    assert pd.isna(new["error"])


def test_history_frame_of_an_empty_ledger_has_the_same_shape(ledger: Ledger) -> None:
    frame = ledger.history_frame()
    assert len(frame) == 0
    assert_history_dtypes(frame)
    assert list(ledger.events_frame("x").columns) == list(EVENT_COLUMNS)


def test_history_frame_sorts_runs_recorded_out_of_order(ledger: Ledger) -> None:
    # Imports and a second kernel can insert older runs after newer ones.
    times = [5, 1, 9, 3, 7]
    ledger.record_runs(make_run(f"r{t}", submitted_at=NOW + timedelta(seconds=t)) for t in times)
    assert list(ledger.history_frame()["run_id"]) == ["r9", "r7", "r5", "r3", "r1"]
    assert list(ledger.history_frame(limit=2)["run_id"]) == ["r9", "r7"]


def test_history_frame_filters(ledger: Ledger) -> None:
    now = utcnow()
    ledger.record_runs(
        [
            make_run("a", network="local", status=Status.COMPLETED, submitted_at=now - timedelta(minutes=10)),
            make_run("b", network="devnet", status=Status.FAILED, submitted_at=now - timedelta(minutes=45)),
            make_run("c", network="local", status=Status.RUNNING, submitted_at=now - timedelta(hours=5)),
            make_run("d", network="local", status=Status.COMPLETED, submitted_at=now - timedelta(days=3)),
        ]
    )

    def ids(**filters: object) -> list[str]:
        return list(ledger.history_frame(**filters)["run_id"])  # type: ignore[arg-type]

    assert ids(network="local") == ["a", "c", "d"]
    assert ids(status="completed") == ["a", "d"]
    assert ids(status=Status.FAILED) == ["b"]
    assert ids(status=["running", Status.FAILED]) == ["b", "c"]
    assert ids(since="30m") == ["a"]
    assert ids(since="1h") == ["a", "b"]
    assert ids(since="2d") == ["a", "b", "c"]
    assert ids(since=timedelta(hours=6)) == ["a", "b", "c"]
    assert ids(since=now - timedelta(hours=1)) == ["a", "b"]
    assert ids(since=(now - timedelta(days=4)).isoformat()) == ["a", "b", "c", "d"]
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    expected_today = [
        r for r, age in [("a", 10 / 60), ("b", 0.75), ("c", 5)] if now - timedelta(hours=age) >= midnight
    ]
    assert ids(since="today") == expected_today
    assert ids(limit=2) == ["a", "b"]
    assert ids(limit=0) == []
    assert ids(network="local", status="completed", since="1d", limit=5) == ["a"]
    with pytest.raises(UsageError, match="is not a time"):
        ledger.history_frame(since="last tuesday-ish")
    with pytest.raises(UsageError, match="status must be one of"):
        ledger.history_frame(status="done")
    with pytest.raises(UsageError, match="limit"):
        ledger.history_frame(limit=-1)


def history_row_by_row(ledger: Ledger, **filters: Any) -> dict[str, list[Any]]:
    """The history built the plain way, row by row from one SELECT, to hold history_frame to."""
    stored = (
        "rowid", "run_id", "name", "network", "status", "submitted_at", "started_at", "completed_at",
        "price_wei", "gas_used", "gas_cost_wei", "worker", "input_cid", "result_cid", "error", "cell_hash",
    )  # fmt: skip
    statuses = filters.get("status")
    statuses = [statuses] if isinstance(statuses, str) else statuses
    since = filters.get("since")
    runs = [
        run
        for run in (dict(zip(stored, row)) for row in ledger.query(f"SELECT {', '.join(stored)} FROM runs"))
        if filters.get("network") in (None, run["network"])
        and (statuses is None or run["status"] in statuses)
        and (since is None or run["submitted_at"] >= since.timestamp())
    ]
    runs.sort(key=lambda run: (run["submitted_at"], run["rowid"]), reverse=True)

    def moment(seconds: float | None) -> pd.Timestamp:
        return pd.NaT if seconds is None else pd.Timestamp(datetime.fromtimestamp(seconds, timezone.utc))

    def ether(*wei: str | None) -> Decimal:
        with localcontext(Context(prec=80)):  # exact for any two uint256 amounts
            amounts = [Decimal(int(w or 0)) / Decimal(ETHER) for w in wei]
            return amounts[0] if len(amounts) == 1 else amounts[0] + amounts[1]

    columns: dict[str, list[Any]] = {name: [] for name in HISTORY_COLUMNS}
    for run in runs[: filters.get("limit")]:
        done = run["completed_at"]
        for name in HISTORY_COLUMNS:
            columns[name].append(run.get(name))
        columns["submitted_at"][-1] = moment(run["submitted_at"])
        columns["started_at"][-1] = moment(run["started_at"])
        columns["completed_at"][-1] = moment(done)
        columns["duration_s"][-1] = float("nan") if done is None else done - run["submitted_at"]
        columns["price"][-1] = ether(run["price_wei"])
        columns["gas_cost"][-1] = ether(run["gas_cost_wei"])
        columns["total_cost"][-1] = ether(run["price_wei"], run["gas_cost_wei"])
    return columns


def assert_history_is(frame: pd.DataFrame, expected: dict[str, list[Any]]) -> None:
    assert_history_dtypes(frame)
    assert len(frame) == len(expected["run_id"])
    for name in HISTORY_COLUMNS:
        got = frame[name].tolist()
        if name in ("price", "gas_cost", "total_cost"):
            # The same digits and exponent, not only equal values: 0.002 must not show as 0.0020.
            assert [d.as_tuple() for d in got] == [d.as_tuple() for d in expected[name]], name
        elif name == "duration_s":  # bit for bit, NaN included
            want = pd.Series(expected[name], dtype="float64").to_numpy()
            assert frame[name].to_numpy().tobytes() == want.tobytes()
        else:
            assert [None if pd.isna(v) else v for v in got] == [
                None if pd.isna(v) else v for v in expected[name]
            ], name


AWKWARD_TEXTS = [
    None, "", "cell ünïcödé 名前 🚀", 'quote " and \\ backslash', "tab\there\nnew line", "nul\x00inside",
    "separators \x1e\x1f\u2028\u2029", "é" * 3000, "[1, 2]", "null", "\U0001f680 astral", " ",
]  # fmt: skip
AWKWARD_WEI = [0, 1, 10**18, 10**30, 2**63 - 1, 2**63, 2**64 + 1, 5 * 10**17 + 7, 2**256 - 1]


@pytest.fixture
def awkward_ledger(ledger: Ledger) -> Ledger:
    runs = []
    for i in range(60):
        text = AWKWARD_TEXTS[i % len(AWKWARD_TEXTS)]
        # Out of storage order, with ties, before 1970 and decades ahead (to
        # 2106, as far as float seconds keep every microsecond).
        seconds = [3600 * ((i * 7) % 23), -86400 * 365 * 20, 86400 * 365 * 80][i % 3] + (i % 4) * 0.25
        submitted = NOW + timedelta(seconds=seconds if i % 5 else 0)
        done = i % 4 != 0
        runs.append(
            make_run(
                f"run-{i:02d}-{text or 'x'}"[:40],
                name=text,
                network=[None, "local", "devnet"][i % 3],
                status=[Status.COMPLETED, Status.RUNNING, Status.FAILED, Status.OPEN][i % 4],
                submitted_at=submitted,
                started_at=submitted + timedelta(microseconds=1) if i % 3 else None,
                completed_at=submitted + timedelta(seconds=i, microseconds=999_999) if done else None,
                price_wei=AWKWARD_WEI[i % len(AWKWARD_WEI)],
                gas_used=[None, 0, 21_000, 2**63 - 1][i % 4],
                gas_cost_wei=None if i % 5 == 0 else AWKWARD_WEI[(i * 5) % len(AWKWARD_WEI)],
                worker=text,
                input_cid=AWKWARD_TEXTS[(i + 1) % len(AWKWARD_TEXTS)],
                result_cid=AWKWARD_TEXTS[(i + 2) % len(AWKWARD_TEXTS)],
                error=None if done else f"Traceback:\n  {text}\nValueError: {i}",
                cell_hash=AWKWARD_TEXTS[(i + 3) % len(AWKWARD_TEXTS)],
            )
        )
    ledger.record_runs(runs)
    return ledger


HISTORY_FILTERS = [
    {},
    {"network": "local"},
    {"network": "nowhere"},
    {"status": ["running", "open"]},
    {"status": "completed", "network": "devnet"},
    {"since": NOW - timedelta(days=1)},
    {"since": NOW + timedelta(days=365 * 100)},
    {"limit": 0},
    {"limit": 7},
    {"limit": 1000},
    {"network": "local", "status": ["completed", "failed"], "since": NOW - timedelta(days=9000), "limit": 5},
]


@pytest.fixture(params=["json", "no json"])
def sqlite_json(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "no json":
        # As on an SQLite built without its JSON functions (optional before 3.38).
        monkeypatch.setattr(frames, "_JSON_ARRAY", "json_group_array_missing")
    return request.param


@pytest.mark.parametrize("filters", HISTORY_FILTERS)
def test_history_frame_matches_the_plain_row_by_row_reading(
    awkward_ledger: Ledger, sqlite_json: str, filters: dict[str, Any]
) -> None:
    assert_history_is(awkward_ledger.history_frame(**filters), history_row_by_row(awkward_ledger, **filters))


def test_history_frame_of_an_empty_ledger_matches_the_plain_reading(ledger: Ledger, sqlite_json: str) -> None:
    for filters in HISTORY_FILTERS:
        assert_history_is(ledger.history_frame(**filters), history_row_by_row(ledger, **filters))


def test_history_frame_reads_one_snapshot_while_another_kernel_writes(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.record_run(make_run("a", name="before", status=Status.RUNNING, submitted_at=NOW))
    read_text = frames._history_text

    def commit_in_between(*args: Any) -> tuple[str, ...]:
        with Ledger(ledger.path) as other:  # another kernel, between the numbers and the text
            other.record_run(make_run("b", submitted_at=NOW + timedelta(seconds=1)))
            other.update_run("a", name="after", status=Status.COMPLETED, completed_at=NOW)
        return read_text(*args)

    monkeypatch.setattr(frames, "_history_text", commit_in_between)
    frame = ledger.history_frame()
    assert frame["run_id"].tolist() == ["a"]
    assert frame["name"].tolist() == ["before"] and frame["status"].tolist() == ["running"]
    assert pd.isna(frame["completed_at"].iloc[0])
    monkeypatch.undo()
    later = ledger.history_frame()  # a new snapshot sees both commits
    assert later["run_id"].tolist() == ["b", "a"] and later["name"].iloc[1] == "after"


def test_parse_since() -> None:
    assert parse_since("90s", now=NOW) == NOW - timedelta(seconds=90)
    assert parse_since("30m", now=NOW) == NOW - timedelta(minutes=30)
    assert parse_since(" 1h ", now=NOW) == NOW - timedelta(hours=1)
    assert parse_since("1.5h", now=NOW) == NOW - timedelta(minutes=90)
    assert parse_since("2d", now=NOW) == NOW - timedelta(days=2)
    assert parse_since("1w", now=NOW) == NOW - timedelta(weeks=1)
    assert parse_since("today", now=NOW) == datetime(2024, 5, 1, tzinfo=timezone.utc)
    assert parse_since("Yesterday", now=NOW) == datetime(2024, 4, 30, tzinfo=timezone.utc)
    assert parse_since("2024-04-01", now=NOW) == datetime(
        2024, 4, 1, tzinfo=timezone.utc
    )  # naive text is UTC
    assert parse_since("2024-04-01T02:00+02:00", now=NOW) == datetime(2024, 4, 1, tzinfo=timezone.utc)
    assert parse_since(datetime(2024, 4, 1), now=NOW) == datetime(2024, 4, 1, tzinfo=timezone.utc)
    assert parse_since("today", now=datetime(2024, 5, 1, 1, tzinfo=timezone(timedelta(hours=5)))) == datetime(
        2024, 4, 30, tzinfo=timezone.utc
    )  # midnight of the UTC day, wherever the caller is
    for bad in ("", "soon", "5 parsecs"):
        with pytest.raises(UsageError):
            parse_since(bad, now=NOW)


def test_events_frame(ledger: Ledger) -> None:
    ledger.add_event(
        RunEvent(EventKind.CREATED, "aa", at=NOW, block=3, gas_used=60_000, price_wei=ETHER // 10)
    )
    ledger.add_event(RunEvent(EventKind.STDOUT, "aa", at=NOW + timedelta(seconds=1), message="hello\n"))
    frame = ledger.events_frame("aa")
    assert list(frame.columns) == list(EVENT_COLUMNS)
    assert isinstance(frame["at"].dtype, pd.DatetimeTZDtype) and str(frame["at"].dt.tz) == "UTC"
    assert frame["block"].dtype == "Int64" and frame["gas_used"].dtype == "Int64"
    assert list(frame["kind"]) == ["created", "stdout"]
    assert list(frame["price"]) == [Decimal("0.1"), Decimal(0)]
    assert all(type(v) is Decimal for v in frame["price"])
    assert pd.isna(frame["block"].iloc[1]) and frame["message"].iloc[1] == "hello\n"
    assert frame["at"].iloc[0] == pd.Timestamp(NOW)


def test_summary_frame(ledger: Ledger) -> None:
    price, gas = ETHER // 100, 21_000 * GWEI
    ledger.record_runs(
        [
            make_run(
                "01",
                status=Status.COMPLETED,
                task_id=1,
                price_wei=price,
                gas_cost_wei=gas,
                submitted_at=NOW - timedelta(minutes=5),
                completed_at=NOW - timedelta(minutes=4),
            ),
            make_run(
                "02",
                status=Status.COMPLETED,
                task_id=2,
                price_wei=price,
                gas_cost_wei=gas,
                submitted_at=NOW - timedelta(hours=3),
                completed_at=NOW - timedelta(hours=3) + timedelta(seconds=20),
            ),
            make_run(
                "03",
                status=Status.FAILED,
                task_id=3,
                price_wei=price,
                submitted_at=NOW - timedelta(days=2),
                completed_at=NOW - timedelta(days=2) + timedelta(seconds=1),
            ),
            make_run(
                "04",
                status=Status.RUNNING,
                task_id=4,
                price_wei=price,
                submitted_at=NOW - timedelta(minutes=1),
            ),
            make_run(
                "05",
                status=Status.CANCELLED,
                task_id=5,
                price_wei=price,
                gas_cost_wei=gas,
                refunded_wei=price,
                submitted_at=NOW - timedelta(minutes=2),
            ),
            make_run("06", network="devnet", status=Status.DISPUTED, submitted_at=NOW),
        ]
    )
    frame = ledger.summary_frame(now=NOW)
    assert list(frame.columns) == list(SUMMARY_COLUMNS)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert (row["runs"], row["completed"], row["failed"], row["cancelled"], row["disputed"]) == (
        6,
        2,
        1,
        1,
        1,
    )
    assert row["not_processed"] == 0 and row["in_flight"] == 1
    for name in ("spent_hour", "spent_today", "spent_total"):
        assert type(row[name]) is Decimal, name
    hour = Decimal(price + gas + price + gas) / ETHER
    assert row["spent_hour"] == hour
    assert row["spent_today"] == hour + Decimal(price + gas) / ETHER
    assert row["spent_total"] == row["spent_today"] + Decimal(price) / ETHER
    assert row["mean_duration_s"] == pytest.approx(40.0)
    assert frame["runs"].dtype == "int64" and frame["mean_duration_s"].dtype == "float64"
    local = ledger.summary_frame(now=NOW, network="devnet").iloc[0]
    assert (local["runs"], local["disputed"]) == (1, 1)
    assert pd.isna(local["mean_duration_s"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    wei=st.integers(min_value=0, max_value=2**256 - 1),
    moment=st.datetimes(
        # Float seconds hold every microsecond until 2106 (2**32 s).
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2106, 1, 1),
        timezones=st.just(timezone.utc),
    ),
)
def test_money_and_time_survive_storage_and_views_exactly(tmp_path: Path, wei: int, moment: datetime) -> None:
    with Ledger(tmp_path / f"{uuid.uuid4().hex}.sqlite") as ledger:
        ledger.record_run(make_run("aa", submitted_at=moment, price_wei=wei, gas_cost_wei=wei))
        ledger.add_event(RunEvent(EventKind.CREATED, "aa", at=moment, price_wei=wei))
        run = ledger.get_run("aa")
        assert run is not None and run.price_wei == wei and run.submitted_at == moment
        assert ledger.events("aa")[0].price_wei == wei
        assert ledger.spent_wei() == 2 * wei
        row = ledger.history_frame().iloc[0]
        assert row["submitted_at"] == pd.Timestamp(moment)
        event_price = ledger.events_frame("aa")["price"].iloc[0]
        with localcontext(Context(prec=100)):  # the default 28 digits would round the check itself
            assert row["price"] * ETHER == wei
            assert row["total_cost"] * ETHER == 2 * wei
            assert event_price * ETHER == wei


# -- concurrency -----------------------------------------------------------


def write_runs(path: str, writer: str, count: int, start: object) -> None:
    """One writer's share: a run, two events and a status update per run,
    each its own transaction, as a watcher writes them. Module level so a
    spawned process can import it."""
    start.wait()  # type: ignore[attr-defined]
    with Ledger(Path(path)) as ledger:
        for i in range(count):
            run_id = f"{writer}{i:04d}"
            ledger.record_run(make_run(run_id, network=writer, task_id=i, price_wei=i))
            ledger.add_event(RunEvent(EventKind.CREATED, run_id, price_wei=i), status=Status.OPEN)
            ledger.add_event(RunEvent(EventKind.COMPLETED, run_id, gas_used=21_000))
            ledger.update_run(
                run_id, status=Status.COMPLETED, completed_at=utcnow(), gas_cost_wei=21_000 * GWEI
            )
            if i % 50 == 0:
                ledger.history_frame(limit=10)  # readers run alongside the writers


def assert_all_written(path: Path, writers: list[str], count: int) -> None:
    with Ledger(path) as ledger:
        assert ledger.query("SELECT COUNT(*) FROM runs") == [(len(writers) * count,)]
        assert ledger.query("SELECT COUNT(*) FROM events") == [(2 * len(writers) * count,)]
        assert ledger.query("SELECT DISTINCT status FROM runs") == [("completed",)]
        for writer in writers:
            assert ledger.spent_wei(network=writer) == sum(range(count)) + count * 21_000 * GWEI


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "ledger.sqlite"  # neither process finds a file: both race to create it
    ctx = multiprocessing.get_context("spawn")  # two kernels are two fresh interpreters
    start = ctx.Event()
    writers = ["aa", "bb"]
    processes = [ctx.Process(target=write_runs, args=(str(path), w, 200, start)) for w in writers]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(timeout=180)
    assert [p.exitcode for p in processes] == [0, 0], (
        "a writer failed; its traceback is in the captured stderr"
    )
    assert_all_written(path, writers, 200)


def test_threads_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    start = threading.Event()
    errors: list[BaseException] = []
    writers = ["aa", "bb", "cc", "dd"]

    def run(writer: str, ledger: Ledger) -> None:
        try:
            start.wait()
            for i in range(100):
                run_id = f"{writer}{i:04d}"
                ledger.record_run(make_run(run_id, network=writer, task_id=i, price_wei=i))
                ledger.add_event(RunEvent(EventKind.CREATED, run_id, price_wei=i), status=Status.OPEN)
                ledger.add_event(RunEvent(EventKind.COMPLETED, run_id, gas_used=21_000))
                ledger.update_run(run_id, status=Status.COMPLETED, gas_cost_wei=21_000 * GWEI)
                ledger.history_frame(limit=5)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread below
            errors.append(exc)

    with Ledger(path) as shared:  # one Ledger object used by every thread, as in a kernel
        threads = [threading.Thread(target=run, args=(w, shared)) for w in writers]
        for thread in threads:
            thread.start()
        start.set()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
    assert_all_written(path, writers, 100)


def open_handles(path: Path) -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path.resolve()))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts file handles through /proc")
def test_threads_that_end_do_not_leave_connections_open(ledger: Ledger) -> None:
    # A kernel starts a watcher thread per run; their handles must not pile up.
    for i in range(30):
        thread = threading.Thread(target=ledger.record_run, args=(make_run(f"{i:04x}"),))
        thread.start()
        thread.join()
    ledger.get_run("0000")  # the next connection opened sweeps up after the dead threads
    assert len(ledger.history_frame()) == 30
    assert open_handles(ledger.path) <= 3


# -- secrets ---------------------------------------------------------------


def test_no_key_material_reaches_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "0x" + "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
    monkeypatch.setenv("DECLOUD_PRIVATE_KEY", secret)
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.record_run(make_run("aa", options={"price": "0.01ether"}))
        ledger.add_event(RunEvent(EventKind.CREATED, "aa", at=NOW))
        ledger.set_setting("budget", {"per_day": "1ether"})
        ledger.history_frame()
        stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret[2:].encode() not in stored
    assert secret[2:].encode() not in stored.lower()
