"""The HTTP client and its CLI commands against fake servers: plain ``Request -> Response`` functions
behind ``httpx.MockTransport``, as httpx's own tests do."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coscope import client_cli
from coscope.client import ClientError, CoscopeClient, Event, ServerUnreachable, resolve_connection

Handler = Callable[[httpx.Request], httpx.Response]
SERVER = "http://coscope.test"


def make_client(handler: Handler, **options: Any) -> CoscopeClient:
    return CoscopeClient(SERVER, "k3y", transport=httpx.MockTransport(handler), backoff=0, **options)


def job(status: str = "queued", **fields: Any) -> dict[str, Any]:
    return {"id": "j1", "name": None, "tags": [], "priority": 0, "queue": "gpu", "status": status,
            "attempt": 1, "progress": {}, "co": None, "error": None, "created_at": "2025-01-01T00:00:00Z",
            "started_at": None, "finished_at": None, "spec": {}, **fields}


def sse(*events: tuple[int, str, dict[str, Any]]) -> str:
    return "".join(f"id: {id_}\nevent: {type_}\ndata: {json.dumps(data)}\n\n" for id_, type_, data in events)


def event_stream(text: str) -> httpx.Response:
    return httpx.Response(200, text=text, headers={"Content-Type": "text/event-stream"})


class DroppedStream(httpx.SyncByteStream):
    """Sends some bytes, then the connection dies mid-body."""

    def __init__(self, body: str) -> None:
        self.body = body.encode()

    def __iter__(self) -> Iterator[bytes]:
        yield self.body
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


REPORT = {"final": {"clean_accuracy": 0.81, "robust_accuracy": 0.02,
                    "attack": {"steps": 10, "restarts": 1, "epsilon": 8, "test_images": 1000}},
          "co": {"detected": True, "onset_step": 1200, "verdict": "co",
                 "verdict_text": "Catastrophic overfitting detected at step 1200."}}
OLD_REPORT = {**REPORT, "co": {"detected": True, "onset_step": 1200,  # before the codes: the sentence
                               "verdict": "catastrophic overfitting at step 1200"}}
FINISHED_EVENTS = sse((1, "status", {"status": "running"}),
                      (2, "progress", {"epoch": 0, "step": 5, "total_steps": 10, "eta_seconds": 3.0}),
                      (3, "epoch", {"epoch": 0, "step": 5, "train_loss": 1.5, "train_adv_accuracy": 0.3,
                                    "test_clean_accuracy": 0.4}),
                      (4, "co_onset", {"detected": True, "onset_step": 8, "confirmed_step": 10,
                                       "rule": {"name": "wong_drop"}}),
                      (5, "progress", {"epoch": 1, "step": 10, "total_steps": 10, "eta_seconds": 0.0}),
                      (6, "co_verdict", REPORT["co"]),
                      (7, "status", {"status": "succeeded"}))


# ---- CoscopeClient -------------------------------------------------------------------------------
def test_submit_sends_bearer_key_idempotency_key_and_body() -> None:
    seen: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=job())

    result = make_client(server).submit({"training": {"epsilon": 8}}, name="n", tags=("a", "b"), priority=3,
                                        queue="gpu", idempotency_key="once")
    assert result["id"] == "j1"
    (request,) = seen
    assert (request.method, request.url.path) == ("POST", "/v1/jobs")
    assert request.headers["Authorization"] == "Bearer k3y"
    assert request.headers["Idempotency-Key"] == "once"
    assert json.loads(request.content) == {"spec": {"training": {"epsilon": 8}}, "name": "n",
                                           "tags": ["a", "b"], "priority": 3, "queue": "gpu"}


def test_submit_without_idempotency_key_sends_no_header() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        assert "Idempotency-Key" not in request.headers
        return httpx.Response(201, json=job())

    make_client(server).submit({})


def test_error_carries_status_code_and_detail() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "Job not found"})

    with pytest.raises(ClientError) as caught:
        make_client(server).get("nope")
    assert caught.value.status_code == 404
    assert caught.value.detail == "Job not found"
    assert "Job not found" in str(caught.value)


def test_error_without_json_body_keeps_the_text() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="Bad Gateway")

    with pytest.raises(ClientError) as caught:
        make_client(server).cancel("j1")
    assert (caught.value.status_code, caught.value.detail) == (502, "Bad Gateway")


def test_connection_refused_raises_server_unreachable() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with pytest.raises(ServerUnreachable) as caught:
        make_client(server).get("j1")
    assert caught.value.status_code is None
    assert caught.value.server == SERVER


def test_list_metrics_and_artifacts_send_query_and_unwrap_data() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs":
            assert dict(request.url.params) == {"status": "running", "limit": "5", "offset": "10"}
            return httpx.Response(200, json={"data": [job("running")], "count": 11})
        if request.url.path == "/v1/jobs/j1/metrics":
            assert request.url.params["kind"] == "epoch"
            return httpx.Response(200, json={"data": [{"kind": "epoch", "epoch": 0}]})
        assert request.url.path == "/v1/jobs/j1/artifacts"
        return httpx.Response(200, json={"data": [{"name": "report.json", "size": 2}]})

    client = make_client(server)
    assert client.list(status="running", limit=5, offset=10)["count"] == 11
    assert client.metrics("j1", kind="epoch") == [{"kind": "epoch", "epoch": 0}]
    assert client.artifacts("j1") == [{"name": "report.json", "size": 2}]


def test_changes_pages_the_change_feed_until_it_is_drained() -> None:
    feed = [job(id=f"j{n}", change_cursor=str(10 + n)) for n in range(5)]  # the server's change order
    polls: list[dict[str, str]] = []

    def server(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        polls.append(params)
        after, limit = int(params["changed_after"]), int(params["limit"])
        newer = [entry for entry in feed if int(entry["change_cursor"]) > after]
        return httpx.Response(200, json={"data": newer[:limit], "count": len(newer)})

    client = make_client(server)
    assert [entry["id"] for entry in client.changes(page=2)] == ["j0", "j1", "j2", "j3", "j4"]
    assert [poll["changed_after"] for poll in polls] == ["0", "11", "13"]  # each page after the last one seen
    assert all(poll["offset"] == "0" for poll in polls)
    assert [entry["id"] for entry in client.changes("13", page=2)] == ["j4"]  # a poll from a kept cursor
    polls.clear()
    assert list(client.changes("14", page=2)) == [] and len(polls) == 1  # nothing new: one request


def test_events_parse_comments_multiline_data_and_crlf() -> None:
    body = (": keep-alive\n\n"
            "id: 1\nevent: status\ndata: {\"status\":\ndata: \"running\"}\n\n"
            ":ping\n"
            "id: 2\r\nevent: progress\r\ndata: {\"step\": 3, \"total_steps\": 9}\r\n\r\n"
            "data: {\"note\": \"no id or type\"}\n\n"
            "id: 4\nevent: status\ndata: {\"status\": \"succeeded\"}\n\n")

    def server(request: httpx.Request) -> httpx.Response:
        assert request.headers["Accept"] == "text/event-stream"
        assert "Last-Event-ID" not in request.headers
        return event_stream(body)

    events = list(make_client(server).events("j1"))
    assert events == [Event(1, "status", {"status": "running"}),
                      Event(2, "progress", {"step": 3, "total_steps": 9}),
                      Event(2, "message", {"note": "no id or type"}),
                      Event(4, "status", {"status": "succeeded"})]


def test_events_reconnect_after_a_drop_with_last_event_id() -> None:
    requests: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if len(requests) == 1:  # two whole events, half of a third, then the connection dies
            partial = sse((1, "status", {"status": "running"}), (2, "progress", {"step": 1}))
            partial += "id: 3\nevent: pr"
            return httpx.Response(200, stream=DroppedStream(partial))
        return event_stream(sse((3, "progress", {"step": 2}), (4, "status", {"status": "failed"})))

    events = list(make_client(server).events("j1", last_event_id=None))
    assert [event.id for event in events] == [1, 2, 3, 4]
    assert "Last-Event-ID" not in requests[0].headers
    assert requests[1].headers["Last-Event-ID"] == "2"


def test_events_resume_from_a_given_last_event_id() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        assert request.headers["Last-Event-ID"] == "41"
        return event_stream(sse((42, "status", {"status": "cancelled"})))

    assert [event.id for event in make_client(server).events("j1", last_event_id=41)] == [42]


def test_events_give_up_after_the_retry_budget() -> None:
    calls: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("Connection refused")

    with pytest.raises(ServerUnreachable):
        list(make_client(server, stream_retries=2).events("j1"))
    assert len(calls) == 3


def test_events_on_unknown_job_raise_without_retrying() -> None:
    calls: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(404, json={"detail": "Job not found"})

    with pytest.raises(ClientError) as caught:
        list(make_client(server).events("nope"))
    assert (caught.value.status_code, len(calls)) == (404, 1)


def test_wait_returns_the_final_job_after_the_terminal_status_event() -> None:
    seen: list[Event] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs/j1/events":
            return event_stream(FINISHED_EVENTS)
        return httpx.Response(200, json=job("succeeded"))

    final = make_client(server).wait("j1", on_event=seen.append)
    assert final["status"] == "succeeded"
    assert [event.type for event in seen] == ["status", "progress", "epoch", "co_onset", "progress",
                                              "co_verdict", "status"]


def test_wait_resumes_when_the_stream_ends_before_a_terminal_event() -> None:
    streams: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs/j1":
            return httpx.Response(200, json=job("running" if len(streams) < 2 else "succeeded"))
        streams.append(request.headers.get("Last-Event-ID"))
        if len(streams) == 1:
            return event_stream(sse((1, "status", {"status": "running"})))  # an idle proxy cuts it here
        return event_stream(sse((2, "status", {"status": "succeeded"})))

    assert make_client(server).wait("j1")["status"] == "succeeded"
    assert streams == [None, "1"]


def test_download_streams_the_bytes_to_the_destination(tmp_path: Path) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        assert request.url.raw_path == b"/v1/jobs/j1/artifacts/curves.png"
        return httpx.Response(200, content=b"\x89PNG...")

    client = make_client(server)
    assert client.download("j1", "curves.png", tmp_path / "out" / "c.png").read_bytes() == b"\x89PNG..."
    assert client.download("j1", "curves.png", tmp_path) == tmp_path / "curves.png"  # a folder: keep the name


def test_download_error_leaves_no_partial_file(tmp_path: Path) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "Artifact not found"})

    with pytest.raises(ClientError):
        make_client(server).download("j1", "missing.pt", tmp_path / "missing.pt")
    assert list(tmp_path.iterdir()) == []


# ---- resolve_connection --------------------------------------------------------------------------
@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("COSCOPE_SERVER", "COSCOPE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COSCOPE_HOME", str(tmp_path))
    return tmp_path


def test_resolve_connection_prefers_arguments_then_env_then_client_json_then_api_key_file(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "api-key").write_text("file-key\n")
    assert resolve_connection(None, None) == ("http://127.0.0.1:8000", "file-key")
    (home / "client.json").write_text(json.dumps({"server": "http://config:1/", "key": "config-key"}))
    assert resolve_connection(None, None) == ("http://config:1", "config-key")
    monkeypatch.setenv("COSCOPE_SERVER", "http://env:2")
    monkeypatch.setenv("COSCOPE_API_KEY", "env-key")
    assert resolve_connection(None, None) == ("http://env:2", "env-key")
    assert resolve_connection("http://arg:3", "arg-key") == ("http://arg:3", "arg-key")


@pytest.mark.usefixtures("home")
def test_resolve_connection_without_any_key_names_the_options() -> None:
    with pytest.raises(ClientError, match="COSCOPE_API_KEY"):
        resolve_connection("http://x", None)


def test_resolve_connection_rejects_a_malformed_client_json(home: Path) -> None:
    (home / "client.json").write_text("{not json")
    with pytest.raises(ClientError, match="client.json"):
        resolve_connection(None, "k")


# ---- CLI commands --------------------------------------------------------------------------------
def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="coscope")
    client_cli.add_client_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args([*argv, "--server", SERVER, "--key", "k3y"])


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], None]:
    """Point the CLI's client factory at a fake server."""
    def install(handler: Handler) -> None:
        monkeypatch.setattr(client_cli, "_make_client", lambda server, key: CoscopeClient(
            server, key, transport=httpx.MockTransport(handler), backoff=0))
    return install


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text("training:\n  epsilon: 800\n  methd: fgsm\n")
    return path


