"""The job spec: one frozen, closed, bounded pydantic model shared by API, worker and core.

Units: ``epsilon``, ``alpha``, ``beta``, ``noise_magnitude`` and ``step_size`` are in /255 of the
[0, 1] pixel range (8 means 8/255), like the paper's configs. Defaults are the paper's
(``shared/reference/paper-notes.md`` §2-§5). This module imports pydantic only, so the API can use it
without importing torch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DatasetName = Literal["cifar10", "cifar100", "svhn", "mnist", "fashion_mnist", "imagefolder", "synthetic"]
InterventionKind = Literal["none", "inject", "inject_orthogonal", "low_pass", "high_pass"]
Method = Literal["standard", "fgsm", "rs_fgsm", "n_fgsm", "grad_align", "pgd"]

PER_255 = 1.0 / 255.0  # spec units (/255) -> [0, 1] pixel units
Per255 = Annotated[float, Field(ge=0.0, le=255.0)]  # a pixel-scale quantity in /255 units
Subset = Annotated[int, Field(ge=1, le=10_000_000)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DatasetSpec(_Section):
    name: DatasetName = "cifar10"
    path: str | None = Field(None, min_length=1, max_length=255)  # imagefolder only, relative to data root
    train_subset: Subset | None = None  # stratified, seeded; None = all training images
    test_subset: Subset | None = None  # stratified, seeded; None = all test images
    augment: bool = False  # random crop (pad 4) + horizontal flip, on device; paper: off for injected runs
    normalization: Literal["auto", "cifar10", "computed"] = "auto"  # the model's input mean/std: auto = the
    # paper's CIFAR-10 constants for cifar10, the training split's channel statistics otherwise
    # synthetic data only: a seeded, learnable class-wise pattern task for tests and demos
    synthetic_train_size: int = Field(2048, ge=10, le=200_000)
    synthetic_test_size: int = Field(512, ge=10, le=100_000)
    synthetic_image_size: int = Field(32, ge=8, le=64)
    synthetic_channels: Literal[1, 3] = 3
    synthetic_classes: int = Field(10, ge=2, le=100)

    @model_validator(mode="after")
    def _path_only_for_imagefolder(self) -> DatasetSpec:
        if self.name == "imagefolder" and self.path is None:
            raise ValueError("dataset.path is required when dataset.name is 'imagefolder'")
        if self.name != "imagefolder" and self.path is not None:
            raise ValueError("dataset.path is only used when dataset.name is 'imagefolder'")
        if self.path is not None and (self.path.startswith(("/", "\\")) or ".." in self.path.split("/")):
            raise ValueError("dataset.path must be relative to the data root, without '..'")
        return self


class InterventionSpec(_Section):
    kind: InterventionKind = "none"
    beta: Per255 = 8.0  # carrier strength for inject kinds, /255 (paper config: 8)
    bandwidth: int = Field(16, ge=1, le=512)  # side of the kept DCT block for filters (paper: 16)

    @property
    def injects(self) -> bool:
        """A carrier is added to the images (``inject`` or ``inject_orthogonal``)."""
        return self.kind in ("inject", "inject_orthogonal")


class ModelSpec(_Section):
    arch: Literal["preact_resnet18", "preact_resnet18_he", "small_cnn"] = "preact_resnet18"  # preact_resnet18:
    # the paper's block (projection shortcut on the block input); _he: on relu(bn1(x)) (He et al. 2016)
    width: int = Field(64, ge=4, le=512)  # PreActResNet18 base width; 64 = the paper's


class TrainingSpec(_Section):
    method: Method = "fgsm"
    epsilon: Per255 = 8.0  # L-inf radius, /255
    alpha: Per255 | None = None  # step size, /255; None = method default (see resolved())
    pgd_steps: int = Field(10, ge=1, le=100)  # pgd method only
    noise_magnitude: Per255 | None = None  # rs_fgsm / n_fgsm init noise half-width, /255; None = default
    grad_align_lambda: float = Field(0.2, ge=0.0, le=100.0)  # paper config: 0.2 (right for eps=8)
    grad_align_at: Literal["clean", "adversarial"] = "clean"  # where g1 is taken; see docs/spec.md
    epochs: int = Field(30, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=8192)
    lr_max: float = Field(0.2, gt=0.0, le=10.0)
    lr_schedule: Literal["cyclic", "multistep"] = "cyclic"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # cyclic schedule cycles it down to momentum - 0.1
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast forward passes, fp32 weights/optimizer
    channels_last: bool = True  # memory format of activations; numerically the same algorithm
    last_batch: Literal["keep", "drop", "drop_small"] = "drop_small"  # an epoch's last, smaller batch:
    # keep (the paper: 50,000 images leave 80), drop, or drop_small = drop it when under half a batch
    # (10,000 images leave 16; keep and drop measured the same, docs/ablation.md)
    attack_start: Literal["input", "box_clipped"] = "input"  # where a noise-free single-step attack takes
    # its gradient: at the input itself, as the released code (delta_0 = 0 at an injected image, pixels
    # may lie outside [0, 1]), or at its box-clipped version (coscope before issue 11)
    clip_box: bool = True  # the training attack keeps x + delta in [0, 1]; the released low-pass configs: False
    log_every: int = Field(20, ge=1, le=100_000)  # steps between logged training metrics
    max_steps: int | None = Field(None, ge=1, le=100_000_000)  # stop early (smoke tests, benchmarks); the
    # schedule still spans all epochs, the epoch in progress is closed and evaluated as usual
    deterministic: bool = False  # CUDA: deterministic cuDNN kernels, no autotuning, so a GPU run repeats
    # bit for bit on the same machine (cost in docs/performance.md); CPU runs are deterministic always

    def default_alpha(self) -> float:
        """Step size in /255 for this method, as in the paper's scripts (paper-notes §4)."""
        return {
            "standard": 0.0,
            "fgsm": self.epsilon,
            "rs_fgsm": 1.25 * self.epsilon,  # Wong et al.
            "n_fgsm": self.epsilon,
            "grad_align": self.epsilon,
            "pgd": 2.0,
        }[self.method]

    def default_noise(self) -> float:
        """Init noise half-width in /255: RS-FGSM uses eps (Wong), N-FGSM 2*eps (k=2)."""
        return {"rs_fgsm": self.epsilon, "n_fgsm": 2.0 * self.epsilon}.get(self.method, 0.0)


