import pytest
import torch

from core.data import load_dataset
from core.evaluate import clean_accuracy, robust_accuracy, robust_accuracy_max_loss
from core.trainer import input_transform, load_trained, train
from tests.conftest import tiny_spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained with FGSM: neither robust nor hopeless, so attacks break some samples."""
    out = tmp_path_factory.mktemp("run")
    spec = tiny_spec(dataset={"synthetic_train_size": 256, "synthetic_test_size": 128},
                     training={"epochs": 3, "epsilon": 4}, monitor={"enabled": False})
    train(spec, out)
    return load_trained(out)


@pytest.mark.parametrize("restarts", [1, 3])
def test_any_restart_pgd_is_never_weaker_than_max_loss_pgd(trained, restarts):
    images, labels = trained.data.test.images, trained.data.test.labels
    attack = {"epsilon": 4 / 255, "alpha": 1 / 255, "steps": 10, "restarts": restarts}
    ours = robust_accuracy(trained.model, images, labels, trained.transform, **attack,
                           generator=torch.Generator().manual_seed(0))
    reference = robust_accuracy_max_loss(trained.model, images, labels, trained.transform, **attack,
                                         generator=torch.Generator().manual_seed(0))
    clean = clean_accuracy(trained.model, images, labels, trained.transform)
    assert ours <= reference <= clean
    assert reference - ours < 0.15  # same attack budget: the conventions differ only at the margin
    assert 0.0 < clean  # the comparison is not vacuous


def test_robust_accuracy_at_zero_epsilon_is_clean_accuracy(trained):
    images, labels = trained.data.test.images, trained.data.test.labels
    clean = clean_accuracy(trained.model, images, labels, trained.transform)
    assert robust_accuracy(trained.model, images, labels, trained.transform, epsilon=0.0, alpha=0.0, steps=5,
                           restarts=2) == clean


def test_clean_accuracy_is_a_per_sample_mean_over_uneven_batches(trained):
    images, labels = trained.data.test.images[:100], trained.data.test.labels[:100]
    with torch.no_grad():
        predictions = trained.model(trained.transform(images, labels)).argmax(1)
    expected = float((predictions == labels).float().mean())
    assert clean_accuracy(trained.model, images, labels, trained.transform, batch_size=64) == pytest.approx(expected)


def test_load_trained_rebuilds_the_same_model(tmp_path):
    spec = tiny_spec(training={"epochs": 1}, monitor={"enabled": False})
    report = train(spec, tmp_path)
    run = load_trained(tmp_path)
    data = load_dataset(spec.dataset, None, spec.seed)
    transform = input_transform(spec, data, torch.device("cpu"))
    accuracy = clean_accuracy(run.model, data.test.images, data.test.labels, transform)
    assert accuracy == report["final"]["clean_accuracy"]
