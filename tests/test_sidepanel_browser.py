"""The side panel in a real JupyterLab, driven by headless Chromium.

Starts ``jupyter lab`` with its own DECLOUD_HOME holding a small ledger,
opens the decloud panel, and checks that runs written to the ledger while the
page is open show up without a reload, and that clicking a run shows its
events. Needs Chromium (apt ``chromium``), the ``playwright`` package and the
built labextension (``pip install -e .`` builds it); without them it skips
and says which is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from decloud_magics.ledger import Ledger, RunRecord
from decloud_magics.models import EventKind, RunEvent, Status, utcnow

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
LABEXTENSION = "decloud-magics"
#: Generous: a cold JupyterLab on two busy cores can take a while to draw.
WAIT_MS = 60_000
START_TIMEOUT_S = 90.0
WORKER = "0x" + "5e" * 20


@dataclass
class Lab:
    url: str
    ledger: Ledger
    log: Path


def _labextension_installed() -> bool:
    from jupyter_core.paths import jupyter_path

    return any((Path(d) / LABEXTENSION / "package.json").is_file() for d in jupyter_path("labextensions"))


@pytest.fixture(scope="module")
def sync_playwright() -> Any:
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f"BROWSER TEST NOT RUN: no Chromium at {CHROMIUM}; install it with "
            "`apt-get install -y chromium` (.ci/run does)."
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("BROWSER TEST NOT RUN: the playwright package is missing; `pip install -e '.[dev]'`.")
    if not _labextension_installed():
        pytest.skip(
            f"BROWSER TEST NOT RUN: the '{LABEXTENSION}' labextension is not installed; "
            "`pip install -e .` builds it (needs node and jlpm)."
        )
    return sync_playwright


def _record(ledger: Ledger, run_id: str, name: str, *kinds: EventKind) -> None:
    """A run and its events, written the way the client writes them."""
    start = utcnow() - timedelta(minutes=2)
    ledger.record_run(
        RunRecord(
            run_id,
            name=name,
            network="local",
            submitted_at=start,
            price_wei=10**15,
            gas_used=0,
            gas_cost_wei=0,
        )
    )
    status_after = {
        EventKind.CREATED: Status.OPEN,
        EventKind.ORDER_PLACED: Status.CLAIMED,
        EventKind.RUNNING: Status.RUNNING,
        EventKind.COMPLETED: Status.COMPLETED,
        EventKind.FAILED: Status.FAILED,
    }
    for step, kind in enumerate(kinds, start=1):
        at = start + timedelta(seconds=step)
        fields: dict[str, Any] = {
            "status": status_after[kind],
            "gas_used": 50_000 * step,
            "gas_cost_wei": 50_000 * step * 10**9,
        }
        if kind == EventKind.CREATED:
            fields["task_id"] = int(run_id, 16) % 1000
        if kind == EventKind.ORDER_PLACED:
            fields.update(worker=WORKER, started_at=at)
        if kind.is_final:
            fields["completed_at"] = at
        ledger.add_event(
            RunEvent(
                kind,
                run_id,
                at=at,
                gas_used=50_000 * step,
                message=f"{name}: {kind.value}",
                worker=WORKER if kind == EventKind.ORDER_PLACED else None,
                block=step,
            ),
            **fields,
        )


def _wait_for_server(runtime: Path, process: subprocess.Popen[bytes], log: Path) -> str:
    """The URL the server wrote to its runtime file, once it answers."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        for info_file in runtime.glob("jpserver-*.json"):
            try:
                url = json.loads(info_file.read_text())["url"]
                with urllib.request.urlopen(f"{url}api/status", timeout=5) as response:
                    if response.status == 200:
                        return str(url)
            except (OSError, ValueError, KeyError):
                pass  # not written completely, or not listening yet
        time.sleep(0.2)
    raise RuntimeError(
        f"jupyter lab did not answer within {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def lab(sync_playwright: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A real ``jupyter lab`` on a port the OS picks, reading a ledger with two runs."""
    base = tmp_path_factory.mktemp("lab")
    home, runtime, root = base / "decloud-home", base / "runtime", base / "notebooks"
    for folder in (home, runtime, root):
        folder.mkdir()
    ledger = Ledger(home / "ledger.sqlite")
    _record(
        ledger,
        "aaa111",
        "train-model",
        EventKind.CREATED,
        EventKind.ORDER_PLACED,
        EventKind.RUNNING,
        EventKind.COMPLETED,
    )
    _record(ledger, "bbb222", "bad-input", EventKind.CREATED, EventKind.FAILED)

    env = dict(os.environ)
    env.update(
        DECLOUD_HOME=str(home),
        JUPYTER_RUNTIME_DIR=str(runtime),
        JUPYTER_CONFIG_DIR=str(base / "config"),
        JUPYTERLAB_SETTINGS_DIR=str(base / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
    )
    log = base / "jupyter-lab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--allow-root",
                "--IdentityProvider.token=",
                "--ip",
                "127.0.0.1",
                "--port",
                "0",
                "--ServerApp.port_retries=0",
                f"--ServerApp.root_dir={root}",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        url = _wait_for_server(runtime, process, log)
        yield Lab(url=url, ledger=ledger, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        ledger.close()


@pytest.fixture(scope="module")
def page(sync_playwright: Any, lab: Lab) -> Iterator[Any]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{lab.url}lab")
            _dismiss_news_prompt(page)
            yield page
        finally:
            browser.close()


def _dismiss_news_prompt(page: Any) -> None:
    """Answer "No" to JupyterLab's first-start "Jupyter news?" question, which covers part of the page."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect

    prompt = page.get_by_role("alert").filter(has_text="Jupyter news")
    try:
        prompt.get_by_role("button", name="No", exact=True).click(timeout=WAIT_MS)
    except PlaywrightTimeoutError:
        return  # a JupyterLab that does not ask: nothing to dismiss
    expect(prompt).to_have_count(0, timeout=WAIT_MS)


def test_panel_lists_runs_live_and_shows_events(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    tab = page.locator('.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="decloud-runs"]')
    tab.click()
    panel = page.locator("#decloud-runs")
    expect(panel).to_be_visible(timeout=WAIT_MS)
    expect(panel.locator(".decloud-RunsPanel-title")).to_have_text("decloud runs")

    train = panel.locator('.decloud-RunItem[data-run-id="aaa111"]')
    bad = panel.locator('.decloud-RunItem[data-run-id="bbb222"]')
    expect(train.locator(".decloud-RunItem-name")).to_have_text("train-model", timeout=WAIT_MS)
    expect(train.locator(".decloud-StatusBadge")).to_have_text("completed")
    expect(train.locator(".decloud-RunItem-worker")).to_have_text("0x5e5e…5e5e")
    expect(train.locator(".decloud-RunItem-cost")).to_have_text("0.0012 ETH")  # 0.001 price + 0.0002 gas
    expect(bad.locator(".decloud-RunItem-name")).to_have_text("bad-input")
    expect(bad.locator(".decloud-StatusBadge")).to_have_text("failed")
    expect(panel.locator(".decloud-RunItem")).to_have_count(2)

    # Live: a run written to the ledger while the page is open appears without a reload.
    page.evaluate("window.__decloudSamePage = true")
    _record(lab.ledger, "ccc333", "late-arrival", EventKind.CREATED)
    late = panel.locator('.decloud-RunItem[data-run-id="ccc333"]')
    expect(late.locator(".decloud-RunItem-name")).to_have_text("late-arrival", timeout=WAIT_MS)
    expect(late.locator(".decloud-StatusBadge")).to_have_text("open")
    expect(panel.locator(".decloud-RunItem").first).to_have_attribute("data-run-id", "ccc333")  # newest first
    assert page.evaluate("window.__decloudSamePage === true"), "the page reloaded"

    # Clicking a run shows its events, in order.
    train.click()
    detail = panel.locator(".decloud-RunDetail")
    expect(detail.locator(".decloud-RunDetail-title")).to_have_text("train-model", timeout=WAIT_MS)
    kinds = detail.locator(".decloud-EventItem-kind")
    expect(kinds).to_have_text(["created", "order placed", "running", "completed"])
    expect(detail.locator(".decloud-EventItem").last).to_contain_text("train-model: completed")

    # The open run's events follow the ledger too.
    late.click()
    expect(detail.locator(".decloud-RunDetail-title")).to_have_text("late-arrival", timeout=WAIT_MS)
    lab.ledger.add_event(
        RunEvent(EventKind.ORDER_PLACED, "ccc333", message="late-arrival: claimed", worker=WORKER),
        status=Status.CLAIMED,
        worker=WORKER,
    )
    expect(kinds).to_have_text(["created", "order placed"], timeout=WAIT_MS)
    expect(late.locator(".decloud-StatusBadge")).to_have_text("claimed")
    assert page.evaluate("window.__decloudSamePage === true"), "the page reloaded"
