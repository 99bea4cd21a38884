"""The cost estimate (image-passes) and the default queue: pure functions of the spec, no torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.cost import (
    AUTOATTACK_PASSES,
    GPU_QUEUE_COST,
    attack_passes,
    dataset_images,
    default_queue,
    estimate_cost,
    model_factor,
)
from core.spec import JobSpec, load_spec_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_papers_fgsm_run_costs_about_nine_million_image_passes():
    spec = JobSpec()  # defaults are the paper's: CIFAR-10, width 64, FGSM, 30 epochs, PGD-50-10
    train = 30 * 50_000 * 2
    evaluation = 10_000 + 10_000 * 10 * 51
    assert train + evaluation < estimate_cost(spec) < 1.2 * (train + evaluation)  # plus the CO monitor


@pytest.mark.parametrize(("method", "passes"), [("standard", 1), ("fgsm", 2), ("rs_fgsm", 2), ("n_fgsm", 2),
                                                ("grad_align", 4), ("pgd", 8)])
def test_attack_passes_per_method(method, passes):
    spec = JobSpec.model_validate({"training": {"method": method, "pgd_steps": 7}})
    assert attack_passes(spec) == passes


def test_model_factor_scales_with_width_squared():
    assert model_factor(JobSpec()) == 1.0
    assert model_factor(JobSpec.model_validate({"model": {"width": 16}})) == 1 / 16
    assert model_factor(JobSpec.model_validate({"model": {"arch": "small_cnn"}})) == 0.05


def test_subsets_and_dataset_sizes_drive_the_cost():
    full = estimate_cost(JobSpec.model_validate({"dataset": {"name": "svhn"}, "monitor": {"enabled": False}}))
    subset = estimate_cost(JobSpec.model_validate({"dataset": {"name": "svhn", "train_subset": 7_325_700},
                                                   "monitor": {"enabled": False}}))
    assert full == subset  # a subset larger than the dataset costs the dataset
    small = JobSpec.model_validate({"dataset": {"name": "synthetic", "synthetic_train_size": 100,
                                                "synthetic_test_size": 10},
                                    "training": {"epochs": 2, "method": "standard"},
                                    "evaluation": {"restarts": 1, "pgd_steps": 1},
                                    "monitor": {"enabled": False}})
    assert estimate_cost(small) == 2 * 100 * 1 + 10 + 10 * 1 * 2


def test_max_steps_caps_the_training_cost():
    sections = {"dataset": {"name": "synthetic", "synthetic_train_size": 1000, "synthetic_test_size": 10},
                "evaluation": {"restarts": 1, "pgd_steps": 1}, "monitor": {"enabled": False}}
    capped = JobSpec.model_validate({**sections, "training": {"epochs": 3, "batch_size": 100, "max_steps": 2}})
    loose = JobSpec.model_validate({**sections, "training": {"epochs": 3, "batch_size": 100, "max_steps": 99}})
    evaluation = 10 + 10 * 1 * 2
    assert estimate_cost(capped) == 2 * 100 * 2 + evaluation  # 2 steps of 100 images, 2 passes each
    assert estimate_cost(loose) == 3 * 1000 * 2 + evaluation  # the cap is above the 30 planned steps


def test_autoattack_adds_its_worst_case_per_attacked_image():
    sections = {"dataset": {"name": "synthetic", "synthetic_train_size": 100, "synthetic_test_size": 10},
                "training": {"epochs": 1, "method": "standard"}, "monitor": {"enabled": False}}
    off = estimate_cost(JobSpec.model_validate({**sections, "evaluation": {"test_subset": 4}}))
    on = estimate_cost(JobSpec.model_validate({**sections,
                                               "evaluation": {"test_subset": 4, "autoattack": "standard"}}))
    assert on - off == 4 * AUTOATTACK_PASSES * model_factor(JobSpec.model_validate(sections))


def test_dataset_images_counts_subsets_within_the_dataset():
    assert dataset_images(JobSpec()) == (50_000, 10_000)
    assert dataset_images(JobSpec.model_validate({"dataset": {"name": "svhn", "train_subset": 1_000_000,
                                                              "test_subset": 500}})) == (73_257, 500)


def test_the_papers_run_goes_to_the_gpu_queue():
    assert estimate_cost(JobSpec()) > GPU_QUEUE_COST
    assert default_queue(JobSpec()) == "gpu"
    assert default_queue(JobSpec.model_validate({"dataset": {"name": "svhn"}})) == "gpu"


def test_a_dry_run_goes_to_the_cpu_queue_whatever_its_size():
    assert default_queue(JobSpec.model_validate({"dry_run": True})) == "cpu"


@pytest.mark.parametrize("path", sorted((EXAMPLES / "cpu").glob("*.yaml")), ids=lambda path: path.stem)
def test_the_cpu_scale_examples_go_to_the_cpu_queue(path):
    assert default_queue(load_spec_file(str(path))) == "cpu"


def test_the_queue_follows_the_cost_not_the_image_count():
    """30 epochs of CIFAR-10 at width 4 is minutes of CPU; PGD-10 at width 64 on a tenth of it is hours."""
    small = JobSpec.model_validate({"model": {"width": 4}, "monitor": {"enabled": False},
                                    "evaluation": {"test_subset": 100}})
    assert estimate_cost(small) < GPU_QUEUE_COST and default_queue(small) == "cpu"
    pgd = JobSpec.model_validate({"training": {"method": "pgd", "pgd_steps": 10},
                                  "dataset": {"train_subset": 5_000}})
    assert default_queue(pgd) == "gpu"
