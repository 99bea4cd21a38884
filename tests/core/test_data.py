"""Stratified subsets, augmentation, epoch order and data-root confinement."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data import Split, augment, channel_statistics, epoch_order, resolve_inside, stratified_subset
from core.errors import SpecError


def indexed_split(counts: list[int]) -> Split:
    """A split whose image i encodes i in two uint8 pixels (so rows can be traced back), labels by class."""
    labels = torch.cat([torch.full((count,), label) for label, count in enumerate(counts)])
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]
    index = torch.arange(labels.numel())
    images = torch.stack([index // 256, index % 256], dim=1).to(torch.uint8).view(-1, 1, 2, 1)
    return Split(images, labels)


def decode_indices(images: torch.Tensor) -> torch.Tensor:
    flat = images.view(-1, 2).long()
    return flat[:, 0] * 256 + flat[:, 1]


UNBALANCED = [160] * 5 + [80] * 5  # 1200 samples, classes 0-4 twice as frequent as 5-9


# ---------------------------------------------------------------------------------------------------
# stratified_subset


def test_stratified_subset_keeps_class_proportions():
    split = indexed_split(UNBALANCED)
    subset = stratified_subset(split, 100, seed=3)
    assert len(subset) == 100
    counts = torch.bincount(subset.labels, minlength=10)
    for label, count in enumerate(UNBALANCED):
        expected = 100 * count / sum(UNBALANCED)  # 13.33 or 6.67
        assert abs(int(counts[label]) - expected) <= 1, (label, int(counts[label]))


def test_stratified_subset_rows_are_distinct_original_rows_with_their_labels():
    split = indexed_split(UNBALANCED)
    subset = stratified_subset(split, 100, seed=3)
    indices = decode_indices(subset.images)
    assert indices.unique().numel() == 100
    assert torch.equal(subset.labels, split.labels[indices])
    assert torch.equal(subset.images, split.images[indices])


def test_stratified_subset_is_deterministic_per_seed_and_differs_across_seeds():
    split = indexed_split(UNBALANCED)
    first = decode_indices(stratified_subset(split, 100, seed=5).images)
    again = decode_indices(stratified_subset(split, 100, seed=5).images)
    other = decode_indices(stratified_subset(split, 100, seed=6).images)
    assert torch.equal(first, again)
    assert set(first.tolist()) != set(other.tolist())


def test_stratified_subset_of_size_at_least_split_returns_everything():
    split = indexed_split([3, 2])
    assert len(stratified_subset(split, 5, seed=0)) == 5
    assert len(stratified_subset(split, 50, seed=0)) == 5


# ---------------------------------------------------------------------------------------------------
# augment


def _candidates(image: torch.Tensor, padding: int) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every crop of the zero-padded image, with and without a horizontal flip (brute force)."""
    channels, height, width = image.shape
    padded = torch.zeros(channels, height + 2 * padding, width + 2 * padding, dtype=image.dtype)
    padded[:, padding:padding + height, padding:padding + width] = image
    out = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top:top + height, left:left + width]
            out.append((top, left, False, crop))
            out.append((top, left, True, torch.flip(crop, dims=[2])))
    return out


@pytest.mark.parametrize("padding", [1, 2])
def test_augment_outputs_are_shifted_or_flipped_crops_of_padded_input(padding):
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(600, 2, 5, 6, generator=generator) + 0.5  # no zeros inside, so padding is visible
    out = augment(x, torch.Generator().manual_seed(8), padding=padding)
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for image, result in zip(x, out, strict=True):
        matches = [(top, left, flip) for top, left, flip, crop in _candidates(image, padding)
                   if torch.equal(crop, result)]
        assert matches, "output is not a crop of the padded (possibly flipped) input"
        seen.add(matches[0])
    # every offset and both flips are drawn: (2p+1)^2 * 2 possibilities
    assert len(seen) == (2 * padding + 1) ** 2 * 2


def test_augment_works_on_uint8_and_is_deterministic_for_a_seed():
    x = torch.randint(1, 256, (16, 3, 8, 8), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    first = augment(x, torch.Generator().manual_seed(10))
    again = augment(x, torch.Generator().manual_seed(10))
    other = augment(x, torch.Generator().manual_seed(11))
    assert first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, other)
    for image, result in zip(x, first, strict=True):
        assert any(torch.equal(c, result) for *_, c in _candidates(image, 4))


