"""``decloud worker``: serve a network from a shell, until SIGTERM or Ctrl-C.

The key comes from ``--key-file`` or ``DECLOUD_WORKER_KEY``, never from an
argument: arguments are visible to every user of the machine in ``ps``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def add_worker_parser(sub: Any) -> None:
    worker = sub.add_parser("worker", help="serve tasks of a network as a worker")
    worker.add_argument("--network", "-n", default="devnet", help="a saved network (see `%%decloud network`)")
    worker.add_argument(
        "--key-file", type=Path, default=None, help="file with the worker's key (hex or keystore)"
    )
    worker.add_argument("--slots", type=int, default=1, help="tasks run at once")
    worker.add_argument("--min-price", default="0", help="skip tasks paying less than this per worker")
    worker.add_argument(
        "--max-timeout", type=int, default=3600, help="skip tasks with a longer timeout, seconds"
    )
    worker.add_argument("--max-memory", type=float, default=4.0, help="skip tasks asking more memory, GB")
    worker.add_argument(
        "--share",
        default=None,
        metavar="INDEX/COUNT",
        help="one of COUNT workers of one operator: serve task ids with id %% COUNT == INDEX-1 without claims "
        "first, and take the others' only when nobody claimed them (decloud devnet up sets it)",
    )
    worker.add_argument("--log-level", default="INFO")
    worker.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from ..connection import connect_rpc
    from ..keys import PrivateKey, load_key_file
    from ..networks import get_network
    from ..units import parse_amount
    from .service import Worker, WorkerPolicy
    from .sharing import Share

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if args.key_file is not None:
        key = load_key_file(args.key_file)
        from .landlock import hide_from_tasks

        hide_from_tasks(str(args.key_file))  # wherever it is, no task may read it
    elif os.environ.get("DECLOUD_WORKER_KEY"):
        key = PrivateKey(os.environ["DECLOUD_WORKER_KEY"], "the DECLOUD_WORKER_KEY variable")
    else:
        raise ConfigError("A worker needs its key: pass --key-file FILE or set DECLOUD_WORKER_KEY.")
    try:
        share = Share.parse(args.share) if args.share else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    config = get_network(args.network)
    if config.is_embedded:
        raise ConfigError(
            "The 'local' network lives inside one process: serve 'devnet' or a network you added."
        )
    conn = connect_rpc(config, key)
    policy = WorkerPolicy(
        min_price_wei=parse_amount(args.min_price),
        max_timeout=args.max_timeout,
        max_memory_mb=int(args.max_memory * 1024),
        slots=args.slots,
    )
    worker = Worker(conn.market, conn.store, channel=conn.channel, policy=policy, name=f"pid{os.getpid()}",
                    share=share, wake=conn.wake, blocks_pushed=conn.blocks_pushed)  # fmt: skip
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            logging.getLogger("decloud.worker").info("signal %d: finishing held tasks, then stopping", signum)
            threading.Thread(target=worker.stop, kwargs={"timeout": 60}, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.serve()
    conn.close()
    return 0
