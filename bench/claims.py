"""The paper's claims at CPU scale, each against a control that can collapse (issue 22).

    python bench/claims.py run   GROUP [--seeds 0 1 2] [--jobs 2] [--device cpu] [--data-root ../shared/data]
                                 [--eps 10 12] [--betas 0 4 8]      # the points of the 'arms' group
    python bench/claims.py table GROUP [--runs FOLDER ...]  # default: runs/claims, bench/data/runs/*/claims
    python bench/claims.py cut   GROUP [--runs FOLDER ...]  # runs cut in their final evaluation, judged by their checks
    python bench/claims.py arms  GROUP [--runs FOLDER ...]  # per arm over seeds (the rescue comparison)
    python bench/claims.py curvature map [--runs ...]        # B7: the eigenvalue per check around the onset
    python bench/claims.py heatmap map [--figure SVG]         # the map as a sweep heatmap, and eps*_beta
    python bench/claims.py keep GROUP --batch NAME            # finished runs into bench/data/runs/NAME

Groups (every run: the shared CIFAR-10 JPEG images, PreActResNet18 width 16 with the paper's block, batch 128,
the paper's cyclic schedule, fp32 monitor and evaluation, a monitor check of 500 held-out test images at
every check as well as the 512 training images, final PGD-50-10 on 500 class-stratified test images):

- map: FGSM on 10,000 class-stratified images, 10 epochs, eps in {8..12} x beta in {0, 2, 4, 8} (0 = plain),
  with the curvature probe every epoch (B7). Defines eps*_beta, the smallest eps where >= 2 of 3 seeds
  collapse.
- b2full: beta 4 and plain at eps 6 on all 50,000 images, 15 epochs (5,865 steps), fp32 and bf16 training.
- arms: at each (beta, eps) of --betas x --eps: N-FGSM, GradAlign (lambda 0.2) and PGD-10 against FGSM (B3,
  B6), and at each eps orthogonal injection (beta 4) and the DCT low-pass (b = 16) with FGSM and PGD-10 (B8).
- corpus: short FGSM runs (5,000 images, 6 epochs) over eps 6-14, plain and beta 8, with the
  paper's and the He block, for the verdict corpus of bench/verdict_corpus.py (issue 21); corpus-w8: the
  same at width 8 (about a quarter of the CPU time).

Runs land in runs/claims/<name> (CLAIMS_OUT overrides); a finished run is skipped and a checkpointed one
resumed, so the command can be stopped and started again. `table` prints the markdown of docs/science.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import statistics
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ROOT, merged, train_into

from core.report import judge
from core.spec import JobSpec

OUT = Path(os.environ.get("CLAIMS_OUT", ROOT / "runs" / "claims"))
RECORDS = ROOT / "bench" / "data" / "runs"  # committed records of earlier batches: <batch>/claims/<name>
MAP_EPS, MAP_BETAS = (12, 11, 10, 9, 8), (0, 4, 8, 2)  # the likely collapse region first; beta 2 last

BASE = {
    "dataset": {"name": "imagefolder", "path": "cifar10-jpeg", "train_subset": 10_000, "test_subset": 1000},
    "model": {"arch": "preact_resnet18", "width": 16},
    "training": {"method": "fgsm", "batch_size": 128, "epochs": 10},
    "evaluation": {"pgd_steps": 50, "restarts": 10, "test_subset": 500},
    "monitor": {"test_images": 500},  # the held-out evidence of issue 21, at every check
}


def intervention(beta: float) -> dict:
    return {"kind": "inject", "beta": beta} if beta else {"kind": "none"}


def map_runs(seeds: list[int], **_: object) -> Iterator[tuple[str, dict]]:
    for betas in (MAP_BETAS[:-1], MAP_BETAS[-1:]):  # beta 2 (claim B5) last
        for eps in MAP_EPS:
            for beta in betas:
                for seed in seeds:
                    yield f"map-beta{beta}-eps{eps}-seed{seed}", merged(BASE, {
                        "seed": seed, "intervention": intervention(beta), "training": {"epsilon": eps},
                        "monitor": {"curvature_every_epochs": 1}})


def b2full_runs(seeds: list[int], **_: object) -> Iterator[tuple[str, dict]]:
    for precision in ("fp32", "bf16"):
        for seed in seeds:
            for beta in (4, 0):
                yield f"b2full-beta{beta}-eps6-{precision}-seed{seed}", merged(BASE, {
                    "seed": seed, "intervention": intervention(beta),
                    "dataset": {"train_subset": None},
                    "training": {"epsilon": 6, "epochs": 15, "precision": precision}})


ARM_TRAINING = {  # arm: (intervention for a given beta, training overrides)
    "nfgsm": (intervention, {"method": "n_fgsm"}),
    "gradalign": (intervention, {"method": "grad_align", "grad_align_lambda": 0.2}),
    "pgd10": (intervention, {"method": "pgd", "pgd_steps": 10}),
}
B8_ARMS = {  # arm: (intervention, training overrides); beta 4 orthogonal, as the paper's script
    "orth-fgsm": ({"kind": "inject_orthogonal", "beta": 4}, {"method": "fgsm"}),
    "orth-pgd10": ({"kind": "inject_orthogonal", "beta": 4}, {"method": "pgd", "pgd_steps": 10}),
    "lowpass-fgsm": ({"kind": "low_pass", "bandwidth": 16}, {"method": "fgsm"}),
    "lowpass-pgd10": ({"kind": "low_pass", "bandwidth": 16}, {"method": "pgd", "pgd_steps": 10}),
}


def arm_runs(seeds: list[int], eps: list[int], betas: list[int], **_: object) -> Iterator[tuple[str, dict]]:
    for e in eps:
        for seed in seeds:
            for beta in betas:
                for arm, (make, training) in ARM_TRAINING.items():
                    yield f"{arm}-beta{beta}-eps{e}-seed{seed}", merged(BASE, {
                        "seed": seed, "intervention": make(beta), "training": {"epsilon": e, **training}})
            for arm, (spec_intervention, training) in B8_ARMS.items():
                yield f"{arm}-eps{e}-seed{seed}", merged(BASE, {
                    "seed": seed, "intervention": spec_intervention, "training": {"epsilon": e, **training}})


def corpus_runs(seeds: list[int], width: int = 16, **_: object) -> Iterator[tuple[str, dict]]:
    """Short runs for the verdict corpus (issue 21): 5,000 images, 6 epochs, both residual blocks (the He
    block collapses reliably, docs/ablation.md), plain and beta 8, eps 6 to 14: collapses and controls."""
    small = merged(BASE, {"dataset": {"train_subset": 5000, "test_subset": 500}, "training": {"epochs": 6},
                          "model": {"width": width}, "evaluation": {"test_subset": 200},
                          "monitor": {"train_images": 256, "test_images": 200}})  # checks: most of a CPU run
    prefix = "corpus" if width == 16 else f"corpus-w{width}"
    for seed in seeds:
        for eps in (12, 8, 10, 14, 6):
            for arch in ("preact_resnet18", "preact_resnet18_he"):
                for beta in (0, 8):
                    block = arch.removeprefix("preact_resnet18").strip("_") or "paper"
                    yield f"{prefix}-{block}-beta{beta}-eps{eps}-seed{seed}", merged(small, {
                              "seed": seed, "intervention": intervention(beta), "model": {"arch": arch},
                              "training": {"epsilon": eps}})


RESCUE_ARMS = {  # arm: (training overrides, monitor overrides, evaluation overrides); issue 24's comparison
    "pgd10": ({"method": "pgd", "pgd_steps": 10}, {}, {"autoattack": "standard"}),
    "rescue": ({"method": "fgsm"}, {"co_policy": "rescue"}, {"autoattack": "standard"}),
    "fgsm": ({"method": "fgsm"}, {}, {}),
    "nfgsm": ({"method": "n_fgsm"}, {}, {}),
}


def rescue_runs(seeds: list[int], **_: object) -> Iterator[tuple[str, dict]]:
    """FGSM, FGSM + rescue, N-FGSM and PGD-10 where FGSM collapses reliably at CPU scale (issue 24): the
    corpus scale at width 8 with the He block, eps 12, plain and beta 8 (2 of 2 and 2 of 2 collapsed in the
    corpus). A check every 20 steps (an epoch is 39), so that the rescue finds pre-onset weights; PGD-50-10 on
    500 class-stratified test images, and AutoAttack on the same images for the rescued and PGD-10 arms."""
    small = merged(BASE, {"dataset": {"train_subset": 5000}, "training": {"epochs": 6, "epsilon": 12},
                          "model": {"arch": "preact_resnet18_he", "width": 8},
                          "monitor": {"train_images": 256, "test_images": 200, "every_steps": 20}})
    for seed in seeds:
        for beta in (0, 8):
            for arm, (training, monitor, evaluation) in RESCUE_ARMS.items():
                yield f"rescue-{arm}-beta{beta}-eps12-seed{seed}", merged(small, {
                    "seed": seed, "intervention": intervention(beta), "training": training,
                    "monitor": monitor, "evaluation": evaluation})


SMOKE = {"evaluation": {"test_subset": 20, "pgd_steps": 2, "restarts": 1},
         "monitor": {"train_images": 20, "test_images": 20, "indicator_images": 20,
                     "curvature_iterations": 2}}
GROUPS = {"map": map_runs, "b2full": b2full_runs, "arms": arm_runs, "corpus": corpus_runs,
          "rescue": rescue_runs, "corpus-w8": lambda **options: corpus_runs(width=8, **options)}


def runs_of(args: argparse.Namespace) -> list[tuple[str, dict]]:
    runs = list(GROUPS[args.group](seeds=args.seeds, eps=args.eps, betas=args.betas))
    if args.max_steps:  # a smoke run of the machinery, not a measurement
        smoke = SMOKE | {"training": {"max_steps": args.max_steps}}
        runs = [(name, merged(spec, smoke)) for name, spec in runs]
    return [(name, spec) for name, spec in runs if args.only is None
            or any(fnmatch.fnmatch(name, pattern) for pattern in args.only)]


def read_history(folder: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def finished(names: list[str], roots: list[Path]) -> Iterator[tuple[str, dict, list[dict]]]:
    """(name, report, metrics rows) of every finished copy of the runs ``names`` under ``roots``, the report's
    verdict re-judged by today's rules from its stored checks. A kept copy of a run (the same report, in the
    records and in the working folder) counts once."""
    for name in names:
        seen = set()
        for root in roots:
            folder = root / name
            if (folder / "report.json").exists() and (text := (folder / "report.json").read_text()) not in seen:
                seen.add(text)
                report = json.loads(text)
                history = read_history(folder)
                judge(report, history)
                yield name, report, history


def cut_runs(names: list[str], roots: list[Path]) -> None:
    """The runs a lease cut during their final evaluation (metrics.jsonl and a spec, no report.json), judged
    from their stored checks by today's rules; no final accuracies exist. A run counts only if its monitor
    reached the last epoch. Their monitor set's class counts are not stored outside a report, so the chance
    level is 1 / 10 (a stratified set's largest share, 52 of 512 here, is within 0.2 points of it)."""
    print("| run | verdict (training images) | onset step | held-out verdict | held-out onset | last monitor PGD "
          "|\n|---|---|---|---|---|---|")
    for name in names:
        for root in roots:
            folder = root / name
            if (folder / "report.json").exists() or not (folder / "metrics.jsonl").exists():
                continue
            spec_path = folder / "spec.json" if (folder / "spec.json").exists() else root / f"{name}.spec.json"
            spec, history = json.loads(spec_path.read_text()), read_history(folder)
            checks = [row for row in history if row["kind"] == "monitor"]
            if not checks or checks[-1]["epoch"] < JobSpec.model_validate(spec).training.epochs - 1:
                continue  # cut before training ended: nothing to judge the whole run by
            report = {"spec": spec, "co": {"monitor": {}}, "data": {"num_classes": 10}}  # CIFAR-10
            judge(report, history)
            co, held = report["co"], report["co"]["held_out"] or {}
            print(f"| {name} | {co['verdict']} | {co['onset_step'] or '-'} | {held.get('verdict', '-')} "
                  f"| {held.get('onset_step') or '-'} | {checks[-1]['pgd_accuracy']:.3f} |")


def device_of(report: dict) -> str:
    environment = report["environment"]
    return (environment["device_name"].replace("NVIDIA ", "") if environment["device"].startswith("cuda")
            else f"CPU, {environment['threads']} thread(s)")


def table(names: list[str], roots: list[Path]) -> None:
    """One markdown row per finished run (every distinct copy found under ``roots``), verdicts re-judged by today's
    rules, then one row per cell (the name without its seed): see ``cell_row``."""
    print("| run | device | verdict (training images) | onset step | held-out verdict | final clean | "
          "final PGD-50-10 | best-weights PGD-50-10 |\n|---|---|---|---|---|---|---|---|")
    cells: dict[str, list[dict]] = {}
    for name, report, _ in finished(names, roots):
        co, final = report["co"], report["final"]
        best = (co["best_checkpoint"].get("final") or {}).get("robust_accuracy")
        held = (co.get("held_out") or {}).get("verdict", "-")
        print(f"| {name} | {device_of(report)} | {co['verdict']} | {co['onset_step'] or '-'} | {held} "
              f"| {final['clean_accuracy']:.3f} | {final['robust_accuracy']:.3f} "
              f"| {'-' if best is None else f'{best:.3f}'} |")
        cells.setdefault(name.rsplit("-seed", 1)[0], []).append(
            {"verdict": co["verdict"], "onset": co["onset_step"], "robust": final["robust_accuracy"], "best": best})
    print("\n| cell | runs | collapsed (co) | onset steps | final PGD-50-10 (mean ± sd) | best-weights PGD-50-10 "
          "(mean) |\n|---|---|---|---|---|---|")
    for cell, runs in cells.items():
        print(cell_row(cell, runs))


def cell_row(cell: str, runs: list[dict]) -> str:
    """A cell's markdown row over its runs (dicts of verdict, onset, robust, best): how many collapsed, their
    onset steps, the final PGD-50-10 as mean ± sample sd, and the mean best-weights PGD-50-10."""
    best = [run["best"] for run in runs if run["best"] is not None]
    onsets = ", ".join(str(run["onset"]) for run in runs if run["verdict"] == "co") or "-"
    collapsed = sum(run["verdict"] == "co" for run in runs)
    return (f"| {cell} | {len(runs)} | {collapsed} of {len(runs)} | {onsets} "
            f"| {mean_sd([run['robust'] for run in runs])} | {f'{statistics.mean(best):.3f}' if best else '-'} |")


def mean_sd(values: list[float]) -> str:
    """'mean ± sample sd' to 3 places; the sd of one value is 0."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def arm_summary(names: list[str], roots: list[Path]) -> None:
    """Per setting and arm (the name without its seed and arm), over its seeds: runs that ended collapsed (a
    rescued run counts by how it ended after the rescue), mean and spread of the final accuracies, AutoAttack
    where measured, and the mean seconds of training and of monitor checks (issue 24's comparison)."""
    print("| setting | arm | runs | ended collapsed | clean | PGD-50-10 (mean ± sd) | AutoAttack | train s | "
          "monitor s |\n|---|---|---|---|---|---|---|---|---|")
    arms: dict[tuple[str, str], list[dict]] = {}
    for name, report, _ in finished(names, roots):
        _, arm, setting = name.rsplit("-seed", 1)[0].split("-", 2)
        arms.setdefault((setting, arm), []).append(report)
    for (setting, arm), reports in sorted(arms.items()):
        ended = [((r["co"].get("rescue") or {}).get("after") or r["co"])["verdict"] for r in reports]
        aa = [r["final"]["autoattack"]["accuracy"] for r in reports if "autoattack" in r["final"]]
        mean = statistics.mean
        print(f"| {setting} | {arm} | {len(reports)} | {ended.count('co')} of {len(reports)} "
              f"| {mean([r['final']['clean_accuracy'] for r in reports]):.3f} "
              f"| {mean_sd([r['final']['robust_accuracy'] for r in reports])} | {f'{mean(aa):.3f}' if aa else '-'} "
              f"| {mean([r['timing']['train_seconds'] for r in reports]):.0f} "
              f"| {mean([r['timing']['monitor_seconds'] for r in reports]):.0f} |")


CURVATURE = "hessian_top_eigenvalue_max_full"  # the probe's top input-Hessian eigenvalue, max over its images


def largest_rise(steps: list[int], values: list[float]) -> tuple[float, int]:
    """The largest factor by which the eigenvalue grew from one check to the next, and the step it grew at
    (values below 1 count as 1: a rise from a near-flat start is not an artefact of dividing by ~0)."""
    pairs = zip(values, values[1:], steps[1:], strict=False)
    rises = [(after / max(before, 1.0), step) for before, after, step in pairs]
    return max(rises) if rises else (1.0, steps[0])


def first_above(values: list[float], ceiling: float) -> int | None:
    """The index of the first check whose eigenvalue exceeds ``ceiling``, or None."""
    return next((index for index, value in enumerate(values) if value > ceiling), None)


def leave_one_out_alarms(peaks: list[float]) -> int:
    """How many of the controls' peak eigenvalues exceed the ceiling the other controls set: an estimate,
    not in-sample, of how often a new run without CO would cross the ceiling (a false alarm)."""
    return sum(peak > max(peaks[:index] + peaks[index + 1:], default=float("-inf"))
               for index, peak in enumerate(peaks))


def curvature(names: list[str], roots: list[Path]) -> None:
    """B7 per run: the probe's eigenvalue at every check, the onset (held-out checks where the run has them),
    the largest check-to-check rise, and the first check above the controls' ceiling (the largest eigenvalue
    any run without CO reached at any check), each as how many checks after (+) or before (-) the onset."""
    runs = []
    for name, report, history in finished(names, roots):
        checks = [row for row in history if row["kind"] == "monitor" and CURVATURE in row]
        if checks:
            runs.append((name, report, [row["step"] for row in checks], [row[CURVATURE] for row in checks]))
    controls = [max(values) for _, report, _, values in runs if report["co"]["verdict"] == "no_co"]
    ceiling = max(controls, default=float("inf"))
    print(f"Controls' ceiling: {ceiling:.1f} (the largest eigenvalue of {len(controls)} run(s) without CO); "
          f"left out one at a time, {leave_one_out_alarms(controls)} of {len(controls)} control(s) cross the "
          "ceiling of the others\n")
    print("| run | device | verdict | held-out onset | eigenvalue per check (* the onset) | largest rise | "
          "at step | checks after the onset | first above the ceiling, checks after the onset |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for name, report, steps, values in runs:
        co = report["co"]
        onset = (co.get("held_out") or {}).get("onset_step") or co["onset_step"]
        rise, at = largest_rise(steps, values)
        marks = ["*" if step == onset else "" for step in steps]
        trace = " ".join(f"{value:.0f}{mark}" for value, mark in zip(values, marks, strict=True))
        above = first_above(values, ceiling)
        lag = above_lag = "-"
        if onset in steps:
            lag = f"{steps.index(at) - steps.index(onset):+d}"
            above_lag = "never" if above is None else f"{above - steps.index(onset):+d}"
        print(f"| {name} | {device_of(report)} | {co['verdict']} | {onset or '-'} | {trace} | {rise:.1f}x "
              f"| {at} | {lag} | {above_lag} |")


def heatmap(names: list[str], roots: list[Path], figure: Path) -> None:
    """The map as the service draws a sweep (api.heatmap: robust and clean accuracy, share of seeds with
    CO, rows eps, columns beta), from the first finished copy of each run under ``roots``; the same
    numbers as CSV beside the figure. eps*_beta per beta is printed."""
    from api.heatmap import heatmap_svg
    from api.sweep_table import grid_cells, summarise_cells, table_csv

    axes = [("training.epsilon", sorted(MAP_EPS)), ("intervention.beta", sorted(MAP_BETAS))]
    grid = grid_cells(axes)
    seeds = sorted({int(name.rsplit("-seed", 1)[1]) for name in names})
    children: dict[str, dict] = {}
    for name, report, _ in finished(names, roots):
        beta, eps, seed = map(int, re.findall(r"\d+", name))  # map-beta<b>-eps<e>-seed<s>
        cell = grid.index({"training.epsilon": eps, "intervention.beta": beta})
        index = seeds.index(seed) * len(grid) + cell  # seed-major, as a sweep numbers its children
        children.setdefault(name, {"id": name, "index": index, "status": "succeeded", "report": report})
    cells = summarise_cells(axes, seeds, list(children.values()))
    title = "FGSM at CPU scale: 10,000 images, width 16, 10 epochs (bench/claims.py map)"
    figure.write_bytes(heatmap_svg(axes, cells, title))
    figure.with_suffix(".csv").write_text(table_csv(axes, cells))
    for beta in sorted(MAP_BETAS):
        column = [cell for cell in cells if cell["params"]["intervention.beta"] == beta]
        print(f"beta {beta}: eps* = {critical_epsilon(column)}")


def critical_epsilon(column: list[dict]) -> str:
    """eps*: the smallest eps where >= 2 of 3 seeds collapse. A cell is decided once 2 seeds collapsed or 2
    did not; eps* is exact when every eps below the first collapsing cell is decided, else an upper bound."""
    def decided(cell: dict, collapsing: bool) -> bool:
        co = cell["co"] or {}
        return (co.get("collapsed", 0) if collapsing else co.get("measured", 0) - co.get("collapsed", 0)) >= 2

    cells = sorted(column, key=lambda cell: cell["params"]["training.epsilon"])
    collapsing = [cell["params"]["training.epsilon"] for cell in cells if decided(cell, True)]
    if not collapsing:
        return "open: no eps with 2 collapsed seeds"
    open_below = [cell["params"]["training.epsilon"] for cell in cells
                  if cell["params"]["training.epsilon"] < collapsing[0] and not decided(cell, False)]
    return str(collapsing[0]) if not open_below else f"<= {collapsing[0]} (eps {open_below} undecided)"


def keep(names: list[str], batch: str) -> None:
    """Copy the finished runs of ``names`` under OUT into the committed records, ``RECORDS/<batch>/claims``
    (report.json, metrics.jsonl, spec.json; no checkpoints), and note in the batch's README.md the machine
    and the training code (the last commit of core/ when the run was last started: its spec file's time)."""
    import shutil
    import subprocess

    from common import cpu_model

    def code_at(started: float) -> str:
        return subprocess.run(["git", "log", "-1", "--format=%h", f"--before=@{int(started)}", "--", "core"],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    folder = RECORDS / batch / "claims"
    notes = []
    for name in names:
        if (OUT / name / "report.json").exists() and not (folder / name / "report.json").exists():
            (folder / name).mkdir(parents=True, exist_ok=True)
            for source, target in (("report.json", "report.json"), ("metrics.jsonl", "metrics.jsonl")):
                shutil.copyfile(OUT / name / source, folder / name / target)
            shutil.copyfile(OUT / f"{name}.spec.json", folder / name / "spec.json")
            environment = json.loads((OUT / name / "report.json").read_text())["environment"]
            code = code_at((OUT / f"{name}.spec.json").stat().st_mtime)
            notes.append(f"- {name}: training code {code}, {cpu_model()} ({os.cpu_count()} cores), "
                         f"{environment['threads']} thread(s), torch {environment['torch']}\n")
    readme = RECORDS / batch / "README.md"
    if notes and not readme.exists():
        readme.write_text(f"# {batch}\n\nRuns of `python bench/claims.py run GROUP`, two at a time, kept "
                          f"with `python bench/claims.py keep GROUP --batch {batch}`.\n\n")
    with open(readme, "a") as handle:
        handle.writelines(notes)
    print(f"kept {len(notes)} run(s) in {folder}")


def run(args: argparse.Namespace) -> None:
    work = runs_of(args)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for line in pool.map(lambda job: train_into(job[1], OUT / job[0], args.data_root, args.device), work):
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "table", "cut", "arms", "curvature", "heatmap", "keep"))
    parser.add_argument("group", choices=tuple(GROUPS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eps", type=int, nargs="+", default=[10, 12], help="arms: epsilons, /255")
    parser.add_argument("--betas", type=int, nargs="+", default=[0, 4, 8], help="arms: carriers, /255")
    parser.add_argument("--only", nargs="+", default=None, help="globs over run names, e.g. 'map-*-eps12-*'")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-steps", type=int, default=None, help="stop runs after N steps (smoke)")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--runs", nargs="+", default=[str(OUT), *map(str, sorted(RECORDS.glob("*/claims")))],
                        help="folders holding run folders (default: runs/claims and the committed records)")
    parser.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "claims-map-cpu.svg"),
                        help="heatmap: the SVG to write (and its numbers as .csv beside it)")
    parser.add_argument("--batch", default="cpu-batch", help="keep: the records' batch folder")
    args = parser.parse_args()
    if args.action == "run":
        run(args)
    elif args.action == "arms":
        arm_summary([name for name, _ in runs_of(args)], [Path(root) for root in args.runs])
    elif args.action == "cut":
        cut_runs([name for name, _ in runs_of(args)], [Path(root) for root in args.runs])
    elif args.action == "keep":
        keep([name for name, _ in runs_of(args)], args.batch)
    elif args.action == "heatmap":
        heatmap([name for name, _ in runs_of(args)], [Path(root) for root in args.runs], Path(args.figure))
    elif args.action == "curvature":
        curvature([name for name, _ in runs_of(args)], [Path(root) for root in args.runs])
    else:
        table([name for name, _ in runs_of(args)], [Path(root) for root in args.runs])


if __name__ == "__main__":
    main()
