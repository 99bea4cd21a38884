"""Request and response shapes, split by direction: clients never set ids, owners, status or attempts."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from core.spec import JobSpec

TEAM_EXPERIMENT_PREFIX = "coscope/"  # a team's default MLflow experiment is coscope/<team>
# MLflow names: printable, no control characters; tag keys as MLflow allows them (letters, digits, _-./ space)
ExperimentName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.,:@()/ -]+$")]
RESERVED_TAG_PREFIXES = ("coscope.", "mlflow.")  # the worker's and MLflow's own run tags


def _unreserved(key: str) -> str:
    if key.startswith(RESERVED_TAG_PREFIXES):
        raise ValueError(f"tag keys starting with {' or '.join(RESERVED_TAG_PREFIXES)} are reserved")
    return key


TagKey = Annotated[str, Field(min_length=1, max_length=250, pattern=r"^[A-Za-z0-9_./ -]+$"),
                   AfterValidator(_unreserved)]
TagValue = Annotated[str, Field(max_length=500)]


class Tracking(BaseModel):
    """Where a job's MLflow run goes (when the workers have ``COSCOPE_MLFLOW_TRACKING_URI``): an experiment
    (default ``coscope/<team>``) and extra run tags. The ``coscope.`` and ``mlflow.`` tag keys are the
    worker's own. No server address or credentials here: those are the workers' settings."""

    model_config = ConfigDict(extra="forbid")

    experiment: ExperimentName | None = None
    tags: dict[TagKey, TagValue] = Field(default_factory=dict, max_length=20)

    def problems(self, team: str) -> list[dict[str, Any]]:
        """Another team's experiments (``coscope/<team>`` and below it) are not this team's to write to."""
        name, own = self.experiment, TEAM_EXPERIMENT_PREFIX + team
        if name is not None and name.startswith(TEAM_EXPERIMENT_PREFIX) and not (
                name == own or name.startswith(own + "/")):
            return [{"loc": ["body", "tracking", "experiment"], "type": "foreign_experiment",
                     "msg": f"experiments under {TEAM_EXPERIMENT_PREFIX} belong to their team; "
                            f"use {TEAM_EXPERIMENT_PREFIX}{team} or a name outside it"}]
        return []


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: JobSpec
    name: str | None = Field(None, min_length=1, max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=20)
    priority: int = Field(0, ge=0, le=9)
    queue: Literal["cpu", "gpu"] | None = None  # None: core.cost.default_queue (by estimated cost)
    callback_url: str | None = Field(None, min_length=1, max_length=2000)  # webhook; see store/webhooks.py
    tracking: Tracking | None = None  # MLflow experiment and tags (worker/mlflow_run.py)


class JobError(BaseModel):
    code: str
    message: str | None


class FinalAccuracy(BaseModel):
    """The report's final test accuracies (robust: under its PGD attack), in [0, 1]."""
    clean_accuracy: float | None
    robust_accuracy: float | None


class JobSummary(BaseModel):
    """A job as lists show it: everything of ``JobPublic`` but the spec (lists never read the spec or the
    report; ``GET /v1/jobs/{id}`` has the spec)."""

    id: str
    name: str | None
    tags: list[str]
    sweep_id: str | None  # a sweep's child: its sweep (the job feed is the sweeps' feed too)
    priority: int
    queue: str
    status: str
    attempt: int
    progress: dict[str, Any]
    co: dict[str, Any] | None
    error: JobError | None
    final: FinalAccuracy | None  # once the job succeeded with a report
    created_at: dt.datetime
    updated_at: dt.datetime | None  # the last change a client can see (lists filter on it: updated_after)
    # that change's place in the store's commit order, opaque: poll lists with changed_after=<the last one seen>;
    # null in the answer to the request that made the change (numbered when it commits)
    change_cursor: str | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class JobPublic(JobSummary):
    spec: dict[str, Any]


class JobsPublic(BaseModel):
    data: list[JobSummary]
    count: int  # every job that matches the filters, not only this page's


class AdminJobSummary(JobSummary):
    team: str


class AdminJobsPublic(BaseModel):
    data: list[AdminJobSummary]
    count: int


class PurgePublic(BaseModel):
    cancelled: int


class RetentionPublic(BaseModel):
    """What one retention run deleted: the checkpoints of these jobs (their count, files and bytes)."""
    jobs: int
    files: int
    bytes: int
    job_ids: list[str]
    more: bool  # the batch was full: call again for the next one


class JobDeleted(BaseModel):
    """A deleted job: its id and what went with it (event and metrics rows, files of its run folder)."""
    id: str
    events: int
    metrics: int
    files: int
    bytes: int


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    team: str = Field("default", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    role: Literal["member", "admin"] = "member"


class KeyPublic(BaseModel):
    """An API key without its hash."""

    id: str
    name: str
    team: str
    role: str
    created_at: dt.datetime
    revoked: bool


class KeyCreated(KeyPublic):
    key: str  # shown once; only its hash is stored


class KeysPublic(BaseModel):
    data: list[KeyPublic]
    count: int


class Artifact(BaseModel):
    name: str
    size: int


class ArtifactsPublic(BaseModel):
    data: list[Artifact]


class MetricsPublic(BaseModel):
    data: list[dict[str, Any]]


AxisValue = bool | int | float | Annotated[str, Field(max_length=100)]
AxisPath = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z_]+(\.[a-z_]+)*$")]


