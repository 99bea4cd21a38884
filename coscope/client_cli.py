"""Client sub-commands of ``coscope`` (submit, status, watch, cancel, download, jobs) and ``show_report``.

``coscope/cli.py`` wires them in::

    add_client_commands(commands)                   # commands = parser.add_subparsers(dest="command")
    if args.command in CLIENT_COMMANDS:
        return run_client_command(args)

Exit codes (``ExitCode``), one per failure class so a pipeline step can gate on them: 0 done (for
``watch``, ``submit --wait`` and ``sweep submit --wait``: the job or sweep succeeded), 1 the job or sweep
failed or the server refused the call (409), 2 bad input (unreadable spec, a 422 printed per field, bad
arguments, no API key), 3 the job or sweep was cancelled, 4 the server cannot be reached, 5 the key was
refused (401) or lacks the role (403), 6 not found (404: unknown, or another team's), 7 rate limit or quota
(429: retry later), 130 interrupted (the job keeps running). Errors are one line each on stderr, never a
traceback. ``--output json`` (submit, status, jobs) prints the API's JSON on stdout instead of text, with the
same exit codes.
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.co import VERDICTS  # pure, no torch
from coscope.client import (
    TERMINAL_STATUSES,
    ClientError,
    CoscopeClient,
    Event,
    ServerUnreachable,
    resolve_connection,
)
from store.status import JOB_STATES

CLIENT_COMMANDS = frozenset({"submit", "status", "watch", "cancel", "download", "jobs", "sweep"})
STATUSES = JOB_STATES

# The test seam: tests swap in a factory whose clients use httpx.MockTransport.
_make_client: Callable[[str, str], CoscopeClient] = CoscopeClient


class ExitCode(enum.IntEnum):
    DONE = 0
    FAILED = 1  # the job or sweep failed, or the server refused the call (409, 5xx)
    BAD_INPUT = 2
    CANCELLED = 3
    UNREACHABLE = 4
    UNAUTHORISED = 5  # 401 or 403
    NOT_FOUND = 6
    RATE_LIMITED = 7  # 429: the team's submission rate or active-job quota
    INTERRUPTED = 130


def outcome_code(status: str) -> ExitCode:
    """The exit code of a finished job or sweep's status."""
    return {"succeeded": ExitCode.DONE, "cancelled": ExitCode.CANCELLED}.get(status, ExitCode.FAILED)


def add_output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", choices=("text", "json"), default="text",
                        help="json: the API's JSON on stdout, for scripts (exit codes unchanged)")


def print_json(value: Any) -> None:
    _out(json.dumps(value, indent=2, sort_keys=True))


class _Abort(Exception):
    """Stop with this exit code; the message is already on stderr."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")


# ---- Parsers -------------------------------------------------------------------------------------
def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """``--server``/``--key``; also for the lead's ``coscope report`` when it takes a job id."""
    parser.add_argument("--server", default=None,
                        help="API address (default: $COSCOPE_SERVER, $COSCOPE_HOME/client.json, "
                             "http://127.0.0.1:8000)")
    parser.add_argument("--key", default=None,
                        help="API key (default: $COSCOPE_API_KEY, $COSCOPE_HOME/client.json, "
                             "$COSCOPE_HOME/api-key)")


