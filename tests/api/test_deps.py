"""The request's session: one unit of work that commits before the response is sent."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from api.deps import SessionDep, SettingsDep
from store import crud
from store.db import session_scope
from store.settings import get_settings


def test_a_routes_writes_are_committed_before_its_response_is_sent(settings):
    """The body below is produced while the response is sent, and reads the store in its own session: it
    sees the route's write only if the request's session committed first (FastAPI's default scope for a
    dependency with yield would commit after the response)."""
    app = FastAPI()
    app.dependency_overrides[get_settings] = lambda: settings

    @app.post("/write")
    def write(session: SessionDep, settings: SettingsDep) -> StreamingResponse:
        crud.create_key(session, "written")

        def body():
            with session_scope(settings.database) as other:
                yield ",".join(key.name for key in crud.list_keys(other))

        return StreamingResponse(body())

    with TestClient(app) as client:
        assert client.post("/write").text == "written"


def test_a_route_that_fails_writes_nothing(settings):
    app = FastAPI()
    app.dependency_overrides[get_settings] = lambda: settings

    @app.post("/fail")
    def fail(session: SessionDep) -> None:
        crud.create_key(session, "lost")
        raise RuntimeError("after the write")

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/fail").status_code == 500
    with session_scope(settings.database) as session:
        assert crud.list_keys(session) == []
