"""Peak host memory of ``coscope train`` on the 50,000 CIFAR-10 training images (target: under 3 GiB).

    python bench/memory.py [--data-root ../shared/data] [--width 64] [--precision fp32] [--steps 4]

A real ``coscope train`` process on the whole training set (decoded-image cache as a user has it after
the first run), PreActResNet18 at batch 128, cut short with ``training.max_steps`` but going through
every phase: data loading, training steps, CO-monitor checks, checkpoints, the final PGD evaluation
and the report. Peak = the child's maximum resident set size (``getrusage``).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from common import ROOT, record, train_into

GIB = 2**30


def job_spec(width: int, precision: str, steps: int) -> dict:
    return {
        "dataset": {"name": "imagefolder", "path": "cifar10-jpeg", "test_subset": 1000},
        "model": {"width": width},
        "training": {"epochs": 1, "max_steps": steps, "precision": precision},
        "monitor": {"every_steps": max(1, steps // 2), "train_images": 128, "pgd_steps": 2},
        "evaluation": {"pgd_steps": 2, "restarts": 1, "test_subset": 256},
    }


def peak_of_train(spec: dict, data_root: str) -> tuple[int, float, dict]:
    """(peak RSS bytes, wall seconds, report) of one ``coscope train`` process (one thread)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        started = time.perf_counter()
        outcome = train_into(spec, out, data_root)
        wall = time.perf_counter() - started
        if not (out / "report.json").exists():
            raise SystemExit(f"{outcome}\n{(out.parent / 'run.log').read_text()}")
        report = json.loads((out / "report.json").read_text())
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, largest child so far
    return peak_kib * 1024, wall, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared/data"))
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--steps", type=int, default=4, help="training steps before the run is cut short")
    args = parser.parse_args()

    peak, wall, report = peak_of_train(job_spec(args.width, args.precision, args.steps), args.data_root)
    data = report["data"]
    record(f"Peak host memory of coscope train, {data['train_images']} training images", [
        ("job", f"PreActResNet18 width {args.width}, {args.precision}, batch 128, {report['steps']['done']} steps, "
                f"{report['co']['monitor']['checks']} monitor checks, final PGD on 256 images"),
        ("training images held (uint8)", f"{data['train_images']} x {'x'.join(map(str, data['image_shape']))}"),
        ("peak resident memory", f"{peak / GIB:.2f} GiB (target < 3 GiB)"),
        ("wall seconds", f"{wall:.0f}"),
    ])


if __name__ == "__main__":
    main()