def add_client_commands(subparsers: Any) -> None:
    """Register the client sub-commands on the ``coscope`` sub-parsers (``dest="command"``)."""
    submit = subparsers.add_parser("submit", help="send a job spec to the server")
    submit.add_argument("spec", metavar="SPEC", help="job spec file (YAML or JSON); the server validates it")
    submit.add_argument("--wait", action="store_true", help="follow the job until it finishes")
    submit.add_argument("--name", default=None, help="a label for the job")
    submit.add_argument("--tag", action="append", default=[], dest="tags", metavar="TAG",
                        help="a tag (repeatable)")
    submit.add_argument("--priority", type=int, default=0, metavar="0-9", help="0 (default) to 9 (first)")
    submit.add_argument("--queue", choices=("cpu", "gpu"), default=None, help="default: the server's choice")
    submit.add_argument("--idempotency-key", default=None,
                        help="resubmitting with the same key returns the first job instead of a new one")
    add_output_option(submit)
    for name, text in (("status", "show a job"), ("watch", "follow a job's progress until it finishes"),
                       ("cancel", "cancel a queued or running job")):
        command = subparsers.add_parser(name, help=text)
        command.add_argument("job_id", metavar="ID")
        add_connection_options(command)
        if name == "status":
            add_output_option(command)
    download = subparsers.add_parser("download", help="download one of a job's artifacts")
    download.add_argument("job_id", metavar="ID")
    download.add_argument("name", metavar="NAME", help="artifact name (see `coscope status ID`)")
    download.add_argument("--out", default=None, help="file or folder to write (default: ./NAME)")
    jobs = subparsers.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--status", choices=STATUSES, default=None)
    jobs.add_argument("--tag", default=None)
    jobs.add_argument("--limit", type=int, default=20)
    add_output_option(jobs)
    for command in (submit, download, jobs):
        add_connection_options(command)
    from coscope.sweep_cli import add_sweep_commands  # it builds on this module's helpers

    add_sweep_commands(subparsers)


# ---- Dispatch ------------------------------------------------------------------------------------
def run_client_command(args: argparse.Namespace) -> int:
    """Run one client sub-command; returns the exit code."""
    handler = _HANDLERS[args.command]
    try:
        return handler(args)
    except _Abort as abort:
        return abort.code
    except ClientError as error:
        return _explain(error)
    except KeyboardInterrupt:
        job_id = getattr(args, "job_id", None)
        if getattr(args, "sweep_command", None) == "submit":
            _err("coscope: interrupted; the sweep keeps running (`coscope sweep cancel ID` stops it)")
            return ExitCode.INTERRUPTED
        _err("coscope: interrupted" + (f"; job {job_id} keeps running (`coscope cancel {job_id}` stops it)"
                                       if job_id else ""))
        return ExitCode.INTERRUPTED


def _connect(server: str | None, key: str | None) -> CoscopeClient:
    try:
        server, key = resolve_connection(server, key)
    except ClientError as error:
        _err(f"coscope: {error}")
        raise _Abort(2) from error
    return _make_client(server, key)


def _explain(error: ClientError) -> int:
    """One clear line (or one per invalid field) for a failed call, and its ``ExitCode``."""
    if isinstance(error, ServerUnreachable):
        _err(f"coscope: cannot reach {error.server} — is `coscope serve` running?")
        return ExitCode.UNREACHABLE
    if error.status_code == 422:
        _err("coscope: the server rejected the request:")
        for line in _validation_lines(error.detail):
            _err(f"  {line}")
        return ExitCode.BAD_INPUT
    if error.status_code == 401:
        _err(f"coscope: the server rejected the API key ({error.detail or 'unauthorised'}); "
             "pass --key or set COSCOPE_API_KEY")
        return ExitCode.UNAUTHORISED
    code = {403: ExitCode.UNAUTHORISED, 404: ExitCode.NOT_FOUND, 429: ExitCode.RATE_LIMITED}.get(
        error.status_code or 0, ExitCode.FAILED)
    if error.status_code is not None and isinstance(error.detail, str):
        _err(f"coscope: {error.detail} ({error.status_code})")
        return code
    _err(f"coscope: {error}")
    return code


def _validation_lines(detail: Any) -> Iterator[str]:
    """FastAPI's 422 ``{"loc": ["body", "spec", "training", "epsilon"], "msg": m}`` items as
    ``spec.training.epsilon: m``."""
    if not isinstance(detail, list):
        yield str(detail)
        return
    for problem in detail:
        if not isinstance(problem, dict):
            yield str(problem)
            continue
        loc = [str(part) for part in problem.get("loc", [])]
        if loc[:1] == ["body"]:
            loc = loc[1:]
        cell = problem.get("cell")
        where = f" (cell {', '.join(f'{path}={value}' for path, value in cell.items())})" if cell else ""
        yield f"{'.'.join(loc) or '(top level)'}{where}: {problem.get('msg', problem)}"


