"""AutoAttack in the final evaluation (core/autoattack.py; issue 10 item 6)."""

import json
from importlib.metadata import version

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from core.autoattack import STANDARD, autoattack_correct
from core.data import balanced_order
from core.evaluate import fraction, pgd_correct
from core.spec import JobSpec
from core.trainer import load_trained, train
from tests.conftest import tiny_spec

EPSILON = 4  # /255


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory, single_thread):
    """A small CNN trained with FGSM until PGD-50-10 leaves it about 0.7 robust accuracy: the comparison with
    AutoAttack is not vacuous, and the small network keeps AutoAttack's 5000 Square queries cheap."""
    out = tmp_path_factory.mktemp("run")
    spec = tiny_spec(dataset={"synthetic_train_size": 256, "synthetic_test_size": 128},
                     model={"arch": "small_cnn", "width": 8},
                     training={"epochs": 8, "epsilon": EPSILON, "lr_max": 0.05}, monitor={"enabled": False})
    train(spec, out)
    return load_trained(out)


def test_autoattack_is_no_weaker_than_pgd_50_10_on_the_same_images(robust_run):
    run = robust_run
    attacked = balanced_order(run.data.test.labels, 1)[:32]
    images, labels = run.data.test.images[attacked], run.data.test.labels[attacked]
    pgd = pgd_correct(run.model, images, labels, run.transform, epsilon=EPSILON / 255, alpha=2 / 255,
                      steps=50, restarts=10, generator=torch.Generator().manual_seed(1))
    mode, rng = run.model.training, torch.get_rng_state()
    result = autoattack_correct(run.model, run.transform(images, labels), labels, epsilon=EPSILON / 255,
                                num_classes=run.data.num_classes, seed=1)
    assert fraction(pgd) >= 0.25  # non-trivial robustness: there is something left for AutoAttack to break
    assert fraction(result.correct) <= fraction(pgd)
    after = list(result.per_attack.values())
    assert list(result.per_attack) == list(STANDARD)
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))  # cumulative: never goes back up
    assert after[-1] == fraction(result.correct)
    assert run.model.training == mode and torch.equal(torch.get_rng_state(), rng)  # the attacks reseed it
    assert all(p.requires_grad and p.grad is None for p in run.model.parameters())  # FAB calls backward


def test_fewer_than_four_classes_run_without_apgd_t_and_count_clean_errors_as_broken(single_thread):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    x = torch.rand(12, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 3  # misclassified before any attack
    result = autoattack_correct(model, x, y, epsilon=1 / 255, num_classes=3, seed=0)
    assert list(result.per_attack) == ["apgd-ce", "fab-t", "square"]  # targeted DLR needs 4 classes
    assert not result.correct[:3].any()
    assert fraction(result.correct) == result.per_attack["square"] <= 9 / 12


def test_trainer_reports_autoattack_on_the_pgd_images_and_in_the_summary(tmp_path, single_thread):
    spec = tiny_spec(model={"arch": "small_cnn", "width": 8}, monitor={"enabled": False},
                     evaluation={"autoattack": "standard", "test_subset": 16})
    final = train(spec, tmp_path)["final"]
    autoattack, attack = final["autoattack"], final["attack"]
    assert set(autoattack) == {"accuracy", "per_attack", "images", "class_counts", "per_class", "seconds",
                               "implementation", "version", "norm", "epsilon", "units", "seed", "warnings"}
    assert autoattack["images"] == attack["test_images"] == 16
    assert autoattack["class_counts"] == attack["class_counts"]
    assert autoattack["implementation"] == f"pyautoattack {version('pyautoattack')}"
    assert (autoattack["version"], autoattack["epsilon"], autoattack["units"]) == ("standard", 8.0, "/255")
    assert list(autoattack["per_attack"]) == list(STANDARD)
    assert [c["label"] for c in autoattack["per_class"]] == [c["label"] for c in final["per_class"]]
    assert 0.0 <= autoattack["accuracy"] <= 1.0 and autoattack["seconds"] > 0
    assert json.loads((tmp_path / "report.json").read_text())["final"]["autoattack"] == autoattack
    summary = (tmp_path / "summary.md").read_text()
    assert f"AutoAttack (standard, pyautoattack {version('pyautoattack')}) at epsilon 8.0/255" in summary
    assert "| class | attacked | clean | PGD-3-2 | AutoAttack |" in summary


def test_autoattack_is_off_by_default(tmp_path, single_thread):
    spec = tiny_spec(training={"epochs": 1}, monitor={"enabled": False})
    assert spec.evaluation.autoattack == "off"
    final = train(spec, tmp_path)["final"]
    assert "autoattack" not in final
    summary = (tmp_path / "summary.md").read_text()
    assert "AutoAttack" not in summary
    assert "| class | attacked | clean | PGD-3-2 |" in summary  # the per-class table is always there


@pytest.mark.parametrize("value", ["plus", "rand", "on", True])
def test_spec_refuses_other_autoattack_versions_naming_the_field(value):
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({"evaluation": {"autoattack": value}})
    assert ("evaluation", "autoattack") in [error["loc"] for error in caught.value.errors()]
