"""The S1-S19 security checks of shared/reference/reliability.md B4, in process (TestClient), each on both
stores a deployment can have: the embedded default (SQLite, SQLite broker) and production's PostgreSQL + Redis
(``store_backend`` in conftest.py: a database per test, the API tests' Redis DB).

Webhook delivery (S12 at send time) is in test_webhooks.py, the unit tests behind S9-S11 in
test_limits.py, ``safe_join`` (S13) in test_paths.py and the admin routes (S19) in routes/test_admin.py.
"""

from __future__ import annotations

import ast
import re
import subprocess
import threading
import types
import typing
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from api.main import create_app
from api.schemas import JobCreate, JobPublic
from store import crud
from store.db import session_scope
from store.models import Job
from store.settings import Settings
from tests.api.utils import PUBLIC_HOOK, SPEC, job_row, key_headers

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_ROUTES = {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json",
                 "/redoc"}
# The dashboard's pages and static files hold no data (their scripts call the /v1 routes with the user's key):
# public, and checked for exactly that in test_dashboard_routes_serve_no_data.
DASHBOARD_ROUTES = {"/", "/ui", "/ui/", "/ui/jobs", "/ui/jobs/{job_id}", "/ui/sweeps", "/ui/sweeps/{sweep_id}",
                    "/ui/submit", "/ui/static/{path}"}


