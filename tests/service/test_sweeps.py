"""Sweeps end to end with real processes (API, its sweep keeper, Celery workers) on the embedded default and
on Redis + PostgreSQL: a 2 x 2 grid runs to the end and its table and heatmap show its children's reports; a
team's sweep does not starve another team's job on the real queue."""

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest

from coscope.harness import wait_until
from store import crud
from store.db import session_scope
from tests.service.conftest import Api, job_spec

GRID = {"training.epsilon": [2, 8], "training.method": ["fgsm", "n_fgsm"]}
SVG = "{http://www.w3.org/2000/svg}"


def test_a_two_by_two_sweep_runs_to_the_end_with_a_table_and_heatmap_of_its_childrens_reports(stack):
    stack.start_api()
    stack.start_worker()
    api = Api(stack.url, stack.admin_key())
    response = api.http.post("/v1/sweeps", json={"name": "grid", "spec": job_spec(epochs=1), "grid": GRID,
                                                 "seeds": [0]})
    assert response.status_code == 201, response.text
    sweep = response.json()
    events = api.events_at(f"/v1/sweeps/{sweep['id']}/events", timeout=600)
    finished = [event for event in events if event["type"] == "child_finished"]
    assert sorted(event["data"]["job_id"] for event in finished) == sorted(sweep["jobs"])
    assert events[-1] == {"type": "sweep_finished", "data": {"status": "succeeded", "counts": {"succeeded": 4}}}

    final = api.http.get(f"/v1/sweeps/{sweep['id']}").json()
    assert final["status"] == "succeeded"
    table = api.http.get(f"/v1/sweeps/{sweep['id']}/artifacts/table.json").json()
    assert table["cells"] == final["cells"]
    for cell in table["cells"]:
        (child,) = cell["jobs"]
        report = api.http.get(f"/v1/jobs/{child['id']}/report").json()
        spec = report["spec"]["training"]
        assert (spec["epsilon"], spec["method"]) == (cell["params"]["training.epsilon"],
                                                     cell["params"]["training.method"])
        assert cell["clean_accuracy"] == {"mean": report["final"]["clean_accuracy"], "std": None, "n": 1}
        assert cell["robust_accuracy"] == {"mean": report["final"]["robust_accuracy"], "std": None, "n": 1}
        assert cell["co"]["verdicts"] == [{"seed": 0, "verdict": report["co"]["verdict"]}]
    csv_lines = api.http.get(f"/v1/sweeps/{sweep['id']}/artifacts/table.csv").text.splitlines()
    assert csv_lines[0].startswith("training.epsilon,training.method,clean_accuracy_mean") and len(csv_lines) == 5
    svg = api.http.get(f"/v1/sweeps/{sweep['id']}/artifacts/heatmap.svg")
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    drawn = ElementTree.fromstring(svg.content)
    assert drawn.find(f"{SVG}title").text.startswith("grid (")
    cells = [rect for rect in drawn.iter(f"{SVG}rect") if rect.get("class") == "cell"]
    assert len(cells) == 3 * 4  # three panels of the 2 x 2 grid
    children = api.http.get("/v1/jobs", params={"tag": f"sweep:{sweep['id']}"}).json()
    assert children["count"] == 4 and {job["status"] for job in children["data"]} == {"succeeded"}


@pytest.mark.parametrize("stack", ["distributed"], indirect=True)
def test_a_teams_sweep_does_not_starve_another_teams_job_on_the_real_queue(stack):
    """One worker, a 5-child sweep of team a, then a job of team b: the sweep keeps at most
    ``sweep_max_waiting`` (2) children waiting in the FIFO queue, so b's job starts after at most 3 of a's
    children (the running one and the two waiting), not after all 5 (five is the fewest that can tell)."""
    stack.start_api()
    stack.start_worker()
    with session_scope(stack.database_url) as session:
        team_a = crud.create_key(session, "a", "a")[1]
        team_b = crud.create_key(session, "b", "b")[1]
    sweep = Api(stack.url, team_a).http.post("/v1/sweeps", json={
        "spec": job_spec(epochs=1), "grid": {"training.epsilon": [1, 2, 3, 4, 5]}}).json()
    owner, other = Api(stack.url, team_a), Api(stack.url, team_b)
    wait_until(lambda: owner.http.get(f"/v1/sweeps/{sweep['id']}").json()["counts"].get("running"), 120,
               "the sweep's first child to run")  # every message the sweep sends by then is in the queue
    job = other.submit(job_spec(epochs=1))
    assert other.wait_finished(job["id"], timeout=300)["status"] == "succeeded"
    started_b = other.job(job["id"])["started_at"]
    events = owner.events_at(f"/v1/sweeps/{sweep['id']}/events", timeout=600)
    assert events[-1]["data"]["status"] == "succeeded"
    starts = [owner.job(job_id)["started_at"] for job_id in sweep["jobs"]]
    before = sum(start < started_b for start in starts)
    assert before <= 3, (before, starts, started_b)
    assert other.http.get(f"/v1/sweeps/{sweep['id']}").status_code == 404
    assert json.dumps(owner.http.get("/v1/sweeps").json()["data"][0]["counts"]) == '{"succeeded": 5}'
