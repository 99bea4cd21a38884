"""The FastAPI application. ``create_app`` wires settings, the publisher and the reconciler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.db import get_engine
from api.queue import Publisher, Reconciler
from api.routes import health, jobs
from api.settings import Settings, get_settings


def create_app(settings: Settings | None = None, reconcile: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        get_engine(settings.database)  # creates the tables on first use
        reconciler = None
        if reconcile:
            reconciler = Reconciler(settings, app.state.publisher)
            reconciler.start()
        yield
        if reconciler is not None:
            reconciler.stopped.set()

    app = FastAPI(title="coscope", version="1", lifespan=lifespan,
                  description="Adversarial-training jobs with catastrophic-overfitting onset reports. "
                              "Authenticate with `Authorization: Bearer <key>` (`coscope keys create`).")
    app.state.publisher = Publisher(settings)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.dependency_overrides[get_settings] = lambda: settings
    app.include_router(health.router)
    app.include_router(jobs.router)
    return app


async def validation_error(request: Request, error: Exception) -> JSONResponse:
    """422 naming each bad field; the offending input is not echoed (it may be huge, or NaN, which JSON
    cannot carry)."""
    assert isinstance(error, RequestValidationError)
    detail = [{"loc": list(problem["loc"]), "msg": problem["msg"], "type": problem["type"]}
              for problem in error.errors()]
    return JSONResponse({"detail": detail}, status_code=422)