def _routes(routes, prefix: str = ""):
    """(method, path) of every route of the app, walking included routers (recent FastAPI keeps an included
    router as one entry of ``app.routes``). An unknown kind of route fails, so none is skipped silently."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Route):  # APIRoute is a Route
            for method in route.methods or ():
                yield method, prefix + route.path
        elif isinstance(route, Mount) and isinstance(route.app, StaticFiles):
            yield "GET", prefix + route.path + "/{path}"
        else:
            raise AssertionError(f"unexpected route {route!r}: add it to the S1 enumeration")


_ROUTE_APP = create_app(Settings(home=Path("/nonexistent-coscope-home")), reconcile=False)  # routes only
ALL_ROUTES = sorted(set(_routes(_ROUTE_APP.routes)))
ROUTES = [(method, path) for method, path in ALL_ROUTES
          if path not in PUBLIC_ROUTES | DASHBOARD_ROUTES and method != "HEAD"]


def _fill(path: str, job_id: str | None = None) -> str:
    values = {"name": "report.json", "job_id": job_id}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1)) or str(uuid.uuid4()), path)


@pytest.fixture
def settings(store_backend, tmp_path):
    return Settings(home=tmp_path, **store_backend)


def _submit(client, headers, **body):
    return client.post("/v1/jobs", json={"spec": SPEC, **body}, headers=headers)


# ---- S1, S2: authentication -------------------------------------------------------------------------


def test_route_list_covers_jobs_and_admin():
    paths = {path for _, path in ROUTES}
    assert {"/v1/jobs", "/v1/jobs/{job_id}/cancel", "/v1/admin/queues/purge", "/v1/admin/keys"} <= paths
    assert {"/healthz", "/metrics", "/docs"} <= {path for _, path in ALL_ROUTES}
    assert len(ROUTES) >= 15  # 9 job routes, 6 admin routes


def test_dashboard_routes_serve_no_data(client, settings):
    """Without a key, the dashboard's routes answer the same bytes whatever the store holds (pages and static
    files, no data), and every other route is a /v1 route."""
    assert {path for _, path in ALL_ROUTES if path.startswith("/ui") or path == "/"} == DASHBOARD_ROUTES
    job = _submit(client, key_headers(settings)).json()
    for path in sorted(DASHBOARD_ROUTES - {"/ui/static/{path}"}):
        response = client.get(path.replace("{job_id}", job["id"]).replace("{sweep_id}", job["id"]))
        assert response.status_code == 200 and job["id"] not in response.text, path
    assert not [path for _, path in ROUTES if not path.startswith("/v1/")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_without_credentials_is_401(client, method, path):
    response = client.request(method, _fill(path))
    assert response.status_code == 401, (method, path)
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"detail": "Invalid or missing API key"}


def test_public_routes_need_no_credentials(client):
    for path in ("/healthz", "/metrics", "/openapi.json", "/docs", "/redoc"):
        assert client.get(path).status_code == 200, path


def test_wrong_revoked_and_near_miss_keys_are_the_same_401(client, settings):
    good = key_headers(settings)["Authorization"]
    with session_scope(settings.database) as session:
        row, revoked = crud.create_key(session, "old", "default")
        row.revoked = True
    near_miss = good[:-1] + ("A" if good[-1] != "A" else "B")
    wrong = ("Bearer cs_wrong", f"Bearer {revoked}", near_miss, "Basic dXNlcjpwYXNz", "Bearer ")
    bodies = {client.get("/v1/jobs", headers={"Authorization": auth}).content for auth in wrong}
    bodies.add(client.get("/v1/jobs").content)
    assert bodies == {b'{"detail":"Invalid or missing API key"}'}
    assert client.get("/v1/jobs", headers={"Authorization": good}).status_code == 200


def test_keys_are_stored_only_as_hashes(settings):
    with session_scope(settings.database) as session:
        row, key = crud.create_key(session, "k")
        assert key not in (row.key_hash, row.name) and row.key_hash == crud.hash_key(key)


# ---- S3, S4, S5: object-level authorization, pagination, ids -----------------------------------------

# S3 from the app's own routes: every member route that takes a job id, with each of its methods. A route
# added without the OwnedJob dependency answers a foreign team's request differently from a missing job's
# (200, 202, 422 ...) and fails here. Admin routes answer members 403 before any lookup (S19, below).
JOB_ROUTES = [(method, path) for method, path in ROUTES
              if "{job_id}" in path and not path.startswith("/v1/admin")]


def test_the_foreign_job_probes_cover_every_job_route():
    assert len(JOB_ROUTES) >= 7, JOB_ROUTES
    assert {("GET", "/v1/jobs/{job_id}"), ("POST", "/v1/jobs/{job_id}/cancel"),
            ("GET", "/v1/jobs/{job_id}/artifacts/{name}")} <= set(JOB_ROUTES)


@pytest.mark.parametrize(("method", "path"), JOB_ROUTES)
def test_foreign_job_is_byte_identical_to_a_missing_one_and_unchanged(client, settings, method, path):
    job = _submit(client, key_headers(settings, team="a")).json()
    other = key_headers(settings, team="b")
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    foreign = client.request(method, _fill(path, job["id"]), headers=other, **body)
    missing = client.request(method, _fill(path, str(uuid.uuid4())), headers=other, **body)
    assert foreign.status_code == 404 and missing.status_code == 404, (foreign.text, missing.text)
    assert foreign.content == missing.content == b'{"detail":"Job not found"}'
    row = job_row(settings, job["id"])
    assert (row.status, row.cancel_requested) == ("queued", False)
    if not path.endswith("/events"):  # the owner reaches the route (its stream would wait for the job)
        own = client.request(method, _fill(path, job["id"]), headers=key_headers(settings, team="a"), **body)
        assert own.content != b'{"detail":"Job not found"}', (method, path)


@pytest.mark.parametrize("params", [{"limit": 1_000_000}, {"limit": -1}, {"limit": 0}, {"offset": -1},
                                    {"offset": 10**12}])
def test_out_of_range_pages_are_422(client, settings, params):
    response = client.get("/v1/jobs", params=params, headers=key_headers(settings))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


def test_lists_and_counts_only_the_callers_team(client, settings):
    a, b = key_headers(settings, team="a"), key_headers(settings, team="b")
    for _ in range(2):
        _submit(client, a)
    mine = _submit(client, b).json()
    listing = client.get("/v1/jobs", params={"limit": 200}, headers=b).json()
    assert listing["count"] == 1 and [job["id"] for job in listing["data"]] == [mine["id"]]


def test_job_ids_are_random_uuid4(client, settings):
    headers = key_headers(settings)
    ids = [_submit(client, headers).json()["id"] for _ in range(3)]
    assert all(uuid.UUID(job_id).version == 4 and str(uuid.UUID(job_id)) == job_id for job_id in ids)
    assert len(set(ids)) == 3


# ---- S6, S7: mass assignment, data exposure ---------------------------------------------------------


@pytest.mark.parametrize("field", ["owner_id", "owner_key_id", "team", "status", "attempt", "result",
                                   "report", "artifact_dir", "id", "lease_owner"])
def test_server_side_fields_are_extra_forbidden(client, settings, field):
    response = _submit(client, key_headers(settings), **{field: "x"})
    assert response.status_code == 422
    assert {"loc": ["body", field], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"} \
        in response.json()["detail"]


def test_job_response_has_only_public_fields(client, settings):
    response = _submit(client, key_headers(settings), callback_url=PUBLIC_HOOK)
    assert set(response.json()) == set(JobPublic.model_fields)
    text = response.text
    assert all(secret not in text for secret in (str(settings.home), settings.database, settings.broker,
                                                 "sqla+sqlite", "redis://", "postgresql://", PUBLIC_HOOK))


def test_worker_error_messages_hide_server_paths(client, settings):
    headers = key_headers(settings)
    job = _submit(client, headers).json()
    with session_scope(settings.database) as session:
        row = session.get(Job, job["id"])
        row.status, row.error_code = "failed", "DatasetNotFound"
        row.error_message = f"expected an image folder at {settings.datasets}/cifar10-jpeg/train"
        crud.add_event(session, row.id, 1, "status", {"status": "failed", "error_message": row.error_message})
    public = client.get(f"/v1/jobs/{job['id']}", headers=headers)
    assert public.json()["error"]["message"] == "expected an image folder at <data root>/cifar10-jpeg/train"
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=headers).text
    assert "<data root>/cifar10-jpeg" in events and str(settings.home) not in events


def test_a_forced_500_is_generic(settings, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError(f"database exploded at {settings.home}")

    monkeypatch.setattr(crud, "list_jobs", broken)
    with TestClient(create_app(settings, reconcile=False), raise_server_exceptions=False) as client:
        response = client.get("/v1/jobs", headers=key_headers(settings))
    assert response.status_code == 500 and response.json() == {"detail": "Internal server error"}
    assert "exploded" not in response.text and "Traceback" not in response.text


# ---- S8: bounds -------------------------------------------------------------------------------------

RAW_PROBES = [
    ({"training": {"epochs": 10**9}}, ["training", "epochs"]),
    ({"training": {"epochs": 0}}, ["training", "epochs"]),
    ({"training": {"epochs": 10.5}}, ["training", "epochs"]),
    ({"training": {"epsilon": -1}}, ["training", "epsilon"]),
    ({"training": {"epsilon": 300}}, ["training", "epsilon"]),
    ({"training": {"pgd_steps": 10**6}}, ["training", "pgd_steps"]),
    ({"training": {"batch_size": 10**7}}, ["training", "batch_size"]),
    ({"training": {"method": "cw"}}, ["training", "method"]),
    ({"evaluation": {"restarts": 10**4}}, ["evaluation", "restarts"]),
    ({"dataset": {"train_subset": 10**9}}, ["dataset", "train_subset"]),
]


@pytest.mark.parametrize(("spec", "loc"), RAW_PROBES)
def test_out_of_bounds_spec_values_are_422_with_the_field(client, settings, spec, loc):
    response = client.post("/v1/jobs", json={"spec": spec}, headers=key_headers(settings))
    assert response.status_code == 422
    assert ["body", "spec", *loc] in [problem["loc"] for problem in response.json()["detail"]]


@pytest.mark.parametrize(("raw", "loc"), [
    ('{"training": {"epsilon": NaN}}', ["training", "epsilon"]),
    ('{"training": {"lr_max": Infinity}}', ["training", "lr_max"]),
    ('{"training": {"momentum": -Infinity}}', ["training", "momentum"]),
])
def test_nan_and_infinity_are_422(client, settings, raw, loc):
    response = client.post("/v1/jobs", content='{"spec": ' + raw + "}",
                           headers={**key_headers(settings), "Content-Type": "application/json"})
    assert response.status_code == 422
    assert ["body", "spec", *loc] in [problem["loc"] for problem in response.json()["detail"]]


def _unbounded(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every int/float field of ``model`` (recursively) lacking a lower or an upper bound."""
    found: list[str] = []
    for name, field in model.model_fields.items():
        found += _check(field.annotation, list(field.metadata), prefix + name)
    return found


