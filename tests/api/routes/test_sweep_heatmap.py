"""Issue 23: the sweep heatmap is an SVG the API draws itself, so it works on the API image (no matplotlib):
in process on a real store (cells, labels, colours, escaping, ETag), and in a fresh interpreter where
``import matplotlib`` fails, as on the image."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from xml.etree import ElementTree

from api.heatmap import REDS, UNMEASURED
from tests.api.routes.test_sweeps import _claim, _report, _run_and_finish
from tests.api.utils import SPEC, key_headers

ROOT = Path(__file__).resolve().parents[3]
SVG = "{http://www.w3.org/2000/svg}"
NAME = "<script>alert(1)</script>&\"'"  # a sweep name that must not break the document
GRID = {"intervention.beta": [0, 4], "training.epsilon": [4, 8]}


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{channel:02x}" for channel in rgb)


def _texts(root: ElementTree.Element, css_class: str) -> list[str]:
    return ["".join(node.itertext()) for node in root.iter(f"{SVG}text") if node.get("class") == css_class]


def _cells(root: ElementTree.Element, metric: str) -> dict[tuple[int, int], tuple[str, str]]:
    """(row, column) -> (fill, text) of one panel's cells."""
    (panel,) = [g for g in root.iter(f"{SVG}g") if g.get("data-metric") == metric]
    def at(node: ElementTree.Element) -> tuple[int, int]:
        return int(node.get("data-row")), int(node.get("data-col"))

    fills = {at(rect): rect.get("fill") for rect in panel.iter(f"{SVG}rect")}
    texts = {at(text): " ".join(text.itertext()) for text in panel.iter(f"{SVG}text")
             if text.get("class") == "cell-text"}
    return {key: (fills[key], texts[key]) for key in fills}


def test_the_heatmap_svg_colours_each_cell_by_the_share_of_seeds_that_collapsed(roomy):
    client, settings = roomy
    headers = key_headers(settings)
    created = client.post("/v1/sweeps", json={"name": NAME, "spec": SPEC, "grid": GRID,
                                              "seeds": [0, 1]}, headers=headers)
    assert created.status_code == 201, created.text
    sweep = created.json()
    # child index (seed-major) -> its report: cell (0, 0) no seed collapsed, (0, 1) both (onset 400 on
    # average), (1, 0) one of two; cell (1, 1) still runs
    outcomes = {0: (0.8, 0.40, "no_co"), 4: (0.7, 0.30, "no_co"), 1: (0.6, 0.00, "co", 300),
                5: (0.5, 0.02, "co", 500), 2: (0.9, 0.50, "no_co"), 6: (0.9, 0.01, "co", 700)}
    for index, outcome in outcomes.items():
        _run_and_finish(settings, sweep["jobs"][index], _report(*outcome))
    _claim(settings, sweep["jobs"][3])
    url = f"/v1/sweeps/{sweep['id']}/artifacts/heatmap.svg"

    response = client.get(url, headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    root = ElementTree.fromstring(response.content)  # well-formed XML, whatever the name holds
    assert root.tag == f"{SVG}svg" and float(root.get("width")) > 0 and float(root.get("height")) > 0
    title = f"{NAME} ({sweep['id'][:8]}): 2 seed(s), means over succeeded seeds"
    assert root.find(f"{SVG}title").text == title and _texts(root, "title") == [title]
    assert NAME not in response.text and "&lt;script&gt;" in response.text  # escaped, not markup
    assert not [node for node in root.iter() if node.tag.removeprefix(SVG) in ("script", "foreignObject")]
    assert _texts(root, "row-label") == ["0", "4"] and _texts(root, "row-axis") == ["intervention.beta"]
    assert _texts(root, "col-label") == ["4", "8"] * 3  # one row of three panels
    assert _texts(root, "col-axis") == ["training.epsilon"] * 3
    assert _cells(root, "co_share") == {
        (0, 0): (_hex(REDS[0]), "no CO"), (0, 1): (_hex(REDS[-1]), "CO @ 400"),
        (1, 0): (_hex(REDS[2]), "1/2 CO @ 700"), (1, 1): (UNMEASURED, "-")}
    robust = _cells(root, "robust_accuracy")
    assert [robust[key][1] for key in sorted(robust)] == ["35.0 ±7.1", "1.0 ±1.4", "25.5 ±34.6", "-"]

    etag = response.headers["etag"]
    unchanged = client.get(url, headers={**headers, "If-None-Match": etag})
    assert (unchanged.status_code, unchanged.content, unchanged.headers["etag"]) == (304, b"", etag)
    _run_and_finish(settings, sweep["jobs"][7], _report(0.5, 0.2, "no_co"))  # a child of cell (1, 1) finished
    changed = client.get(url, headers={**headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert _cells(ElementTree.fromstring(changed.content), "co_share")[(1, 1)] == (_hex(REDS[0]), "no CO")


def test_heatmap_png_is_gone_naming_the_svg(client, settings):
    headers = key_headers(settings)
    sweep = client.post("/v1/sweeps", json={"spec": SPEC, "grid": {"training.epsilon": [4, 8]}},
                        headers=headers).json()
    response = client.get(f"/v1/sweeps/{sweep['id']}/artifacts/heatmap.png", headers=headers)
    assert (response.status_code, response.json()) == (
        410, {"detail": "heatmap.png is no longer served: download heatmap.svg"})


# Run in a fresh interpreter whose `import matplotlib` fails, as on the API image (pyproject's base
# dependencies only): a sweep with a finished child, then its heatmap through the real route.
WITHOUT_MATPLOTLIB = textwrap.dedent("""
    import json, sys
    sys.modules["matplotlib"] = None  # any `import matplotlib...` now raises ImportError
    from pathlib import Path
    from fastapi.testclient import TestClient
    from api.main import create_app
    from store import crud
    from store.db import session_scope
    from store.settings import Settings

    settings = Settings(home=Path(sys.argv[1]), sweep_max_waiting=100)
    with TestClient(create_app(settings, reconcile=False)) as client:
        with session_scope(settings.database) as session:
            key = crud.create_key(session, "k", "default", "member")[1]
        headers = {"Authorization": f"Bearer {key}"}
        sweep = client.post("/v1/sweeps", headers=headers, json={
            "name": "no matplotlib", "spec": {"dataset": {"name": "synthetic"}, "training": {"epochs": 1}},
            "grid": {"training.epsilon": [4, 8]}}).json()
        with session_scope(settings.database) as session:
            attempt = crud.claim(session, sweep["jobs"][0], "w", 60, 3).attempt
            report = {"final": {"clean_accuracy": 0.5, "robust_accuracy": 0.0},
                      "co": {"verdict": "co", "onset_step": 9}}
            crud.finish(session, sweep["jobs"][0], attempt, "succeeded", report=report)
        response = client.get(f"/v1/sweeps/{sweep['id']}/artifacts/heatmap.svg", headers=headers)
    print(json.dumps({"status": response.status_code, "type": response.headers.get("content-type"),
                      "onset_shown": "CO @ 9" in response.text, "detail": response.text[:300],
                      "matplotlib": sys.modules.get("matplotlib", "absent")}))
""")


def test_the_api_draws_the_heatmap_where_matplotlib_cannot_be_imported(tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_MATPLOTLIB, str(tmp_path / "home")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    shown = (outcome["status"], outcome["type"], outcome["onset_shown"])
    assert shown == (200, "image/svg+xml", True), outcome
    assert outcome["matplotlib"] is None  # still blocked: nothing imported it behind the test's back
