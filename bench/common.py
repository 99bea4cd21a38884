"""Shared helpers of the benchmark scripts: machine facts, repeated timing, and the benchmarks table."""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "benchmarks.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {device}")


def repo_path(path: str | os.PathLike[str]) -> str:
    """``path`` as the benchmarks table names it: relative to the repository root when it lies in the
    repository or next to it (the shared data: ``../shared/data``), so records read the same on every
    checkout; any other path as given."""
    full = os.path.abspath(path)
    return os.path.relpath(full, ROOT) if Path(full).is_relative_to(ROOT.parent) else str(path)


def command() -> str:
    """The command line of this run, its script and path arguments (``--option=PATH`` too) relative to the
    repository root: ``python bench/memory.py --data-root ../shared/data``."""
    def argument(text: str) -> str:
        option, equals, value = text.partition("=") if text.startswith("--") else ("", "", text)
        is_path = os.path.isabs(value) or ("/" in value and os.path.exists(value))
        return option + equals + repo_path(value) if value and is_path else text

    return "python " + " ".join([repo_path(sys.argv[0]), *map(argument, sys.argv[1:])])


def timed(function: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    """Wall-clock seconds of ``repeats`` calls, and the last result."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def spread(values: list[float]) -> str:
    """'median (min-max, n=k)'."""
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g}, n={len(values)})"


def arguments(description: str) -> argparse.ArgumentParser:
    """The parser every recording benchmark starts from: its docstring as help, and ``--no-record``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to docs/benchmarks.md")
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.no_record:
        os.environ["BENCH_NO_RECORD"] = "1"  # read by record()
    return args


def record(benchmark: str, rows: list[tuple[str, str]]) -> None:
    """Print the result and append it to docs/benchmarks.md with the machine and the command."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\n### {benchmark} ({stamp})\n", f"- machine: {machine()}", f"- command: `{command()}`\n",
             "| measure | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if os.environ.get("BENCH_NO_RECORD") == "1":  # trial runs: print only
        return
    TABLE.parent.mkdir(exist_ok=True)
    if not TABLE.exists():
        TABLE.write_text("# Benchmarks\n\n"
                         "Rows appended by the scripts in `bench/`; each names its machine and command.\n")
    with open(TABLE, "a", encoding="utf-8") as handle:
        handle.write(text)


def merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied section by section (nested dicts merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def train_into(spec: dict, out: Path, data_root: str, device: str = "cpu") -> str:
    """``coscope train`` of ``spec`` into ``out`` with one thread, its output in ``out``.log; resumable: a
    run with a report is skipped, one with a checkpoint continues. Returns a line for the console."""
    if (out / "report.json").exists():
        return f"{out.name}: done before"
    out.parent.mkdir(parents=True, exist_ok=True)
    spec_path = out.parent / f"{out.name}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log = out.parent / f"{out.name}.log"
    started = time.perf_counter()
    with open(log, "a") as sink:
        code = subprocess.call([sys.executable, "-m", "coscope.cli", "train", str(spec_path), "--out", str(out),
                                "--data-root", data_root, "--device", device, "--quiet", *resume],
                               stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seconds = time.perf_counter() - started
    return f"{out.name}: {'ok' if code == 0 else f'FAILED ({code}), see {log}'} ({seconds:.0f} s)"
