"""Sweep routes: submit a grid as one request, list, read (per-cell table), cancel, live events (SSE), and
the table and heatmap as artifacts. Children are ordinary jobs (``/v1/jobs``), tagged ``sweep:<id>``."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import limits, paths, sse, sweep_table
from api.conditional import conditional
from api.deps import (
    ChangeWindowDep,
    CurrentKey,
    SessionDep,
    SettingsDep,
    get_current_key,
    get_publisher,
    limit_submissions,
)
from api.heatmap import heatmap_svg
from api.queue import Publisher, publish_and_mark
from api.routes.jobs import QUOTA_RETRY_SECONDS, redacted
from api.schemas import Problem, SweepCreate, SweepPublic, SweepsPublic, SweepSummary, errors
from core.cost import default_queue, estimate_cost
from core.spec import JobSpec, leaf_paths
from store import crud, sweeps, webhooks
from store.db import session_scope
from store.models import Sweep
from store.settings import Settings
from store.status import SWEEP_FINISHED_STATES

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], dependencies=[Depends(get_current_key)],
                   responses=errors(401, 422))
OWNED = errors(404)  # routes of one sweep
AXIS_PATHS = frozenset(leaf_paths()) - {"version", "seed"}  # seeds are the sweep's own list
MAX_PROBLEMS = 20  # a grid of bad cells names this many
ARTIFACTS = ("heatmap.svg", "table.csv", "table.json")


def get_owned_sweep(session: SessionDep, key: CurrentKey, sweep_id: Annotated[str, Path(max_length=64)]) -> Sweep:
    """The sweep if the caller's team owns it (admins: any); otherwise the same 404 as a missing sweep."""
    sweep = sweeps.get_team_sweep(session, sweep_id, None if key.role == "admin" else key.team)
    if sweep is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Sweep not found")
    return sweep


OwnedSweep = Annotated[Sweep, Depends(get_owned_sweep)]


def plan_children(body: SweepCreate, settings: Settings) -> list[sweeps.Child]:
    """Every child's resolved spec, validated like a job's; 422 naming the cell and the field otherwise."""
    axes = list(body.grid.items())
    problems = [{"loc": ["body", "grid", path], "type": "unknown_axis", "msg": _unknown_axis(path)}
                for path, _ in axes if path not in AXIS_PATHS]
    problems += [{"loc": ["body", "grid", path], "type": "duplicate_values", "msg": f"{path} repeats a value"}
                 for path, values in axes if len({json.dumps(v) for v in values}) < len(values)]
    seeds = body.seeds or [body.spec.seed]
    if len(set(seeds)) < len(seeds):
        problems.append({"loc": ["body", "seeds"], "type": "duplicate_values", "msg": "seeds repeats a value"})
    cells = sweep_table.grid_cells(axes)
    if len(cells) * len(seeds) > settings.sweep_max_children:
        problems.append({"loc": ["body", "grid"], "type": "too_many_children",
                         "msg": f"{len(cells)} cells x {len(seeds)} seeds = {len(cells) * len(seeds)} jobs; the "
                                f"limit is {settings.sweep_max_children}"})
    if problems:
        raise HTTPException(422, problems)
    base = body.spec.model_dump(mode="json")  # unresolved: defaults such as alpha follow each cell's epsilon
    specs, total = [], 0.0
    for params in cells:
        spec, cell_problems = _cell_spec(base, params, axes, settings)
        problems += cell_problems
        if spec is not None:
            specs.append(spec)
            total += estimate_cost(spec) * len(seeds)
    if not problems and total > settings.team_sweep_budget:
        problems.append({"loc": ["body", "grid"], "type": "budget_exceeded",
                         "msg": f"the sweep's estimated cost {total:.3g} image-passes (all {len(cells) * len(seeds)} "
                                f"jobs) exceeds the team's sweep budget of {settings.team_sweep_budget:.3g}"})
    if problems:
        raise HTTPException(422, problems[:MAX_PROBLEMS])
    children = []
    for position, seed in enumerate(seeds):
        for index, (params, spec) in enumerate(zip(cells, specs, strict=True)):
            child = spec.model_copy(update={"seed": seed})
            children.append(sweeps.Child(
                index=position * len(cells) + index, spec=child.resolved().model_dump(mode="json"),
                name=_child_name(body.name, params, seed), queue=body.queue or default_queue(child)))
    return children


