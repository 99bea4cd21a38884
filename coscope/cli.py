"""The ``coscope`` command. Sub-commands import what they need lazily, so ``--help`` stays fast."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coscope", description="Adversarial training with CO onset reports.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train and evaluate a job spec locally")
    train.add_argument("spec", help="job spec file (YAML or JSON)")
    train.add_argument("--out", required=True, help="run folder to write")
    train.add_argument("--data-root", default=None, help="dataset root (default: $COSCOPE_DATA_ROOT or ./data)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    report = commands.add_parser("report", help="print a run's or a job's CO verdict (and render plots)")
    report.add_argument("run_dir", help="run folder written by coscope train, or a job id on the server")

    validate = commands.add_parser("validate", help="check a job spec and print it with defaults resolved")
    validate.add_argument("spec")
    commands.add_parser("schema", help="print the job spec's JSON Schema (docs/spec.schema.json)")
    openapi = commands.add_parser("openapi", help="print the HTTP API's OpenAPI document (docs/openapi.json)")
    openapi.add_argument("--docs", metavar="DIR", default=None,
                         help="write DIR/openapi.json and DIR/spec.schema.json instead of printing")

    from coscope.client_cli import (
        CLIENT_COMMANDS,
        add_client_commands,
        add_connection_options,
        run_client_command,
    )
    from coscope.service_cli import add_service_commands, run_service_command

    add_service_commands(commands)
    add_client_commands(commands)
    add_connection_options(report)
    args = parser.parse_args(argv)
    if args.command in ("serve", "worker", "keys"):
        return run_service_command(args)
    if args.command in CLIENT_COMMANDS:
        return run_client_command(args)
    if args.command == "train":
        return _train(args)
    if args.command == "report":
        return _report(args)
    if args.command in ("schema", "openapi"):
        return _contract(args)
    return _validate(args)


def _contract(args: argparse.Namespace) -> int:
    """The published contract (``api.contract``): print one document, or rewrite both files under --docs."""
    from pathlib import Path

    from api import contract

    if args.command == "schema":
        sys.stdout.write(contract.dumps(contract.spec_schema()))
    elif args.docs:
        for path in contract.write_docs(Path(args.docs)):
            sys.stderr.write(f"wrote {path}\n")
    else:
        sys.stdout.write(contract.dumps(contract.openapi_document()))
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():  # not a local run folder: a job on the server
        from coscope.client_cli import show_report

        return show_report(args.run_dir, args.server, args.key)
    from coscope.service_cli import missing_trainer

    if missing_trainer("report"):  # rendering a run folder's plots needs matplotlib
        return 2
    from core.report import render_run

    if not (run_dir / "report.json").is_file() or not (run_dir / "metrics.jsonl").is_file():
        sys.stderr.write(f"coscope: {run_dir} has no report.json and metrics.jsonl (is the run finished?)\n")
        return 2
    verdict = render_run(run_dir)
    sys.stdout.write(f"verdict: {verdict}\nrendered {run_dir}/summary.md and {run_dir}/curves.png\n")
    return 0


def _load_spec(path: str) -> Any:
    """Load a spec or exit 2 with one line per invalid field (never a traceback)."""
    from pydantic import ValidationError

    from core.spec import load_spec_file

    try:
        return load_spec_file(path)
    except OSError as error:
        sys.stderr.write(f"coscope: cannot read {path}: {error.strerror}\n")
    except ValidationError as error:
        sys.stderr.write(f"coscope: invalid spec {path}:\n")
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
            sys.stderr.write(f"  {where}: {problem['msg']}\n")
    except Exception as error:  # YAML syntax errors and the like
        sys.stderr.write(f"coscope: cannot parse {path}: {error}\n")
    raise SystemExit(2)


def _validate(args: argparse.Namespace) -> int:
    spec = _load_spec(args.spec)
    sys.stdout.write(json.dumps(spec.resolved().model_dump(mode="json"), indent=2) + "\n")
    return 0


def _dry_run(spec: Any, args: argparse.Namespace) -> int:
    """A spec with ``dry_run: true``: what the service's worker does with it, here (no training)."""
    from pathlib import Path

    from core.errors import JobError
    from coscope.client_cli import dry_run_summary
    from worker.dry_run import write_dry_run

    try:
        report = write_dry_run(spec, Path(args.out), args.data_root)
    except JobError as error:
        sys.stderr.write(f"coscope: {type(error).__name__}: {error}\n")
        return 1
    sys.stdout.write(f"{dry_run_summary(report)}\nwrote {args.out}/report.json\n")
    return 0


def _train(args: argparse.Namespace) -> int:
    spec = _load_spec(args.spec)
    if spec.dry_run:
        return _dry_run(spec, args)
    from coscope.service_cli import missing_trainer

    if missing_trainer("train"):
        return 2
    from tqdm import tqdm

    from core.errors import Cancelled, JobError
    from core.trainer import Callbacks, select_device, train

    bar = tqdm(total=0, unit="step", disable=args.quiet, dynamic_ncols=True)

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "started":
            bar.reset(total=event["total_steps"])
            bar.update(event["step"])
        elif event["type"] == "progress":
            bar.update(1)
        elif event["type"] == "metrics":
            bar.set_postfix(epoch=event["epoch"], loss=f"{event['train_loss']:.3f}",
                            adv_acc=f"{event['train_adv_accuracy']:.3f}", lr=f"{event['lr']:.3f}")
        elif event["type"] == "co_onset":
            bar.write(f"CO onset at step {event['onset_step']} ({event['rule']['name']}), "
                      f"confirmed at step {event['confirmed_step']}")
        elif event["type"] == "monitor":
            bar.set_postfix(step=event["step"], clean=f"{event['clean_accuracy']:.3f}",
                            fgsm=f"{event['fgsm_accuracy']:.3f}", pgd=f"{event['pgd_accuracy']:.3f}")
        elif event["type"] == "epoch":
            bar.write(f"epoch {event['epoch'] + 1}: train loss {event['train_loss']:.4f}, "
                      f"attacked acc {event['train_adv_accuracy']:.4f}, "
                      f"test clean acc {event['test_clean_accuracy']:.4f}")

    try:
        report = train(spec, args.out, select_device(args.device), args.data_root,
                       Callbacks(on_event=on_event), resume=args.resume)
    except KeyboardInterrupt:
        bar.close()
        sys.stderr.write("coscope: interrupted\n")
        return 130
    except (Cancelled, JobError) as error:
        bar.close()
        sys.stderr.write(f"coscope: {type(error).__name__}: {error}\n")
        return 1
    bar.close()
    final = report["final"]
    from coscope.client_cli import autoattack_text

    if report["co"] is not None:
        from coscope.client_cli import verdict_line

        sys.stdout.write(f"verdict: {verdict_line(report['co'])}\n")
    sys.stdout.write(
        f"clean accuracy {final['clean_accuracy']:.4f}, robust accuracy {final['robust_accuracy']:.4f} "
        f"(PGD-{final['attack']['steps']}-{final['attack']['restarts']}, eps {final['attack']['epsilon']}/255, "
        f"{final['attack']['test_images']} images){autoattack_text(final)}\nwrote {args.out}/report.json\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
