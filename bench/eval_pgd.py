"""Final-evaluation benchmark: our PGD (any restart breaks; broken samples leave the batch) against the
released code's convention (every restart, all steps, every sample; max-loss delta), same model and data.

    python bench/eval_pgd.py RUN_DIR [--weights checkpoint.pt|best.pt] [--images 500] [--data-root DIR]
    python bench/eval_pgd.py [--images 32]    # no run folder: two models made here on synthetic data

Without a run folder it measures two extremes on synthetic CIFAR-shaped data: a standard-trained model
(no robustness, as after catastrophic overfitting: nearly every sample breaks within a few steps) and an
untrained one (near-constant predictions that no attack changes: its correct samples never break, so
every step of every restart runs for them).
"""

from __future__ import annotations

import argparse
import tempfile

from common import record, repo_path, spread, timed


def synthetic_models(width: int) -> dict[str, object]:
    """{'standard-trained': TrainedRun, 'untrained': TrainedRun} on the same synthetic data."""
    import dataclasses

    import torch

    from core.models import build_model_for
    from core.spec import JobSpec
    from core.trainer import load_trained, train

    spec = JobSpec.model_validate({
        "dataset": {"name": "synthetic", "synthetic_train_size": 2048, "synthetic_test_size": 512},
        "model": {"width": width},
        "training": {"method": "standard", "epochs": 2, "lr_max": 0.05, "precision": "bf16"},
        "evaluation": {"pgd_steps": 1, "restarts": 1, "test_subset": 10},
        "monitor": {"enabled": False},
    })
    with tempfile.TemporaryDirectory() as out:
        train(spec, out)
        trained = load_trained(out)
    torch.manual_seed(1)
    untrained = build_model_for(trained.spec, trained.data).eval()
    return {"standard-trained": trained, "untrained": dataclasses.replace(trained, model=untrained)}


def compare(run: object, images: int, steps: int, restarts: int, repeats: int, epsilon: float) -> list:
    import torch

    from core.data import balanced_order
    from core.evaluate import clean_accuracy, robust_accuracy, robust_accuracy_max_loss

    chosen = balanced_order(run.data.test.labels, 0)[:images]  # class-stratified: splits may be sorted by class
    x, y = run.data.test.images[chosen], run.data.test.labels[chosen]
    attack = {"epsilon": epsilon, "alpha": 2 / 255, "steps": steps, "restarts": restarts}

    def ours() -> float:
        return robust_accuracy(run.model, x, y, run.transform, **attack, generator=torch.Generator().manual_seed(0))

    def reference() -> float:
        return robust_accuracy_max_loss(run.model, x, y, run.transform, **attack,
                                        generator=torch.Generator().manual_seed(0))

    ours_seconds, ours_accuracy = timed(ours, repeats)
    reference_seconds, reference_accuracy = timed(reference, repeats)
    return [
        ("test images", str(len(y))),
        ("clean accuracy", f"{clean_accuracy(run.model, x, y, run.transform):.4f}"),
        ("robust accuracy, ours (any restart breaks)", f"{ours_accuracy:.4f}"),
        ("robust accuracy, reference (max-loss restart)", f"{reference_accuracy:.4f}"),
        ("seconds, ours", spread(ours_seconds)),
        ("seconds, reference", spread(reference_seconds)),
        ("speed-up", f"{min(reference_seconds) / min(ours_seconds):.2f}x"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", help="a run folder; none: models made here on synthetic data")
    parser.add_argument("--weights", default="checkpoint.pt", help="checkpoint.pt (last) or best.pt")
    parser.add_argument("--images", type=int, default=None, help="test images (default 500, or 32 without a run)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--width", type=int, default=16, help="model width without a run folder")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()

    from core.trainer import load_trained

    title = f"Final PGD-{args.steps}-{args.restarts} evaluation"
    if args.run_dir:
        run = load_trained(args.run_dir, args.weights, data_root=args.data_root)
        record(f"{title}, {repo_path(args.run_dir)} ({args.weights})",
               compare(run, args.images or 500, args.steps, args.restarts, args.repeats,
                       run.spec.training.epsilon / 255))
        return
    for name, run in synthetic_models(args.width).items():
        record(f"{title}, {name} PreActResNet18 width {args.width} on synthetic data, eps 8/255",
               compare(run, args.images or 32, args.steps, args.restarts, args.repeats, 8 / 255))


if __name__ == "__main__":
    main()
