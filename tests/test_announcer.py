"""A worker announces a task on a costly live channel only once it has run a while, lines in order."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from decloud_magics.chain.market import wait_until
from decloud_magics.channel import LocalChannel
from decloud_magics.worker.announcer import Announcer

WORKER = "0x00000000000000000000000000000000000000aa"


class Heard:
    """A channel that records what is published on it, with the grace of a real transport."""

    def __init__(self, announce_after: float) -> None:
        self.announce_after = announce_after
        self.said: list[tuple[str, str]] = []
        self.changed = threading.Event()

    def publish(self, task_id: int, kind: str, data: dict[str, Any]) -> None:
        assert task_id == 7 and data["worker"] == WORKER
        self.said.append((kind, str(data.get("line", ""))))
        self.changed.set()

    def subscribe(self, listener: Callable[[int, str, dict[str, Any]], None]) -> Callable[[], None]:
        return lambda: None


def test_a_task_that_ends_within_the_grace_says_nothing() -> None:
    channel = Heard(announce_after=0.2)
    say = Announcer(channel, 7, WORKER)
    say.open()
    say.line("quick")
    say.close()
    assert not channel.changed.wait(0.4)  # its result carries the line; the settlement says it ran
    assert channel.said == []


def test_a_longer_task_is_announced_after_the_grace_with_its_early_lines_in_order() -> None:
    channel = Heard(announce_after=0.1)
    say = Announcer(channel, 7, WORKER)
    say.open()
    say.line("one")
    say.line("two")
    assert channel.said == []
    assert wait_until(lambda: len(channel.said) == 3, timeout=5)
    say.line("three")  # once announced, a line goes out as it is printed
    say.close()
    say.line("after the end")
    assert channel.said == [("running", ""), ("stdout", "one"), ("stdout", "two"), ("stdout", "three")]


def test_in_process_a_task_is_announced_at_once() -> None:
    channel = Heard(announce_after=LocalChannel.announce_after)
    say = Announcer(channel, 7, WORKER)
    say.open()
    assert channel.said == [("running", "")]

