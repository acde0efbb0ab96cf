"""Write the demo notebooks from their cell sources, then execute them to store outputs.

    python scripts/make_notebooks.py

nbval checks the stored outputs against a fresh run; cells whose output
changes from run to run (timings, addresses) say so with NBVAL_IGNORE_OUTPUT.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent.parent / "notebooks"

NOTEBOOKS = {
    "01-run-a-cell.ipynb": [
        ("markdown", "# Run a cell on a decentralized compute market\n\n"
                     "`%%decloud run` packages the cell and the variables it reads, stores them by content "
                     "address, opens a paid task on the TaskMarket contract, and a worker runs it in a sandbox. "
                     "The embedded `local` network starts on first use: nothing to set up."),
        ("code", "%load_ext decloud_magics"),
        ("code", "import pandas as pd\ndf = pd.DataFrame({\"x\": range(10)})"),
        ("code", "%%decloud run --name sum\ntotal = int(df[\"x\"].sum())\nprint(\"sum is\", total)"),
        ("markdown", "`total` came back into this kernel:"),
        ("code", "total"),
        ("markdown", "A DataFrame comes back as Parquet, never as a pickle; its HTML is shown like a local one."),
        ("code", "%%decloud run --name squares\nsquares = df.assign(y=df[\"x\"] ** 2)\nsquares.tail(3)"),
        ("code", "squares[\"y\"].sum()"),
        ("markdown", "An exception on the worker is shown like a local one, with the cell's own line."),
        ("code:raises-exception", "%%decloud run --name oops\nratio = total / 0"),
    ],
    "02-history-and-costs.ipynb": [
        ("markdown", "# What did I run, what did it cost, what came back\n\n"
                     "Every run lands in a local SQLite ledger; these views read it as DataFrames."),
        ("code", "%load_ext decloud_magics"),
        ("code", "%%decloud run --name numbers --price 0.0002\nnumbers = [n * n for n in range(5)]"),
        ("code", "numbers"),
        ("code:nbval-ignore-output", "%decloud history --limit 5"),
        ("code:nbval-ignore-output", "%decloud summary"),
        ("code", "%decloud budget 1.0"),
        ("code:nbval-ignore-output", "%decloud wallet"),
        ("code", "%decloud budget off"),
    ],
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, source in cells:
        kind, _, tag = kind.partition(":")
        cell = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
        if tag:  # nbval reads its markers from tags: a comment would break a %%cell magic
            cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    return nb


def main() -> None:
    os.environ.setdefault("DECLOUD_HOME", tempfile.mkdtemp(prefix="decloud-notebooks-"))
    for name, cells in NOTEBOOKS.items():
        nb = build(name, cells)
        NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(HERE)}}).execute()  # fmt: skip
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