def _unknown_axis(path: str) -> str:
    if path == "seed":
        return "seed is not an axis: list the seeds in the sweep's own seeds field"
    return f"{path} is not a spec field a sweep can vary (e.g. intervention.beta, training.epsilon)"


def _cell_spec(base: dict[str, Any], params: dict[str, Any], axes: list[tuple[str, list[Any]]],
               settings: Settings) -> tuple[JobSpec | None, list[dict[str, Any]]]:
    data = copy.deepcopy(base)
    for path, value in params.items():
        *sections, leaf = path.split(".")
        target = data
        for section in sections:
            target = target[section]
        target[leaf] = value
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as error:
        return None, [_cell_problem(problem, params, axes) for problem in error.errors()]
    found = [*paths.spec_path_problems(spec), *limits.budget_problems(spec, settings.team_budget)]
    return spec, [{**problem, "cell": params} for problem in found]


def _cell_problem(problem: Any, params: dict[str, Any], axes: list[tuple[str, list[Any]]]) -> dict[str, Any]:
    """A child's validation error, located at the grid value that caused it when the field is an axis."""
    field = ".".join(str(part) for part in problem["loc"])
    values = dict(axes)
    loc: list[Any] = ["body", "spec", *problem["loc"]]
    if field in values:
        loc = ["body", "grid", field, values[field].index(params[field])]
    return {"loc": loc, "msg": problem["msg"], "type": problem["type"], "cell": params}


def _child_name(name: str | None, params: dict[str, Any], seed: int) -> str:
    cell = ", ".join(f"{path.rsplit('.', 1)[-1]}={value}" for path, value in params.items())
    return f"{name or 'sweep'} [{cell}, seed={seed}]"[:200]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SweepPublic, summary="Submit a sweep",
             dependencies=[Depends(limit_submissions)],
             responses={200: {"model": SweepPublic, "description": "Replayed: this Idempotency-Key's sweep"},
                        **errors(409, 413, 429)})
def create_sweep(body: SweepCreate, key: CurrentKey, session: SessionDep, settings: SettingsDep,
                 response: Response, publisher: Annotated[Publisher, Depends(get_publisher)],
                 background: BackgroundTasks,
                 idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> Any:
    """Submit a grid; all its jobs are created (held) or none. Held jobs are released to the queue while the
    team is under its active-job quota, a few at a time (fair share); see ``store.sweeps``."""
    problems = webhooks.url_problems(body.callback_url)
    if problems:
        raise HTTPException(422, problems)
    children = plan_children(body, settings)
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True)
    try:
        sweep, created = sweeps.create_sweep(
            session, key, name=body.name, tags=body.tags, priority=body.priority,
            spec=body.spec.model_dump(mode="json"), axes=[[path, values] for path, values in body.grid.items()],
            seeds=body.seeds or [body.spec.seed], children=children, idempotency_key=idempotency_key,
            request_hash=hashlib.sha256(canonical.encode()).hexdigest(), callback_url=body.callback_url,
            max_held=settings.team_max_held_jobs)
    except crud.IdempotencyMismatch:
        raise HTTPException(422, [{"loc": ["header", "Idempotency-Key"], "type": "idempotency_mismatch",
                                   "msg": "this Idempotency-Key was used with a different request body"}]) from None
    except sweeps.HeldLimitExceeded:
        raise HTTPException(429, f"The team already has jobs waiting in sweeps; at most "
                                 f"{settings.team_max_held_jobs} may wait",
                            headers={"Retry-After": str(QUOTA_RETRY_SECONDS)}) from None
    except IntegrityError:
        raise HTTPException(409, "A request with this Idempotency-Key is being processed") from None
    if created:
        released = sweeps.release_held(session, settings.team_max_active_jobs, settings.sweep_max_waiting,
                                       team=key.team)
        background.add_task(publish_all, settings, publisher, released)
    else:
        response.status_code = status.HTTP_200_OK
    return to_public(session, sweep)


