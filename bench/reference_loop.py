"""A training loop written the way the paper's released scripts train (paper-notes §2, §4), as a baseline.

Written from the notes' description, not from their code: NCHW float32 images in a ``TensorDataset`` on the
host, a shuffling ``DataLoader`` (pinned memory when a GPU is there), an attack *object* that calls
``.backward()`` on a zeroed delta (so it also fills every parameter's ``.grad``), ``.item()`` on loss and
accuracy every step, and torch's ``CyclicLR`` stepped every iteration. Same algorithm as
``core.trainer.train_step`` for FGSM-AT (``tests/bench/test_reference_loop.py`` checks it step by step);
only the engineering differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class ReferenceFGSM:
    """FGSM as an object: zero delta, CE(mean) backward, delta = clip_box(clamp(alpha sign(grad), -eps, eps))."""

    def __init__(self, model: nn.Module, epsilon: float, alpha: float) -> None:
        self.model, self.epsilon, self.alpha = model, epsilon, alpha  # [0, 1] pixel units

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        delta = torch.zeros_like(images, requires_grad=True)
        loss = F.cross_entropy(self.model(images + delta), labels)
        loss.backward()  # the released code's way: parameter grads are filled too, and zeroed later
        step = delta.detach() + self.alpha * delta.grad.detach().sign()
        step = torch.clamp(step, -self.epsilon, self.epsilon)
        return torch.max(torch.min(step, 1 - images), -images)  # x + delta in [0, 1]


def reference_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128,
                     seed: int = 0) -> DataLoader:
    """uint8 (N, C, H, W) images -> float32 NCHW on the host, shuffled every epoch, no ``drop_last``."""
    dataset = TensorDataset(images.float().div(255), labels)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(seed))


def reference_optimizer(model: nn.Module, total_steps: int, lr_max: float = 0.2, momentum: float = 0.9,
                        weight_decay: float = 5e-4) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.CyclicLR]:
    """SGD and the paper's triangular CyclicLR (momentum cycled 0.9 -> 0.8 -> 0.9 by its defaults)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CyclicLR(optimizer, base_lr=0.0, max_lr=lr_max,
                                                  step_size_up=total_steps / 2, step_size_down=total_steps / 2)
    return optimizer, scheduler


def reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: object, attack: ReferenceFGSM,
                   images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """One FGSM-AT iteration; returns (batch loss, batch correct) as Python numbers, like the scripts log."""
    delta = attack(images, labels)
    output = model(images + delta)
    loss = F.cross_entropy(output, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()  # type: ignore[attr-defined]
    return loss.item(), (output.max(1)[1] == labels).sum().item()


def reference_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler: object,
                    attack: ReferenceFGSM, device: torch.device, max_steps: int | None = None,
                    on_step: object = None) -> tuple[float, float]:
    """Train over ``loader`` (at most ``max_steps`` batches); returns mean loss and accuracy."""
    model.train()
    total_loss, correct, seen = 0.0, 0.0, 0
    for step, (images, labels) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss, batch_correct = reference_step(model, optimizer, scheduler, attack, images, labels)
        total_loss, correct, seen = total_loss + loss * len(labels), correct + batch_correct, seen + len(labels)
        if on_step is not None:
            on_step()  # type: ignore[operator]
    return total_loss / max(seen, 1), correct / max(seen, 1)