def test_cli_submit_rejected_spec_prints_each_field_and_exits_2(
        serve: Callable[[Handler], None], spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["spec"] == {"training": {"epsilon": 800, "methd": "fgsm"}}
        return httpx.Response(422, json={"detail": [
            {"loc": ["body", "spec", "training", "epsilon"], "type": "less_than_equal",
             "msg": "Input should be less than or equal to 32"},
            {"loc": ["body", "spec", "training", "methd"], "msg": "Extra inputs are not permitted",
             "type": "extra_forbidden"}]})

    serve(server)
    assert client_cli.run_client_command(parse("submit", str(spec_file))) == 2
    err = capsys.readouterr().err
    assert "spec.training.epsilon: Input should be less than or equal to 32" in err
    assert "spec.training.methd: Extra inputs are not permitted" in err
    assert "Traceback" not in err


def test_cli_submit_nan_is_refused_before_sending(
        serve: Callable[[Handler], None], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    serve(lambda request: pytest.fail("the spec must not be sent"))
    path = tmp_path / "nan.yaml"
    path.write_text("training:\n  epsilon: .nan\n")
    assert client_cli.run_client_command(parse("submit", str(path))) == 2
    assert "spec.training.epsilon: NaN" in capsys.readouterr().err


def test_cli_submit_wait_follows_progress_and_prints_the_verdict(
        serve: Callable[[Handler], None], spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST":
            assert json.loads(request.content)["tags"] == ["a", "b"]
            return httpx.Response(201, json=job())
        if path.endswith("/events"):
            return event_stream(FINISHED_EVENTS)
        if path.endswith("/report"):
            return httpx.Response(200, json=REPORT)
        return httpx.Response(200, json=job("succeeded"))

    serve(server)
    args = parse("submit", str(spec_file), "--wait", "--tag", "a", "--tag", "b")
    assert client_cli.run_client_command(args) == 0
    out = capsys.readouterr().out
    assert "epoch 1: train loss 1.5000, attacked acc 0.3000, test clean acc 0.4000" in out
    assert "CO onset at step 8 (wong_drop), confirmed at step 10" in out
    assert "job j1 succeeded" in out
    assert "CO verdict: co: Catastrophic overfitting detected at step 1200." in out
    assert "verdict: co: Catastrophic overfitting detected at step 1200." in out
    assert "clean accuracy 0.8100, robust accuracy 0.0200 (PGD-10-1, eps 8/255, 1000 images)" in out


def test_cli_watch_failed_job_exits_1_with_the_error(
        serve: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return event_stream(sse((1, "status", {"status": "failed"})))
        error = {"code": "diverged", "message": "loss became nan"}
        return httpx.Response(200, json=job("failed", error=error))

    serve(server)
    assert client_cli.run_client_command(parse("watch", "j1")) == 1
    out = capsys.readouterr().out
    assert "job j1 failed" in out and "diverged: loss became nan" in out


def test_cli_unreachable_server_prints_one_line_and_exits_4(
        serve: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused")

    serve(server)
    assert client_cli.run_client_command(parse("status", "j1")) == 4
    assert capsys.readouterr().err == f"coscope: cannot reach {SERVER} — is `coscope serve` running?\n"


@pytest.mark.parametrize(("status", "code"), [(401, 5), (403, 5), (404, 6), (409, 1), (429, 7), (500, 1)])
def test_cli_exit_code_names_the_failure_class(
        serve: Callable[[Handler], None], capsys: pytest.CaptureFixture[str], status: int, code: int) -> None:
    serve(lambda request: httpx.Response(status, json={"detail": "refused"}))
    assert client_cli.run_client_command(parse("status", "j1")) == code
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(("final", "code"), [("succeeded", 0), ("failed", 1), ("cancelled", 3)])
def test_cli_submit_wait_json_prints_only_the_final_job_and_exits_by_outcome(
        serve: Callable[[Handler], None], spec_file: Path, capsys: pytest.CaptureFixture[str],
        final: str, code: int) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json=job())
        if request.url.path.endswith("/events"):
            return event_stream(sse((1, "progress", {"step": 1, "total_steps": 2}),
                                    (2, "status", {"status": final})))
        return httpx.Response(200, json=job(final))

    serve(server)
    args = parse("submit", str(spec_file), "--wait", "--output", "json")
    assert client_cli.run_client_command(args) == code
    printed = json.loads(capsys.readouterr().out)  # stdout is the JSON alone: no bar, no lines
    assert (printed["id"], printed["status"]) == ("j1", final)


def test_cli_status_and_jobs_json_print_the_api_objects(
        serve: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]) -> None:
    page = {"data": [job("running")], "count": 1}
    serve(lambda request: httpx.Response(200, json=page if request.url.path == "/v1/jobs"
                                         else job("running")))
    assert client_cli.run_client_command(parse("status", "j1", "--output", "json")) == 0
    assert json.loads(capsys.readouterr().out) == job("running")
    assert client_cli.run_client_command(parse("jobs", "--output", "json")) == 0
    assert json.loads(capsys.readouterr().out) == page


def test_cli_status_prints_progress_eta_co_and_error(
        serve: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]) -> None:
    progress = {"epoch": 2, "step": 300, "total_steps": 1000, "eta_seconds": 252}
    running = job("running", attempt=2, progress=progress,
                  co={"detected": True, "verdict": "co", "onset_step": 250, "rule": {"name": "wong_drop"}})
    serve(lambda request: httpx.Response(200, json=running))
    assert client_cli.run_client_command(parse("status", "j1")) == 0
    out = capsys.readouterr().out
    assert "running (attempt 2)" in out
    assert "epoch 3, step 300/1000 (30%), ETA 4m 12s" in out
    assert "co: onset at step 250 (wong_drop)" in out


def test_cli_jobs_prints_a_table(
        serve: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]) -> None:
    page = {"data": [job("running", progress={"step": 1, "total_steps": 4}),
                     job("queued", id="j2", name="b")], "count": 7}
    serve(lambda request: httpx.Response(200, json=page))
    assert client_cli.run_client_command(parse("jobs", "--limit", "2")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "PROGRESS", "QUEUE", "CREATED", "NAME"]
    assert lines[1].split()[:3] == ["j1", "running", "25%"]
    assert lines[-1] == "(2 of 7 jobs; --limit shows more)"


def test_cli_cancel_finished_job_prints_the_detail(
        serve: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]) -> None:
    serve(lambda request: httpx.Response(409, json={"detail": "Job already finished"}))
    assert client_cli.run_client_command(parse("cancel", "j1")) == 1
    assert capsys.readouterr().err == "coscope: Job already finished (409)\n"


