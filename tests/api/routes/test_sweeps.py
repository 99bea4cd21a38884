"""HTTP behaviour of the sweep routes, in process, on a real store and broker (no worker consumes here;
tests/service/test_sweeps.py runs the children). Children's outcomes are written into the store the way the
worker writes them (``crud.finish``)."""

from __future__ import annotations

import io
import json
import statistics

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.queue import SweepKeeper
from store import crud
from store.db import session_scope
from store.models import Job, Sweep
from store.settings import Settings
from tests.api.utils import key_headers

SPEC = {"dataset": {"name": "synthetic"}, "training": {"epochs": 1}}
GRID = {"intervention.beta": [0, 4], "training.epsilon": [4, 8]}


def _sweep(client, headers, **fields):
    body = {"spec": SPEC, "grid": GRID, **fields}
    response = client.post("/v1/sweeps", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def _statuses(settings, sweep_id):
    with session_scope(settings.database) as session:
        rows = session.query(Job.sweep_index, Job.status).filter(Job.sweep_id == sweep_id).all()
        return dict(rows)


def _run_and_finish(settings, job_id, report=None, status="succeeded"):
    """What a worker does: claim the job, then write its outcome."""
    with session_scope(settings.database) as session:
        claim = crud.claim(session, job_id, "test-worker", 60, 3)
        assert claim.outcome == "claimed"
        crud.finish(session, job_id, claim.attempt, status, report=report)


def _report(clean, robust, verdict, onset=None):
    return {"final": {"clean_accuracy": clean, "robust_accuracy": robust},
            "co": {"verdict": verdict, "onset_step": onset}}


def _keeper(settings):
    with TestClient(create_app(settings, reconcile=False)) as client:
        return SweepKeeper(settings, client.app.state.publisher)


def test_a_sweep_is_its_grid_of_children_each_with_the_cell_and_seed_in_its_resolved_spec(client, settings):
    headers = key_headers(settings)
    sweep = _sweep(client, headers, name="grid", seeds=[0, 1], tags=["t"])
    assert (sweep["status"], sweep["size"], len(sweep["jobs"]), len(sweep["cells"])) == ("queued", 8, 8, 4)
    assert [cell["params"] for cell in sweep["cells"]] == [
        {"intervention.beta": 0, "training.epsilon": 4}, {"intervention.beta": 0, "training.epsilon": 8},
        {"intervention.beta": 4, "training.epsilon": 4}, {"intervention.beta": 4, "training.epsilon": 8}]
    for position, job_id in enumerate(sweep["jobs"]):  # seed-major
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        params = sweep["cells"][position % 4]["params"]
        assert job["spec"]["seed"] == [0, 1][position // 4]
        assert job["spec"]["intervention"]["beta"] == params["intervention.beta"]
        assert job["spec"]["training"]["epsilon"] == params["training.epsilon"]
        assert job["spec"]["training"]["alpha"] == params["training.epsilon"]  # FGSM's default follows the cell
        assert job["tags"] == ["t", f"sweep:{sweep['id']}"]
    listed = client.get("/v1/jobs", params={"tag": f"sweep:{sweep['id']}"}, headers=headers).json()
    assert listed["count"] == 8


def test_children_are_released_within_the_waiting_bound_and_the_teams_quota(settings, tmp_path):
    settings = Settings(home=tmp_path, team_max_active_jobs=3, sweep_max_waiting=2)
    with TestClient(create_app(settings, reconcile=False)) as client:
        headers = key_headers(settings)
        sweep = _sweep(client, headers, seeds=[0, 1])
        assert sorted(_statuses(settings, sweep["id"]).values()) == ["held"] * 6 + ["queued"] * 2
        keeper = SweepKeeper(settings, client.app.state.publisher)
        assert keeper.keep_once()[0] == []  # two waiting: the bound holds the rest back
        _claim(settings, sweep["jobs"][0])  # a worker takes one: one waits, one runs
        assert [job_id for job_id, _ in keeper.keep_once()[0]] == [sweep["jobs"][2]]
        _claim(settings, sweep["jobs"][1])  # two running, one waiting: the quota of 3 is full
        assert keeper.keep_once()[0] == []
        response = client.post("/v1/jobs", json={"spec": SPEC}, headers=headers)
        assert response.status_code == 429  # released children count against the quota
        assert client.post("/v1/sweeps", json={"spec": SPEC, "grid": GRID}, headers=headers).status_code == 201
        _finish_running(settings, sweep["jobs"][0])
        released = [job_id for job_id, _ in keeper.keep_once()[0]]
        assert released == [sweep["jobs"][3]]  # the older sweep first, in seed-major order
        statuses = _statuses(settings, sweep["id"])
        assert [statuses[i] for i in range(8)] == ["succeeded", "running", "queued", "queued"] + ["held"] * 4


def _claim(settings, job_id):
    with session_scope(settings.database) as session:
        assert crud.claim(session, job_id, "w", 60, 3).outcome == "claimed"


def _finish_running(settings, job_id, status="succeeded", report=None):
    with session_scope(settings.database) as session:
        job = session.get(Job, job_id)
        crud.finish(session, job_id, job.attempt, status, report=report)


@pytest.mark.parametrize(("body", "loc", "cell"), [
    ({"grid": {"training.epsilonn": [4]}}, ["body", "grid", "training.epsilonn"], None),
    ({"grid": {"seed": [1, 2]}}, ["body", "grid", "seed"], None),
    ({"grid": {"training.epsilon": [4, 300]}}, ["body", "grid", "training.epsilon", 1],
     {"training.epsilon": 300}),
    ({"grid": {"training.method": ["fgsm", "free"]}}, ["body", "grid", "training.method", 1],
     {"training.method": "free"}),
    ({"grid": {"training.epsilon": [4, 4]}}, ["body", "grid", "training.epsilon"], None),
    ({"grid": {"training.epsilon": [4]}, "seeds": [1, 1]}, ["body", "seeds"], None),
    ({"grid": {}}, ["body", "grid"], None),
    ({"grid": {"training.epsilon": list(range(1, 21)), "intervention.beta": list(range(11))}},
     ["body", "grid"], None),  # 220 children over the limit of 200
    ({"spec": {**SPEC, "training": {"method": "standard"}}, "grid": {"training.alpha": [0, 2]}},
     ["body", "spec"], {"training.alpha": 2}),  # a whole-spec rule, broken by one cell
])
def test_a_bad_grid_is_422_naming_the_cell_and_the_field_and_stores_nothing(client, settings, body, loc, cell):
    headers = key_headers(settings)
    response = client.post("/v1/sweeps", json={"spec": SPEC, **body}, headers=headers)
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert loc in [problem["loc"] for problem in problems]
    if cell is not None:
        assert cell in [problem.get("cell") for problem in problems]
    assert "Traceback" not in response.text
    assert client.get("/v1/sweeps", headers=headers).json()["count"] == 0
    assert client.get("/v1/jobs", headers=headers).json()["count"] == 0


@pytest.mark.parametrize(("limits", "loc"), [
    ({"team_budget": 4e5}, ["body", "spec"]),  # FGSM's children cost 3.2e5 and fit, PGD's 5.0e5 do not
    ({"team_sweep_budget": 2e6}, ["body", "grid"]),  # every child fits; 3 x (3.2e5 + 5.0e5) does not
])
def test_the_whole_sweep_is_budget_checked_all_or_nothing(tmp_path, limits, loc):
    settings = Settings(home=tmp_path, **limits)
    spec = {"dataset": {"name": "synthetic", "synthetic_train_size": 20_000}, "training": {"epochs": 1}}
    with TestClient(create_app(settings, reconcile=False)) as client:
        headers = key_headers(settings)
        one = client.post("/v1/jobs", json={"spec": spec}, headers=headers)
        assert one.status_code == 201  # the grid's FGSM job alone is accepted
        before = client.get("/v1/jobs", headers=headers).json()["count"]
        response = client.post("/v1/sweeps", json={"spec": spec, "grid": {"training.method": ["fgsm", "pgd"]},
                                                   "seeds": [0, 1, 2]}, headers=headers)
        assert response.status_code == 422
        assert any(problem["loc"] == loc and problem["type"] == "budget_exceeded"
                   for problem in response.json()["detail"])
        assert client.get("/v1/jobs", headers=headers).json()["count"] == before
        assert client.get("/v1/sweeps", headers=headers).json()["count"] == 0


def test_cancel_stops_every_unfinished_child_and_the_sweep_ends_cancelled(client, settings):
    headers = key_headers(settings)
    sweep = _sweep(client, headers)
    _claim(settings, sweep["jobs"][0])
    cancelled = client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=headers)
    assert cancelled.status_code == 202
    statuses = _statuses(settings, sweep["id"])
    assert [statuses[i] for i in range(4)] == ["running", "cancelled", "cancelled", "cancelled"]
    assert cancelled.json()["status"] == "running"  # its running child stops at its next step
    with session_scope(settings.database) as session:
        assert session.get(Job, sweep["jobs"][0]).cancel_requested
    _finish_running(settings, sweep["jobs"][0], "cancelled")
    assert _keeper(settings).keep_once()[1] == [sweep["id"]]
    final = client.get(f"/v1/sweeps/{sweep['id']}", headers=headers).json()
    assert (final["status"], final["counts"]) == ("cancelled", {"cancelled": 4})
    assert final["finished_at"] is not None
    assert client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=headers).status_code == 409


