"""The compiled TaskMarket contract, as committed next to its source."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

CONTRACTS_DIR = Path(__file__).parent / "contracts"
SOURCE = CONTRACTS_DIR / "TaskMarket.sol"
ARTIFACT = CONTRACTS_DIR / "TaskMarket.json"


@functools.cache
def load_artifact() -> dict[str, Any]:
    """ABI and bytecode; cached because every market and worker needs them."""
    return json.loads(ARTIFACT.read_text())


def source_sha256() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()
