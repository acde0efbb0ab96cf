"""File access of a task, confined with Linux Landlock: the system read-only, the worker's own files unseen.

A task runs as the worker's user (inside a user namespace that maps it to
itself), so the file permissions that keep other users out do not keep the
task out of the worker's files: without more, a cell could read the worker's
key or overwrite decloud's own modules, to run as the worker at its next
start. Landlock (Linux 5.13+, no privileges needed, irreversible) lets the
sandbox drop that access before it reads a task byte:

* everything is readable and executable, except the *hidden* paths (the
  worker's home, ``DECLOUD_HOME``, the key file, the folder that holds every
  task's scratch dir, ``/dev``, and for a worker running as root what only
  root reads: ``/etc/shadow``, sudoers, SSH host keys...), which are pierced
  again only where Python needs them (its installation, decloud's package,
  ``sys.path``);
* writes go only to the task's own scratch dir and ``/dev/shm``;
* a few devices (``/dev/null``, ``/dev/urandom``...) can be read and written.

Landlock grants by rules and cannot carve a hidden folder out of a readable
one, so "all but the hidden paths" is spelled out as every sibling of each
hidden path's ancestors; a symlink gets no rule of its own (its target's
decides). Rules are computed by the worker (``rules``) and applied by the
sandbox's runtime (``confine``), which needs only ``os`` and ``ctypes``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from collections.abc import Iterable, Sequence

log = logging.getLogger(__name__)

#: What a rule grants: list and read (``READ``), everything beneath (``WRITE``),
#: or read, write and ioctl of one device file (``DEVICE``).
READ, WRITE, DEVICE = "read", "write", "device"

_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_TRUNCATE, _IOCTL_DEV = 1 << 14, 1 << 15
#: Every filesystem right of each Landlock ABI version (v2 adds REFER, v3 TRUNCATE, v5 IOCTL_DEV).
_ALL_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_ALL_LATEST = (1 << 16) - 1
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}  # create_ruleset, add_rule, restrict_self
_PR_SET_NO_NEW_PRIVS = 38
_RULE_PATH_BENEATH = 1
_CREATE_RULESET_VERSION = 1
_SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc")
#: What only root may read on a usual system: hidden from the tasks of a worker that runs as root,
#: which the user namespace maps to root (an unprivileged worker's tasks cannot read them anyway).
_ROOT_SECRETS = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers", "/etc/sudoers.d",
                 "/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_ecdsa_key", "/etc/ssh/ssh_host_ed25519_key",
                 "/etc/ssl/private", "/root", "/var/lib/sudo")  # fmt: skip
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@functools.cache
def abi_version() -> int:
    """The Landlock ABI this kernel offers; 0 where there is none (old kernel, not Linux)."""
    numbers = _syscall_numbers()
    if numbers is None:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(numbers[0], None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, int(version))


def rules(scratch: str, hidden: Iterable[str], pierced: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``(path, READ | WRITE | DEVICE)`` rules for a task whose scratch dir is ``scratch``.

    ``hidden`` paths are not readable unless a ``pierced`` path lies within
    them; ``/dev`` is always hidden but for ``/dev/shm`` and a few devices.
    """
    out = list(_shared_rules(frozenset(os.path.realpath(p) for p in hidden), tuple(pierced)))
    out += [(path, WRITE) for path in (os.path.realpath(scratch), "/dev/shm") if os.path.isdir(path)]
    return list(dict.fromkeys(out))