# ---- submit --------------------------------------------------------------------------------------
def _read_spec(path: str) -> dict[str, Any]:
    """The spec file as a dict, sent as-is (the server validates); exit 2 on anything JSON cannot carry."""
    import yaml

    try:
        spec = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        _err(f"coscope: cannot read {path}: {error.strerror}")
        raise _Abort(2) from error
    except yaml.YAMLError as error:
        _err(f"coscope: cannot parse {path}: {error}")
        raise _Abort(2) from error
    if not isinstance(spec, dict):
        _err(f"coscope: {path} must hold a mapping (a job spec), not {type(spec).__name__}")
        raise _Abort(2)
    bad = list(_non_finite(spec, "spec"))
    if bad:
        _err(f"coscope: invalid spec {path}:")
        for where in bad:
            _err(f"  {where}: NaN and infinite numbers are not allowed")
        raise _Abort(2)
    try:
        json.dumps(spec)
    except TypeError as error:  # YAML dates, sets, ...
        _err(f"coscope: {path} cannot be sent as JSON: {error}")
        raise _Abort(2) from error
    return spec


def _non_finite(value: Any, where: str) -> Iterator[str]:
    if isinstance(value, float) and not math.isfinite(value):
        yield where
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite(item, f"{where}.{index}")


def _submit(args: argparse.Namespace) -> int:
    spec = _read_spec(args.spec)
    with _connect(args.server, args.key) as client:
        job = client.submit(spec, name=args.name, tags=args.tags, priority=args.priority, queue=args.queue,
                            idempotency_key=args.idempotency_key)
        if args.output == "json":
            if args.wait:  # no progress display: stdout is the final job's JSON alone
                job = client.wait(job["id"])
            print_json(job)
            return outcome_code(job["status"]) if args.wait else ExitCode.DONE
        _out(f"job {job['id']} {job['status']}")
        if not args.wait:
            return ExitCode.DONE
        return _follow(client, job["id"])


