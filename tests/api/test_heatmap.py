"""api.heatmap, the pure SVG renderer: any name or axis value gives a well-formed document that shows it as
text; further axes become rows of panels. (The route: tests/api/routes/test_sweep_heatmap.py.)"""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from api.heatmap import heatmap_svg
from api.sweep_table import summarise_cells

SVG = "{http://www.w3.org/2000/svg}"


def _texts(root: ElementTree.Element, css_class: str) -> list[str]:
    return ["".join(node.itertext()) for node in root.iter(f"{SVG}text") if node.get("class") == css_class]


@pytest.mark.parametrize("name", ["<script>alert(1)</script>", "a & b \"quoted\" 'single'", "]]><!--",
                                  "&amp; &#x3c;", "bell\x07 nul\x00 esc\x1b", "lone \ud800 surrogate",
                                  "β ≈ 4 🙂"])
def test_any_name_and_axis_value_give_a_well_formed_document_showing_them_as_text(name):
    axes = [("training.method", [name, "fgsm"])]
    root = ElementTree.fromstring(heatmap_svg(axes, summarise_cells(axes, [0], []), name))
    assert not [node for node in root.iter() if node.tag.removeprefix(SVG) not in (
        "svg", "title", "rect", "text", "tspan", "g")]
    shown = "".join("\ufffd" if c in "\x07\x00\x1b\ud800" else c for c in name)  # what XML cannot hold
    assert root.find(f"{SVG}title").text == shown and _texts(root, "title") == [shown]
    assert _texts(root, "row-label") == [shown, "fgsm"]


def test_a_third_axis_makes_one_row_of_panels_per_value_and_long_values_are_cut():
    long = "x" * 40
    axes = [("intervention.beta", [0, 4]), ("training.epsilon", [4, 8]), ("training.method", ["fgsm", long])]
    root = ElementTree.fromstring(heatmap_svg(axes, summarise_cells(axes, [0], []), "t"))
    panels = [g for g in root.iter(f"{SVG}g") if g.get("class") == "panel"]
    assert [(g.get("data-metric"), g.get("data-facet")) for g in panels] == [
        (metric, f"training.method={value}") for value in ("fgsm", "x" * 27 + "…")
        for metric in ("robust_accuracy", "clean_accuracy", "co_share")]
    assert all(len(list(g.iter(f"{SVG}rect"))) == 4 for g in panels)
    assert _texts(root, "row-axis") == ["intervention.beta"] * 2


def test_a_single_axis_is_one_column_and_booleans_read_as_json():
    axes = [("training.deterministic", [True, False])]
    root = ElementTree.fromstring(heatmap_svg(axes, summarise_cells(axes, [0], []), "t"))
    assert _texts(root, "row-label") == ["true", "false"]
    assert {rect.get("data-col") for rect in root.iter(f"{SVG}rect") if rect.get("class") == "cell"} == {"0"}
