"""The adversarial-training engine: ``train(spec, out_dir, device, ...)`` writes a run folder.

Output: ``metrics.jsonl`` (one JSON object per logged step and per epoch), ``checkpoint.pt`` (every epoch
and on cancel), ``report.json`` and ``curves.png``. Nothing happens at import time; the caller passes the
device and two callbacks: ``on_event(dict)`` for progress and ``should_stop() -> bool`` for cancelling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core import checkpoint, hostmem
from core.attacks import gradient_cosine, input_gradient, pgd, single_step, uniform_noise
from core.autoattack import autoattack_section
from core.co import Onset, chance_level, classify, detect_onset, monitor_rows, pending_onset
from core.data import Dataset, augment, balanced_order, class_counts, epoch_order, load_dataset
from core.errors import Cancelled, DivergedError, SpecError
from core.evaluate import (
    InputTransform,
    clean_accuracy,
    clean_correct,
    fraction,
    per_class_accuracy,
    pgd_correct,
)
from core.interventions import carrier_basis, carriers, inject, inject_orthogonal
from core.models import build_model_for, memory_format_for
from core.monitor import Monitor
from core.report import onset_fields, write_run_summary
from core.schedule import lr_and_momentum
from core.spec import PER_255, JobSpec, TrainingSpec

EPOCH_TEST_IMAGES = 1000  # test images for the per-epoch clean accuracy (cheap, no attack)
CHECKPOINT, BEST_CHECKPOINT = "checkpoint.pt", "best.pt"
SUM_SLOTS = ("loss", "adv_correct", "clean_correct", "clean_seen", "seen")  # columns of the running sums
EPOCH, INTERVAL = 0, 1  # rows of the running sums: this epoch, and since the last logged step


@dataclass
class Callbacks:
    """Hooks the worker and the CLI pass in; both default to doing nothing."""

    on_event: Callable[[dict[str, Any]], None] = lambda event: None
    should_stop: Callable[[], bool] = lambda: False


@dataclass
class TrainState:
    """Everything a resume needs besides model and optimizer; plain data so it checkpoints safely."""

    epoch: int = 0
    batch: int = 0  # next batch index within ``epoch``
    step: int = 0  # global optimizer steps taken
    images_seen: int = 0
    train_seconds: float = 0.0  # training only: monitor checks and evaluation are timed apart
    monitor_seconds: float = 0.0
    last_check_step: int = 0  # the step clock of the monitor restarts at every check, epoch ends included
    best_pgd_accuracy: float = -1.0  # monitor PGD accuracy of the best-robust weights (best.pt)
    best_step: int | None = None
    best_epoch: int | None = None
    onset: dict[str, Any] | None = None  # core.co.Onset.to_dict() once confirmed
    stopped_early: bool = False  # co_policy 'stop' fired and the best weights were restored
    rescues: list[dict[str, Any]] = field(default_factory=list)  # co_policy 'rescue': what each one did
    rescue_method: str | None = None  # the training method since the last rescue (None: the spec's)
    watch_from_step: int = 0  # the online rule reads the checks after this step (the last rescue)
    history: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Inputs: uint8 images -> [0, 1] floats -> intervention


def input_transform(spec: JobSpec, data: Dataset, device: torch.device) -> InputTransform:
    """The data intervention as a function of a uint8 batch and its labels (train and test alike)."""
    kind, beta = spec.intervention.kind, spec.intervention.beta * PER_255
    class_carriers = carriers(data.num_classes, data.image_shape).to(device)
    basis = carrier_basis(class_carriers)

    def transform(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)
        if kind == "inject":
            return inject(x, labels, beta, class_carriers)
        if kind == "inject_orthogonal":
            return inject_orthogonal(x, labels, beta, class_carriers, basis)
        return x  # low/high pass live inside the model, so the attack's delta is filtered too

    return transform


# ---------------------------------------------------------------------------------------------------
# One training step per method


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               t: TrainingSpec, generator: torch.Generator | None) -> torch.Tensor:
    """One optimizer step of ``t.method``; returns this batch's sums as one tensor, in SUM_SLOTS order.

    Nothing here synchronises with the device: the sums stay tensors until the trainer logs them.
    """
    eps, alpha, noise = t.epsilon * PER_255, (t.alpha or 0.0) * PER_255, (t.noise_magnitude or 0.0) * PER_255
    clean_logits = regulariser = None
    match t.method:
        case "standard":
            x_train = x
        case "pgd":
            x_train = x + pgd(model, x, y, epsilon=eps, alpha=alpha, steps=t.pgd_steps, select="last",
                              generator=generator)
        case "fgsm" | "rs_fgsm" | "n_fgsm" | "grad_align":
            attack = single_step(model, x, y, epsilon=eps, alpha=alpha, noise=noise, project=t.method != "n_fgsm",
                                 generator=generator, box=t.clip_box, start_in_box=t.attack_start == "box_clipped")
            x_train = x + attack.delta
            if noise == 0.0 and t.attack_start == "input":  # the first forward was on x: clean accuracy for free
                clean_logits = attack.logits_at_init
            if t.method == "grad_align":
                regulariser = _grad_align_term(model, x, y, x_train, attack.grad_at_init, eps, t, generator)
        case _:
            raise SpecError(f"unknown training method {t.method!r}")

    logits = model(x_train)
    loss = F.cross_entropy(logits.float(), y)
    total = loss if regulariser is None else loss + regulariser
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()

    if t.method == "standard":
        clean_logits = logits
    batch = torch.tensor(float(len(y)), device=y.device)
    sums = {"loss": total.detach().float() * batch, "adv_correct": (logits.argmax(1) == y).sum().float(),
            "clean_correct": torch.zeros_like(batch), "clean_seen": torch.zeros_like(batch), "seen": batch}
    if clean_logits is not None:
        sums["clean_correct"], sums["clean_seen"] = (clean_logits.argmax(1) == y).sum().float(), batch
    return torch.stack([sums[slot] for slot in SUM_SLOTS])


def _grad_align_term(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                     grad_clean: torch.Tensor, eps: float, t: TrainingSpec,
                     generator: torch.Generator | None) -> torch.Tensor:
    """lambda * (1 - cos(g1, g2)), g2 at x + eta (eta ~ U(-eps, eps), not box-clipped, double backprop).

    g1 is the clean-point gradient (Andriushchenko & Flammarion; free from the FGSM attack) or, with
    ``grad_align_at: adversarial``, the gradient at the FGSM point as in the paper's released code.
    """
    g1 = grad_clean if t.grad_align_at == "clean" else input_gradient(model, x_adv, y)
    g2 = input_gradient(model, x + uniform_noise(x, eps, generator), y, create_graph=True)
    return t.grad_align_lambda * (1.0 - gradient_cosine(g1.detach(), g2))


# ---------------------------------------------------------------------------------------------------
# The run


def batches_per_epoch(images: int, batch_size: int, last_batch: str) -> int:
    """Optimizer steps per epoch under ``training.last_batch`` (keep / drop / drop_small)."""
    full, rest = divmod(images, batch_size)
    if rest == 0 or last_batch == "drop" or (last_batch == "drop_small" and 2 * rest < batch_size):
        return max(full, 1)  # a set smaller than one batch still trains on that one batch
    return full + 1


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for forward passes when asked for; weights, optimizer and losses stay fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def full_precision(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """fp32 for measurements, even inside a bf16 block: finite differences and PGD margins fall below bf16's
    resolution (a Hessian-vector product measured 2.6e-6 in fp32 and 2.0 in bf16; issue 10)."""
    return torch.autocast(device.type, enabled=False)


def train(spec: JobSpec, out_dir: str | Path, device: torch.device | str = "cpu",
          data_root: str | Path | None = None, callbacks: Callbacks | None = None,
          resume: bool = False) -> dict[str, Any]:
    """Train and evaluate ``spec``; write the run folder; return the report.

    Raises ``Cancelled`` (after writing a checkpoint) when ``should_stop`` says so, ``DivergedError`` on
    a non-finite loss, and ``SpecError`` / ``DatasetNotFound`` / ``CheckpointError`` on bad input.
    """
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    if on_cpu:
        hostmem.keep_freed_memory()
    aside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coscope-aside") if on_cpu else None
    try:
        run = _Run(spec.resolved(), Path(out_dir), device, data_root, callbacks or Callbacks(), aside)
        if resume:
            run.restore()
        else:
            (run.out / BEST_CHECKPOINT).unlink(missing_ok=True)  # a fresh run never inherits old best weights
        return run.execute()
    finally:
        if aside is not None:
            aside.shutdown()
            hostmem.release_freed_memory()  # a worker's next job starts from the baseline footprint


class _Run:
    """One training run: the objects it needs, its state, and the phases of ``execute``."""

    def __init__(self, spec: JobSpec, out: Path, device: torch.device, data_root: str | Path | None,
                 callbacks: Callbacks, aside: ThreadPoolExecutor | None) -> None:
        self.spec, self.out, self.device, self.callbacks, self.aside = spec, out, device, callbacks, aside
        t = self.t = spec.training
        out.mkdir(parents=True, exist_ok=True)
        # a process-wide switch, so set either way: a worker's next job must not inherit it
        torch.use_deterministic_algorithms(device.type == "cpu" or t.deterministic, warn_only=True)
        if device.type == "cuda":  # autotuning picks kernels by timing: fast, but not the same ones each run
            if t.deterministic:  # read when cuBLAS starts; without it cuBLAS matrix products may vary
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = not t.deterministic
            torch.backends.cudnn.deterministic = t.deterministic
        self.data = load_dataset(spec.dataset, data_root, spec.seed).to(device)
        self.transform = input_transform(spec, self.data, device)
        torch.manual_seed(spec.seed)
        model = build_model_for(spec, self.data).to(device)
        self.memory_format = memory_format_for(model, device, t.channels_last)
        self.model = model.to(memory_format=self.memory_format)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.0, momentum=t.momentum,
                                         weight_decay=t.weight_decay)
        self.generator = torch.Generator(device).manual_seed(spec.seed)
        self.monitor = Monitor(spec, self.data, self.transform, device) if spec.monitor.enabled else None
        self.steps_per_epoch = batches_per_epoch(len(self.data.train), t.batch_size, t.last_batch)
        self.epoch_test = balanced_order(self.data.test.labels, spec.seed + 2)[:EPOCH_TEST_IMAGES].to(device)
        self.total_steps = self.steps_per_epoch * t.epochs
        self.state = TrainState()
        self.sums = torch.zeros(2, len(SUM_SLOTS), dtype=torch.float64, device=device)  # EPOCH, INTERVAL rows
        self.metrics = _MetricsFile(out / "metrics.jsonl", self.state.history)
        self._rescued_training: TrainingSpec | None = None  # built at the first step after a rescue

    # ---- Checkpoints ---------------------------------------------------------------------------
    def save(self) -> None:
        checkpoint.save_atomic({
            "spec_sha256": self.spec.sha256(), "state": dataclasses.asdict(self.state),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "sums": self.sums.cpu(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
        }, self.out / CHECKPOINT)

    def restore(self) -> None:
        saved = checkpoint.load(self.out / CHECKPOINT, self.device, self.spec.sha256())
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["rng"]["generator"].cpu())
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        if self.device.type == "cuda" and saved["rng"]["cuda"]:
            torch.cuda.set_rng_state_all([state.cpu() for state in saved["rng"]["cuda"]])
        self.sums = saved["sums"].to(self.device)
        self.state = TrainState(**saved["state"])
        self.metrics = _MetricsFile(self.out / "metrics.jsonl", self.state.history)

    def _record(self, row: dict[str, Any], event: str) -> None:
        self.metrics.append(row)
        self.callbacks.on_event({"type": event, **row})

    # ---- Phases --------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        state = self.state
        self.callbacks.on_event({"type": "started", "total_steps": self.total_steps,
                                 "steps_per_epoch": self.steps_per_epoch, "step": state.step,
                                 "epoch": state.epoch})
        while state.epoch < self.t.epochs and not state.stopped_early and not self._step_cap_reached():
            self._train_epoch()
        return self._finish()

    def _train_epoch(self) -> None:
        state = self.state
        order = epoch_order(len(self.data.train), self.spec.seed, state.epoch).to(self.device)
        self.model.train()
        cancelled = False
        with self._timed("train_seconds") as stopwatch:
            for index in self._batches(order):
                if cancelled := self.callbacks.should_stop():
                    break
                self._train_batch(index)
                if self._check_due():
                    with stopwatch.paused():  # monitor time is booked apart, in _check
                        self._check(curvature=False)
                    if state.stopped_early:
                        return
        if cancelled:
            self.save()
            raise Cancelled(f"cancelled at step {state.step}; checkpoint written")
        self._end_epoch()

    def _batches(self, order: torch.Tensor) -> Iterator[torch.Tensor]:
        """Index tensors of this epoch's batches, from ``state.batch`` (a resume) to the epoch's or max_steps' end."""
        size = self.t.batch_size
        while not self._epoch_done():
            yield order[self.state.batch * size:(self.state.batch + 1) * size]

    def _train_batch(self, index: torch.Tensor) -> None:
        state, t, data = self.state, self.t, self.data
        y, images = data.train.labels[index], data.train.images[index]
        if self.spec.dataset.augment:
            images = augment(images.float(), self.generator).round_().to(torch.uint8)
        x = self.transform(images, y).contiguous(memory_format=self.memory_format)
        lr, momentum = lr_and_momentum(t.lr_schedule, state.step, self.total_steps, t.lr_max, t.momentum)
        if state.rescues:  # the remaining learning rates, scaled at the rescue
            lr *= self.spec.monitor.rescue.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"], group["momentum"] = lr, momentum
        with autocast(self.device, t.precision):
            self.sums += train_step(self.model, self.optimizer, x, y, self._training_now(), self.generator)
        state.step, state.batch, state.images_seen = state.step + 1, state.batch + 1, state.images_seen + len(y)
        if state.step % t.log_every == 0:
            row = _rates(self.sums[INTERVAL], kind="train", epoch=state.epoch, step=state.step, lr=lr,
                         momentum=momentum)
            self.sums[INTERVAL].zero_()
            _check_finite(row)
            self._record(row, "metrics")
        self.callbacks.on_event({"type": "progress", "epoch": state.epoch, "step": state.step,
                                 "total_steps": self.total_steps})

    def _epoch_done(self) -> bool:
        return self.state.batch >= self.steps_per_epoch or self._step_cap_reached()

    def _check_due(self) -> bool:
        """A mid-epoch monitor check is due (the epoch's end always checks, in _end_epoch)."""
        due = self.state.step - self.state.last_check_step >= self.spec.monitor.every_steps
        return self.monitor is not None and due and not self._epoch_done()

    @contextlib.contextmanager
    def _timed(self, field: str) -> Iterator[Stopwatch]:
        """Add the seconds spent in the block (less any ``paused`` parts) to ``state.<field>``."""
        stopwatch = Stopwatch(self._clock)
        try:
            yield stopwatch
        finally:
            setattr(self.state, field, getattr(self.state, field) + stopwatch.stop())

    def _clock(self) -> float:
        """Seconds for phase timings; on CUDA after the queued kernels ran, so each phase pays its own work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _step_cap_reached(self) -> bool:
        return self.t.max_steps is not None and self.state.step >= self.t.max_steps

    def _end_epoch(self) -> None:
        state, t, data = self.state, self.t, self.data
        with full_precision(self.device):
            test_clean = clean_accuracy(self.model, data.test.images[self.epoch_test],
                                        data.test.labels[self.epoch_test], self.transform, t.batch_size)
        row = _rates(self.sums[EPOCH], kind="epoch", epoch=state.epoch, step=state.step,
                     test_clean_accuracy=test_clean)
        _check_finite(row)
        self.sums.zero_()
        self._record(row, "epoch")
        every = self.spec.monitor.curvature_every_epochs
        if self.monitor:
            self._check(curvature=bool(every) and (state.epoch + 1) % every == 0)
        state.epoch, state.batch = state.epoch + 1, 0
        self.save()

    def _check(self, curvature: bool, repeat: bool = False) -> None:
        """Run the monitor, keep the best-robust weights, and act on a newly confirmed onset."""
        assert self.monitor is not None
        state, settings = self.state, self.spec.monitor
        with self._timed("monitor_seconds"):
            row = self._off_the_training_heap(self._monitor_row, curvature, repeat)
        state.last_check_step = state.step
        self._record(row, "monitor")
        # the best over the whole run: a collapse keeps its pre-onset peak (collapsed checks score far lower),
        # and a run whose signature goes away again (a no_co verdict) keeps the weights it recovered to
        if row["pgd_accuracy"] > state.best_pgd_accuracy:
            state.best_pgd_accuracy, state.best_step, state.best_epoch = row["pgd_accuracy"], state.step, state.epoch
            best = {"spec_sha256": self.spec.sha256(), "step": state.step, "model": self.model.state_dict()}
            if settings.co_policy == "rescue":  # a rescue continues from these weights with their momentum
                best["optimizer"] = self.optimizer.state_dict()
            checkpoint.save_atomic(best, self.out / BEST_CHECKPOINT)
        if state.onset is None:
            rows = [row for row in monitor_rows(state.history) if row["step"] > state.watch_from_step]
            onset = detect_onset(rows, settings)
            if onset is not None:
                state.onset = onset.to_dict()
                if settings.co_policy != "continue":  # the verdict so far: "co", or "never_robust" (core.co)
                    so_far = classify(rows, settings, chance_level=chance_level(self.monitor.class_counts))
                    earlier = {"rescue": {"rescues": state.rescues}} if state.rescues else {}  # a later onset
                    self.callbacks.on_event({"type": "co_onset", **state.onset, "verdict": so_far.code, **earlier})
                if settings.co_policy == "stop":
                    self._load_best()
                    state.stopped_early = True
                    self.save()
                elif settings.co_policy == "rescue" and len(state.rescues) < settings.rescue.max_rescues:
                    self._rescue(onset)

    def _rescue(self, onset: Onset) -> None:
        """Restore the best-robust weights and optimizer state, switch the attack (``monitor.rescue``), record
        what was done, and checkpoint, so that a resumed attempt goes on from the rescued state."""
        state, rescue = self.state, self.spec.monitor.rescue
        best = checkpoint.load(self.out / BEST_CHECKPOINT, self.device, self.spec.sha256())
        self.model.load_state_dict(best["model"])
        self.optimizer.load_state_dict(best["optimizer"])
        state.rescue_method = rescue.method
        self._rescued_training = None
        training = self._training_now()
        evidence = {key: onset.after[key] for key in ("pgd_accuracy", "fgsm_accuracy", "clean_accuracy")}
        record = {"number": len(state.rescues) + 1, "trigger": rescue.trigger, "at_step": state.step,
                  "epoch": state.epoch, "onset_step": onset.onset_step,
                  "confirmed_step": onset.confirmed_step, "rule": onset.rule["name"], "evidence": evidence,
                  "weights_from_step": best["step"], "best_monitor_pgd_accuracy": state.best_pgd_accuracy,
                  "method": training.method, "alpha": training.alpha,
                  "noise_magnitude": training.noise_magnitude, "lr_scale": rescue.lr_scale}
        state.rescues.append(record)
        state.onset, state.watch_from_step = None, state.step  # watch the rescued run afresh
        self.save()
        self.callbacks.on_event({"type": "co_rescued", **record})

    def _training_now(self) -> TrainingSpec:
        """The training settings of the next step: the spec's, or after a rescue its method at the run's
        epsilon (N-FGSM and GradAlign with their defaults, FGSM with a smaller step)."""
        if self.state.rescue_method is None:
            return self.t
        if self._rescued_training is None:
            rescue, t = self.spec.monitor.rescue, self.t
            training = {**t.model_dump(), "method": rescue.method, "alpha": None, "noise_magnitude": None}
            spec = JobSpec.model_validate({**self.spec.model_dump(), "training": training})
            rescued = spec.resolved().training
            alpha = t.epsilon * rescue.fgsm_step_fraction if rescue.method == "fgsm" else rescued.alpha
            self._rescued_training = rescued.model_copy(update={"alpha": alpha})
        return self._rescued_training

    def _monitor_row(self, curvature: bool, repeat: bool = False) -> dict[str, Any]:
        assert self.monitor is not None
        with full_precision(self.device):  # whatever training.precision
            return self.monitor.check(self.model, self.state.step, self.state.epoch, curvature, repeat)

    def _confirm_last_check(self) -> None:
        """A rule firing at the last check has no next check: measure the same weights once more on the same
        images (fresh attack noise), so it is confirmed or rejected like-for-like (core/co.py)."""
        rows = monitor_rows(self.state.history)
        if (self.monitor is not None and rows and not rows[-1].get("repeat")
                and pending_onset(rows, self.spec.monitor) is not None):
            self._check(curvature=False, repeat=True)

    def _off_the_training_heap(self, work: Callable[..., Any], *args: Any) -> Any:
        """Run ``work`` on the CPU from another thread, so that its buffers (other shapes than a training
        step's) come from another malloc arena: interleaved in the training heap, which core.hostmem keeps,
        they fragment it and the next training step needs ~1 GB more at width 64. The kept memory is given
        back before and after, so neither side holds the other's peak. Same numbers either way."""
        if self.aside is None:
            return work(*args)
        hostmem.release_freed_memory()
        try:
            return self.aside.submit(work, *args).result()
        finally:
            hostmem.release_freed_memory()

    def _load_best(self) -> None:
        best = checkpoint.load(self.out / BEST_CHECKPOINT, self.device, self.spec.sha256())
        self.model.load_state_dict(best["model"])

    def _finish(self) -> dict[str, Any]:
        if not self.state.stopped_early:
            self._confirm_last_check()
        started = self._clock()
        final = self._off_the_training_heap(self._evaluate)
        co = None
        if self.monitor is not None:
            co = co_section(self.spec, self.state, self.monitor)
            if self.state.stopped_early or self.state.best_step == self.state.step:
                co["best_checkpoint"]["final"] = final  # the last weights are the best ones
            elif (self.out / BEST_CHECKPOINT).exists():
                self._load_best()
                co["best_checkpoint"]["final"] = self._off_the_training_heap(self._evaluate)
        report = build_report(self.spec, final, self.data, self.device, self.state,
                              eval_seconds=self._clock() - started,
                              channels_last=self.memory_format == torch.channels_last)
        report["co"] = co
        report["steps"] = {"done": self.state.step, "planned": self.total_steps}  # done < planned: max_steps
        write_run_summary(self.out, report, self.state.history)
        self.callbacks.on_event({"type": "finished", "final": report["final"], "co": co})
        return report

    def _evaluate(self) -> dict[str, Any]:
        """Clean accuracy on every test image, PGD (and AutoAttack when asked) on a class-stratified subset,
        per class too; in fp32."""
        e, t, data = self.spec.evaluation, self.t, self.data
        count = len(data.test) if e.test_subset is None else min(e.test_subset, len(data.test))
        attacked = balanced_order(data.test.labels, self.spec.seed + 1)[:count].to(self.device)
        images, labels = data.test.images[attacked], data.test.labels[attacked]
        generator = torch.Generator(self.device).manual_seed(self.spec.seed + 1)  # same attack for last and best
        with full_precision(self.device):
            clean = clean_correct(self.model, data.test.images, data.test.labels, self.transform, e.batch_size)
            robust = pgd_correct(self.model, images, labels, self.transform, epsilon=t.epsilon * PER_255,
                                 alpha=e.step_size * PER_255, steps=e.pgd_steps, restarts=e.restarts,
                                 batch_size=e.batch_size, generator=generator)
        names, k = data.class_names, data.num_classes
        clean_by_class = per_class_accuracy(clean, data.test.labels, k)
        robust_by_class = per_class_accuracy(robust, labels, k)
        final = {"clean_accuracy": fraction(clean), "robust_accuracy": fraction(robust),
                 "attack": {"name": "pgd", "norm": "Linf", "epsilon": t.epsilon, "step_size": e.step_size,
                            "steps": e.pgd_steps, "restarts": e.restarts, "test_images": count,
                            "class_counts": class_counts(labels, k), "selection": "class-stratified, seeded",
                            "units": "/255", "broken_if": "any restart misclassifies"},
                 "per_class": [{"label": c, "name": names[c] if names else str(c),
                                "clean_accuracy": clean_by_class[c], "robust_accuracy": robust_by_class[c]}
                               for c in range(k)],
                 "clean_test_images": len(data.test)}
        if e.autoattack == "standard":  # the same images; seeded, so the same attack for last and best
            with full_precision(self.device):
                final["autoattack"] = autoattack_section(self.model, images, labels, self.transform,
                                                         epsilon=t.epsilon, num_classes=k, class_names=names,
                                                         batch_size=e.batch_size, seed=self.spec.seed + 1)
        return final


def co_section(spec: JobSpec, state: TrainState, monitor: Monitor) -> dict[str, Any]:
    """The report's ``co`` block: the verdict, the rows around the onset, the best checkpoint, the set-up."""
    settings = spec.monitor
    return {
        **onset_fields(Onset(**state.onset) if state.onset else None),
        "policy": settings.co_policy,
        "stopped_early": state.stopped_early,
        **({"rescue": {"rescues": state.rescues, "settings": settings.rescue.model_dump()}}
           if settings.co_policy == "rescue" else {}),
        "best_checkpoint": {"step": state.best_step, "epoch": state.best_epoch,
                            "monitor_pgd_accuracy": state.best_pgd_accuracy if state.best_step is not None
                            else None, "file": BEST_CHECKPOINT},
        "monitor": {"train_indices": monitor.indices, "class_counts": monitor.class_counts,
                    "test_class_counts": monitor.test_class_counts,
                    "indicator_class_counts": monitor.indicator_class_counts, "every_steps": settings.every_steps,
                    "pgd_steps": settings.pgd_steps, "pgd_step_fraction": settings.pgd_step_fraction,
                    "checks": len(monitor_rows(state.history)), "seconds": state.monitor_seconds},
    }


def build_report(spec: JobSpec, final: dict[str, Any], data: Dataset, device: torch.device, state: TrainState,
                 eval_seconds: float, channels_last: bool) -> dict[str, Any]:
    return {
        "spec": spec.model_dump(mode="json"),
        "final": final,
        "timing": {"train_seconds": state.train_seconds,
                   "train_images_per_second": state.images_seen / max(state.train_seconds, 1e-9),
                   "monitor_seconds": state.monitor_seconds,
                   "eval_seconds": eval_seconds},
        "environment": {"torch": torch.__version__, "device": str(device), "python": platform.python_version(),
                        "threads": torch.get_num_threads(),
                        "channels_last": channels_last,  # training.channels_last, unless memory_format_for said no
                        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()},
        "data": {"train_images": len(data.train), "test_images": len(data.test), "num_classes": data.num_classes,
                 "image_shape": list(data.image_shape), "mean": list(data.mean), "std": list(data.std)},
        "co": None,
    }


def _rates(sums: torch.Tensor, **fields: Any) -> dict[str, Any]:
    """Turn one row of running sums (SUM_SLOTS columns) into a metrics row (here the trainer synchronises)."""
    total = dict(zip(SUM_SLOTS, sums.tolist(), strict=True))
    seen = max(total["seen"], 1.0)
    return {**fields, "train_loss": total["loss"] / seen, "train_adv_accuracy": total["adv_correct"] / seen,
            "train_clean_accuracy": total["clean_correct"] / total["clean_seen"] if total["clean_seen"] else None}


class Stopwatch:
    """Running seconds of a phase, with parts ``paused`` out of it (a monitor check inside training)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock, self.seconds, self.started = clock, 0.0, clock()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.seconds += self.clock() - self.started
        try:
            yield
        finally:
            self.started = self.clock()

    def stop(self) -> float:
        return self.seconds + self.clock() - self.started


def _check_finite(row: dict[str, Any]) -> None:
    if not math.isfinite(row["train_loss"]):
        raise DivergedError(f"training loss became {row['train_loss']} by step {row['step']}")


class _MetricsFile:
    """metrics.jsonl kept equal to the in-memory history (rewritten on resume, appended otherwise)."""

    def __init__(self, path: Path, history: list[dict[str, Any]]) -> None:
        self.path, self.history = path, history
        path.write_text("".join(json.dumps(row) + "\n" for row in history))

    def append(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


@dataclass
class TrainedRun:
    """A finished run's model rebuilt from its folder, with the data and intervention it was trained on."""

    spec: JobSpec
    model: nn.Module
    data: Dataset
    transform: InputTransform


def load_trained(run_dir: str | Path, weights: str = CHECKPOINT, device: torch.device | str = "cpu",
                 data_root: str | Path | None = None) -> TrainedRun:
    """Rebuild the model of ``run_dir`` from its report's spec and load ``weights`` (checkpoint.pt or best.pt)."""
    run_dir, device = Path(run_dir), torch.device(device)
    spec = JobSpec.model_validate(json.loads((run_dir / "report.json").read_text())["spec"])
    data = load_dataset(spec.dataset, data_root, spec.seed).to(device)
    model = build_model_for(spec, data).to(device)
    model.load_state_dict(checkpoint.load(run_dir / weights, device, spec.sha256())["model"])
    return TrainedRun(spec, model.eval(), data, input_transform(spec, data, device))
