import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.spec import JobSpec, load_spec_file


def _locs(error: ValidationError) -> list[tuple]:
    return [tuple(problem["loc"]) for problem in error.errors()]


def test_defaults_are_the_paper_configs():
    spec = JobSpec().resolved()
    t = spec.training
    assert (spec.seed, spec.dataset.name, spec.dataset.augment) == (42, "cifar10", False)
    assert (spec.model.arch, spec.model.width) == ("preact_resnet18", 64)
    assert (t.method, t.epsilon, t.alpha, t.epochs, t.batch_size) == ("fgsm", 8.0, 8.0, 30, 128)
    assert (t.lr_max, t.lr_schedule, t.momentum, t.weight_decay) == (0.2, "cyclic", 0.9, 5e-4)
    assert (spec.intervention.beta, spec.intervention.bandwidth) == (8.0, 16)
    e = spec.evaluation
    assert (e.pgd_steps, e.restarts, e.step_size) == (50, 10, 2.0)


@pytest.mark.parametrize(("method", "alpha", "noise"), [
    ("fgsm", 6.0, 0.0), ("rs_fgsm", 7.5, 6.0), ("n_fgsm", 6.0, 12.0), ("grad_align", 6.0, 0.0), ("pgd", 2.0, 0.0),
])
def test_resolved_fills_method_defaults(method, alpha, noise):
    t = JobSpec(training={"method": method, "epsilon": 6}).resolved().training
    assert (t.alpha, t.noise_magnitude) == (alpha, noise)


def test_resolved_keeps_explicit_alpha():
    assert JobSpec(training={"alpha": 3}).resolved().training.alpha == 3.0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0, 256.0])
def test_epsilon_out_of_bounds_names_the_field(value):
    with pytest.raises(ValidationError) as caught:
        JobSpec(training={"epsilon": value})
    assert ("training", "epsilon") in _locs(caught.value)


def test_unknown_field_is_rejected_with_its_location():
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({"training": {"epsilonn": 8}})
    assert ("training", "epsilonn") in _locs(caught.value)


def test_unknown_method_is_rejected():
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({"training": {"method": "free"}})
    assert ("training", "method") in _locs(caught.value)


def test_spec_is_frozen():
    spec = JobSpec()
    with pytest.raises(ValidationError):
        spec.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize("path", ["/etc", "../secret", "a/../../b"])
def test_imagefolder_path_must_stay_relative(path):
    with pytest.raises(ValidationError, match="relative to the data root"):
        JobSpec(dataset={"name": "imagefolder", "path": path})


def test_imagefolder_requires_a_path():
    with pytest.raises(ValidationError, match="dataset.path is required"):
        JobSpec(dataset={"name": "imagefolder"})


def test_sha256_changes_with_the_spec_and_not_with_spelled_out_defaults():
    assert JobSpec().sha256() == JobSpec(training={"alpha": 8}).sha256()
    assert JobSpec().sha256() != JobSpec(seed=1).sha256()


def test_dry_run_changes_the_sha256_only_when_set():
    # the default spec's digest pinned: ``dry_run`` left unset or false must not change it. (It last changed on
    # purpose with issues 10/11, which changed the default algorithm: the paper's residual block, FGSM's
    # gradient at the input, a small last batch dropped; checkpoints of the old algorithm are refused.)
    assert JobSpec().sha256() == JobSpec(dry_run=False).sha256() == \
        "f3429a7a340282bf2f77f9ab2cb326fc844b8bdb5b5e5a7f6c305c64058e3c97"
    assert JobSpec(dry_run=True).sha256() != JobSpec().sha256()
    assert JobSpec(dry_run=True).resolved().dry_run is True


def test_max_steps_changes_the_sha256_only_when_set():
    capped = JobSpec.model_validate({"training": {"max_steps": 10}})
    assert capped.sha256() != JobSpec().sha256()
    assert JobSpec.model_validate({"training": {"max_steps": None}}).sha256() == JobSpec().sha256()


def test_dry_run_must_be_a_boolean():
    with pytest.raises(ValidationError) as caught:
        JobSpec(dry_run="maybe")
    assert _locs(caught.value) == [("dry_run",)]


def test_load_spec_file_reads_yaml(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("seed: 3\ntraining:\n  method: pgd\n  epsilon: 4\n")
    spec = load_spec_file(str(path))
    assert (spec.seed, spec.training.method, spec.training.epsilon) == (3, "pgd", 4.0)


def test_clip_box_off_is_refused_for_multi_step_training():
    with pytest.raises(ValidationError, match="clip_box"):
        JobSpec(training={"method": "pgd", "clip_box": False})
    assert JobSpec(training={"method": "fgsm", "clip_box": False}).training.clip_box is False


def test_paper_examples_are_the_papers_settings():
    examples = Path(__file__).parents[2] / "examples" / "paper"
    paper = {path.stem: load_spec_file(str(path)) for path in examples.glob("*.yaml")}
    assert paper["injected-grad-align"].training.grad_align_at == "adversarial"  # g1 at the FGSM point
    assert paper["low-pass-fgsm"].training.clip_box is False  # the released low-pass configs
    for name, spec in paper.items():
        assert spec.model.arch == "preact_resnet18" and spec.model.width == 64, name
        assert spec.training.attack_start == "input" and spec.training.last_batch == "drop_small", name
        assert spec.dataset.name == "cifar10" or spec.dataset.normalization == "cifar10", name


# digests computed by the spec of commit 42021a5 (before issue 21 retired monitor.min_gap): checkpoints written
# then must still resume, so a job running across the upgrade keeps its attempt
DIGESTS_BEFORE_ISSUE_21 = {
    "{}": "f3429a7a340282bf2f77f9ab2cb326fc844b8bdb5b5e5a7f6c305c64058e3c97",
    '{"seed": 3, "training": {"epsilon": 12, "max_steps": 5}, "monitor": {"test_images": 100}}':
        "8f9b589bcbf5221b4eaff202d19aae3ee10262f2bd1d93395cb036705b424970",
}


@pytest.mark.parametrize("spec", DIGESTS_BEFORE_ISSUE_21)
def test_digests_of_specs_from_before_the_verdict_rework_are_unchanged(spec):
    assert JobSpec.model_validate(json.loads(spec)).sha256() == DIGESTS_BEFORE_ISSUE_21[spec]
    stored = {**json.loads(spec), "monitor": {**json.loads(spec).get("monitor", {}), "min_gap": 0.3}}
    assert JobSpec.model_validate(stored).sha256() == DIGESTS_BEFORE_ISSUE_21[spec]  # the retired field loads


def test_rescue_settings_count_in_the_digest_only_under_the_rescue_policy():
    def digest(**monitor):
        return JobSpec.model_validate({"monitor": monitor}).sha256()

    assert digest(rescue={"max_rescues": 3}) == digest()
    assert digest(co_policy="rescue", rescue={"max_rescues": 3}) != digest(co_policy="rescue")
    assert digest(signature_gap=0.2) == digest()  # read from the stored checks only
    assert digest(co_policy="stop", signature_gap=0.2) != digest(co_policy="stop")  # it decides when to stop
