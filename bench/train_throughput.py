"""Training throughput of one FGSM-AT step at batch 128 (images/s): our trainer against the reference-style
loop (bench/reference_loop.py), side by side in one process, plus hardware efficiency.

    python bench/train_throughput.py [--widths 16 64] [--steps 4] [--warmup 1] [--repeats 3] [--device auto]

Ours is the real ``core.trainer.train`` on synthetic CIFAR-shaped data, timed between its per-step
progress events (data indexing, intervention, schedule and logging included), in fp32 and bf16. The
reference-style loop is timed the same way between its steps (its DataLoader included). The reference
runs first: the trainer's allocator setting (core/hostmem.py) cannot be undone within a process.

Hardware efficiency = model FLOPs per image x 3 (forward + backward) x 2 passes (attack + training) x
images/s, over the FLOP/s of a large matrix product, and of a 3x3 convolution, of the same precision
measured in this run. The formula counts the attack's weight gradients, which our attack never computes
(it differentiates with respect to delta only): our step does 5/6 of those FLOPs, so the fraction can pass
100 % of the matmul (on this CPU oneDNN's convolutions also outrun MKL's matmul).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from common import record, spread

BATCH = 128
EPSILON = 8 / 255  # [0, 1] units; FGSM step alpha = epsilon, as the paper's scripts


def throughput_spec(width: int, precision: str, steps: int, deterministic: bool = False):
    from core.spec import JobSpec

    return JobSpec.model_validate({
        "dataset": {"name": "synthetic", "synthetic_train_size": BATCH * steps, "synthetic_test_size": 10},
        "model": {"width": width},
        "training": {"method": "fgsm", "epsilon": 8, "epochs": 1, "batch_size": BATCH, "precision": precision,
                     "deterministic": deterministic},
        "evaluation": {"pgd_steps": 1, "restarts": 1, "test_subset": 10},
        "monitor": {"enabled": False},
    })


class StepClock:
    """Timestamps of the end of every step; images/s over the steps after the warm-up."""

    def __init__(self, device) -> None:
        import torch

        self.stamps: list[float] = [time.perf_counter()]
        self.synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def tick(self) -> None:
        self.synchronize()
        self.stamps.append(time.perf_counter())

    def images_per_second(self, warmup: int) -> float:
        timed = self.stamps[warmup:]
        return BATCH * (len(timed) - 1) / (timed[-1] - timed[0])


def ours(width: int, variant: str, steps: int, warmup: int, device) -> float:
    """``variant``: fp32, bf16, or "fp32 deterministic" (training.deterministic: the cost of a repeatable GPU run)."""
    from core.trainer import Callbacks, train

    clock = StepClock(device)
    callbacks = Callbacks(on_event=lambda event: clock.tick() if event["type"] == "progress" else None)
    with tempfile.TemporaryDirectory() as out:
        spec = throughput_spec(width, variant.split()[0], warmup + steps, "deterministic" in variant)
        train(spec, out, device, callbacks=callbacks)
    return clock.images_per_second(warmup)


def reference(width: int, steps: int, warmup: int, device) -> float:
    from reference_loop import ReferenceFGSM, reference_epoch, reference_loader, reference_optimizer

    from core.data import load_dataset
    from core.models import build_model_for

    spec = throughput_spec(width, "fp32", warmup + steps)
    data = load_dataset(spec.dataset, None, spec.seed)
    model = build_model_for(spec, data).to(device)
    loader = reference_loader(data.train.images, data.train.labels, BATCH, spec.seed)
    optimizer, scheduler = reference_optimizer(model, total_steps=len(loader))
    clock = StepClock(device)
    reference_epoch(model, loader, optimizer, scheduler, ReferenceFGSM(model, EPSILON, EPSILON), device,
                    on_step=clock.tick)
    return clock.images_per_second(warmup)


def forward_flops_per_image(width: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from core.models import build_model

    model = build_model("preact_resnet18", width, 10, in_channels=3, image_size=(32, 32), mean=(0.5,) * 3,
                        std=(0.25,) * 3)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    return counter.get_total_flops() / 2


def best_flops(operation, flops: float, device, repeats: int = 5) -> float:
    """Best FLOP/s of ``operation`` (which does ``flops`` FLOPs) over ``repeats`` timed calls after one."""
    clock = StepClock(device)
    for _ in range(repeats + 1):
        operation()
        clock.tick()
    return flops / min(later - earlier for earlier, later in zip(clock.stamps[1:], clock.stamps[2:], strict=False))


def matmul_flops(dtype, device, size: int) -> float:
    """A size x size matrix product."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    return best_flops(lambda: a @ b, 2 * size**3, device)


