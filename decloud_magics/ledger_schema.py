"""The ledger's tables, and the migrations that build them.

A ledger file keeps its version in SQLite's ``user_version``; the
:class:`~decloud_magics.ledger.Ledger` that opens an older file runs the
missing migrations in one transaction.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

#: Bumped whenever the tables change; ``MIGRATIONS`` carries an old file forward.
SCHEMA_VERSION = 1

# MIGRATIONS[n] holds the statements that take a file from version n to n + 1.
# Plain statements rather than executescript(), which would commit the
# migration's transaction half-way.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            name TEXT,
            network TEXT,
            task_id INTEGER,
            contract TEXT,
            requester TEXT,
            status TEXT NOT NULL,
            submitted_at REAL NOT NULL,
            started_at REAL,
            completed_at REAL,
            price_wei TEXT NOT NULL DEFAULT '0',
            gas_used INTEGER,
            gas_cost_wei TEXT,
            worker TEXT,
            input_cid TEXT,
            result_cid TEXT,
            result_digest TEXT,
            error TEXT,
            cell_hash TEXT,
            code TEXT,
            outputs TEXT NOT NULL DEFAULT '[]',
            options TEXT NOT NULL DEFAULT '{}',
            refunded_wei TEXT,
            validators INTEGER,
            deadline REAL
        )
        """,
        "CREATE INDEX runs_submitted_at ON runs (submitted_at)",
        "CREATE INDEX runs_status ON runs (status)",
        "CREATE INDEX runs_network ON runs (network)",
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            at REAL NOT NULL,
            block INTEGER,
            tx_hash TEXT,
            gas_used INTEGER,
            price_wei TEXT,
            worker TEXT,
            message TEXT,
            data TEXT
        )
        """,
        "CREATE INDEX events_run_id ON events (run_id)",
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION
