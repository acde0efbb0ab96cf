"""Bad input, everywhere: one clear sentence, the run kept in the ledger, nothing paid that can't come back.

Each row of docs/errors.md has a test here (or names the test that covers it).
"""

from __future__ import annotations

import threading

import pytest
from IPython.core.error import UsageError as IPythonUsageError

from decloud_magics.client import Client
from decloud_magics.connection import Connection
from decloud_magics.errors import InsufficientFunds, NetworkUnreachable, SerializationError
from decloud_magics.networks import LOCAL


def _single_sentence(text: str) -> None:
    assert text and "\n" not in text.strip() and "Traceback" not in text


def _ledger_row(client, name):  # type: ignore[no-untyped-def]
    frame = client.history()
    rows = frame[frame["name"] == name]
    assert len(rows) == 1, f"the ledger should keep the run {name!r}"
    return rows.iloc[0]


def _magics(shell):  # type: ignore[no-untyped-def]
    return next(m for m in shell.configurables if type(m).__name__ == "DecloudMagics")


@pytest.mark.parametrize(
    "cell, words",
    [
        ("%%decloud run --cpu 0\nx = 1", "--cpu and --memory must be more than zero"),
        ("%%decloud run --memory -1\nx = 1", "--cpu and --memory must be more than zero"),
        ("%%decloud run --price 5 parsecs\nx = 1", "unrecognized arguments"),
        ("%%decloud run --price 5parsec\nx = 1", "not a unit"),
        ("%%decloud run --price 0.0000000000000000001\nx = 1", "smaller than one wei"),
        ("%%decloud run --timeout soon\nx = 1", "invalid float value"),
        ("%%decloud run --validators 0\nx = 1", "--validators must be between 1 and 16"),
        ("%%decloud run --in a,,1b\nx = 1", "is not a Python variable name"),
        ("%%decloud run --out 2y\nx = 1", "is not a Python variable name"),
        ("%%decloud run --in never_defined\nx = never_defined", "not defined in the notebook"),
        ("%decloud run\n", "write %%decloud run"),
        ("%%decloud wait\nx = 1", "not a cell magic"),
        ("%decloud wait zzzz", "No run of this session"),
        ("%decloud network use nowhere", "Unknown network 'nowhere'"),
        ("%decloud budget lots", "is not a budget"),
        ("%decloud result ffffffffffff", "ffffffffffff"),
    ],
)
def test_every_wrong_option_is_one_usage_sentence(run_cell, cell, words):
    result, _ = run_cell(cell)
    error = result.error_in_exec
    assert isinstance(error, IPythonUsageError) or type(error).__name__ == "UsageError", repr(error)
    assert words in str(error)
    _single_sentence(str(error))


@pytest.mark.parametrize(
    "cell, command",
    [
        ("%%decloud run --colour red\nx = 1", "%%decloud run:"),
        ("%decloud history --limit lots", "%decloud history:"),
        ("%decloud events", "%decloud events:"),
    ],
)
def test_a_flag_the_parser_refuses_names_the_command_and_where_its_flags_are(run_cell, cell, command):
    error = run_cell(cell)[0].error_in_exec
    assert str(error).startswith(command) and str(error).endswith("(see %decloud? for its options).")
    _single_sentence(str(error))


def test_no_funds_is_refused_before_sending_with_the_shortfall(shell, run_cell):
    client = _magics(shell).client()
    tasks = client.conn.market.contract.functions.taskCount().call()
    result, _ = run_cell("%%decloud run --price 5000000ether --name too-rich\nx = 1")
    error = result.error_in_exec
    assert isinstance(error, InsufficientFunds)
    assert "short" in str(error) and "holds" in str(error)
    _single_sentence(str(error))
    assert client.conn.market.contract.functions.taskCount().call() == tasks
    assert _ledger_row(client, "too-rich")["status"] == "failed"


def test_unreachable_ipfs_is_one_sentence_and_nothing_is_paid(client, tmp_path):
    from decloud_magics.store.kubo import KuboStore

    chain = client.conn.embedded
    wake = threading.Event()
    conn = Connection(config=LOCAL, market=chain.market(0), store=KuboStore("http://127.0.0.1:9", retries=1),
                      channel=client.conn.channel, wake=wake, embedded=chain)  # fmt: skip
    before = conn.market.balance()
    with (
        Client("local", ledger=client.ledger, connection=conn) as offline,
        pytest.raises(NetworkUnreachable) as info,
    ):
        offline.submit("x = 1", name="ipfs-down", timeout=10)
    assert "IPFS node" in str(info.value)
    _single_sentence(str(info.value))
    assert conn.market.balance() == before
    assert _ledger_row(client, "ipfs-down")["status"] == "failed"


def test_an_input_too_large_says_its_size(shell, run_cell):
    magics = _magics(shell)
    shell.run_cell("big_blob = bytes(3_000_000)")
    old = magics.max_input_mb
    magics.max_input_mb = 1.0
    try:
        result, _ = run_cell("%%decloud run --name too-big\nn = len(big_blob)")
    finally:
        magics.max_input_mb = old
    error = result.error_in_exec
    assert isinstance(error, SerializationError)
    assert "'big_blob'" in str(error) and "MB" in str(error) and "limit" in str(error)
    assert _ledger_row(magics.client(), "too-big")["status"] == "failed"


def test_an_output_never_assigned_is_named(run_cell, shell):
    result, out = run_cell("%%decloud run --out ghost,real\nreal = 1")
    result.raise_error()
    assert shell.user_ns["real"] == 1
    assert "'ghost'" in out.stderr and "never assigned" in out.stderr


def test_unreachable_rpc_and_unknown_network(run_cell, decloud_home):
    from decloud_magics.networks import NetworkConfig, save_network

    save_network(NetworkConfig(name="down", rpc_url="http://127.0.0.1:9", contract="0x" + "22" * 20,
                               ipfs_api="http://127.0.0.1:9"))  # fmt: skip
    import os

    os.environ["DECLOUD_PRIVATE_KEY"] = "0x" + "5" * 64
    try:
        result, _ = run_cell("%%decloud run --network down\nx = 1")
    finally:
        del os.environ["DECLOUD_PRIVATE_KEY"]
    error = result.error_in_exec
    assert isinstance(error, NetworkUnreachable) and "RPC URL" in str(error)
    _single_sentence(str(error))
    result, _ = run_cell("%%decloud run --network nowhere\nx = 1")
    assert "Unknown network 'nowhere'" in str(result.error_in_exec)


def test_a_network_without_a_key_says_where_keys_come_from(run_cell, decloud_home):
    from decloud_magics.networks import NetworkConfig, save_network

    save_network(NetworkConfig(name="keyless", rpc_url="http://127.0.0.1:9", contract="0x" + "33" * 20,
                               ipfs_api="http://127.0.0.1:9"))  # fmt: skip
    result, _ = run_cell("%%decloud run --network keyless\nx = 1")
    assert "DECLOUD_PRIVATE_KEY" in str(result.error_in_exec)