def publish_all(settings: Settings, publisher: Publisher, released: list[tuple[str, str]]) -> None:
    """After the commit; a failed publish leaves the job queued and unsent, for the reconciler."""
    for job_id, queue in released:
        publish_and_mark(settings, publisher, job_id, queue)


def _axes(sweep: Sweep) -> list[tuple[str, list[Any]]]:
    return [(path, values) for path, values in sweep.axes]


def summary_fields(sweep: Sweep, counts: dict[str, int]) -> dict[str, Any]:
    return {"id": sweep.id, "name": sweep.name, "tags": sweep.tags or [],
            "status": sweeps.sweep_status(counts, sweep.cancel_requested), "size": sweep.size, "counts": counts,
            "axes": [{"path": path, "values": values} for path, values in _axes(sweep)], "seeds": sweep.seeds,
            "created_at": sweep.created_at, "finished_at": sweep.finished_at}


def cell_table(session: Session, sweep: Sweep) -> tuple[list[str], list[dict[str, Any]]]:
    """The child ids (seed-major) and the per-cell summary."""
    children = [{"id": job.id, "index": job.sweep_index, "status": job.status, "report": job.report}
                for job in sweeps.children(session, sweep.id)]
    return [child["id"] for child in children], sweep_table.summarise_cells(_axes(sweep), sweep.seeds, children)


def to_public(session: Session, sweep: Sweep) -> SweepPublic:
    counts = sweeps.child_counts(session, [sweep.id])[sweep.id]
    jobs, cells = cell_table(session, sweep)
    return SweepPublic(**summary_fields(sweep, counts), jobs=jobs, cells=cells)


