"""``coscope sweep submit|status|cancel|download|list``: the client side of ``/v1/sweeps``.

Exit codes as for jobs (``coscope.client_cli.ExitCode``): 0 done (``--wait``: the sweep succeeded), 1 it failed
or partly failed, 2 bad input (a malformed ``--axis``, a 422 naming the field and cell), 3 cancelled, 4-7 as for
jobs (unreachable, key refused, not found, rate limit).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import yaml

from api.sweep_table import co_text
from coscope.client import CoscopeClient, Event
from coscope.client_cli import (
    _Abort,
    _connect,
    _err,
    _out,
    _read_spec,
    add_connection_options,
    outcome_code,
    print_rows,
)

ARTIFACTS = ("heatmap.svg", "table.csv", "table.json")


def add_sweep_commands(subparsers: Any) -> None:
    sweep = subparsers.add_parser("sweep", help="run a grid of jobs (e.g. beta x epsilon) as one request")
    commands = sweep.add_subparsers(dest="sweep_command", required=True)
    submit = commands.add_parser("submit", help="send a base spec and its grid")
    submit.add_argument("spec", metavar="SPEC", help="base job spec file (YAML or JSON)")
    submit.add_argument("--axis", action="append", required=True, metavar="PATH=V1,V2,...",
                        help="a grid axis: a dotted spec path and its values (repeatable), "
                             "e.g. intervention.beta=0,4,8")
    submit.add_argument("--seeds", default=None, metavar="S1,S2,...", help="default: the spec's seed")
    submit.add_argument("--name", default=None)
    submit.add_argument("--tag", action="append", default=[], dest="tags", metavar="TAG")
    submit.add_argument("--wait", action="store_true", help="follow the children, then print the table")
    submit.add_argument("--idempotency-key", default=None)
    for name, text in (("status", "show a sweep and its table"), ("cancel", "cancel every unfinished child"),
                       ("download", "write heatmap.svg, table.csv and table.json")):
        command = commands.add_parser(name, help=text)
        command.add_argument("sweep_id", metavar="ID")
        if name == "download":
            command.add_argument("--out", default=".", help="folder to write (default: .)")
        add_connection_options(command)
    listing = commands.add_parser("list", help="list sweeps, newest first")
    listing.add_argument("--limit", type=int, default=20)
    for command in (submit, listing):
        add_connection_options(command)


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """``intervention.beta=0,4,8`` -> ("intervention.beta", [0, 4, 8]); values are YAML scalars (numbers,
    booleans, words); anything else exits 2 here, before a request is sent."""
    path, equals, values = text.partition("=")
    try:
        parsed = [yaml.safe_load(item.strip()) for item in values.split(",")]
    except yaml.YAMLError:
        parsed = []
    if not equals or not path.strip() or not parsed or not all(_scalar(value) for value in parsed):
        _err(f"coscope: --axis {text!r}: expected PATH=V1,V2,... of numbers, booleans or words "
             "(e.g. intervention.beta=0,4,8)")
        raise _Abort(2)
    return path.strip(), parsed


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, bool | int) or (isinstance(value, str) and bool(value))


def parse_grid(axes: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for text in axes:
        path, values = parse_axis(text)
        if path in grid:
            _err(f"coscope: --axis {path} is given twice; list all its values in one --axis")
            raise _Abort(2)
        grid[path] = values
    return grid


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        _err(f"coscope: --seeds {text!r}: expected S1,S2,... of whole numbers")
        raise _Abort(2) from None


def run_sweep_command(args: argparse.Namespace) -> int:
    return {"submit": _submit, "status": _status, "cancel": _cancel, "download": _download,
            "list": _list}[args.sweep_command](args)


def _submit(args: argparse.Namespace) -> int:
    grid, seeds = parse_grid(args.axis), parse_seeds(args.seeds)
    spec = _read_spec(args.spec)
    with _connect(args.server, args.key) as client:
        sweep = client.submit_sweep(spec, grid, seeds=seeds, name=args.name, tags=args.tags,
                                    idempotency_key=args.idempotency_key)
        _out(f"sweep {sweep['id']} {sweep['status']}: {sweep['size']} jobs")
        if not args.wait:
            return 0
        return _follow(client, sweep)


def _follow(client: CoscopeClient, sweep: dict[str, Any]) -> int:
    from tqdm import tqdm

    bar = tqdm(total=sweep["size"], unit="job", dynamic_ncols=True, disable=None)

    def show(event: Event) -> None:
        data = event.data
        if event.type == "child_finished":
            bar.update(1)
            if data.get("status") != "succeeded":
                tqdm.write(f"job {data['job_id']} (cell {data['cell']}, seed {data['seed']}) {data.get('status')}")
        elif event.type == "child_co_onset":
            tqdm.write(f"CO onset at step {data.get('onset_step')} in cell {data['cell']}, seed {data['seed']}")

    try:
        final = client.wait_sweep(sweep["id"], on_event=show)
    finally:
        bar.close()
    _print_sweep(final)
    return outcome_code(final["status"])


def _status(args: argparse.Namespace) -> int:
    with _connect(args.server, args.key) as client:
        _print_sweep(client.sweep(args.sweep_id))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _connect(args.server, args.key) as client:
        sweep = client.cancel_sweep(args.sweep_id)
    _out(f"sweep {sweep['id']}: cancel requested (status {sweep['status']}, {_counts(sweep['counts'])})")
    return 0


def _download(args: argparse.Namespace) -> int:
    with _connect(args.server, args.key) as client:
        for name in ARTIFACTS:
            path = client.download_sweep(args.sweep_id, name, Path(args.out) / f"{args.sweep_id}-{name}")
            _out(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _connect(args.server, args.key) as client:
        page = client.sweeps(limit=args.limit)
    rows = [("ID", "STATUS", "JOBS", "CREATED", "NAME")]
    rows += [(sweep["id"], sweep["status"], _counts(sweep["counts"]), str(sweep["created_at"])[:16],
              sweep.get("name") or "") for sweep in page["data"]]
    print_rows(rows)
    return 0


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {status}" for status, count in counts.items())


def _print_sweep(sweep: dict[str, Any]) -> None:
    _out(f"sweep {sweep['id']} {sweep['status']}: {_counts(sweep['counts'])}")
    paths = [axis["path"] for axis in sweep["axes"]]
    rows = [(*paths, "CLEAN %", "ROBUST %", "CO", "VERDICTS")]  # verdicts: seeds succeeded / seeds
    for cell in sweep["cells"]:
        rows.append((*(str(cell["params"][path]) for path in paths), _percent(cell["clean_accuracy"]),
                     _percent(cell["robust_accuracy"]), co_text(cell), f"{cell['co']['measured']}/{len(cell['jobs'])}"))
    print_rows(rows)


def _percent(value: dict[str, Any] | None) -> str:
    if value is None:
        return "-"
    spread = f" ± {100 * value['std']:.1f}" if value.get("std") is not None else ""
    return f"{100 * value['mean']:.1f}{spread}"