def test_another_teams_sweep_is_the_same_404_as_a_missing_one_and_admins_see_all(client, settings):
    sweep = _sweep(client, key_headers(settings, team="a"))
    other, admin = key_headers(settings, team="b"), key_headers(settings, team="ops", role="admin")
    for method, path in (("get", ""), ("post", "/cancel"), ("get", "/events"), ("get", "/artifacts/table.csv")):
        foreign = client.request(method, f"/v1/sweeps/{sweep['id']}{path}", headers=other)
        missing = client.request(method, f"/v1/sweeps/{'0' * 36}{path}", headers=other)
        assert (foreign.status_code, foreign.json()) == (missing.status_code, missing.json()) == (
            404, {"detail": "Sweep not found"})
    assert client.get("/v1/sweeps", headers=other).json() == {"data": [], "count": 0}
    assert [s["id"] for s in client.get("/v1/sweeps", headers=admin).json()["data"]] == [sweep["id"]]
    assert client.get(f"/v1/sweeps/{sweep['id']}", headers=admin).status_code == 200
    assert client.get("/v1/sweeps").status_code == 401


def test_the_table_and_heatmap_show_the_childrens_reports_seeds_averaged(roomy):
    client, settings = roomy
    headers = key_headers(settings)
    sweep = _sweep(client, headers, seeds=[0, 1])
    outcomes = {0: (0.8, 0.40, "no_co", None), 4: (0.7, 0.30, "no_co", None),  # index: a child's report
                1: (0.6, 0.00, "co", 300), 5: (0.5, 0.02, "co", 500),
                2: (0.9, 0.50, "no_co", None), 6: (0.9, 0.01, "co", 700)}  # cell 3 still runs
    for index, outcome in outcomes.items():
        _run_and_finish(settings, sweep["jobs"][index], _report(*outcome))
    _claim(settings, sweep["jobs"][3])
    table = client.get(f"/v1/sweeps/{sweep['id']}/artifacts/table.json", headers=headers).json()
    cells = table["cells"]
    assert cells[0]["clean_accuracy"] == {"mean": pytest.approx(0.75), "std": pytest.approx(0.5 ** 0.5 / 10),
                                          "n": 2}  # (0.8 + 0.7) / 2; sqrt(((0.05)^2 * 2) / 1)
    assert cells[1]["co"]["collapsed"] == 2 and cells[1]["co"]["onset_step"] == {
        "mean": 400.0, "std": pytest.approx(statistics.stdev([300, 500])), "n": 2}
    assert cells[2]["co"] == {"verdicts": [{"seed": 0, "verdict": "no_co"}, {"seed": 1, "verdict": "co"}],
                              "collapsed": 1, "measured": 2,
                              "onset_step": {"mean": 700.0, "std": None, "n": 1}}
    assert cells[3]["robust_accuracy"] is None and cells[3]["co"]["measured"] == 0
    assert [job["status"] for job in cells[3]["jobs"]] == ["running", "queued"]
    assert client.get(f"/v1/sweeps/{sweep['id']}", headers=headers).json()["cells"] == cells
    csv_text = client.get(f"/v1/sweeps/{sweep['id']}/artifacts/table.csv", headers=headers).text
    rows = list(__import__("csv").DictReader(io.StringIO(csv_text)))
    assert float(rows[1]["robust_accuracy_mean"]) == pytest.approx(0.01)
    assert (rows[1]["seeds_co"], rows[1]["onset_step_mean"], rows[3]["seeds_succeeded"]) == ("2", "400.0", "0")
    svg = client.get(f"/v1/sweeps/{sweep['id']}/artifacts/heatmap.svg", headers=headers)
    assert svg.headers["content-type"] == "image/svg+xml" and svg.content.startswith(b"<svg ")
    assert client.get(f"/v1/sweeps/{sweep['id']}/artifacts/other.png", headers=headers).status_code == 404
    summary = client.get("/v1/sweeps", headers=headers).json()["data"][0]
    assert (summary["status"], summary["counts"]) == ("running", {"succeeded": 6, "running": 1, "queued": 1})