@functools.lru_cache(maxsize=8)
def _shared_rules(hidden: frozenset[str], pierced: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The rules every task of this worker shares: worked out once, not for each task.

    The folders listed on the way (the siblings of each hidden path's
    ancestors) are read then: one created later stays out of tasks' sight
    until the worker restarts.
    """
    secret = {*hidden, "/dev"}
    out = [(path, READ) for path in visible_around(secret)]
    for path in pierced:
        real = os.path.realpath(path)
        if not os.path.exists(real) or not any(_within(s, real) and s != real for s in secret):
            continue  # visible already, named hidden itself, or gone
        inside = {s for s in secret if _within(real, s) and s != real}  # hidden paths within it stay hidden
        out += [(p, READ) for p in visible_around(inside, real)]
    out += [(device, DEVICE) for device in _DEVICES if os.path.exists(device)]
    return tuple(out)


_hidden_extra: set[str] = set()
_warned: list[bool] = []
_generation = [0]  # counts the changes to what is hidden


def hide_from_tasks(path: str) -> None:
    """Keep ``path`` out of every task's reach from now on (the worker's key file, say)."""
    _hidden_extra.add(os.path.realpath(path))
    _generation[0] += 1


def generation() -> int:
    """Changes whenever ``hide_from_tasks`` does: a process confined before is confined too little."""
    return _generation[0]


def task_rules(scratch: str, package_dir: str) -> list[tuple[str, str]]:
    """The rules of a task run by this worker: see the module's docstring for what they hide."""
    import tempfile

    from ..paths import decloud_home

    # where the worker was started too: a .env with a key may sit there
    wanted = {
        os.path.expanduser("~"),
        str(decloud_home()),
        tempfile.gettempdir(),
        os.getcwd(),
        *_hidden_extra,
    }
    # ...but never a folder that holds the system (a service whose home or cwd is "/")
    real = {os.path.realpath(h) for h in wanted}
    hidden = {h for h in real if not any(_within(h, system) for system in _SYSTEM)}
    if os.geteuid() == 0:
        hidden |= {path for path in _ROOT_SECRETS if os.path.lexists(path)}
    # What the sandbox's Python reads: its installation, its sys.path (not the worker's
    # script folder or cwd, which a sandbox never puts on sys.path), and decloud itself.
    pierced = [sys.prefix, sys.base_prefix, sys.exec_prefix, package_dir, *(p for p in sys.path[1:] if p)]
    if abi_version() < 1 and not _warned:
        _warned.append(True)
        log.warning("file confinement unavailable: this kernel has no Landlock (Linux 5.13+), "
                    "so a task can read and write what the worker's user can")  # fmt: skip
    return rules(scratch, hidden, pierced)


def visible_around(hidden: set[str], root: str = "/") -> list[str]:
    """The largest paths under ``root`` that neither are nor contain a ``hidden`` path.

    Siblings along the way down to each hidden path; symlinks are left out.
    """
    if root in hidden:
        return []
    if not any(_within(root, h) for h in hidden):
        return [root]
    found: list[str] = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return found  # unreadable: nothing of it is granted
    for name in names:
        path = os.path.join(root, name)
        if os.path.islink(path):
            continue
        found += visible_around(hidden, path)
    return found


def confine(rules: Sequence[tuple[str, str]]) -> str | None:
    """Restrict this process (and what it starts) to ``rules``, for good; None, or why it could not.

    A rule whose path is gone is skipped. Called by the sandbox's runtime
    before it reads the task.
    """
    numbers = _syscall_numbers()
    version = abi_version()
    if numbers is None or version < 1:
        return "this kernel has no Landlock (Linux 5.13 or newer), so the task can reach the worker's files"
    create, add_rule, restrict_self = numbers
    handled = _ALL_BY_ABI.get(version, _ALL_LATEST)
    rights = {
        READ: (_EXECUTE | _READ_FILE | _READ_DIR) & handled,
        WRITE: handled,
        DEVICE: (_READ_FILE | _WRITE_FILE | _TRUNCATE | _IOCTL_DEV) & handled,
    }
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _RulesetAttr(handled)
    ruleset = libc.syscall(
        create, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0)
    )
    if ruleset < 0:
        return f"Landlock refused a ruleset ({os.strerror(ctypes.get_errno())})"
    try:
        for path, kind in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                allowed = rights[kind] if os.path.isdir(path) else rights[kind] & _FILE_RIGHTS
                beneath = _PathBeneathAttr(allowed, fd)
                if libc.syscall(
                    add_rule, ruleset, _RULE_PATH_BENEATH, ctypes.byref(beneath), ctypes.c_uint32(0)
                ):
                    return f"Landlock refused a rule for {path} ({os.strerror(ctypes.get_errno())})"
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            return f"no_new_privs could not be set ({os.strerror(ctypes.get_errno())})"
        if libc.syscall(restrict_self, ruleset, ctypes.c_uint32(0)):
            return f"Landlock could not restrict the task ({os.strerror(ctypes.get_errno())})"
    finally:
        os.close(ruleset)
    return None


def _within(parent: str, path: str) -> bool:
    """Whether ``path`` is ``parent`` or lies beneath it (both real, absolute paths)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _syscall_numbers() -> tuple[int, int, int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return _SYSCALLS.get(os.uname().machine)
