"""The CPU-scale CO experiments of issue 11: each claim's setting, one engine difference at a time, 3 seeds.

    python bench/ablation.py run   [--only GLOB ...] [--seeds 0 1 2] [--jobs 2] [--data-root ../shared/data]
    python bench/ablation.py table [--only GLOB ...]    # markdown tables for docs/ablation.md (bench/co_table.py)

Every run is `coscope train` of a spec built here (shared CIFAR-10 JPEG images, 10,000 training images drawn
class-stratified, PreActResNet18 width 16, batch 128, final PGD-50-10 on 500 class-stratified test images)
into runs/ablation/<arm>-seed<k>; a run whose report.json exists is skipped, so the command resumes. With
``--jobs 2`` two runs share the machine, one thread each (about 10 % more images/s than one run on two
threads on the 2-core machine); each report records its thread count.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from co_table import print_tables
from common import merged, train_into

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("ABLATION_OUT", ROOT / "runs" / "ablation"))

BASE = {
    "dataset": {"name": "imagefolder", "path": "cifar10-jpeg", "train_subset": 10_000, "test_subset": 1000},
    "model": {"arch": "preact_resnet18", "width": 16},
    "training": {"method": "fgsm", "batch_size": 128},
    "evaluation": {"pgd_steps": 50, "restarts": 10, "test_subset": 500},
}
PLAIN, INJECT_4, INJECT_8 = {"kind": "none"}, {"kind": "inject", "beta": 4}, {"kind": "inject", "beta": 8}

# setting: (claim, intervention, training) -- epsilon and beta in /255, as in a spec
SETTINGS = {
    "nfgsm-eps8": ("N-FGSM avoids CO at eps 8", PLAIN, {"method": "n_fgsm", "epsilon": 8, "epochs": 10}),
    "b1-plain-eps6": ("B1: no CO at small eps on plain data", PLAIN, {"epsilon": 6, "epochs": 15}),
    "b2-beta4-eps6": ("B2: CO induced by a carrier with beta < eps", INJECT_4, {"epsilon": 6, "epochs": 15}),
    "b4-beta8-eps6": ("B4: beta > eps is a robust feature, no CO", INJECT_8, {"epsilon": 6, "epochs": 15}),
    "plain-eps8": ("plain data at eps 8: CO expected", PLAIN, {"epsilon": 8, "epochs": 15}),
}
# arm name: (setting, overrides of the fixed engine's defaults); "default" is the engine as shipped
ARMS = {
    "nfgsm-eps8.default": ("nfgsm-eps8", {}),
    "nfgsm-eps8.keep-last-batch": ("nfgsm-eps8", {"training": {"last_batch": "keep"}}),
    "b2-beta4-eps6.default": ("b2-beta4-eps6", {}),
    "b2-beta4-eps6.start-box-clipped": ("b2-beta4-eps6", {"training": {"attack_start": "box_clipped"}}),
    "b1-plain-eps6.default": ("b1-plain-eps6", {}),
    "b4-beta8-eps6.default": ("b4-beta8-eps6", {}),
    "b4-beta8-eps6.bf16": ("b4-beta8-eps6", {"training": {"precision": "bf16"}}),  # issue 10's fp32/bf16 pair
    "plain-eps8.default": ("plain-eps8", {}),
    "nfgsm-eps8.he-block": ("nfgsm-eps8", {"model": {"arch": "preact_resnet18_he"}}),
    "nfgsm-eps8.he-block-keep-last-batch": ("nfgsm-eps8", {"model": {"arch": "preact_resnet18_he"},
                                                           "training": {"last_batch": "keep"}}),
    "nfgsm-eps8.cifar10-constants": ("nfgsm-eps8", {"dataset": {"normalization": "cifar10"}}),
    "b2-beta4-eps6.keep-last-batch": ("b2-beta4-eps6", {"training": {"last_batch": "keep"}}),
    "b2-beta4-eps6.he-block": ("b2-beta4-eps6", {"model": {"arch": "preact_resnet18_he"}}),
    "b1-plain-eps6.he-block": ("b1-plain-eps6", {"model": {"arch": "preact_resnet18_he"}}),
    "b2-beta4-eps6.cifar10-constants": ("b2-beta4-eps6", {"dataset": {"normalization": "cifar10"}}),
}


def spec_for(arm: str, seed: int) -> dict:
    setting, overrides = ARMS[arm]
    _, intervention, training = SETTINGS[setting]
    spec = merged(BASE, {"seed": seed, "intervention": intervention, "training": training})
    return merged(spec, overrides)


def run_one(arm: str, seed: int, data_root: str) -> str:
    return train_into(spec_for(arm, seed), OUT / f"{arm}-seed{seed}", data_root)


def selected(only: list[str] | None) -> list[str]:
    return [arm for arm in ARMS if only is None or any(fnmatch.fnmatch(arm, pattern) for pattern in only)]


def run(args: argparse.Namespace) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    arms = selected(args.only)  # setting by setting, each seed's arms side by side (two at a time)
    work = [(arm, seed) for setting in SETTINGS for seed in args.seeds for arm in arms if ARMS[arm][0] == setting]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for line in pool.map(lambda job: run_one(*job, args.data_root), work):
            print(line, flush=True)


def table(args: argparse.Namespace) -> None:
    groups = {arm: [OUT / f"{arm}-seed{seed}" for seed in args.seeds] for arm in selected(args.only)}
    groups = {arm: [run for run in runs if (run / "report.json").exists()] for arm, runs in groups.items()}
    groups = {arm: runs for arm, runs in groups.items() if runs}
    print_tables([run for runs in groups.values() for run in runs], groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "table"))
    parser.add_argument("--only", nargs="+", default=None, help="globs over arm names, e.g. 'b2-*'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    run(args) if args.action == "run" else table(args)


if __name__ == "__main__":
    main()
