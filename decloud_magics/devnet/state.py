"""What ``Devnet.up`` started, as it is written to ``decloud_home()/devnet/state.json`` so the next
``decloud`` command finds it, and what ``up`` tells its caller about it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..processes import pid_alive, proc_stat
from .process_tree import start_ticks


@dataclass
class ProcessInfo:
    """A process we started, with its start time so a recycled pid is never taken for it."""

    pid: int
    start: int | None = None

    @classmethod
    def of(cls, pid: int) -> ProcessInfo:
        return cls(pid, start_ticks(pid))

    def alive(self) -> bool:
        stat = proc_stat(self.pid)
        return pid_alive(self.pid, stat) and start_ticks(self.pid, stat) in (None, self.start)


@dataclass
class WorkerState:
    index: int
    address: str
    key_file: str
    log: str
    process: ProcessInfo | None = None


@dataclass
class DevnetState:
    """What ``up`` started, as JSON in ``state.json``. Holds no keys, only the paths of key files."""

    rpc_url: str
    chain: ProcessInfo
    ipfs_api: str
    ipfs_external: bool
    ipfs_ports: tuple[int, int] = (0, 0)
    ipfs: ProcessInfo | None = None
    chain_id: int = 0
    contract: str = ""
    requester: str = ""
    requester_key_file: str = ""
    workers: list[WorkerState] = field(default_factory=list)
    tools_dir: str = ""
    started_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DevnetState:
        raw = json.loads(text)
        raw["chain"] = ProcessInfo(**raw["chain"])
        raw["ipfs"] = ProcessInfo(**raw["ipfs"]) if raw.get("ipfs") else None
        raw["ipfs_ports"] = tuple(raw.get("ipfs_ports") or (0, 0))
        for w in raw.get("workers", []):
            w["process"] = ProcessInfo(**w["process"]) if w.get("process") else None
        raw["workers"] = [WorkerState(**w) for w in raw.get("workers", [])]
        return cls(**raw)


@dataclass
class UpResult:
    state: DevnetState
    fresh: bool  # a new chain was started; False when a running devnet was reused or repaired
    changes: list[str] = field(default_factory=list)  # e.g. "restarted ipfs", "started worker-3"
    user_key: str | None = None  # where the user's own (now funded) key was found, if anywhere
