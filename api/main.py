"""The FastAPI application. ``create_app`` wires settings, the publisher, the reconciler, the sweep keeper,
the retention keeper and the limits."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.limits import BodySizeLimit, RateLimiter
from api.queue import Publisher, Reconciler, SweepKeeper
from api.retention import RetentionKeeper
from api.routes import admin, health, jobs, me, sweeps, ui
from store.db import get_engine
from store.settings import Settings, get_settings

log = logging.getLogger("coscope.api")


def create_app(settings: Settings | None = None, reconcile: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        get_engine(settings.database)  # creates the tables on first use
        threads = [Reconciler(settings, app.state.publisher), SweepKeeper(settings, app.state.publisher),
                   RetentionKeeper(settings)]
        if reconcile:
            for thread in threads:
                thread.start()
        yield
        for thread in threads:
            thread.stopped.set()

    docs = settings.docs_enabled  # production serves no /docs, /redoc, /openapi.json unless COSCOPE_DOCS=1
    app = FastAPI(title="coscope", version="1", lifespan=lifespan,
                  generate_unique_id_function=lambda route: route.name,  # operationId: the function's name
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None,
                  description="Adversarial-training jobs with catastrophic-overfitting onset reports. "
                              "Authenticate with `Authorization: Bearer <key>` (`coscope keys create`).")
    app.state.publisher = Publisher(settings)
    app.state.stopping = threading.Event()  # set as the server's shutdown begins: event streams end (api.sse)
    app.state.limiter = RateLimiter(settings.team_submits_per_minute)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ui.UiSecurityHeaders)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
    app.dependency_overrides[get_settings] = lambda: settings
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(sweeps.router)
    app.include_router(admin.router)
    app.include_router(me.router)
    app.include_router(ui.router)
    app.mount("/ui/static", ui.static_files, name="ui-static")
    return app


async def validation_error(request: Request, error: Exception) -> JSONResponse:
    """422 naming each bad field; the offending input is not echoed (it may be huge, or NaN, which JSON
    cannot carry)."""
    assert isinstance(error, RequestValidationError)
    detail = [{"loc": list(problem["loc"]), "msg": problem["msg"], "type": problem["type"]}
              for problem in error.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """A generic 500: no traceback, path or exception text reaches the client (it stays in the log)."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return JSONResponse({"detail": "Internal server error"}, status_code=500)