# ---- watch / --wait ------------------------------------------------------------------------------
class _Display:
    """Turns job events into a tqdm bar (``progress``) and summary lines (``epoch``, ``co_onset``, ...)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.status: str | None = None

    def write(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line)  # prints above the bar, on stdout

    def __call__(self, event: Event) -> None:
        data = event.data
        if event.type == "status":
            status = data.get("status")
            if status != self.status and status not in TERMINAL_STATUSES:
                self.write(f"status: {status}")
            self.status = status
        elif event.type == "progress" and data.get("total_steps"):
            self._progress(data)
        elif event.type == "epoch":
            self.write(_epoch_line(data))
        elif event.type == "monitor" and self.bar is not None:
            self.bar.set_postfix({name: f"{data[f'{name}_accuracy']:.3f}" for name in ("clean", "fgsm", "pgd")
                                  if isinstance(data.get(f"{name}_accuracy"), (int, float))})
        elif event.type == "co_onset":
            rule = (data.get("rule") or {}).get("name", "onset rule")
            confirmed = f", confirmed at step {data['confirmed_step']}" if data.get("confirmed_step") else ""
            self.write(f"CO onset at step {data.get('onset_step')} ({rule}){confirmed}")
        elif event.type == "co_verdict":
            self.write(f"CO verdict: {verdict_line(data)}")
        elif event.type == "cancel_requested":
            self.write("cancel requested; the worker stops at its next step")

    def _progress(self, data: dict[str, Any]) -> None:
        from tqdm import tqdm

        step, total = int(data.get("step") or 0), int(data["total_steps"])
        if self.bar is None:  # ``initial``: joining a running job must not count the steps done as our rate
            self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, disable=None)
        self.bar.total = total
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)
        if data.get("epoch") is not None:
            self.bar.set_description(f"epoch {data['epoch'] + 1}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _epoch_line(row: dict[str, Any]) -> str:
    parts = [f"{label} {row[key]:.4f}" for label, key in
             (("train loss", "train_loss"), ("attacked acc", "train_adv_accuracy"),
              ("test clean acc", "test_clean_accuracy")) if isinstance(row.get(key), (int, float))]
    epoch = row.get("epoch")
    return f"epoch {epoch + 1 if isinstance(epoch, int) else '?'}: " + ", ".join(parts)


def _follow(client: CoscopeClient, job_id: str) -> int:
    display = _Display()
    try:
        job = client.wait(job_id, on_event=display)
    finally:
        display.close()
    status = job["status"]
    _out(f"job {job_id} {status}")
    if status != "succeeded":
        if job.get("error"):
            _out(f"error: {_error_text(job['error'])}")
        return outcome_code(status)
    try:
        _print_report(client.report(job_id))
    except ClientError as error:
        if error.status_code != 404:
            raise
        _out("the report is not available yet (`coscope report ID` fetches it later)")
    return 0


def _watch(args: argparse.Namespace) -> int:
    with _connect(args.server, args.key) as client:
        return _follow(client, args.job_id)


# ---- status, cancel, download, jobs --------------------------------------------------------------
def _status(args: argparse.Namespace) -> int:
    with _connect(args.server, args.key) as client:
        job = client.get(args.job_id)
    if args.output == "json":
        print_json(job)
        return ExitCode.DONE
    for label, value in _job_lines(job):
        _out(f"{label:<9} {value}")
    return 0


def _job_lines(job: dict[str, Any]) -> Iterator[tuple[str, str]]:
    yield "job", job["id"] + (f"  ({job['name']})" if job.get("name") else "")
    yield "status", f"{job['status']} (attempt {job.get('attempt', 0)})"
    where = [f"queue {job.get('queue') or 'default'}", f"priority {job.get('priority', 0)}"]
    if job.get("tags"):
        where.append("tags " + ", ".join(job["tags"]))
    yield "placement", ", ".join(where)
    if job.get("progress"):
        yield "progress", _progress_text(job["progress"])
    if job.get("co") or job["status"] in ("running", "succeeded"):
        yield "CO", _co_text(job.get("co"), job["status"])
    if job.get("error"):
        yield "error", _error_text(job["error"])
    for key in ("created_at", "started_at", "finished_at"):
        if job.get(key):
            yield key.removesuffix("_at"), str(job[key])


def _progress_text(progress: dict[str, Any]) -> str:
    step, total = progress.get("step"), progress.get("total_steps")
    text = f"step {step}/{total}" if total else f"step {step}"
    if total and isinstance(step, int):
        text += f" ({100 * step / total:.0f}%)"
    if progress.get("epoch") is not None:
        text = f"epoch {progress['epoch'] + 1}, " + text
    if progress.get("eta_seconds") is not None:
        text += f", ETA {_duration(progress['eta_seconds'])}"
    return text


def _co_text(co: dict[str, Any] | None, status: str) -> str:
    if not co:
        return "no onset detected" + (" so far" if status not in TERMINAL_STATUSES else "")
    if co.get("verdict_text") or co.get("verdict") not in (None, *VERDICTS):
        return verdict_line(co)  # the final verdict (in reports from before the codes: the sentence)
    if co.get("detected") or co.get("onset_step") is not None:  # live, after a co_onset event
        rule = (co.get("rule") or {}).get("name")
        onset = f"onset at step {co.get('onset_step')}" + (f" ({rule})" if rule else "")
        return f"{co['verdict']}: {onset}" if co.get("verdict") else onset
    return "no onset detected"


def verdict_line(co: dict[str, Any]) -> str:
    """``code: sentence`` for a report's or job's ``co`` block (older reports: their sentence)."""
    if co.get("verdict_text"):
        return f"{co.get('verdict') or 'no verdict'}: {co['verdict_text']}"
    return str(co.get("verdict") or "")


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('code', 'error')}: {error.get('message', '')}"
    return str(error)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def _cancel(args: argparse.Namespace) -> int:
    with _connect(args.server, args.key) as client:
        job = client.cancel(args.job_id)
    _out(f"job {job['id']}: cancel requested (status {job['status']})")
    return 0


def _download(args: argparse.Namespace) -> int:
    dest = Path(args.out) if args.out else Path(Path(args.name).name)
    with _connect(args.server, args.key) as client:
        path = client.download(args.job_id, args.name, dest)
    _out(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


def _jobs(args: argparse.Namespace) -> int:
    with _connect(args.server, args.key) as client:
        page = client.list(status=args.status, tag=args.tag, limit=args.limit)
    if args.output == "json":
        print_json(page)
        return ExitCode.DONE
    rows = [("ID", "STATUS", "PROGRESS", "QUEUE", "CREATED", "NAME")]
    for job in page["data"]:
        progress = job.get("progress") or {}
        done = (f"{100 * progress['step'] / progress['total_steps']:.0f}%"
                if progress.get("total_steps") and isinstance(progress.get("step"), int) else "")
        created = str(job.get("created_at") or "")[:16]
        rows.append((job["id"], job["status"], done, job.get("queue") or "", created, job.get("name") or ""))
    print_rows(rows)
    if page.get("count", 0) > len(page["data"]):
        _out(f"({len(page['data'])} of {page['count']} jobs; --limit shows more)")
    return 0


def print_rows(rows: list[tuple[str, ...]]) -> None:
    """A left-aligned text table, the first row its header."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        _out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _sweep(args: argparse.Namespace) -> int:
    from coscope.sweep_cli import run_sweep_command

    return run_sweep_command(args)


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "submit": _submit, "status": _status, "watch": _watch, "cancel": _cancel, "download": _download,
    "jobs": _jobs, "sweep": _sweep,
}