# ---------------------------------------------------------------------------------------------------
# epoch_order


def test_epoch_order_is_a_permutation():
    order = epoch_order(1000, seed=1, epoch=3)
    assert order.dtype == torch.int64
    assert torch.equal(torch.sort(order).values, torch.arange(1000))


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    first = epoch_order(500, seed=2, epoch=4)
    torch.manual_seed(12345)  # the global RNG must not matter
    torch.rand(10)
    assert torch.equal(epoch_order(500, seed=2, epoch=4), first)
    assert not torch.equal(epoch_order(500, seed=2, epoch=5), first)
    assert not torch.equal(epoch_order(500, seed=3, epoch=4), first)


# ---------------------------------------------------------------------------------------------------
# resolve_inside


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    root = (tmp_path / "data").resolve()
    (root / "inside" / "deeper").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "data2" / "stolen").mkdir(parents=True)
    return root


def test_resolve_inside_accepts_paths_within_root(data_root):
    assert resolve_inside(data_root, "inside") == data_root / "inside"
    assert resolve_inside(data_root, "inside/../inside/deeper") == data_root / "inside" / "deeper"
    assert resolve_inside(data_root, "not-yet-there") == data_root / "not-yet-there"


@pytest.mark.parametrize("relative", ["..", "../x", "inside/../../outside", "../../../../etc"])
def test_resolve_inside_refuses_parent_traversal(data_root, relative):
    with pytest.raises(SpecError):
        resolve_inside(data_root, relative)


@pytest.mark.parametrize("relative", ["/etc/passwd", "/", "//etc"])
def test_resolve_inside_refuses_absolute_paths(data_root, relative):
    with pytest.raises(SpecError):
        resolve_inside(data_root, relative)


def test_resolve_inside_accepts_absolute_path_that_is_inside_root(data_root):
    assert resolve_inside(data_root, str(data_root / "inside")) == data_root / "inside"


def test_resolve_inside_refuses_sibling_with_common_prefix(data_root):
    # root .../data must not accept .../data2 just because the strings share a prefix
    with pytest.raises(SpecError):
        resolve_inside(data_root, "../data2/stolen")
    with pytest.raises(SpecError):
        resolve_inside(data_root, str(data_root) + "2/stolen")


def test_resolve_inside_refuses_symlink_pointing_outside(data_root):
    os.symlink(data_root.parent / "outside", data_root / "escape")
    with pytest.raises(SpecError):
        resolve_inside(data_root, "escape")
    with pytest.raises(SpecError):
        resolve_inside(data_root, "escape/anything")


def test_resolve_inside_follows_symlink_that_stays_inside(data_root):
    os.symlink(data_root / "inside" / "deeper", data_root / "shortcut")
    assert resolve_inside(data_root, "shortcut") == data_root / "inside" / "deeper"


def test_channel_statistics_in_chunks_match_numpy():
    images = torch.randint(0, 256, (50, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_statistics(images, chunk=7)  # 7 does not divide 50: a short last chunk
    pixels = images.numpy().transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=1, ddof=1), rtol=1e-10)


def test_image_links_inside_the_dataset_are_listed_and_links_out_of_it_refused(tmp_path):
    from core.data import _list_images

    dataset = tmp_path / "dataset"
    for name in ("cat", "dog"):
        (dataset / "train" / name).mkdir(parents=True)
    (dataset / "train" / "cat" / "b.png").write_bytes(b"x")
    (dataset / "train" / "cat" / "a.png").symlink_to(dataset / "train" / "cat" / "b.png")
    (dataset / "train" / "dog" / "c.JPG").write_bytes(b"x")
    (dataset / "train" / "dog" / "notes.txt").write_bytes(b"x")  # not an image: skipped
    listed = _list_images(dataset / "train", ["cat", "dog"], dataset)
    assert [(path.name, label) for path, label in listed] == [("b.png", 0), ("b.png", 0), ("c.JPG", 1)]

    (tmp_path / "secret.txt").write_bytes(b"x")
    (dataset / "train" / "dog" / "z.txt").symlink_to(tmp_path / "secret.txt")  # any link out is an error
    with pytest.raises(SpecError, match="links outside the dataset folder"):
        _list_images(dataset / "train", ["cat", "dog"], dataset)
