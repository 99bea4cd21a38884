"""Mirror one job attempt to an MLflow run (issue 15) on a background thread: MLflow never slows or fails a
job.

The trainer's thread only puts events on a queue (``Tracker.on_event``). This thread finds the job's run by
its ``coscope.job_id`` tag (a resumed attempt continues it, first sending the rows of earlier attempts from
the job store that the run lacks) or creates it, then sends the rows in batches
(``MlflowClient.log_batch``) every ``FLUSH_SECONDS``. A call that fails is retried with exponential backoff
until the server has been unreachable for ``COSCOPE_MLFLOW_GIVE_UP_SECONDS``; an error MLflow calls final
(a 4xx answer) gives up at once. Giving up stops tracking for the rest of the attempt: later rows are dropped,
and counted until the job ends. When the job ends, the runner calls ``close`` after the job's own status is
written: the last rows, the final accuracies and CO tags, the artifacts (report.json, summary.md,
curves.png; checkpoints with ``COSCOPE_MLFLOW_LOG_CHECKPOINTS``) and the run's end status (FINISHED, FAILED or
KILLED; a stale attempt leaves the run open for the attempt that took over). A ``tracking`` job event records
the outcome, as the webhooks do: ``logged`` (run id, rows, artifacts, status) or ``failed`` (stage, error
type, rows dropped; the error's text, which may name the server, stays in the worker log).

``mlflow`` (the ``coscope[mlflow]`` extra: mlflow-skinny) is imported on this thread, and only when
``COSCOPE_MLFLOW_TRACKING_URI`` is set: the package and the API never import it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from store import crud
from store.db import session_scope
from store.settings import Settings
from worker import tracking
from worker.tracking import TrackedJob

log = logging.getLogger("coscope.mlflow")
FLUSH_SECONDS = 1.0
BACKOFF_SECONDS = 0.5  # then 1, 2, 4, ... up to MAX_BACKOFF_SECONDS
MAX_BACKOFF_SECONDS = 8.0
CLOSE_SLACK_SECONDS = 30.0  # ``close`` waits give-up time plus this for the artifacts and the last call
ARTIFACTS = ("report.json", "summary.md", "curves.png")
CHECKPOINTS = ("checkpoint.pt", "best.pt")
# mlflow's own HTTP layer retries 7 times with backoff and waits 120 s per request: that would hide outages
# from our bounded retry. Operators may still set these.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
ROW_EVENTS = ("metrics", "epoch", "monitor")
TEAM_TAG = "coscope.team"  # on an experiment: the team whose runs it holds


class GaveUp(Exception):
    def __init__(self, stage: str, error: Exception) -> None:
        super().__init__(stage)
        self.stage, self.error = stage, error


def open_tracker(settings: Settings, job: TrackedJob, attempt: int) -> Tracker | None:
    """A started tracker when the workers have an MLflow server; None otherwise."""
    if not settings.mlflow_tracking_uri:
        return None
    return Tracker(settings, job, attempt).start()


class Tracker:
    def __init__(self, settings: Settings, job: TrackedJob, attempt: int) -> None:
        self.settings, self.job, self.attempt = settings, job, attempt
        self.out = settings.attempt_folder(job.id, attempt)
        self.run_id: str | None = None
        self.marks: dict[str, int] = {}
        self.sent = self.in_flight = 0  # rows: logged, in the batches being sent
        self._recorded = threading.Lock()  # one outcome per attempt: the first to take it records
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=f"mlflow-{job.id}", daemon=True)

    def start(self) -> Tracker:
        self._thread.start()
        return self

    # ---- The trainer's thread: no I/O ----------------------------------------------------------------
    def on_event(self, event: dict[str, Any]) -> None:
        if event["type"] in ROW_EVENTS:
            self._queue.put(("row", {key: value for key, value in event.items() if key != "type"}))
        elif event["type"] == "co_onset":
            self._queue.put(("tags", tracking.verdict_tags(event)))

    def close(self, outcome: str) -> None:
        """The job ended with ``outcome`` (a job status, or ``stale``): finish the run, in bounded time."""
        self._queue.put(("close", outcome))
        self._thread.join(self.settings.mlflow_give_up_seconds + CLOSE_SLACK_SECONDS)
        if self._thread.is_alive():  # e.g. still importing mlflow on a starved machine; the process may exit
            log.warning("MLflow tracking of job %s still busy; leaving it", self.job.id)
            self._record({"outcome": "failed", "stage": "close", "error": "timeout", "status_code": None,
                          "rows_dropped": None})

    # ---- The tracking thread -------------------------------------------------------------------------
    def _main(self) -> None:
        outcome = None
        try:
            client = self._connect()
            while True:
                rows, tags, outcome = self._collect()
                self._send(client, rows, tags)
                if outcome is not None:
                    self._finish(client, outcome)
                    return
        except GaveUp as gave_up:
            log.warning("MLflow tracking of job %s gave up at %s", self.job.id, gave_up.stage,
                        exc_info=gave_up.error)
            failure = {"stage": gave_up.stage, "error": type(gave_up.error).__name__,
                       "status_code": _status_code(gave_up.error)}
        except Exception:  # a bug here must not reach the job
            log.exception("MLflow tracking of job %s failed", self.job.id)
            failure = {"stage": "internal", "error": "internal_error", "status_code": None}
        # The rows never sent: those of the failed batch and every row until the job ends (a failure event
        # recorded at once would count only the rows queued at that moment, often none).
        dropped = self.in_flight + (self._rows_until_close() if outcome is None else 0)
        self._record({"outcome": "failed", **failure, "rows_dropped": dropped})

    def _collect(self) -> tuple[list[dict[str, Any]], dict[str, str], str | None]:
        """What arrived within FLUSH_SECONDS (or until ``close``)."""
        rows: list[dict[str, Any]] = []
        tags: dict[str, str] = {}
        deadline = time.monotonic() + FLUSH_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            try:
                kind, item = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if kind == "row":
                rows.append(item)
            elif kind == "tags":
                tags.update(item)
            else:
                return rows, tags, item
        return rows, tags, None

    def _rows_until_close(self) -> int:
        rows = 0
        while (kind := self._queue.get()[0]) != "close":
            rows += kind == "row"
        return rows

    def _connect(self) -> Any:
        for name, value in CLIENT_ENV.items():
            os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.settings.mlflow_tracking_uri)
        experiment_id = self._call("experiment", _experiment_id, client, self.job.experiment, self.job.team)
        run, created = self._call("run", _find_or_create_run, client, experiment_id, self.job, self.attempt)
        self.run_id = run.info.run_id
        if not created:  # a resumed attempt: the same run, past the steps logged before
            self.marks = tracking.marks_from_tags(run.data.tags)
            self._log(client, "run", tags=tracking.run_tags(self.job, self.attempt))
        params = {key: value for key, value in tracking.flatten(self.job.spec).items()
                  if key not in run.data.params}
        items = list(params.items())
        for start in range(0, len(items), tracking.BATCH_PARAMS):
            self._log(client, "params", params=dict(items[start:start + tracking.BATCH_PARAMS]))
        if self.attempt > 1:
            self._send(client, self._stored_rows(), {})
        return client

    def _stored_rows(self) -> list[dict[str, Any]]:
        """The rows earlier attempts wrote to the job store. A killed attempt's tracker had not sent its last
        ones, and the trainer resumes from its last checkpoint, after some of them: without these, MLflow
        would miss the steps between the tracker's last batch and that checkpoint."""
        with session_scope(self.settings.database) as session:
            return crud.job_metrics(session, self.job.id)

    def _send(self, client: Any, rows: list[dict[str, Any]], tags: dict[str, str]) -> None:
        """The rows past the logged steps, each batch with its new marks (a retried batch is sent as built:
        MLflow stores an identical metric once)."""
        rows, _ = tracking.new_rows(rows, self.marks)
        now, self.in_flight = int(time.time() * 1000), len(rows)
        for batch in tracking.batches(rows):
            _, marks = tracking.new_rows(batch, self.marks)
            metrics = [(key, value, now, row["step"])
                       for row in batch for key, value in tracking.row_metrics(row).items()]
            self._log(client, "metrics", metrics=metrics, tags=tracking.mark_tags(marks))
            self.marks, self.sent, self.in_flight = marks, self.sent + len(batch), self.in_flight - len(batch)
        if tags:
            self._log(client, "tags", tags=tags)

    def _finish(self, client: Any, outcome: str) -> None:
        report = _read_report(self.out) if outcome == "succeeded" else None
        if report is not None:
            step, now = tracking.last_step(report), int(time.time() * 1000)
            finals = [(key, value, now, step) for key, value in tracking.final_metrics(report).items()]
            self._log(client, "final", metrics=finals, tags=tracking.verdict_tags(report.get("co")))
        names = ARTIFACTS + (CHECKPOINTS if self.settings.mlflow_log_checkpoints else ())
        uploaded = [name for name in names if (self.out / name).is_file()]
        for name in uploaded:
            self._call("artifacts", client.log_artifact, self.run_id, str(self.out / name))
        status = tracking.RUN_STATUS.get(outcome)
        if status is not None:
            self._call("end", client.set_terminated, self.run_id, status)
        self._record({"outcome": "logged", "run_id": self.run_id, "experiment": self.job.experiment,
                      "rows": self.sent, "artifacts": uploaded, "status": status})

    def _log(self, client: Any, stage: str, metrics: list[tuple[str, float, int, int]] | None = None,
             params: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        self._call(stage, client.log_batch, self.run_id,
                   metrics=[Metric(key, value, stamp, step) for key, value, stamp, step in metrics or []],
                   params=[Param(key, value) for key, value in (params or {}).items()],
                   tags=[RunTag(key, value) for key, value in (tags or {}).items()])

    def _call(self, stage: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)``, retried with backoff while the server has been failing for less
        than the give-up time."""
        delay, failing_since = BACKOFF_SECONDS, None
        while True:
            try:
                return function(*args, **kwargs)
            except GaveUp:
                raise
            except Exception as error:
                code = _status_code(error)
                if code is not None and 400 <= code < 500 and code not in (408, 429):
                    raise GaveUp(stage, error) from error
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since + delay > self.settings.mlflow_give_up_seconds:
                    raise GaveUp(stage, error) from error
                log.info("MLflow %s for job %s: %s; retrying in %.1f s", stage, self.job.id,
                         type(error).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _record(self, data: dict[str, Any]) -> None:
        if not self._recorded.acquire(blocking=False):
            return
        try:
            with session_scope(self.settings.database) as session:
                crud.add_event(session, self.job.id, self.attempt, "tracking", data)
        except Exception:
            log.exception("could not record the tracking outcome of job %s", self.job.id)


class ForeignExperiment(Exception):
    """The experiment belongs to another team (its ``coscope.team`` tag): never log into it."""


def _experiment_id(client: Any, name: str, team: str) -> str:
    """The experiment's id, created if missing (another worker creating it meanwhile is fine) and tied to
    ``team`` by its ``coscope.team`` tag: an experiment first used by coscope for a team (or created for it)
    stays that team's, so a request naming another team's experiment gives up instead of mixing runs."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return str(client.create_experiment(name, tags={TEAM_TAG: team}))
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    owner = experiment.tags.get(TEAM_TAG)
    if owner is None:  # made outside coscope: the first team that logs into it claims it
        client.set_experiment_tag(experiment.experiment_id, TEAM_TAG, team)
        owner = client.get_experiment(experiment.experiment_id).tags.get(TEAM_TAG)
    if owner != team:
        raise GaveUp("experiment", ForeignExperiment(f"experiment {name!r} belongs to another team"))
    return str(experiment.experiment_id)


def _find_or_create_run(client: Any, experiment_id: str, job: TrackedJob, attempt: int) -> tuple[Any, bool]:
    """(the job's run, whether this call created it). Idempotent per job: the run is looked up by its
    ``coscope.job_id`` tag before any create, so a create retried after a lost response finds the run the
    first try made; two attempts that raced to create keep the oldest run and drop their own newer one."""
    runs = _job_runs(client, experiment_id, job.id)
    if runs:
        return runs[0], False
    mine = client.create_run(experiment_id, run_name=job.run_name, tags=tracking.run_tags(job, attempt))
    oldest = _job_runs(client, experiment_id, job.id)[0]
    if oldest.info.run_id != mine.info.run_id:
        client.delete_run(mine.info.run_id)
        return oldest, False
    return mine, True


def _job_runs(client: Any, experiment_id: str, job_id: str) -> list[Any]:
    """The job's live runs, oldest first (job ids are UUIDs: safe in the filter)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`coscope.job_id` = '{job_id}'",
                              max_results=50)
    return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))


def _status_code(error: Exception) -> int | None:
    get = getattr(error, "get_http_status_code", None)
    try:
        return int(get()) if get is not None else None
    except (TypeError, ValueError):
        return None


def _read_report(out: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return None