def test_the_event_stream_tells_each_childs_end_and_onset_then_the_sweeps(roomy):
    client, settings = roomy
    headers = key_headers(settings)
    sweep = _sweep(client, headers, grid={"training.epsilon": [4, 8]})
    with session_scope(settings.database) as session:
        claim = crud.claim(session, sweep["jobs"][1], "w", 60, 3)
        crud.record(session, sweep["jobs"][1], claim.attempt, events=[("co_onset", {"onset_step": 120})])
        crud.finish(session, sweep["jobs"][1], claim.attempt, "succeeded", report=_report(0.5, 0.0, "co", 120))
        crud.request_cancel(session, session.get(Job, sweep["jobs"][0]))
    response = client.get(f"/v1/sweeps/{sweep['id']}/events", headers=headers)
    events = [_parse(block) for block in response.text.strip().split("\n\n")]
    assert [(e["event"], e["data"].get("job_id"), e["data"].get("cell")) for e in events] == [
        ("child_co_onset", sweep["jobs"][1], 1), ("child_finished", sweep["jobs"][1], 1),
        ("child_finished", sweep["jobs"][0], 0), ("sweep_finished", None, None)]
    assert events[-1]["data"] == {"status": "partial", "counts": {"succeeded": 1, "cancelled": 1}}
    resumed = client.get(f"/v1/sweeps/{sweep['id']}/events",
                         headers={**headers, "Last-Event-ID": str(events[1]["id"])})
    assert [_parse(block)["event"] for block in resumed.text.strip().split("\n\n")] == [
        "child_finished", "sweep_finished"]


def _parse(block: str) -> dict:
    event: dict = {}
    for line in block.splitlines():
        name, _, value = line.partition(": ")
        event[name] = int(value) if name == "id" else json.loads(value) if name == "data" else value
    return event


def test_idempotent_sweeps_replay_and_refuse_another_body(store_backend, tmp_path):
    settings = Settings(home=tmp_path, **store_backend)
    with TestClient(create_app(settings, reconcile=False)) as client:
        headers = {**key_headers(settings), "Idempotency-Key": "grid-1"}
        first = client.post("/v1/sweeps", json={"spec": SPEC, "grid": GRID}, headers=headers)
        again = client.post("/v1/sweeps", json={"spec": SPEC, "grid": GRID}, headers=headers)
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json()["id"] == first.json()["id"] and again.json()["jobs"] == first.json()["jobs"]
        other = client.post("/v1/sweeps", json={"spec": SPEC, "grid": {"training.epsilon": [2]}}, headers=headers)
        assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        with session_scope(settings.database) as session:
            assert session.query(Sweep).count() == 1 and session.query(Job).count() == 4