def _check(annotation, metadata, where: str) -> list[str]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        for item in extra:
            metadata += list(getattr(item, "metadata", [item]))
        return _check(base, metadata, where)
    if origin in (typing.Union, types.UnionType):
        return [problem for arg in typing.get_args(annotation) if arg is not type(None)
                for problem in _check(arg, list(metadata), where)]
    if origin in (list, tuple, set, dict):
        return [problem for arg in typing.get_args(annotation) for problem in _check(arg, [], where + "[]")]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _unbounded(annotation, where + ".")
    if annotation in (int, float):
        lower = any(hasattr(item, "ge") or hasattr(item, "gt") for item in metadata)
        upper = any(hasattr(item, "le") or hasattr(item, "lt") for item in metadata)
        return [] if lower and upper else [where]
    return []  # Literal, bool, str (lengths bounded separately)


def test_every_numeric_field_of_the_request_is_bounded():
    assert _unbounded(JobCreate) == []


def test_the_bounds_walker_catches_an_unbounded_field():
    class Loose(BaseModel):
        nested: JobCreate
        x: float
        y: typing.Annotated[int, "no bound"] | None = None

    assert _unbounded(Loose) == ["x", "y"]


# ---- S9, S10, S11: budget, body size, quota and rate ------------------------------------------------


