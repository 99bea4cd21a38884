"""CO-monitor overhead: the same run with the default monitor and with the monitor off.

    python bench/monitor_overhead.py [SPEC] [--epochs 3] [--data-root ../shared/data]

Overhead = time spent in monitor checks / time spent training, from the run with the monitor (the trainer
times them apart), checked against the wall-clock difference of the two runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import ROOT, record, repo_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec", nargs="?", default=str(ROOT / "examples/cpu/plain-fgsm-eps8.yaml"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared/data"))
    args = parser.parse_args()

    from core.spec import load_spec_file
    from core.trainer import train

    base = load_spec_file(args.spec)
    results = {}
    for enabled in (False, True):
        spec = base.model_copy(update={
            "training": base.training.model_copy(update={"epochs": args.epochs}),
            "evaluation": base.evaluation.model_copy(update={"test_subset": 10, "pgd_steps": 1, "restarts": 1}),
            "monitor": base.monitor.model_copy(update={"enabled": enabled}),
        })
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            report = train(spec, out, data_root=args.data_root)
            results[enabled] = (report, time.perf_counter() - started)
    on, wall_on = results[True]
    off, wall_off = results[False]
    m = on["spec"]["monitor"]
    record(f"CO monitor overhead, {repo_path(args.spec)} for {args.epochs} epochs", [
        ("monitor settings", f"{m['train_images']} images, every {m['every_steps']} steps + epoch ends, "
                             f"PGD-{m['pgd_steps']}, {on['co']['monitor']['checks']} checks"),
        ("training seconds (monitor on / off)",
         f"{on['timing']['train_seconds']:.1f} / {off['timing']['train_seconds']:.1f}"),
        ("monitor seconds", f"{on['timing']['monitor_seconds']:.1f}"),
        ("overhead = monitor / training",
         f"{100 * on['timing']['monitor_seconds'] / on['timing']['train_seconds']:.1f} %"),
        ("wall-clock difference / wall without monitor", f"{100 * (wall_on - wall_off) / wall_off:.1f} %"),
    ])


if __name__ == "__main__":
    main()
