"""A sweep's heatmap as SVG, written by hand (no plotting library: the API image has none, issue 23).

Three panels per combination of the axes beyond the second: robust accuracy, clean accuracy, and the share
of seeds that collapsed (CO), each a grid with the first axis as rows and the second as columns (a
single-axis sweep is one column). Cells carry their numbers as text; unmeasured ones are grey with "-". Every
user-provided string (the title holds the sweep's name, the axes' values) goes through ``_xml``, so no name
can break the document or add markup to it. Pure and fast (string building only): no cache needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from api.sweep_table import Axes, co_text, grid_cells

FONT = 11  # px, labels and titles
CELL_FONT = 10  # px, the numbers in the cells
CHAR = 0.6  # a character's width in sans-serif, per px of font size (an estimate for layout only)
CELL_W, CELL_H, MAX_CELL_W = 80, 36, 170  # px
PAD, GAP = 12, 28  # px: around the figure; between panels
MAX_LABEL = 28  # characters of an axis value shown; longer ones end in "…"
UNMEASURED = "#eeeeee"
VIRIDIS = ((0x44, 0x01, 0x54), (0x3b, 0x52, 0x8b), (0x21, 0x91, 0x8c), (0x5e, 0xc9, 0x62), (0xfd, 0xe7, 0x25))
REDS = ((0xff, 0xf5, 0xf0), (0xfc, 0xbb, 0xa1), (0xfb, 0x6a, 0x4a), (0xcb, 0x18, 0x1d), (0x67, 0x00, 0x0d))
# Characters XML 1.0 does not allow at all, escaped or not (control characters, lone surrogates)
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

Scale = tuple[tuple[int, int, int], ...]  # evenly spaced colour stops, 0 to 1
Cell = dict[str, Any]  # one entry of sweep_table.summarise_cells


def co_share(cell: Cell) -> float | None:
    """The share of the measured seeds that collapsed; None before any seed was measured."""
    co = cell["co"] or {}
    return co["collapsed"] / co["measured"] if co.get("measured") else None


def _mean(value: dict[str, Any] | None) -> float | None:
    return None if value is None else value["mean"]


def _percent(value: dict[str, Any] | None) -> str:
    if value is None:
        return "-"
    spread = f"\n±{100 * value['std']:.1f}" if value.get("std") is not None else ""
    return f"{100 * value['mean']:.1f}{spread}"


# (metric, heading, the value that colours a cell (None: unmeasured), the cell's text, its colour scale)
Panel = tuple[str, str, Callable[[Cell], float | None], Callable[[Cell], str], Scale]
PANELS: tuple[Panel, ...] = (
    ("robust_accuracy", "robust accuracy (%)", lambda c: _mean(c["robust_accuracy"]),
     lambda c: _percent(c["robust_accuracy"]), VIRIDIS),
    ("clean_accuracy", "clean accuracy (%)", lambda c: _mean(c["clean_accuracy"]),
     lambda c: _percent(c["clean_accuracy"]), VIRIDIS),
    ("co_share", "CO (share of seeds)", co_share, co_text, REDS))


@dataclass(frozen=True)
class Layout:
    """Where things go, in px: the first grid's left edge, a cell's width, a grid's width, the room a panel
    takes (its grid or its heading, the wider), one facet's height."""
    left: float
    cell_w: float
    panel_w: float
    slot_w: float
    block_h: float


def heatmap_svg(axes: Axes, cells: Sequence[Cell], title: str) -> bytes:
    """The figure as a standalone SVG document (UTF-8)."""
    (row_path, rows), (col_path, cols) = axes[0], (axes[1] if len(axes) > 1 else ("", [""]))
    facets = grid_cells(axes[2:]) if len(axes) > 2 else [{}]
    index = {tuple(cell["params"].values()): cell for cell in cells}
    texts = [line for cell in cells for *_, text_of, _ in PANELS for line in text_of(cell).split("\n")]
    cell_w = min(MAX_CELL_W, max(CELL_W, *(_width(_label(v), FONT) + 10 for v in cols),
                                 *(_width(line, CELL_FONT) + 10 for line in texts)))
    headings = [_width(_heading(name, facet), FONT) for _, name, *_ in PANELS for facet in facets]
    layout = Layout(left=PAD + FONT + 8 + max(_width(_label(v), FONT) for v in rows) + 8, cell_w=cell_w,
                    panel_w=len(cols) * cell_w, slot_w=max(len(cols) * cell_w, *headings),
                    block_h=FONT + 10 + len(rows) * CELL_H + 2 * FONT + 18 + GAP)
    width = max(layout.left + 3 * layout.slot_w + 2 * GAP + PAD, _width(title, FONT + 2) + 2 * PAD)
    height = PAD + FONT + 18 + layout.block_h * len(facets)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="{FONT}">',
           f"<title>{_xml(title)}</title>", '<rect width="100%" height="100%" fill="#ffffff"/>',
           f'<text class="title" x="{PAD}" y="{PAD + FONT + 2}" font-size="{FONT + 2}">{_xml(title)}</text>']
    for number, facet in enumerate(facets):
        top = PAD + FONT + 18 + number * layout.block_h
        keys = [[(r, c, *facet.values()) if len(axes) > 1 else (r,) for c in cols] for r in rows]
        grid = [[index.get(key) for key in row] for row in keys]
        for position, panel in enumerate(PANELS):
            x0 = layout.left + position * (layout.slot_w + GAP)
            out += _panel(panel, grid, (col_path, cols), facet, x0, top, layout)
        y0 = top + FONT + 10
        out += [f'<text class="row-label" x="{layout.left - 6}" y="{y0 + (i + 0.5) * CELL_H:.1f}" '
                f'text-anchor="end" dominant-baseline="middle">{_xml(_label(value))}</text>'
                for i, value in enumerate(rows)]
        middle = y0 + len(rows) * CELL_H / 2
        out.append(f'<text class="row-axis" x="{PAD + FONT}" y="{middle:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 {PAD + FONT} {middle:.1f})">{_xml(row_path)}</text>')
    out.append("</svg>")
    return ("\n".join(out) + "\n").encode()