def test_cli_download_writes_the_file(serve: Callable[[Handler], None], tmp_path: Path) -> None:
    serve(lambda request: httpx.Response(200, content=b"{}"))
    out = tmp_path / "r.json"
    assert client_cli.run_client_command(parse("download", "j1", "report.json", "--out", str(out))) == 0
    assert out.read_bytes() == b"{}"


def test_show_report_prints_verdict_and_accuracies(
        serve: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]) -> None:
    serve(lambda request: httpx.Response(200, json=REPORT))
    assert client_cli.show_report("j1", SERVER, "k3y") == 0
    out = capsys.readouterr().out
    assert out.startswith("verdict: co: Catastrophic overfitting detected at step 1200.\nclean accuracy 0.81")
    serve(lambda request: httpx.Response(200, json=OLD_REPORT))
    assert client_cli.show_report("j1", SERVER, "k3y") == 0
    assert capsys.readouterr().out.startswith("verdict: catastrophic overfitting at step 1200\nclean")


def test_show_report_of_a_dry_run_prints_data_and_cost(
        serve: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]) -> None:
    data = {"name": "cifar10", "train_images": 50000, "test_images": 10000, "image_shape": [3, 32, 32]}
    report = {"dry_run": True, "estimated_cost_image_passes": 1.5e6, "data": data}
    serve(lambda request: httpx.Response(200, json=report))
    assert client_cli.show_report("j1", SERVER, "k3y") == 0
    assert capsys.readouterr().out == ("dry run, no training: cifar10 with 50000 training and 10000 test images "
                                       "of 3x32x32; estimated cost 1.5e+06 image-passes\n")


def test_show_report_before_success_says_why(
        serve: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/report"):
            return httpx.Response(404, json={"detail": "Report not available"})
        return httpx.Response(200, json=job("running"))

    serve(server)
    assert client_cli.show_report("j1", SERVER, "k3y") == 1
    assert "job j1 is running" in capsys.readouterr().err


def test_show_report_adds_autoattack_when_the_run_measured_it(
        serve: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]) -> None:
    final = {**REPORT["final"], "autoattack": {"accuracy": 0.0125, "version": "standard"}}
    serve(lambda request: httpx.Response(200, json={**REPORT, "final": final}))
    assert client_cli.show_report("j1", SERVER, "k3y") == 0
    assert ("(PGD-10-1, eps 8/255, 1000 images); AutoAttack accuracy 0.0125 (standard, same images)\n"
            in capsys.readouterr().out)