class SweepCreate(BaseModel):
    """A grid of jobs: ``spec`` with every combination of the ``grid`` axes' values (dotted spec paths, e.g.
    ``intervention.beta``), each run once per seed."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str | None = Field(None, min_length=1, max_length=200)
    spec: JobSpec
    grid: dict[AxisPath, Annotated[list[AxisValue], Field(min_length=1, max_length=50)]] = Field(
        min_length=1, max_length=4)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(None, min_length=1, max_length=20)
    tags: list[str] = Field(default_factory=list, max_length=20)
    priority: int = Field(0, ge=0, le=9)
    queue: Literal["cpu", "gpu"] | None = None  # None: each child's own default (core.cost.default_queue)
    callback_url: str | None = Field(None, min_length=1, max_length=2000)  # sweep.finished webhook


class Stat(BaseModel):
    mean: float
    std: float | None  # sample standard deviation; null below two values
    n: int


class SweepChild(BaseModel):
    id: str
    seed: int
    status: str


class SeedVerdict(BaseModel):
    seed: int
    verdict: str | None  # core.co code once the child succeeded


class CellCO(BaseModel):
    verdicts: list[SeedVerdict]
    collapsed: int  # seeds whose verdict is "co"
    measured: int  # seeds with a verdict
    onset_step: Stat | None  # over the collapsed seeds


class SweepCell(BaseModel):
    index: int
    params: dict[str, Any]
    jobs: list[SweepChild]
    clean_accuracy: Stat | None  # final clean accuracy over the succeeded seeds
    robust_accuracy: Stat | None  # final PGD accuracy over the succeeded seeds
    co: CellCO


class SweepAxis(BaseModel):
    path: str
    values: list[Any]


class SweepSummary(BaseModel):
    id: str
    name: str | None
    tags: list[str]
    status: str
    size: int
    counts: dict[str, int]  # children per status
    axes: list[SweepAxis]
    seeds: list[int]
    created_at: dt.datetime
    finished_at: dt.datetime | None


class SweepPublic(SweepSummary):
    jobs: list[str]  # child job ids, seed-major (every cell's first seed first)
    cells: list[SweepCell]


class SweepsPublic(BaseModel):
    data: list[SweepSummary]
    count: int


class Problem(BaseModel):
    """An error: what went wrong, in words."""
    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int]  # where: e.g. ["body", "spec", "training", "epsilon"] or ["query", "limit"]
    msg: str
    type: str
    cell: dict[str, Any] | None = None  # sweeps: the grid cell whose child spec is invalid


class ValidationProblems(BaseModel):
    """422: every invalid field, each named by its location."""
    detail: list[FieldProblem]


ERROR_TEXT = {
    401: ("Missing, unknown or revoked API key (send `Authorization: Bearer <key>`)", Problem),
    403: ("The key is not an admin's", Problem),
    404: ("Not found, or owned by another team (the same answer)", Problem),
    409: ("Conflict: already finished, or a request with this Idempotency-Key is in flight", Problem),
    413: ("Request body over the size limit", Problem),
    422: ("Invalid input: each problem names its field (`loc`)", ValidationProblems),
    429: ("Submission rate, active-job quota or sweep wait limit reached: retry after `Retry-After` seconds",
          Problem),
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error status codes (``ERROR_TEXT``)."""
    return {code: {"model": ERROR_TEXT[code][1], "description": ERROR_TEXT[code][0]} for code in codes}


# The job request's examples in the OpenAPI document: examples/quickstart.yaml and
# examples/paper/injected-fgsm.yaml as requests (tests/api/test_contract.py keeps them equal to the files).
JOB_EXAMPLES: dict[str, dict[str, Any]] = {
    "quickstart": {
        "summary": "Quickstart: FGSM-AT on synthetic data (examples/quickstart.yaml), about 10 s on a CPU",
        "value": {"name": "quickstart", "tags": ["example"], "spec": {
            "seed": 0,
            "dataset": {"name": "synthetic", "synthetic_train_size": 1024, "synthetic_test_size": 256},
            "model": {"arch": "preact_resnet18", "width": 8},
            "training": {"method": "fgsm", "epsilon": 8, "epochs": 3, "batch_size": 128, "log_every": 4},
            "evaluation": {"pgd_steps": 10, "restarts": 2, "test_subset": 256},
            "monitor": {"train_images": 128}}},
    },
    "paper": {
        "summary": "The paper's headline setting: injected CIFAR-10, beta 4/255, FGSM-AT at epsilon 6/255 "
                   "(examples/paper/injected-fgsm.yaml; GPU scale)",
        "value": {"name": "paper: injected beta=4, eps=6", "tags": ["paper"], "queue": "gpu", "spec": {
            "dataset": {"name": "imagefolder", "path": "cifar10-jpeg", "normalization": "cifar10"},
            "intervention": {"kind": "inject", "beta": 4},
            "training": {"method": "fgsm", "epsilon": 6}}},
    },
}