def test_a_spec_within_field_bounds_but_over_budget_is_422(client, settings):
    spec = {"training": {"method": "pgd", "pgd_steps": 100, "epochs": 1000},
            "evaluation": {"restarts": 100, "pgd_steps": 1000}}
    response = client.post("/v1/jobs", json={"spec": spec}, headers=key_headers(settings))
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert (problem["loc"], problem["type"]) == (["body", "spec"], "budget_exceeded")
    assert "exceeds the team budget" in problem["msg"]


def test_the_papers_run_fits_the_default_budget(client, settings):
    paper = {"training": {"epochs": 30}}  # the defaults are the paper's: CIFAR-10, width 64, FGSM
    response = client.post("/v1/jobs", json={"spec": paper}, headers=key_headers(settings))
    assert response.status_code == 201 and response.json()["queue"] == "gpu"


@pytest.mark.parametrize("chunked", [False, True])
def test_a_5_mib_body_is_413(client, settings, chunked):
    body = b'{"spec": {}, "name": "' + b"x" * (5 << 20) + b'"}'
    headers = {**key_headers(settings), "Content-Type": "application/json"}
    content = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    response = client.post("/v1/jobs", content=content, headers=headers)
    assert response.status_code == 413
    assert response.json() == {"detail": "Request body too large (limit 1048576 bytes)"}


def test_active_job_quota_is_429_per_team(tmp_path, store_backend):
    settings = Settings(home=tmp_path, **store_backend, team_max_active_jobs=2)
    with TestClient(create_app(settings, reconcile=False)) as client:
        a, b = key_headers(settings, team="a"), key_headers(settings, team="b")
        first = _submit(client, a).json()
        _submit(client, a)
        refused = _submit(client, a)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
        assert refused.json() == {"detail": "The team already has 2 queued or running jobs"}
        assert _submit(client, b).status_code == 201  # another team is unaffected
        client.post(f"/v1/jobs/{first['id']}/cancel", headers=a)
        assert _submit(client, a).status_code == 201  # a finished job frees a slot


def test_submission_rate_is_429_per_team(tmp_path, store_backend):
    settings = Settings(home=tmp_path, **store_backend, team_submits_per_minute=3)
    with TestClient(create_app(settings, reconcile=False)) as client:
        a, b = key_headers(settings, team="a"), key_headers(settings, team="b")
        assert [_submit(client, a).status_code for _ in range(3)] == [201, 201, 201]
        refused = _submit(client, a)
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 20
        assert client.post("/v1/jobs", json={}, headers=a).status_code == 429  # counted before validation
        assert _submit(client, b).status_code == 201
        assert client.get("/v1/jobs", headers=a).status_code == 200  # reads are not limited


# ---- S12, S13: webhook URLs and paths ---------------------------------------------------------------

BAD_CALLBACKS = [
    "http://127.0.0.1:8000", "http://localhost:6379", "http://redis:6379",
    "http://169.254.169.254/latest/meta-data/", "http://metadata.google.internal/", "http://[::1]/",
    "http://[fd00::1]/", "http://[fe80::1]/", "http://[::ffff:10.0.0.1]/", "http://0x7f000001/",
    "http://2130706433/", "http://017700000001/", "http://127.1/", "http://0.0.0.0/", "http://10.1.2.3/",
    "http://172.16.0.1/", "http://192.168.1.1/", "http://100.64.0.1/", "file:///etc/passwd",
    "gopher://hooks.example.com/", "ftp://hooks.example.com/", "http://user:pw@hooks.example.com/",
    "http://hooks.example.com:22/", "http://mixed.example.com/", "http://no-such-host.example/", "not a url",
]