@router.get("", response_model=SweepsPublic, summary="List the team's sweeps")
def read_sweeps(key: CurrentKey, session: SessionDep, window: ChangeWindowDep,
                limit: Annotated[int, Query(ge=1, le=200)] = 50,
                offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> Any:
    """The team's sweeps (admins: every team's), newest first, without their cells; ``updated_after``: sweeps
    created, or with a child changed, after that time."""
    found, count = sweeps.list_sweeps(session, None if key.role == "admin" else key.team, limit, offset,
                                      created_after=window.created_after, updated_after=window.updated_after)
    counts = sweeps.child_counts(session, [sweep.id for sweep in found])
    return SweepsPublic(data=[SweepSummary(**summary_fields(sweep, counts[sweep.id])) for sweep in found],
                        count=count)


@router.get("/{sweep_id}", response_model=SweepPublic, summary="Read a sweep and its cells", responses=OWNED)
def read_sweep(sweep: OwnedSweep, session: SessionDep) -> Any:
    """Status, children per status, and per cell: its jobs, final clean and robust accuracy and CO verdicts
    (mean and standard deviation over the seeds that succeeded)."""
    return to_public(session, sweep)


@router.post("/{sweep_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=SweepPublic,
             summary="Cancel a sweep's unfinished jobs", responses={**OWNED, **errors(409)})
def cancel_sweep(sweep: OwnedSweep, session: SessionDep, settings: SettingsDep,
                 background: BackgroundTasks) -> Any:
    """Cancel every unfinished child: waiting ones at once, running ones at their next step."""
    try:
        sweeps.request_cancel(session, sweep)
    except crud.NotCancellable:
        raise HTTPException(409, f"Sweep already {sweep.status}") from None
    if sweeps.refresh(session, [sweep.id]):
        background.add_task(webhooks.notify_sweep, settings, sweep.id)
    session.refresh(sweep)
    return to_public(session, sweep)


@router.get("/{sweep_id}/events", summary="Follow a sweep's events (SSE)",
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}, **OWNED})
async def sweep_events(sweep: OwnedSweep, request: Request, settings: SettingsDep,
                       last_event_id: Annotated[int | None, Header(ge=0)] = None) -> StreamingResponse:
    """Server-Sent Events: ``child_finished`` and ``child_co_onset`` (with the child's id, cell and seed),
    then ``sweep_finished`` with the sweep's status and counts. Resumable with Last-Event-ID."""
    return StreamingResponse(sse.follow(request, _sweep_events(settings, sweep), last_event_id or 0),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sweep_events(settings: Settings, sweep: Sweep) -> sse.Fetch:
    cells, seeds = len(sweep_table.grid_cells(_axes(sweep))), sweep.seeds

    def fetch(after: int) -> tuple[list[sse.Frame], list[sse.Frame] | None]:
        with session_scope(settings.database) as session:
            counts = sweeps.child_counts(session, [sweep.id])[sweep.id]  # before the events: none can be missed
            cancelled = bool(session.scalar(select(Sweep.cancel_requested).where(Sweep.id == sweep.id)))
            found = sweeps.events_after(session, sweep.id, after)
        events = [(event_id, "child_finished" if kind == "status" else "child_co_onset",
                   {"job_id": job_id, "cell": index % cells, "seed": seeds[index // cells],
                    **redacted(data, settings)}) for event_id, kind, job_id, index, data in found]
        state = sweeps.sweep_status(counts, cancelled)
        if state not in SWEEP_FINISHED_STATES:
            return events, None
        return events, [(None, "sweep_finished", {"status": state, "counts": counts})]

    return fetch


@router.get("/{sweep_id}/artifacts/{name}", summary="Download a sweep's heatmap or table",
            responses={200: {"content": {"image/svg+xml": {"schema": {"type": "string"}},
                                         "text/csv": {"schema": {"type": "string"}},
                                         "application/json": {"schema": {"type": "object"}}}},
                       304: {"description": "Not modified (If-None-Match)"}, **OWNED,
                       410: {"model": Problem, "description": "heatmap.png: gone (heatmap.svg instead)"}})
def read_sweep_artifact(sweep: OwnedSweep, session: SessionDep, request: Request,
                  name: Annotated[str, Path(max_length=20)]) -> Response:
    """``heatmap.svg`` (robust and clean accuracy and the share of seeds that collapsed over the first two
    axes, seeds averaged), ``table.csv`` or ``table.json``: built from the children's reports at each request,
    so a running sweep shows what has finished so far. ``heatmap.png`` answers 410: the API draws no PNG
    (its image has no plotting library), and a redirect would hand an SVG to a client that asked for a PNG."""
    if name == "heatmap.png":
        raise HTTPException(410, "heatmap.png is no longer served: download heatmap.svg")
    if name not in ARTIFACTS:
        raise HTTPException(404, "Artifact not found")
    _, cells = cell_table(session, sweep)
    if name == "table.json":
        table = json.dumps({"axes": sweep.axes, "seeds": sweep.seeds, "cells": cells})
        return conditional(request, table.encode(), "application/json")
    if name == "table.csv":
        return conditional(request, sweep_table.table_csv(_axes(sweep), cells).encode(), "text/csv",
                           headers={"Content-Disposition": f'attachment; filename="{sweep.id}-table.csv"'})
    title = f"{sweep.name or 'sweep'} ({sweep.id[:8]}): {len(sweep.seeds)} seed(s), means over succeeded seeds"
    return conditional(request, heatmap_svg(_axes(sweep), cells, title), "image/svg+xml")
