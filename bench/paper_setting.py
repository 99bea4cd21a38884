"""The paper's FGSM-AT setting timed end to end: `coscope train` of examples/paper/plain-fgsm.yaml (50,000
CIFAR-10 images, PreActResNet18 width 64, 30 epochs, batch 128, the default CO monitor, final PGD-50-10).

    python bench/paper_setting.py [--precision bf16] [--device cuda] [--data-root ../shared/data]
                                  [--max-steps N]   # cut short: a smoke run on a CPU

Target (issue 6): under 2 minutes on an H100. Wall time covers the process start, data loading, training,
monitor checks, the final evaluation and the report; the report's own timing splits it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from common import ROOT, coscope_train, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "examples/paper/plain-fgsm.yaml"))
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared/data"))
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N steps (smoke runs)")
    args = parser.parse_args()

    spec = yaml.safe_load(Path(args.spec).read_text())
    spec.setdefault("training", {}).update({"precision": args.precision, "max_steps": args.max_steps})
    if args.max_steps:  # a smoke run: a small final evaluation too
        spec["evaluation"] = {**spec.get("evaluation", {}), "test_subset": 64, "pgd_steps": 2, "restarts": 1}
    wall, report = coscope_train(spec, "--data-root", args.data_root, "--device", args.device)
    timing, final, steps = report["timing"], report["final"], report["steps"]
    record(f"Paper setting end to end, {Path(args.spec).name}, {args.precision}, {args.device}", [
        ("steps done / planned", f"{steps['done']} / {steps['planned']}"),
        ("wall seconds (process start to exit)", f"{wall:.1f}"),
        ("train / monitor / evaluation seconds", f"{timing['train_seconds']:.1f} / {timing['monitor_seconds']:.1f} "
                                                  f"/ {timing['eval_seconds']:.1f}"),
        ("training images/s", f"{timing['train_images_per_second']:.0f}"),
        ("final clean / PGD accuracy", f"{final['clean_accuracy']:.4f} / {final['robust_accuracy']:.4f} "
                                       f"({final['attack']['steps']} steps, {final['attack']['restarts']} restarts, "
                                       f"{final['attack']['test_images']} images)"),
        ("CO verdict", "CO at step " + str(report["co"]["onset_step"]) if report["co"]["detected"] else "no CO"),
    ])


if __name__ == "__main__":
    main()
