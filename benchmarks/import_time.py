"""What ``%load_ext decloud_magics`` and ``import decloud_magics`` add to a fresh interpreter.

    python benchmarks/import_time.py [--runs 20] [--top 15]

Each variant runs in a fresh subprocess, the variants taking turns round by
round; medians over ``--runs`` rounds (after one warm-up round that also
creates the temporary IPython profile):

* ``python -c pass`` - the bare interpreter start;
* IPython's own start: ``import IPython`` and ``InteractiveShell.instance()``;
* the same, then ``%load_ext decloud_magics``;
* ``python -c "import decloud_magics"``.

The target is ``%load_ext`` <= 1.5x (bare interpreter start plus IPython's
own), i.e. the third variant over the second, which already includes the
bare start. ``--top N`` also prints the N slowest imports ``%load_ext``
brings in (``python -X importtime``, cumulative, self-inclusive), to show
where the time goes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from _common import ROOT, in_turns, machine, median_ms, verdict

SHELL = "import IPython; shell = IPython.core.interactiveshell.InteractiveShell.instance()"
VARIANTS = {
    "python -c pass": "pass",
    "IPython InteractiveShell.instance()": SHELL,
    "  + %load_ext decloud_magics": SHELL + "; shell.run_line_magic('load_ext', 'decloud_magics')",
    "python -c 'import decloud_magics'": "import decloud_magics",
}
TARGET = 1.5


def slowest_imports(env: dict[str, str], top: int) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the slowest imports of ``%load_ext``, beyond IPython's own."""

    def cumulative(code: str) -> dict[str, int]:
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True,
                              text=True, check=True)  # fmt: skip
        found = {}
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "cumulative" in line:
                continue
            _self_us, cumulative_us, name = line[len("import time:") :].split("|", 2)
            found[name.strip()] = int(cumulative_us)
        return found

    base = cumulative(SHELL)
    ours = cumulative(VARIANTS["  + %load_ext decloud_magics"])
    extra = [(us, name) for name, us in ours.items() if name not in base]
    return sorted(extra, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--top", type=int, default=15, help="slowest imports of %%load_ext to list (0: none)")
    args = parser.parse_args()
    print(f"machine: {machine()}")

    scratch = tempfile.mkdtemp(prefix="decloud-bench-import-")
    env = dict(os.environ)
    env["IPYTHONDIR"] = os.path.join(scratch, "ipython")  # the user's profile and history stay untouched
    env["DECLOUD_HOME"] = os.path.join(scratch, "decloud")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)

    def runner(code: str):  # type: ignore[no-untyped-def]
        return lambda: subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)

    check = subprocess.run([sys.executable, "-c", "import decloud_magics; print(decloud_magics.__file__)"],
                           env=env, capture_output=True, text=True, check=True)  # fmt: skip
    print(f"decloud_magics from {os.path.dirname(check.stdout.strip())}")
    samples = in_turns({label: runner(code) for label, code in VARIANTS.items()}, args.runs, warmup=1)
    medians = {label: median_ms(s) for label, s in samples.items()}

    bare, shell, loaded, imported = medians.values()
    print(f"\nmedian of {args.runs} fresh processes each, variants taking turns")
    for label, ms in medians.items():
        print(f"  {label:<40}{ms:8.1f} ms")
    ratio = loaded / shell
    print(f"%load_ext adds {loaded - shell:.1f} ms to IPython's start: "
          f"ratio {ratio:.2f}x of (bare start + IPython's own, {shell:.1f} ms)")  # fmt: skip
    print(
        f"import decloud_magics adds {imported - bare:.1f} ms to the bare start: ratio {imported / bare:.2f}x"
    )
    print(
        f"target: %load_ext <= {TARGET:g}x (bare start + IPython's own) -> {ratio:.2f}x, {verdict(ratio <= TARGET)}"
    )
    if args.top:
        print("slowest imports %load_ext adds (cumulative ms, python -X importtime, one run):")
        for us, name in slowest_imports(env, args.top):
            print(f"  {us / 1000:8.1f}  {name}")


if __name__ == "__main__":
    main()
