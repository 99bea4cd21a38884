"""The whole benchmark suite, one script after another (each prints its table and appends it to
docs/benchmarks.md with the machine and command). About 9 minutes on the 2-core CPU machine.

    python bench/run_all.py [--data-root ../shared/data] [--skip NAME ...]

Sections needing the CIFAR-10 images are skipped when the data root lacks them; the GPU section runs only
when CUDA is available. Run it on an otherwise idle machine: two torch processes on two cores slow each
other down many times over.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def sections(data_root: str, cuda: bool) -> list[tuple[str, list[str], str | None]]:
    """(name, script and arguments, reason to skip or None)."""
    cifar = (Path(data_root) / "cifar10-jpeg" / "train").is_dir()
    no_cifar = None if cifar else f"no CIFAR-10 images under {data_root}/cifar10-jpeg"
    no_gpu = None if cuda else "no CUDA device on this machine"
    return [
        ("throughput-16", ["train_throughput.py", "--widths", "16", "--steps", "6", "--warmup", "3",
                           "--repeats", "3", "--device", "cpu"], None),
        ("throughput-64", ["train_throughput.py", "--widths", "64", "--steps", "3", "--warmup", "1",
                           "--repeats", "3", "--device", "cpu"], None),
        ("evaluation", ["eval_pgd.py", "--images", "32"], None),
        ("monitor", ["monitor_overhead.py", "--epochs", "2", "--data-root", data_root], no_cifar),
        ("memory", ["memory.py", "--data-root", data_root], no_cifar),
        ("service", ["service_overhead.py", "--train-size", "2048", "--epochs", "3"], None),
        ("gpu", ["train_throughput.py", "--widths", "16", "64", "--steps", "20", "--warmup", "5",
                 "--repeats", "3", "--device", "cuda"], no_gpu),
        ("gpu-paper", ["paper_setting.py", "--device", "cuda", "--data-root", data_root], no_gpu or no_cifar),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--skip", nargs="*", default=[], help="section names to leave out")
    args = parser.parse_args()

    import torch

    started, summary = time.perf_counter(), []
    for name, command, skip_reason in sections(args.data_root, torch.cuda.is_available()):
        if name in args.skip:
            skip_reason = "--skip"
        if skip_reason:
            summary.append((name, f"skipped ({skip_reason})"))
            continue
        print(f"\n== {name}: python bench/{' '.join(command)}", flush=True)
        section_started = time.perf_counter()
        result = subprocess.run([sys.executable, str(BENCH / command[0]), *command[1:]], cwd=ROOT)
        outcome = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
        summary.append((name, f"{outcome}, {time.perf_counter() - section_started:.0f} s"))
    print("\n| section | result |\n|---|---|")
    for name, outcome in summary:
        print(f"| {name} | {outcome} |")
    print(f"\nwhole suite: {time.perf_counter() - started:.0f} s; tables appended to docs/benchmarks.md")
    sys.exit(1 if any("FAILED" in outcome for _, outcome in summary) else 0)


if __name__ == "__main__":
    main()