@pytest.mark.parametrize("url", BAD_CALLBACKS)
def test_unsafe_callback_urls_are_422(client, settings, url):
    response = _submit(client, key_headers(settings), callback_url=url)
    assert response.status_code == 422, url
    [problem] = response.json()["detail"]
    assert (problem["loc"], problem["type"]) == (["body", "callback_url"], "unsafe_url")
    assert "172.18" not in problem["msg"] and "10.0.0.5" not in problem["msg"]  # answers stay hidden


def test_a_public_callback_url_is_stored(client, settings):
    job = _submit(client, key_headers(settings), callback_url=PUBLIC_HOOK).json()
    assert job_row(settings, job["id"]).callback_url == PUBLIC_HOOK


TRAVERSALS = ["../../etc/passwd", "/etc/passwd", "cifar10/../../x", "cifar10\x00", "..%2f..%2f"]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_dataset_names_outside_the_enum_are_422(client, settings, name):
    spec = {"dataset": {"name": name}}
    response = client.post("/v1/jobs", json={"spec": spec}, headers=key_headers(settings))
    assert response.status_code == 422
    assert ["body", "spec", "dataset", "name"] in [problem["loc"] for problem in response.json()["detail"]]


@pytest.mark.parametrize("path", [*TRAVERSALS, "%2e%2e/x", "%252e%252e/x", "a\\..\\..\\x", "C:/Windows",
                                  "~/data", "a%2Fb"])
def test_unsafe_dataset_paths_are_422(client, settings, path):
    spec = {"dataset": {"name": "imagefolder", "path": path, "train_subset": 100}}
    response = client.post("/v1/jobs", json={"spec": spec}, headers=key_headers(settings))
    assert response.status_code == 422, path
    locs = [problem["loc"] for problem in response.json()["detail"]]
    assert any(loc[:3] == ["body", "spec", "dataset"] for loc in locs)


def test_a_plain_relative_dataset_path_is_accepted(client, settings):
    spec = {"dataset": {"name": "imagefolder", "path": "cifar10-jpeg", "train_subset": 100}}
    assert client.post("/v1/jobs", json={"spec": spec}, headers=key_headers(settings)).status_code == 201


@pytest.mark.parametrize("name", ["..%2F..%2Fsettings.py", "%2e%2e/%2e%2e/etc/passwd", "%2e%2e%2f{job}-evil%2fx",
                                  "..%2F{job}-evil%2Freport.json", "report.json%00", "report.json"])
def test_artifact_names_never_leave_the_job_folder(client, settings, name):
    headers = key_headers(settings)
    job = _submit(client, headers).json()
    folder = settings.artifacts / job["id"]
    evil = settings.artifacts / f"{job['id']}-evil"
    evil.mkdir(parents=True)
    (evil / "report.json").write_text("sibling")
    (evil / "x").write_text("sibling")
    folder.mkdir()
    (folder / "report.json").symlink_to(evil / "report.json")  # a link out of the folder
    response = client.get(f"/v1/jobs/{job['id']}/artifacts/{name.format(job=job['id'])}", headers=headers)
    assert response.status_code == 404 and "sibling" not in response.text
    assert client.get(f"/v1/jobs/{job['id']}/artifacts", headers=headers).json() == {"data": []}


# ---- S14, S15, S16, S17: loading, serialization, exposure, secrets ----------------------------------


def _python_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout:
        return [ROOT / line for line in listed.stdout.splitlines() if (ROOT / line).exists()]
    return [path for path in ROOT.rglob("*.py") if ".venv" not in path.parts]


def _unsafe_loads(tree: ast.AST) -> list[int]:
    """Lines calling ``torch.load`` (or a bare ``load`` imported from torch) without ``weights_only=True``,
    and any ``weights_only`` set to False."""
    bare = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module == "torch" for alias in node.names if alias.name == "load"}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        weights_only = {kw.arg: kw.value for kw in node.keywords}.get("weights_only")
        if isinstance(weights_only, ast.Constant) and weights_only.value is False:
            lines.append(node.lineno)
            continue
        func = node.func
        is_load = (isinstance(func, ast.Attribute) and func.attr == "load"
                   and isinstance(func.value, ast.Name) and func.value.id == "torch") \
            or (isinstance(func, ast.Name) and func.id in bare)
        if is_load and not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            lines.append(node.lineno)
    return lines