# ---- report (called by the lead's ``coscope report``) --------------------------------------------
def dry_run_summary(report: dict[str, Any]) -> str:
    """One line for a dry run's report (``worker/dry_run.py``): the data found and the estimated cost."""
    data = report["data"]
    shape = "x".join(str(side) for side in data["image_shape"])
    return (f"dry run, no training: {data['name']} with {data['train_images']} training and "
            f"{data['test_images']} test images of {shape}; estimated cost "
            f"{report['estimated_cost_image_passes']:.3g} image-passes")


def _print_report(report: dict[str, Any]) -> None:
    if report.get("dry_run"):
        _out(dry_run_summary(report))
        return
    if report.get("co"):
        _out(f"verdict: {_co_text(report['co'], 'succeeded')}")
    final = report.get("final") or {}
    line = f"clean accuracy {final.get('clean_accuracy', float('nan')):.4f}, " \
           f"robust accuracy {final.get('robust_accuracy', float('nan')):.4f}"
    attack = final.get("attack") or {}
    if {"steps", "restarts", "epsilon"} <= attack.keys():
        line += f" (PGD-{attack['steps']}-{attack['restarts']}, eps {attack['epsilon']}/255"
        line += f", {attack['test_images']} images)" if "test_images" in attack else ")"
    _out(line + autoattack_text(final))


def autoattack_text(final: dict[str, Any]) -> str:
    """The final line's AutoAttack part ("" when the run did not measure it)."""
    autoattack = final.get("autoattack")
    if not autoattack:
        return ""
    return f"; AutoAttack accuracy {autoattack['accuracy']:.4f} ({autoattack['version']}, same images)"


def show_report(job_id: str, server: str | None, key: str | None) -> int:
    """Print a remote job's CO verdict and final accuracies; 0 shown, 1 not available, 2 bad setup."""
    try:
        with _connect(server, key) as client:
            try:
                report = client.report(job_id)
            except ClientError as error:
                if error.status_code != 404:
                    raise
                job = client.get(job_id)  # a 404 here means the job itself does not exist
                _err(f"coscope: job {job_id} is {job['status']}; its report exists once it has succeeded")
                return 1
    except _Abort as abort:
        return abort.code
    except ClientError as error:
        return _explain(error)
    _print_report(report)
    return 0


def report_job(args: argparse.Namespace) -> int:
    """``show_report`` for parsed ``coscope report X [--server] [--key]`` (X in ``job_id`` or ``run_dir``)."""
    job_id = getattr(args, "job_id", None) or args.run_dir
    return show_report(job_id, getattr(args, "server", None), getattr(args, "key", None))
