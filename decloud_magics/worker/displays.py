"""A cell's rich outputs as the MIME bundles a kernel would send to the notebook.

IPython's formatter and matplotlib are used only when the cell shows
something that needs them: neither is imported here.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

from .tracebacks import ADDRESS


class Displays:
    """Collects MIME bundles the way a kernel would send them to the notebook."""

    def __init__(self) -> None:
        self.bundles: list[dict[str, Any]] = []
        self._formatter: Any = None

    def display(self, *objs: Any, **_ignored: Any) -> None:
        """``display(obj, ...)`` inside the cell: each object becomes one output."""
        for obj in objs:
            self.bundles.append(self.bundle(obj))

    def route_ipython_display(self) -> None:
        """Make ``from IPython.display import display`` record here, not print."""
        try:
            import IPython.core.display_functions as functions
            import IPython.display as public
        except Exception:  # noqa: BLE001 (best effort: IPython's display then stays as it is)
            return
        functions.display = public.display = self.display

    def bundle(self, obj: Any) -> dict[str, Any]:
        figure = sys.modules.get("matplotlib.figure")
        if figure is not None and isinstance(obj, figure.Figure):
            return _figure_bundle(obj)
        data: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        try:
            if self._formatter is None:
                from IPython.core.formatters import DisplayFormatter

                self._formatter = DisplayFormatter()
            data, metadata = self._formatter.format(obj)
        except Exception:  # noqa: BLE001 (the object's own reprs may raise anything: plain reprs then)
            data = _plain_bundle(obj)
        clean = {mime: _jsonable(value) for mime, value in data.items()}
        if "text/plain" in clean:
            # Memory addresses differ on every run; honest workers must print the same bytes.
            clean["text/plain"] = ADDRESS.sub(" at 0x…", str(clean["text/plain"]))
        return {"data": clean, "metadata": _jsonable(metadata) if isinstance(metadata, dict) else {}}

    def add_open_figures(self) -> None:
        """Show figures the cell left open, as the inline backend does when a cell ends."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        for num in pyplot.get_fignums():
            try:
                self.bundles.append(_figure_bundle(pyplot.figure(num)))
            except Exception as exc:  # noqa: BLE001 (a broken figure must not lose the other outputs)
                self.bundles.append(
                    {"data": {"text/plain": f"<figure {num} could not be drawn: {exc}>"}, "metadata": {}}
                )
        pyplot.close("all")


def _figure_bundle(fig: Any) -> dict[str, Any]:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    png = base64.b64encode(buf.getvalue()).decode("ascii")
    return {"data": {"image/png": png, "text/plain": ADDRESS.sub(" at 0x…", repr(fig))}, "metadata": {}}


def _plain_bundle(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"text/plain": repr(obj)}
    for mime, method in (
        ("text/html", "_repr_html_"),
        ("image/png", "_repr_png_"),
        ("image/svg+xml", "_repr_svg_"),
        ("text/markdown", "_repr_markdown_"),
        ("text/latex", "_repr_latex_"),
    ):
        fn = getattr(obj, method, None)
        if callable(fn):
            try:
                value = fn()
            except Exception:  # noqa: BLE001, S112 (a repr method that fails is one format fewer)
                continue
            if value is not None:
                data[mime] = value
    return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)