def test_no_tracked_file_calls_torch_load_without_weights_only():
    files = _python_files()
    assert any(path.name == "checkpoint.py" for path in files)
    offenders = {str(path.relative_to(ROOT)): lines for path in files
                 if (lines := _unsafe_loads(ast.parse(path.read_text(encoding="utf-8"))))}
    assert offenders == {}


def test_the_torch_load_scanner_flags_unsafe_calls():
    # spelled apart so that repository greps for unsafe loads do not flag this test's own input
    load, unsafe = "torch" + ".load", "weights_only=" + "False"
    code = (f"import torch\nfrom torch import load as L\n{load}('a')\n{load}('b', {unsafe})\nL('c')\n"
            f"{load}('d', weights_only=True)\n")
    assert _unsafe_loads(ast.parse(code)) == [3, 4, 5]


def test_torch_is_pinned_past_the_weights_only_advisories():
    major, minor = (int(part) for part in version("torch").split(".")[:2])
    assert (major, minor) >= (2, 10)


def test_the_queue_accepts_json_only(settings):
    import pickle

    from kombu.exceptions import ContentDisallowed
    from kombu.serialization import loads, prepare_accept_content

    from store.broker import make_celery

    conf = make_celery(settings).conf
    assert (conf.accept_content, conf.task_serializer, conf.result_serializer) == (["json"], "json", "json")
    with pytest.raises(ContentDisallowed):
        loads(pickle.dumps({"job": 1}), "application/x-python-serialize", "binary",
              accept=prepare_accept_content(conf.accept_content))


@pytest.mark.parametrize(("env", "docs", "served"),
                         [("development", False, True), ("production", False, False), ("production", True, True)])
def test_docs_are_gated_in_production(tmp_path, env, docs, served):
    settings = Settings(home=tmp_path, env=env, docs=docs, webhook_secret="s" * 32)
    with TestClient(create_app(settings, reconcile=False)) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (client.get(path).status_code == 200) is served, path
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(("env", "public", "open_"),
                         [("development", None, True), ("production", None, False), ("production", True, True),
                          ("development", False, False)])
def test_metrics_need_an_admin_key_in_production(tmp_path, env, public, open_):
    """Issue 23 item 5: /metrics shows every team's job counts; production keeps it for admins."""
    settings = Settings(home=tmp_path, env=env, metrics_public=public, webhook_secret="s" * 32)
    with TestClient(create_app(settings, reconcile=False)) as client:
        anonymous = client.get("/metrics")
        assert anonymous.status_code == (200 if open_ else 401)
        if not open_:
            assert anonymous.json() == {"detail": "Invalid or missing API key"}
            member = client.get("/metrics", headers=key_headers(settings, role="member"))
            assert (member.status_code, member.json()) == (403, {"detail": "Admin role required"})
        admin = client.get("/metrics", headers=key_headers(settings, role="admin"))
        assert admin.status_code == 200 and "coscope_jobs" in admin.text


def test_no_cors_headers_for_an_untrusted_origin(client):
    response = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("secret", ["changethis", "", "secret", "change-me"])
def test_production_refuses_placeholder_secrets(tmp_path, secret):
    with pytest.raises(ValidationError, match="COSCOPE_WEBHOOK_SECRET is a placeholder"):
        Settings(home=tmp_path, env="production", webhook_secret=secret)


def test_production_reads_secrets_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("COSCOPE_ENV", "production")
    monkeypatch.setenv("COSCOPE_WEBHOOK_SECRET", "changethis")
    with pytest.raises(ValidationError):
        Settings(home=tmp_path)
    monkeypatch.setenv("COSCOPE_WEBHOOK_SECRET", "a-real-secret-0123456789")
    assert Settings(home=tmp_path).env == "production"


def test_development_allows_the_placeholder_with_a_warning(tmp_path, caplog):
    from store.settings import _warn_once

    _warn_once.cache_clear()
    with caplog.at_level("WARNING", logger="coscope.store"):
        settings = Settings(home=tmp_path, env="development", webhook_secret="changethis")
    assert settings.webhook_secret == "changethis"
    assert "placeholder" in caplog.text