class EvaluationSpec(_Section):
    pgd_steps: int = Field(50, ge=1, le=1000)
    restarts: int = Field(10, ge=1, le=100)
    step_size: Per255 = 2.0  # /255
    test_subset: Subset | None = None  # images attacked by the final PGD; None = whole test set
    batch_size: int = Field(512, ge=1, le=8192)
    autoattack: Literal["off", "standard"] = "off"  # standard: APGD-CE, APGD-T, FAB-T, Square at the training
    # epsilon (Croce & Hein 2020), on the same class-stratified images as the PGD evaluation


class RescueSpec(_Section):
    """What ``monitor.co_policy: rescue`` does at a confirmed onset (online rule, core/co.py): restore the
    best-robust weights and their optimizer state, then train the remaining steps with ``method``."""

    trigger: Literal["confirmed_onset"] = "confirmed_onset"  # leading indicators: only once measured earlier
    method: Literal["n_fgsm", "grad_align", "fgsm"] = "n_fgsm"  # at the run's epsilon, with its defaults
    fgsm_step_fraction: float = Field(0.5, gt=0.0, le=1.0)  # method fgsm: step alpha = this x epsilon
    lr_scale: float = Field(1.0, gt=0.0, le=1.0)  # the remaining learning rates times this
    max_rescues: int = Field(1, ge=1, le=10)  # onsets after the last rescue are reported only


class MonitorSpec(_Section):
    """Catastrophic-overfitting monitor: what is measured, how often, and the onset rule (core/co.py).

    Accuracy thresholds are fractions of the monitor set (0.20 = 20 percentage points), not /255.
    Defaults follow shared/reference/co-detection.md §2.3 (GradAlign cadence and PGD, Wong's 20 pp drop).
    """

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_fields(cls, data: Any) -> Any:
        """``min_gap`` (R2's FGSM-PGD gap before issue 21) is retired: stored specs that carry it still load,
        and are judged by today's rules (``signature_gap`` took its place with another meaning)."""
        if isinstance(data, dict) and "min_gap" in data:
            data = {key: value for key, value in data.items() if key != "min_gap"}
        return data

    enabled: bool = True  # off: no checks, no onset verdict (the benchmark's baseline)
    every_steps: int = Field(200, ge=1, le=10_000_000)  # steps since the last check (epoch ends check too)
    train_images: int = Field(512, ge=1, le=100_000)  # fixed, seeded training subset, no augmentation
    test_images: int = Field(0, ge=0, le=100_000)  # optional fixed test subset; 0 = none
    indicator_images: int = Field(128, ge=1, le=100_000)  # images for alignment, linearity, gradient norm
    pgd_steps: int = Field(10, ge=1, le=1000)  # monitor PGD-k, 1 restart
    pgd_step_fraction: float = Field(0.25, gt=0.0, le=2.5)  # monitor PGD step = fraction x epsilon
    # the CO signature every rule needs (core/co.py): FGSM acc - PGD acc >= signature_gap and PGD acc <
    # signature_ratio x FGSM acc; healthy adversarial training keeps PGD at 0.7-0.9 of FGSM (docs/science.md)
    signature_gap: float = Field(0.10, ge=0.0, le=1.0)
    signature_ratio: float = Field(0.5, ge=0.0, le=1.0)
    wong_drop: float = Field(0.20, gt=0.0, le=1.0)  # R1: PGD acc drop between consecutive checks; 1 = off
    max_drop: float = Field(0.20, gt=0.0, le=1.0)  # R2: PGD acc below running max minus this; 1 = off
    relative_fraction: float = Field(0.5, ge=0.0, le=1.0)  # R3: PGD acc below this x running max; 0 = off
    min_peak: float = Field(0.02, ge=0.0, le=1.0)  # R3 applies only once the running max PGD acc >= this
    confirm: bool = True  # the next check (or a repeat of the last) must still show the signature below the
    # firing rule's PGD level
    # verdict "never_robust" when the peak PGD acc <= the monitor set's largest class share + this. 0.02 is
    # 1.5 binomial standard errors of an accuracy near 0.1 on 512 images (sqrt(0.1 x 0.9 / 512) = 0.013):
    # a peak within it cannot be told from a constant classifier's score
    never_robust_margin: float = Field(0.02, ge=0.0, le=1.0)  # fraction of the monitor set
    curvature_every_epochs: int = Field(0, ge=0, le=1000)  # top input-Hessian eigenvalue cadence; 0 = off
    curvature_iterations: int = Field(20, ge=1, le=1000)  # power-iteration steps
    curvature_subspace: Literal["full", "carrier", "complement"] = "full"  # span(V), span(V)-perp or all
    # what the trainer does at a confirmed onset; rescue: restore the best-robust weights and optimizer state,
    # then go on with a safer attack (``rescue``)
    co_policy: Literal["report", "stop", "continue", "rescue"] = "report"
    rescue: RescueSpec = RescueSpec()


