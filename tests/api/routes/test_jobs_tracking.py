"""The job request's MLflow ``tracking`` block (api.schemas.Tracking): stored on the job row for the worker,
bounded and closed, with the worker's own tag keys and other teams' experiments refused (422 naming the
field).
The worker side is tested against a real MLflow server in tests/service/test_mlflow.py."""

from __future__ import annotations

import pytest

from store.db import session_scope
from store.models import Job
from tests.api.routes.test_jobs import SPEC, _key


def test_create_job_stores_the_tracking_block_for_the_worker(client, settings):
    tracking = {"experiment": "coscope/vision/fgsm", "tags": {"owner": "ana", "stage": "dev"}}
    response = client.post("/v1/jobs", json={"spec": SPEC, "tracking": tracking},
                           headers=_key(settings, "vision"))
    assert response.status_code == 201
    plain = client.post("/v1/jobs", json={"spec": SPEC}, headers=_key(settings))
    with session_scope(settings.database) as session:
        assert session.get(Job, response.json()["id"]).tracking == tracking
        assert session.get(Job, plain.json()["id"]).tracking is None


@pytest.mark.parametrize(("tracking", "loc"), [
    ({"experiment": ""}, ["body", "tracking", "experiment"]),
    ({"experiment": "x" * 201}, ["body", "tracking", "experiment"]),
    ({"experiment": "line\nbreak"}, ["body", "tracking", "experiment"]),
    ({"experiment": "coscope/other-team"}, ["body", "tracking", "experiment"]),
    ({"experiment": "coscope/defaults"}, ["body", "tracking", "experiment"]),  # a prefix is not the team
    ({"tags": {"coscope.job_id": "forged"}}, ["body", "tracking", "tags", "coscope.job_id", "[key]"]),
    ({"tags": {"mlflow.user": "someone"}}, ["body", "tracking", "tags", "mlflow.user", "[key]"]),
    ({"tags": {"ok": "v" * 501}}, ["body", "tracking", "tags", "ok"]),
    ({"tags": {f"t{i}": "v" for i in range(21)}}, ["body", "tracking", "tags"]),
    ({"tracking_uri": "http://user:secret@mlflow:5000"}, ["body", "tracking", "tracking_uri"]),
])
def test_create_job_with_a_bad_tracking_block_is_422_naming_the_field(client, settings, tracking, loc):
    response = client.post("/v1/jobs", json={"spec": SPEC, "tracking": tracking}, headers=_key(settings))
    assert response.status_code == 422
    assert loc in [problem["loc"] for problem in response.json()["detail"]]
    assert client.get("/v1/jobs", headers=_key(settings)).json()["count"] == 0  # nothing stored


def test_the_team_may_name_its_own_default_experiment(client, settings):
    response = client.post("/v1/jobs", json={"spec": SPEC, "tracking": {"experiment": "coscope/default"}},
                           headers=_key(settings))
    assert response.status_code == 201