# ---- S18: idempotency -------------------------------------------------------------------------------


def test_idempotency_key_replays_the_same_job_and_refuses_another_body(client, settings):
    headers = {**key_headers(settings), "Idempotency-Key": "abc"}
    first = _submit(client, headers)
    again = _submit(client, headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = client.post("/v1/jobs", json={"spec": {**SPEC, "seed": 1}}, headers=headers)
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert client.get("/v1/jobs", headers=headers).json()["count"] == 1


def test_idempotency_keys_are_scoped_to_the_api_key(client, settings):
    a, b = key_headers(settings, team="a"), key_headers(settings, team="a")
    first = _submit(client, {**a, "Idempotency-Key": "shared"})
    other = _submit(client, {**b, "Idempotency-Key": "shared"})
    assert (first.status_code, other.status_code) == (201, 201)
    assert other.json()["id"] != first.json()["id"]
    assert _submit(client, {**a, "Idempotency-Key": "shared"}).json()["id"] == first.json()["id"]
    assert job_row(settings, first.json()["id"]).status == "queued"


def test_concurrent_posts_with_one_key_create_one_job(client, settings):
    headers = {**key_headers(settings), "Idempotency-Key": "fresh"}
    barrier, results = threading.Barrier(2), []

    def post():
        barrier.wait()
        results.append(_submit(client, headers))

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    codes = sorted(response.status_code for response in results)
    assert codes in ([200, 201], [201, 409])
    created = next(response for response in results if response.status_code == 201).json()
    if codes == [200, 201]:
        assert {response.json()["id"] for response in results} == {created["id"]}
    with session_scope(settings.database) as session:
        rows = select(func.count()).select_from(Job).where(Job.idempotency_key == "fresh")
        assert session.scalar(rows) == 1


def test_a_duplicate_insert_in_flight_is_refused_by_the_store(settings):
    """The race the 409 answers, made deterministic: B looks the key up before A commits, then inserts."""
    from sqlalchemy import event
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    from store.db import get_engine

    with session_scope(settings.database) as session:
        owner, _ = crud.create_key(session, "k")
    arguments = {"name": None, "tags": [], "priority": 0, "queue": "cpu", "idempotency_key": "k1",
                 "request_hash": "h"}
    engine = get_engine(settings.database)
    session_a, session_b = Session(engine, expire_on_commit=False), Session(engine, expire_on_commit=False)
    outcome, inserting = {}, threading.Event()

    def insert_b():
        try:
            crud.create_job(session_b, owner, SPEC, **arguments)
            outcome["b"] = "created"
        except IntegrityError:
            outcome["b"] = "conflict"

    thread = threading.Thread(target=insert_b)

    def before_execute(conn, cursor, statement, parameters, context, executemany):
        if threading.current_thread() is thread and statement.startswith("INSERT INTO jobs"):
            inserting.set()  # B's lookup found nothing; its insert is about to run

    event.listen(engine, "before_cursor_execute", before_execute)
    try:
        crud.create_job(session_a, owner, SPEC, **arguments)  # inserted, not committed: holds the write lock
        thread.start()
        assert inserting.wait(timeout=30)
        session_a.commit()
        thread.join(timeout=30)
        assert outcome == {"b": "conflict"}
    finally:
        event.remove(engine, "before_cursor_execute", before_execute)
        session_b.rollback()
        session_a.close()
        session_b.close()


# ---- S19: admin routes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [route for route in ROUTES if route[1].startswith("/v1/admin")])
def test_members_get_403_from_every_admin_route(client, settings, method, path):
    headers = key_headers(settings)
    job = _submit(client, headers).json()
    response = client.request(method, _fill(path, job["id"]), headers=headers)
    assert response.status_code == 403 and response.json() == {"detail": "Admin role required"}
    assert job_row(settings, job["id"]).status == "queued"


def test_an_admin_can_purge_and_cancel_any_teams_job(client, settings):
    job = _submit(client, key_headers(settings, team="a")).json()
    admin = key_headers(settings, team="ops", role="admin")
    assert client.post(f"/v1/admin/jobs/{job['id']}/cancel", headers=admin).status_code == 202
    _submit(client, key_headers(settings, team="b"))
    assert client.post("/v1/admin/queues/purge", headers=admin).json() == {"cancelled": 1}
