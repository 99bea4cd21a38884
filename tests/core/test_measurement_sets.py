"""Issue 10 §1: every measured subset is class-stratified, whatever the order of the split (image folders
and stratified subsets are sorted by class), and the report says which classes were measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import Dataset, Split, balanced_order, load_dataset, stratified_subset
from core.monitor import CURVATURE_IMAGES, Monitor
from core.trainer import Callbacks, _Run, input_transform, train
from tests.conftest import tiny_spec

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES = ("ant", "bee", "cow", "doe", "elk")


def sorted_by_class(per_class: int, classes: int = len(CLASSES), side: int = 16) -> Split:
    labels = torch.arange(classes).repeat_interleave(per_class)  # 0,0,...,1,1,...: an ImageFolder's order
    images = torch.randint(0, 256, (len(labels), 3, side, side), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    return Split(images, labels)


def counts(labels: torch.Tensor, classes: int = len(CLASSES)) -> list[int]:
    return torch.bincount(labels, minlength=classes).tolist()


def test_a_stratified_subset_of_a_sorted_split_stays_sorted_but_every_balanced_prefix_is_stratified():
    labels = torch.arange(10_000) // 1000  # the proof: the first 500 of the subset held classes 0-4
    subset = stratified_subset(Split(torch.zeros(10_000, 1, 1, 1, dtype=torch.uint8), labels), 1000, seed=3)
    assert counts(subset.labels[:500], 10) == [100] * 5 + [0] * 5  # why nothing may take "the first N"
    assert counts(subset.labels[balanced_order(subset.labels, 7)[:500]], 10) == [50] * 10


@pytest.mark.parametrize("k", [1, 7, 10, 33, 128, 999])
def test_every_prefix_of_balanced_order_holds_each_class_in_proportion(k):
    labels = torch.cat([torch.zeros(600), torch.ones(300), torch.full((100,), 2)]).long()  # 6 : 3 : 1
    order = balanced_order(labels, seed=0)
    assert sorted(order.tolist()) == list(range(1000))  # a permutation
    share = torch.bincount(labels[order[:k]], minlength=3).double()
    assert torch.all((share - k * torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)).abs() <= 1.0)


def test_balanced_order_is_seeded():
    labels = torch.arange(200) // 40
    assert torch.equal(balanced_order(labels, 1), balanced_order(labels, 1))
    assert not torch.equal(balanced_order(labels, 1), balanced_order(labels, 2))


def _write_sorted_folder(root, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(40 + 40 * label, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.png")


def test_final_evaluation_attacks_every_class_and_reports_it_per_class(tmp_path, monkeypatch):
    monkeypatch.setenv("COSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    _write_sorted_folder(tmp_path / "data" / "animals", per_class=20)
    spec = tiny_spec(dataset={"name": "imagefolder", "path": "animals"}, training={"epochs": 1},
                     evaluation={"test_subset": 40, "pgd_steps": 2, "restarts": 1})
    final = train(spec, tmp_path / "run", data_root=tmp_path / "data")["final"]
    assert final["attack"]["class_counts"] == [8] * 5  # the first 40 images would all be ants and bees
    assert [row["name"] for row in final["per_class"]] == list(CLASSES)
    robust = [row["robust_accuracy"] for row in final["per_class"]]
    assert sum(robust) / 5 == pytest.approx(final["robust_accuracy"])  # equal class counts: the plain mean
    clean = [row["clean_accuracy"] for row in final["per_class"]]
    assert sum(clean) / 5 == pytest.approx(final["clean_accuracy"])  # 20 test images per class


def _sorted_dataset(per_class: int) -> Dataset:
    return Dataset(sorted_by_class(per_class), sorted_by_class(per_class), len(CLASSES), (0.5,) * 3,
                   (0.25,) * 3, CLASSES)


def test_monitor_sets_and_their_indicator_and_curvature_slices_are_stratified():
    spec = tiny_spec(monitor={"train_images": 100, "indicator_images": 20, "test_images": 50})
    data = _sorted_dataset(per_class=60)
    monitor = Monitor(spec, data, input_transform(spec, data, torch.device("cpu")), torch.device("cpu"))
    assert monitor.class_counts == [20] * 5
    assert monitor.indicator_class_counts == [4] * 5  # the first 20 of a sorted set: all ants
    assert set(counts(monitor.y[:CURVATURE_IMAGES])) == {6, 7}  # 32 images over 5 classes
    assert counts(monitor.test_y) == [10] * 5


def test_reversed_carrier_probe_is_stratified():
    spec = tiny_spec(intervention={"kind": "inject", "beta": 8}, monitor={"train_images": 50})
    data = _sorted_dataset(per_class=60)
    monitor = Monitor(spec, data, input_transform(spec, data, torch.device("cpu")), torch.device("cpu"))
    assert counts(monitor.reversed_y) == [10] * 5


def test_per_epoch_test_accuracy_reads_a_stratified_subset(tmp_path, monkeypatch):
    spec = tiny_spec()
    data = _sorted_dataset(per_class=400)  # 2,000 test images, more than the 1,000 read each epoch
    monkeypatch.setattr("core.trainer.load_dataset", lambda *args: data)
    run = _Run(spec.resolved(), tmp_path, torch.device("cpu"), None, Callbacks(), None)
    assert counts(data.test.labels[run.epoch_test]) == [200] * 5


def test_class_names_come_from_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("COSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    _write_sorted_folder(tmp_path / "animals", per_class=2)
    spec = tiny_spec(dataset={"name": "imagefolder", "path": "animals"})
    assert load_dataset(spec.dataset, tmp_path, 0).class_names == CLASSES
    synthetic = load_dataset(tiny_spec().dataset, None, 0)
    assert synthetic.class_names == tuple(str(k) for k in range(10))