class JobSpec(_Section):
    version: Literal[1] = 1
    seed: int = Field(42, ge=0, le=2**31 - 1)  # paper: 42
    dry_run: bool = False  # validate, locate the data, estimate the cost, write a report; no training
    dataset: DatasetSpec = DatasetSpec()
    intervention: InterventionSpec = InterventionSpec()
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    monitor: MonitorSpec = MonitorSpec()

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.training.method == "standard" and self.training.alpha not in (None, 0.0):
            raise ValueError("training.alpha has no meaning for method 'standard'")
        injected = self.intervention.injects
        if not self.training.clip_box and self.training.method not in ("fgsm", "rs_fgsm", "n_fgsm", "grad_align"):
            raise ValueError("training.clip_box false applies to single-step methods only")
        if self.monitor.curvature_subspace != "full" and not injected:
            raise ValueError("monitor.curvature_subspace 'carrier'/'complement' needs an inject intervention")
        return self

    def resolved(self) -> JobSpec:
        """The same spec with method-dependent defaults filled in (alpha, noise_magnitude)."""
        t = self.training
        training = t.model_copy(
            update={
                "alpha": t.default_alpha() if t.alpha is None else t.alpha,
                "noise_magnitude": t.default_noise() if t.noise_magnitude is None else t.noise_magnitude,
            }
        )
        return self.model_copy(update={"training": training})

    def sha256(self) -> str:
        """Stable digest of the resolved spec, stored in checkpoints to refuse a resume with another spec.
        Fields added later (``dry_run``, ``training.max_steps``, ``training.deterministic``) count only when
        set: specs (and checkpoints) from before them keep their digest. ``monitor.never_robust_margin`` only
        reads the stored checks, so a resume may change it; so do the signature's thresholds unless a policy
        acts on the onset (``stop``, ``rescue``), and ``monitor.rescue`` unless the policy is ``rescue``."""
        unset: dict[str, Any] = {}
        if not self.dry_run:
            unset["dry_run"] = True
        unset["training"] = {name for name, default in (("max_steps", None), ("deterministic", False))
                             if getattr(self.training, name) == default}
        unset["monitor"] = {"never_robust_margin"}  # reads the stored checks, trains nothing: never counted
        data = self.resolved().model_dump(mode="json", exclude=unset)
        monitor = data["monitor"]
        if self.monitor.co_policy != "rescue":  # read only by the rescue policy
            del monitor["rescue"]
        if self.monitor.co_policy in ("report", "continue"):  # the signature then only reads the stored
            del monitor["signature_gap"], monitor["signature_ratio"]  # checks: digests from before issue 21
            monitor["min_gap"] = 0.30  # still hold, with the default of the field the signature retired
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def load_spec_file(path: str) -> JobSpec:
    """Read a YAML or JSON spec file (YAML is a superset of JSON)."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    return JobSpec.model_validate(data if data is not None else {})


def leaf_paths(model: type[BaseModel] = JobSpec, prefix: str = "") -> list[str]:
    """Every leaf field of the spec as a dotted path (``training.epsilon``): what a sweep's axis may name."""
    paths = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, _Section):
            paths += leaf_paths(field.annotation, f"{prefix}{name}.")
        else:
            paths.append(prefix + name)
    return paths
