"""A task's file access: the system read-only, the worker's own files out of reach (Landlock)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from decloud_magics.package import build_task_package, decode_result, decode_values
from decloud_magics.paths import decloud_home
from decloud_magics.worker import landlock
from decloud_magics.worker.sandbox import _PACKAGE_DIR, run_in_sandbox

PROBE = """
import os
def attempt(action):
    try:
        return "ok " + repr(action())[:60]
    except OSError as exc:
        return "refused " + type(exc).__name__
def write(path):
    with open(path, "w") as fh:
        return fh.write("x")
seen = {
    "read key": attempt(lambda: open(key_path).read()),
    "list home": attempt(lambda: os.listdir(home)),
    "read decloud home": attempt(lambda: os.listdir(decloud_home)),
    "write package": attempt(lambda: write(os.path.join(package_dir, "planted.py"))),
    "write next to the key": attempt(lambda: write(key_path + ".planted")),
    "other scratch dirs": attempt(lambda: os.listdir(os.path.dirname(os.getcwd()))),
    "raw disk": attempt(lambda: open(disk, "rb").read(16)),
    "scratch": attempt(lambda: write("mine.txt")),
    "system": attempt(lambda: len(os.listdir("/usr/lib")) > 0),
    "devnull": attempt(lambda: write("/dev/null")),
    "shm": attempt(lambda: write("/dev/shm/" + os.urandom(4).hex())),
    "shadow": attempt(lambda: open("/etc/shadow").read(1)),
    "passwd": attempt(lambda: open("/etc/passwd").read(1)),
}
import numpy
seen["numpy"] = int(numpy.arange(4).sum())
"""


def test_a_task_cannot_reach_the_workers_files(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "worker.key"
    key.parent.mkdir()
    key.write_text("deadbeef")
    key.chmod(0o600)
    landlock.hide_from_tasks(str(key))
    disk = next(
        (f"/dev/{d}" for d in ("vda", "sda", "nvme0n1", "xvda") if os.path.exists(f"/dev/{d}")), "/dev/mem"
    )
    namespace = {"key_path": str(key), "home": os.path.expanduser("~"), "decloud_home": str(decloud_home()),
                 "package_dir": _PACKAGE_DIR, "disk": disk}  # fmt: skip
    _, task = build_task_package(PROBE, namespace, outputs=["seen"])
    res = decode_result(run_in_sandbox(task, timeout=120))
    assert res.error is None and res.failure is None, (res.error, res.failure, res.stderr)
    seen = decode_values(res, trust_pickle=False)["seen"]
    if landlock.abi_version() < 1:
        assert res.sandbox["files_confined"] is False  # and the worker's log said so
        pytest.skip("THIS KERNEL HAS NO LANDLOCK (Linux 5.13+): tasks can reach the worker's files here")
    assert res.sandbox["files_confined"] is True
    refused = [k for k in ("read key", "list home", "read decloud home", "write package", "write next to the key",
                           "other scratch dirs", "raw disk")]  # fmt: skip
    assert {k: seen[k] for k in refused} == {k: "refused PermissionError" for k in refused}
    assert all(seen[k].startswith("ok") for k in ("scratch", "system", "devnull", "shm", "passwd")), seen
    if os.geteuid() == 0 and os.path.exists("/etc/shadow"):  # a root worker's tasks are root in their namespace
        assert seen["shadow"] == "refused PermissionError"
    assert seen["numpy"] == 6
    assert not Path(_PACKAGE_DIR, "planted.py").exists() and not Path(str(key) + ".planted").exists()


def test_hidden_paths_are_carved_out_of_the_readable_tree(tmp_path: Path) -> None:
    for folder in ("a/b/secret", "a/b/open", "a/c", "d"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "a" / "file").write_text("")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "b" / "secret")
    hidden = {str(tmp_path / "a" / "b" / "secret")}
    visible = landlock.visible_around(hidden, str(tmp_path))
    assert visible == [str(tmp_path / p) for p in ("a/b/open", "a/c", "a/file", "d")]  # no link, no secret
    assert landlock.visible_around({str(tmp_path)}, str(tmp_path)) == []
    assert landlock.visible_around({"/elsewhere"}, str(tmp_path)) == [str(tmp_path)]


def test_pierced_paths_reopen_only_what_they_hold(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for folder in ("python/lib", "python/keys", "docs"):
        (home / folder).mkdir(parents=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    got = landlock.rules(str(scratch), hidden=[str(home), str(home / "python" / "keys")],
                         pierced=[str(home / "python"), str(home), "/nonexistent"])  # fmt: skip
    reads = {path for path, kind in got if kind == landlock.READ}
    assert str(home / "python" / "lib") in reads  # pierced, with the hidden keys carved out again
    assert not {str(home), str(home / "python"), str(home / "python" / "keys"), str(home / "docs")} & reads
    assert (str(scratch), landlock.WRITE) in got and ("/dev/null", landlock.DEVICE) in got
    assert not any(path == "/dev" or path.startswith("/dev/") and kind == landlock.READ for path, kind in got)


def test_a_refused_file_access_says_why_in_the_traceback() -> None:
    if landlock.abi_version() < 1:
        pytest.skip("THIS KERNEL HAS NO LANDLOCK (Linux 5.13+): tasks can reach the worker's files here")
    _, task = build_task_package("data = open(path).read()", {"path": os.path.expanduser("~/.bashrc")})
    res = decode_result(run_in_sandbox(task, timeout=60))
    assert res.error is not None and res.error.ename == "PermissionError"
    assert res.error.traceback[-1].startswith("Note: the cell runs confined on the worker")
    _, task = build_task_package("data = open('/no/such/file').read()", {})
    res = decode_result(run_in_sandbox(task, timeout=60))
    assert res.error is not None and res.error.ename == "FileNotFoundError"
    assert not any("confined" in line for line in res.error.traceback)  # only where confinement refused


def test_a_home_or_cwd_that_holds_the_system_is_not_hidden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", "/")  # a service account's home
    monkeypatch.chdir("/")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    reads = {path for path, kind in landlock.task_rules(str(scratch), _PACKAGE_DIR) if kind == landlock.READ}
    # the system stays readable (/etc but for what only root reads, when the worker is root)
    assert "/usr" in reads and ("/etc" in reads or "/etc/passwd" in reads)
    assert str(decloud_home()) not in reads
