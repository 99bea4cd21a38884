"""Health, readiness and Prometheus metrics. Health and readiness need no key; the metrics (job counts of every
team) need an admin key unless ``COSCOPE_METRICS_PUBLIC`` (default: public in development only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import text

from api.deps import SessionDep, SettingsDep, bearer, get_current_key, get_publisher, require_admin
from api.queue import Publisher
from store import crud
from store.db import session_scope
from store.settings import Settings
from store.status import JOB_STATES

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database and broker")
async def readyz(settings: SettingsDep, response: Response,
                 publisher: Annotated[Publisher, Depends(get_publisher)]) -> dict[str, str]:
    """The database and the broker are reachable (503 otherwise)."""
    database = await run_in_threadpool(_database_ok, settings)
    broker = await run_in_threadpool(publisher.ping)
    if not (database and broker):
        response.status_code = 503
    return {"database": "ok" if database else "unreachable", "broker": "ok" if broker else "unreachable"}


def _database_ok(settings: Settings) -> bool:
    try:
        with session_scope(settings.database) as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


class StoreCollector:
    """Reads the job store at scrape time: jobs by state, queue depth, durations, training throughput (SQL
    aggregates: a scrape reads no report into the process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Any:
        with session_scope(self.settings.database) as session:
            stats = crud.job_stats(session)
        by_state = GaugeMetricFamily("coscope_jobs", "Jobs by state", labels=["state"])
        for state in JOB_STATES:
            by_state.add_metric([state], sum(n for (status, _), n in stats.by_status_and_queue.items()
                                             if status == state))
        depth = GaugeMetricFamily("coscope_queue_depth", "Queued jobs by queue", labels=["queue"])
        for queue in ("cpu", "gpu"):
            depth.add_metric([queue], stats.by_status_and_queue.get(("queued", queue), 0))
        duration = GaugeMetricFamily("coscope_job_duration_seconds_sum", "Total run time of succeeded jobs")
        duration.add_metric([], stats.succeeded_seconds)
        count = GaugeMetricFamily("coscope_job_duration_seconds_count", "Succeeded jobs timed")
        count.add_metric([], stats.succeeded_timed)
        throughput = GaugeMetricFamily("coscope_train_images_per_second",
                                       "Mean training throughput of succeeded jobs")
        throughput.add_metric([], stats.mean_train_images_per_second or 0.0)
        yield from (by_state, depth, duration, count, throughput)


def metrics_access(settings: SettingsDep, session: SessionDep,
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """Every team's job counts are not for anyone who can reach the port: an admin key outside development."""
    if not settings.metrics_open:
        require_admin(get_current_key(session, credentials))


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            dependencies=[Depends(metrics_access)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, 401: {}, 403: {}})
def metrics(settings: SettingsDep) -> Response:
    """Prometheus text format. Production: an admin key (Prometheus sends it with ``authorization:
    credentials``), unless ``COSCOPE_METRICS_PUBLIC=true``."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(settings))  # type: ignore[arg-type]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
