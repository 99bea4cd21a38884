"""Final-evaluation benchmark: our PGD (any restart breaks; broken samples leave the batch) against the
released code's convention (every restart, all steps, every sample; max-loss delta), same model and data.

    python bench/eval_pgd.py RUN_DIR [--weights checkpoint.pt|best.pt] [--images 500] [--data-root DIR]
"""

from __future__ import annotations

import argparse

from common import record, spread, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--weights", default="checkpoint.pt", help="checkpoint.pt (last) or best.pt")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()

    import torch

    from core.evaluate import robust_accuracy, robust_accuracy_max_loss
    from core.trainer import load_trained

    run = load_trained(args.run_dir, args.weights, data_root=args.data_root)
    images, labels = run.data.test.images[:args.images], run.data.test.labels[:args.images]
    eps, alpha = run.spec.training.epsilon / 255, 2 / 255

    def ours() -> float:
        return robust_accuracy(run.model, images, labels, run.transform, eps, alpha, args.steps, args.restarts,
                               generator=torch.Generator().manual_seed(0))

    def reference() -> float:
        return robust_accuracy_max_loss(run.model, images, labels, run.transform, eps, alpha, args.steps,
                                        args.restarts, generator=torch.Generator().manual_seed(0))

    ours_seconds, ours_accuracy = timed(ours, args.repeats)
    reference_seconds, reference_accuracy = timed(reference, args.repeats)
    speedup = min(reference_seconds) / min(ours_seconds)
    record(f"Final PGD-{args.steps}-{args.restarts} evaluation, {args.run_dir} ({args.weights})", [
        ("test images", str(len(labels))),
        ("robust accuracy, ours (any restart breaks)", f"{ours_accuracy:.4f}"),
        ("robust accuracy, reference (max-loss restart)", f"{reference_accuracy:.4f}"),
        ("seconds, ours", spread(ours_seconds)),
        ("seconds, reference", spread(reference_seconds)),
        ("speed-up", f"{speedup:.2f}x"),
    ])


if __name__ == "__main__":
    main()
