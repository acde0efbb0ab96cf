"""Where the user's private key comes from, and how it stays out of sight.

Order: ``DECLOUD_PRIVATE_KEY`` in the environment, then a ``.env`` file in the
working directory (or ``DECLOUD_ENV_FILE``), then an encrypted keystore named by
``DECLOUD_KEYSTORE`` with its password in ``DECLOUD_KEYSTORE_PASSWORD``.
The key is held in a ``PrivateKey`` whose repr and str never show it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import ConfigError


class PrivateKey:
    """A key that refuses to be printed; ``.reveal()`` is the one way to the bytes."""

    __slots__ = ("_hex", "source")

    def __init__(self, hex_key: str, source: str) -> None:
        key = hex_key.strip()
        key = key.removeprefix("0x")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", key):
            raise ConfigError(f"The private key from {source} is not 32 bytes of hex; check it (it is not shown).")
        self._hex = key.lower()
        self.source = source

    def reveal(self) -> str:
        """The 0x-prefixed hex, for signing only. Never log or display it."""
        return "0x" + self._hex

    def __repr__(self) -> str:
        return f"PrivateKey(<hidden>, source={self.source!r})"

    __str__ = __repr__

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("A private key cannot be pickled.")


def _from_env_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        line = line.strip()
        line = line.removeprefix("export ")
        if line.startswith("DECLOUD_PRIVATE_KEY="):
            return line.split("=", 1)[1].strip().strip("'\"")
    return None


def load_private_key(env: dict[str, str] | None = None, cwd: Path | None = None) -> PrivateKey | None:
    """The user's key from the first source that has one; None when there is none."""
    env = dict(os.environ) if env is None else env
    if env.get("DECLOUD_PRIVATE_KEY"):
        return PrivateKey(env["DECLOUD_PRIVATE_KEY"], "the DECLOUD_PRIVATE_KEY variable")
    env_file = Path(env.get("DECLOUD_ENV_FILE") or (cwd or Path.cwd()) / ".env")
    found = _from_env_file(env_file)
    if found:
        return PrivateKey(found, str(env_file))
    keystore = env.get("DECLOUD_KEYSTORE")
    if keystore:
        return _from_keystore(Path(keystore), env.get("DECLOUD_KEYSTORE_PASSWORD"))
    return None


def load_key_file(path: Path) -> PrivateKey:
    """A worker's key: a file holding the hex key, or an encrypted keystore JSON."""
    if not path.is_file():
        raise ConfigError(f"The key file {path} does not exist.")
    text = path.read_text().strip()
    if text.startswith("{"):
        return _from_keystore(path, os.environ.get("DECLOUD_KEYSTORE_PASSWORD"))
    return PrivateKey(text, str(path))


def _from_keystore(path: Path, password: str | None) -> PrivateKey:
    if password is None:
        raise ConfigError(f"The keystore {path} needs its password in DECLOUD_KEYSTORE_PASSWORD.")
    try:
        from eth_account import Account

        raw = Account.decrypt(json.loads(path.read_text()), password)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"The keystore {path} could not be opened ({type(exc).__name__}): check the file and the password."
        ) from None
    return PrivateKey(bytes(raw).hex(), str(path))


def redact(text: str, key: PrivateKey | None) -> str:
    """Hide the key (with or without 0x, any case) in text bound for a log or a message.

    Only the actual key is hidden: transaction hashes have the same shape and
    must stay readable.
    """
    if key is None:
        return text
    return re.sub(key._hex, "<redacted>", text, flags=re.IGNORECASE)