def convolution_flops(dtype, device) -> float:
    """A 3x3 convolution shaped like the network's third stage (batch 128, 256 channels, 16x16,
    channels_last): the kernel the network spends its time in, which can beat the matmul library."""
    import torch
    import torch.nn.functional as F

    layout = torch.channels_last
    x = torch.randn(BATCH, 256, 16, 16, dtype=dtype, device=device).contiguous(memory_format=layout)
    weight = torch.randn(256, 256, 3, 3, dtype=dtype, device=device).contiguous(memory_format=layout)
    return best_flops(lambda: F.conv2d(x, weight, padding=1), 2 * BATCH * 16 * 16 * 256 * 256 * 9, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per run (>= 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import torch

    from core.trainer import select_device

    device = select_device(args.device)
    widths, repeats, steps, warmup = args.widths, args.repeats, args.steps, max(1, args.warmup)
    base = {w: [reference(w, steps, warmup, device) for _ in range(repeats)] for w in widths}
    variants = ("fp32", "bf16") + (("fp32 deterministic",) if device.type == "cuda" else ())  # same on a CPU
    fast = {(w, v): [ours(w, v, steps, warmup, device) for _ in range(repeats)] for w in widths for v in variants}
    size = 8192 if device.type == "cuda" else 2048
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peak = {name: matmul_flops(dtype, device, size) for name, dtype in dtypes.items()}
    conv = {name: convolution_flops(dtype, device) for name, dtype in dtypes.items()}

    rows = [("matrix product FLOP/s (fp32 / bf16)", f"{peak['fp32'] / 1e9:.0f} / {peak['bf16'] / 1e9:.0f} G "
                                                    f"({size}x{size})"),
            ("3x3 convolution FLOP/s (fp32 / bf16)", f"{conv['fp32'] / 1e9:.0f} / {conv['bf16'] / 1e9:.0f} G "
                                                     f"(128x256x16x16, channels_last)")]
    for w in widths:
        flops = forward_flops_per_image(w)
        reference_rate = statistics.median(base[w])
        rows.append((f"width {w}: model forward FLOPs per image", f"{flops / 1e9:.3f} G"))
        rows.append((f"width {w}: reference-style loop, images/s", spread(base[w])))
        for variant in variants:
            rates, precision = fast[(w, variant)], variant.split()[0]
            rate = statistics.median(rates)
            achieved = flops * 3 * 2 * rate
            rows.append((f"width {w}: ours {variant}, images/s", spread(rates)))
            rows.append((f"width {w}: ours {variant} / reference", f"{rate / reference_rate:.2f}x"))
            rows.append((f"width {w}: ours {variant} hardware efficiency",
                         f"{achieved / 1e9:.0f} GFLOP/s = {100 * achieved / peak[precision]:.0f} % of the matmul, "
                         f"{100 * achieved / conv[precision]:.0f} % of the convolution"))
    allocator = "glibc defaults" if os.environ.get("COSCOPE_KEEP_FREED_MEMORY") == "0" else "keep freed memory"
    record(f"Training throughput, FGSM-AT step, batch {BATCH}, {device.type}, {steps} timed steps after "
           f"{warmup} warm-up, {repeats} runs each, our allocator setting: {allocator}", rows)


if __name__ == "__main__":
    main()