def _panel(panel: Panel, grid: list[list[Cell | None]], col_axis: tuple[str, list[Any]],
           facet: dict[str, Any], x0: float, top: float, layout: Layout) -> list[str]:
    """One panel: its heading, the cells (row i, column j), the column labels and the column axis's name."""
    metric, name, value_of, text_of, scale = panel
    col_path, cols = col_axis
    y0 = top + FONT + 10
    out = [f'<g class="panel" data-metric="{metric}" data-facet="{_xml(_facet_name(facet))}">',
           f'<text class="panel-title" x="{x0}" y="{top + FONT}">{_xml(_heading(name, facet))}</text>']
    for i, row in enumerate(grid):
        for j, cell in enumerate(row):
            value = None if cell is None else value_of(cell)
            text = "-" if cell is None else text_of(cell)
            out += _cell(value, text, scale, x0 + j * layout.cell_w, y0 + i * CELL_H, layout.cell_w, i, j)
    below = y0 + len(grid) * CELL_H
    out += [f'<text class="col-label" x="{x0 + (j + 0.5) * layout.cell_w:.1f}" y="{below + FONT + 4}" '
            f'text-anchor="middle">{_xml(_label(value))}</text>' for j, value in enumerate(cols)]
    out.append(f'<text class="col-axis" x="{x0 + layout.panel_w / 2:.1f}" y="{below + 2 * FONT + 12}" '
               f'text-anchor="middle">{_xml(col_path)}</text>')
    out.append("</g>")
    return out


def _cell(value: float | None, text: str, scale: Scale, x: float, y: float, w: float, row: int,
          col: int) -> list[str]:
    """A cell's rectangle, coloured by ``value`` (grey when None), and its text, one tspan per line."""
    fill = UNMEASURED if value is None else _colour(scale, value)
    ink = "#ffffff" if _dark(fill) else "#000000"
    lines = text.split("\n")
    first = y + CELL_H / 2 - (len(lines) - 1) * (CELL_FONT + 2) / 2
    spans = "".join(f'<tspan x="{x + w / 2:.1f}" y="{first + k * (CELL_FONT + 2):.1f}">{_xml(line)}</tspan>'
                    for k, line in enumerate(lines))
    shown = "" if value is None else f"{value:.4g}"
    return [f'<rect class="cell" data-row="{row}" data-col="{col}" data-value="{shown}" x="{x:.1f}" '
            f'y="{y:.1f}" width="{w:.1f}" height="{CELL_H}" fill="{fill}" stroke="#ffffff"/>',
            f'<text class="cell-text" data-row="{row}" data-col="{col}" font-size="{CELL_FONT}" fill="{ink}" '
            f'text-anchor="middle" dominant-baseline="middle">{spans}</text>']


def _colour(stops: Scale, value: float) -> str:
    """``value`` in [0, 1] on a colour scale given by evenly spaced stops, as #rrggbb."""
    scaled = min(max(value, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(scaled), len(stops) - 2)
    t = scaled - i
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(stops[i], stops[i + 1], strict=True))


def _dark(fill: str) -> bool:
    r, g, b = (int(fill[k:k + 2], 16) for k in (1, 3, 5))
    return 0.299 * r + 0.587 * g + 0.114 * b < 128


def _xml(text: str) -> str:
    """Text or attribute content: XML-escaped (quotes too), characters XML cannot hold replaced by U+FFFD."""
    return escape(NOT_XML.sub("\ufffd", text), {'"': "&quot;", "'": "&apos;"})


def _label(value: Any) -> str:
    """An axis value as the request spelled it (JSON for numbers and booleans), cut at MAX_LABEL."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_LABEL else text[:MAX_LABEL - 1] + "…"


def _facet_name(facet: dict[str, Any]) -> str:
    return ", ".join(f"{path}={_label(value)}" for path, value in facet.items())


def _heading(name: str, facet: dict[str, Any]) -> str:
    return f"{name} | {_facet_name(facet)}" if facet else name


def _width(text: str, size: float) -> float:
    return len(text) * size * CHAR
