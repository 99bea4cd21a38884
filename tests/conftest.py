"""Shared fixtures: tiny specs that train in seconds on a CPU."""

from __future__ import annotations

import pytest

from core.spec import JobSpec


def tiny_spec(**sections: dict) -> JobSpec:
    """A synthetic-data spec that trains in a couple of seconds; sections override defaults."""
    base = {
        "seed": 0,
        "dataset": {"name": "synthetic", "synthetic_train_size": 96, "synthetic_test_size": 48,
                    "synthetic_image_size": 16},
        "model": {"arch": "preact_resnet18", "width": 4},
        "training": {"method": "fgsm", "epsilon": 8, "epochs": 2, "batch_size": 32, "log_every": 1},
        "evaluation": {"pgd_steps": 3, "restarts": 2, "test_subset": 32, "batch_size": 32},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return JobSpec.model_validate(base)


# A real divergence, no fault hook: weight decay 1 at learning rate 10 multiplies every weight by about -9 per
# SGD step (w - lr * wd * w), so a small CNN (no batch norm) overflows float32 within two epochs of
# tiny_spec's 3 steps, and the loss becomes nan. (At lr 10 alone, or with batch norm, it stayed finite.)
DIVERGING = {"model": {"arch": "small_cnn", "width": 4},
             "training": {"lr_max": 10.0, "weight_decay": 1.0, "lr_schedule": "multistep", "epochs": 3}}


# A real rescue on synthetic data, no fault hook: a check every 2 steps, and rules that need no CO signature and
# fire at the first fall of monitor PGD accuracy below its running maximum (confirmed at the next check), so a
# few-epoch run of tiny data rescues within its first checks. It exercises the rescue machinery, not CO.
HAIR_TRIGGER_RESCUE = {"every_steps": 2, "co_policy": "rescue", "signature_gap": 0.0, "signature_ratio": 1.0,
                       "relative_fraction": 1.0, "min_peak": 0.0}


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors: one intra-op thread avoids oversubscription slowdowns on a busy 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def spec() -> JobSpec:
    return tiny_spec()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``reproduction`` tests train at CPU scale on the shared CIFAR-10 images for many minutes: they run only
    with COSCOPE_REPRODUCE=1 (CI need not run them; docs/ablation.md has their measured outcomes)."""
    import os

    if os.environ.get("COSCOPE_REPRODUCE") == "1":
        return
    skip = pytest.mark.skip(reason="CPU-scale reproduction: set COSCOPE_REPRODUCE=1 (about 10 minutes each)")
    for item in items:
        if "reproduction" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def embedded_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A real ``coscope serve`` (embedded: SQLite store and queue, its own worker) for the requesting module,
    and an admin key: ``stack, key = embedded_server``."""
    from coscope.harness import Stack

    stack = Stack("embedded", tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "home")
    stack.home.mkdir()
    stack.start_api(worker=True)
    try:
        yield stack, stack.admin_key()
    finally:
        stack.close()
