"""Webhook delivery (S12 at send time): signed, pinned to the checked address, no redirects, bounded
retries, re-checked against DNS rebinding, callee bodies never stored. All HTTP goes to an
``httpx.MockTransport``; DNS is the fake resolver of tests/api/utils.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import time
import types

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.queue import Publisher, Reconciler, SweepKeeper
from store import crud, webhooks
from store.db import session_scope
from store.models import Job, JobEvent, Sweep
from store.settings import Settings
from tests.api.utils import PUBLIC_HOOK, SPEC, key_headers, set_status

SECRET = "test-secret-0123456789"
CALLEE_BODY = "callee-secret-body-must-not-be-stored"


class Callee:
    """A fake webhook receiver: answers with ``statuses`` in turn (an exception is raised instead)."""

    def __init__(self, *statuses: int | Exception) -> None:
        self.statuses = list(statuses) or [204]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        outcome = self.statuses[min(len(self.requests), len(self.statuses)) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        headers = {"Location": "http://169.254.169.254/latest/meta-data/"} if 300 <= outcome < 400 else {}
        return httpx.Response(outcome, text=CALLEE_BODY, headers=headers)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path, webhook_secret=SECRET)


def _deliver(callee: Callee, url: str = PUBLIC_HOOK, sleeps: list[float] | None = None) -> webhooks.Delivery:
    payload = {"event": "job.succeeded", "job_id": "j", "status": "succeeded", "co": None}
    return webhooks.deliver(url, payload, SECRET, transport=callee.transport,
                            sleep=(sleeps if sleeps is not None else []).append)


def _job(settings: Settings, callback_url: str | None = PUBLIC_HOOK, status: str = "succeeded") -> str:
    with session_scope(settings.database) as session:
        owner, _ = crud.create_key(session, "k")
        job, _ = crud.create_job(session, owner, SPEC, name=None, tags=[], priority=0, queue="cpu",
                                 idempotency_key=None, request_hash="h", callback_url=callback_url)
        job.status, job.co = status, {"detected": True, "onset_step": 120}
        return job.id


def _webhook_events(settings: Settings, job_id: str) -> list[dict]:
    with session_scope(settings.database) as session:
        return [event.data for event in session.query(JobEvent).filter_by(job_id=job_id, type="webhook")]


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ---- one delivery -----------------------------------------------------------------------------------


def test_a_delivery_is_signed_and_pinned_to_the_checked_address():
    callee = Callee(204)
    assert _deliver(callee) == webhooks.Delivery("delivered", 204, 1)
    [request] = callee.requests
    assert (request.method, request.url.host, request.url.path) == ("POST", "93.184.215.14", "/coscope")
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"  # TLS still verifies the name
    assert request.extensions["timeout"] == {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}
    body = request.content
    assert json.loads(body) == {"event": "job.succeeded", "job_id": "j", "status": "succeeded", "co": None}
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert request.headers["x-coscope-signature"] == f"sha256={expected}"
    assert request.headers["x-coscope-event"] == "job.succeeded"


def test_plain_http_gets_no_sni_and_keeps_the_port():
    callee = Callee(200)
    _deliver(callee, "http://hooks.example.com:8080/hook?x=1")
    [request] = callee.requests
    assert str(request.url) == "http://93.184.215.14:8080/hook?x=1"
    assert request.headers["host"] == "hooks.example.com:8080" and "sni_hostname" not in request.extensions


def test_redirects_are_not_followed():
    callee = Callee(302)
    assert _deliver(callee) == webhooks.Delivery("failed", 302, 1)
    assert len(callee.requests) == 1


def test_server_errors_are_retried_with_exponential_backoff():
    callee, sleeps = Callee(500, 503, 200), []
    assert _deliver(callee, sleeps=sleeps) == webhooks.Delivery("delivered", 200, 3)
    assert sleeps == [0.5, 1.0]


def test_retries_stop_after_three_tries():
    callee, sleeps = Callee(httpx.ConnectTimeout("slow"), 500, httpx.ConnectError("down")), []
    assert _deliver(callee, sleeps=sleeps) == webhooks.Delivery("failed", None, 3)
    assert len(callee.requests) == 3 and sleeps == [0.5, 1.0]


@pytest.mark.parametrize(("status", "tries"), [(404, 1), (401, 1), (429, 3), (408, 3)])
def test_client_errors_are_final_except_throttling(status, tries):
    assert _deliver(Callee(status)).tries == tries


def test_a_name_rebound_to_a_private_address_is_refused_at_send_time(monkeypatch):
    monkeypatch.setattr(webhooks, "resolve", lambda host, port: ["10.0.0.5"])
    callee = Callee(200)
    assert _deliver(callee) == webhooks.Delivery("refused", None, 0)
    assert callee.requests == []


def test_rebinding_between_retries_stops_the_retries(monkeypatch):
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])
    monkeypatch.setattr(webhooks, "resolve", lambda host, port: next(answers))
    callee = Callee(500, 200)
    assert _deliver(callee) == webhooks.Delivery("refused", None, 1)
    assert len(callee.requests) == 1


def test_the_signature_covers_the_exact_bytes():
    expected = "sha256=" + hmac.new(b"k", b'{"a":1}', hashlib.sha256).hexdigest()
    assert webhooks.sign(b'{"a":1}', "k") == expected
    assert webhooks.sign(b'{"a":1}', "k") != webhooks.sign(b'{"a": 1}', "k")


# ---- notify: the job's webhook and its record -------------------------------------------------------


def test_notify_records_the_status_code_only(settings):
    job_id = _job(settings)
    callee = Callee(500, 201)
    result = webhooks.notify(settings, job_id, "job.succeeded", transport=callee.transport,
                             sleep=lambda seconds: None)
    assert result == webhooks.Delivery("delivered", 201, 2)
    assert json.loads(callee.requests[0].content)["co"] == {"detected": True, "onset_step": 120}
    assert _webhook_events(settings, job_id) == [{"event": "job.succeeded", "outcome": "delivered",
                                                  "status_code": 201, "tries": 2}]
    with TestClient(create_app(settings, reconcile=False)) as client:
        headers = key_headers(settings)
        with session_scope(settings.database) as session:  # let this key's team see the job
            session.get(Job, job_id).team = "default"
        seen = client.get(f"/v1/jobs/{job_id}", headers=headers).text
        seen += client.get(f"/v1/jobs/{job_id}/events", headers=headers).text
    assert '"outcome": "delivered"' in seen and CALLEE_BODY not in seen


def test_notify_defaults_the_event_to_the_status_and_skips_jobs_without_a_callback(settings):
    callee = Callee(200)
    assert webhooks.notify(settings, _job(settings, None), transport=callee.transport) is None
    job_id = _job(settings, status="failed")
    webhooks.notify(settings, job_id, transport=callee.transport)
    assert json.loads(callee.requests[0].content)["event"] == "job.failed"


def test_a_rebound_callback_is_recorded_as_refused(settings, monkeypatch, caplog):
    job_id = _job(settings)  # validated at submit (the fake DNS says public)
    monkeypatch.setattr(webhooks, "resolve", lambda host, port: ["169.254.169.254"])
    callee = Callee(200)
    with caplog.at_level("WARNING", logger="coscope.webhooks"):
        result = webhooks.notify(settings, job_id, "job.succeeded", transport=callee.transport)
    assert result == webhooks.Delivery("refused", None, 0) and callee.requests == []
    assert "refused at send time" in caplog.text
    assert _webhook_events(settings, job_id)[0]["outcome"] == "refused"


def test_notify_never_raises(settings, monkeypatch):
    job_id = _job(settings)
    monkeypatch.setattr(webhooks, "deliver", lambda *args, **kwargs: 1 / 0)
    assert webhooks.notify(settings, job_id) is None


# ---- where webhooks are sent from -------------------------------------------------------------------


def test_cancelling_a_queued_job_sends_job_cancelled(settings, monkeypatch):
    callee = Callee(200)
    monkeypatch.setattr(webhooks, "TRANSPORT", callee.transport)
    with TestClient(create_app(settings, reconcile=False)) as client:
        headers = key_headers(settings)
        body = {"spec": SPEC, "callback_url": PUBLIC_HOOK}
        job = client.post("/v1/jobs", json=body, headers=headers).json()
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
        admin = key_headers(settings, role="admin")
        client.post("/v1/jobs", json=body, headers=headers)
        assert client.post("/v1/admin/queues/purge", headers=admin).json() == {"cancelled": 1}
    events = [json.loads(request.content) for request in callee.requests]
    assert [(event["event"], event["status"]) for event in events] == [("job.cancelled", "cancelled")] * 2


def test_the_reconciler_sends_job_failed_for_exhausted_jobs(settings, monkeypatch):
    callee = Callee(200)
    monkeypatch.setattr(webhooks, "TRANSPORT", callee.transport)
    job_id = _job(settings, status="running")
    set_status(settings, job_id, "running", attempt=settings.max_attempts, lease_expires_at=crud.utcnow())
    Reconciler(settings, Publisher(settings)).reconcile_once()
    _wait_for(lambda: _webhook_events(settings, job_id))
    assert json.loads(callee.requests[0].content)["event"] == "job.failed"


def test_the_worker_sends_co_onset_and_the_final_status(settings, monkeypatch):
    """worker.runner with a stand-in trainer (no torch): one event at CO onset, one at the end, each with
    the verdict code; the final one carries the report's verdict (without the monitor's indices)."""
    callee = Callee(200)
    monkeypatch.setattr(webhooks, "TRANSPORT", callee.transport)
    final_co = {"verdict": "never_robust", "verdict_text": "Never robust, so ...", "detected": False,
                "onset_step": 40, "rule": {"name": "relative_collapse"}, "monitor": {"train_indices": [3, 1]}}

    def train(spec, out, device, data_root, callbacks, resume):
        callbacks.on_event({"type": "co_onset", "onset_step": 40, "onset_epoch": 1,
                            "rule": {"name": "relative_collapse"}, "verdict": "never_robust"})
        _wait_for(lambda: callee.requests)  # the onset webhook runs beside training
        callbacks.on_event({"type": "finished", "final": {"clean_accuracy": 0.5}, "co": final_co})
        return {"final": {"clean_accuracy": 0.5}}

    fake = types.ModuleType("core.trainer")
    fake.Callbacks = types.SimpleNamespace  # type: ignore[attr-defined]
    fake.select_device = lambda name: "cpu"  # type: ignore[attr-defined]
    fake.train = train  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "core.trainer", fake)
    from worker import runner

    job_id = _job(settings, status="queued")
    assert runner.run(job_id, settings, "test-worker") == "succeeded"
    events = [json.loads(request.content) for request in callee.requests]
    assert [(event["event"], event["status"]) for event in events] == [("job.co_onset", "running"),
                                                                      ("job.succeeded", "succeeded")]
    assert events[0]["co"]["onset_step"] == 40
    assert (events[0]["co"]["verdict"], events[0]["co"]["detected"]) == ("never_robust", False)  # so far
    assert events[1]["co"] == {key: value for key, value in final_co.items() if key != "monitor"}
    with session_scope(settings.database) as session:  # the SSE stream's final verdict event
        verdicts = [e.data for e in session.query(JobEvent).filter_by(job_id=job_id, type="co_verdict")]
        assert verdicts == [events[1]["co"]] and session.get(Job, job_id).co == events[1]["co"]
    _wait_for(lambda: len(_webhook_events(settings, job_id)) == 2)


def test_a_sweep_sends_sweep_finished_once_signed_and_records_the_outcome(settings, monkeypatch):
    callee = Callee(200)
    monkeypatch.setattr(webhooks, "TRANSPORT", callee.transport)
    with TestClient(create_app(settings, reconcile=False)) as client:
        headers = key_headers(settings)
        sweep = client.post("/v1/sweeps", json={"spec": SPEC, "grid": {"training.epsilon": [2, 4]},
                                                "callback_url": PUBLIC_HOOK}, headers=headers).json()
        assert client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=headers).json()["status"] == "cancelled"
        keeper = SweepKeeper(settings, client.app.state.publisher)
        assert keeper.keep_once() == ([], [])  # finished by the cancel: no second sweep.finished
    (request,) = callee.requests
    assert request.headers[webhooks.SIGNATURE_HEADER] == webhooks.sign(request.content, SECRET)
    assert json.loads(request.content) == {"event": "sweep.finished", "sweep_id": sweep["id"],
                                           "status": "cancelled", "counts": {"cancelled": 2}}
    with session_scope(settings.database) as session:
        assert session.get(Sweep, sweep["id"]).webhook == {"event": "sweep.finished", "outcome": "delivered",
                                                            "status_code": 200, "tries": 1}
