"""Datasets as uint8 tensors: decoded once, cached, moved to the device, batched and augmented there.

Everything is read from inside the data root (``--data-root`` or ``COSCOPE_DATA_ROOT``, default
``./data``); torchvision datasets are opened with ``download=False``. Decoded image folders are cached
as ``.npz`` files (no pickle) under ``COSCOPE_CACHE_DIR`` (default ``~/.cache/coscope``).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import DatasetNotFound, SpecError
from core.spec import DatasetSpec

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the paper's Normalizer constants (paper-notes §2)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TORCHVISION_CLASSES = {
    "cifar10": CIFAR10_CLASSES,
    "fashion_mnist": ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()  # by label; the folder or torchvision names, "0".."K-1" otherwise

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.train.images.shape[1:]
        return int(channels), int(height), int(width)

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.train.to(device), self.test.to(device), self.num_classes, self.mean, self.std,
                       self.class_names)


def data_root_from(explicit: str | os.PathLike[str] | None) -> Path:
    """The data root: the explicit argument, else ``COSCOPE_DATA_ROOT``, else ``./data``."""
    return Path(explicit or os.environ.get("COSCOPE_DATA_ROOT") or "data").resolve()


def load_dataset(spec: DatasetSpec, data_root: str | os.PathLike[str] | None, seed: int) -> Dataset:
    """Load, subset (stratified, seeded) and describe the dataset a spec names. Tensors stay on the CPU."""
    root = data_root_from(data_root)
    names: tuple[str, ...] = ()
    if spec.name == "synthetic":
        train, test, num_classes = synthetic(spec, seed)
    elif spec.name == "imagefolder":
        assert spec.path is not None  # guaranteed by the spec validator
        folder = resolve_inside(root, spec.path)
        train, test, num_classes = image_folder(folder)
        names = tuple(folder_classes(folder))
    else:
        train, test, num_classes = torchvision_dataset(spec.name, root)
        names = TORCHVISION_CLASSES.get(spec.name, ())
    if spec.train_subset is not None:
        train = stratified_subset(train, spec.train_subset, seed)
    if spec.test_subset is not None:
        test = stratified_subset(test, spec.test_subset, seed + 1)
    if spec.normalization == "cifar10" or (spec.normalization == "auto" and spec.name == "cifar10"):
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        mean, std = channel_statistics(train.images)
    names = names if len(names) == num_classes else tuple(str(k) for k in range(num_classes))
    return Dataset(train, test, num_classes, mean, std, names)


# ---------------------------------------------------------------------------------------------------
# Sources


def synthetic(spec: DatasetSpec, seed: int) -> tuple[Split, Split, int]:
    """A seeded, learnable task: a smooth class prototype plus smooth and pixel noise per image."""
    generator = torch.Generator().manual_seed(seed)
    size, channels, classes = spec.synthetic_image_size, spec.synthetic_channels, spec.synthetic_classes
    prototypes = _smooth_noise(classes, channels, size, generator)

    def draw(count: int) -> Split:
        labels = torch.arange(count) % classes
        labels = labels[torch.randperm(count, generator=generator)]
        background = _smooth_noise(count, channels, size, generator)
        pixels = torch.randn(count, channels, size, size, generator=generator)
        image = 0.5 + 0.12 * prototypes[labels] + 0.12 * background + 0.03 * pixels
        return Split(_to_uint8(image), labels)

    return draw(spec.synthetic_train_size), draw(spec.synthetic_test_size), classes


def _smooth_noise(count: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(count, channels, 4, 4, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return torch.round(images.clamp(0, 1) * 255).to(torch.uint8)


def resolve_inside(root: Path, relative: str) -> Path:
    """``root / relative`` with links resolved; refuses anything that ends up outside the root."""
    target = (root / relative).resolve()
    if os.path.commonpath([root, target]) != str(root):
        raise SpecError(f"dataset.path {relative!r} resolves outside the data root {root}")
    return target


def folder_classes(folder: Path) -> list[str]:
    """Class names of an ImageFolder layout: the sub-folders of ``train``, sorted (their labels' order)."""
    return sorted(entry.name for entry in (folder / "train").iterdir() if entry.is_dir())


def image_folder(folder: Path) -> tuple[Split, Split, int]:
    """An ImageFolder layout ``folder/{train,test}/<class>/<image>``; classes in sorted order."""
    for part in ("train", "test"):
        if not (folder / part).is_dir():
            raise DatasetNotFound(f"expected an image folder at {folder / part} (with one sub-folder per class)")
    classes = folder_classes(folder)
    if not classes:
        raise DatasetNotFound(f"no class folders found in {folder / 'train'}")
    train = _decode_cached(folder / "train", classes, folder)
    test = _decode_cached(folder / "test", classes, folder)
    return train, test, len(classes)


def _list_images(split_dir: Path, classes: list[str], root: Path) -> list[tuple[Path, int]]:
    """(resolved path, label) of every image, by class then name; a link that leaves ``root`` is an error.

    Only links are resolved (``scandir`` tells them apart without a system call per file): resolving all
    60,000 CIFAR paths took seconds of every job's start.
    """
    files = []
    for label, name in enumerate(classes):
        class_dir = _inside(root, split_dir / name)
        if not class_dir.is_dir():
            raise DatasetNotFound(f"class folder {split_dir / name} is missing")
        with os.scandir(class_dir) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            real = _inside(root, Path(entry.path)) if entry.is_symlink() else Path(entry.path)
            if Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and entry.is_file():  # is_file follows links
                files.append((real, label))
    if not files:
        raise DatasetNotFound(f"no images found under {split_dir}")
    return files


def _inside(root: Path, path: Path) -> Path:
    real = path.resolve()
    if os.path.commonpath([root, real]) != str(root):  # a link that leaves the dataset
        raise SpecError(f"{path} links outside the dataset folder")
    return real


def _decode_cached(split_dir: Path, classes: list[str], root: Path) -> Split:
    files = _list_images(split_dir, classes, root)
    fingerprint = hashlib.sha256()
    for path, label in files:
        stat = path.stat()
        fingerprint.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    cache = cache_dir() / f"imagefolder-{fingerprint.hexdigest()[:24]}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as stored:
            return Split(torch.from_numpy(stored["images"]), torch.from_numpy(stored["labels"]))
    images = _decode_all([path for path, _ in files])
    labels = np.array([label for _, label in files], dtype=np.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(partial, images=images, labels=labels)
    os.replace(partial, cache)  # atomic: a concurrent reader never sees half a file
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def _decode_all(paths: list[Path]) -> np.ndarray:
    from PIL import Image

    with Image.open(paths[0]) as first:
        mode = "L" if first.mode in ("L", "1", "I;16") else "RGB"
        size = first.size

    def decode(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            image = image.convert(mode)
            if image.size != size:
                raise SpecError(f"{path} is {image.size[0]}x{image.size[1]}, expected {size[0]}x{size[1]}")
            return np.asarray(image, dtype=np.uint8)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        arrays = list(pool.map(decode, paths, chunksize=256))
    stacked = np.stack(arrays)
    return stacked[:, None] if mode == "L" else np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))


def cache_dir() -> Path:
    return Path(os.environ.get("COSCOPE_CACHE_DIR") or Path.home() / ".cache" / "coscope")


TORCHVISION_FOLDERS = {  # what torchvision looks for under the root, for the error message
    "cifar10": "cifar-10-batches-py/",
    "cifar100": "cifar-100-python/",
    "svhn": "train_32x32.mat and test_32x32.mat",
    "mnist": "MNIST/raw/",
    "fashion_mnist": "FashionMNIST/raw/",
}


def torchvision_dataset(name: str, root: Path) -> tuple[Split, Split, int]:
    """CIFAR-10/100, SVHN, MNIST, Fashion-MNIST in torchvision's file formats, never downloaded."""
    from torchvision import datasets

    try:
        if name in ("cifar10", "cifar100"):
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            parts = [cls(str(root), train=train, download=False) for train in (True, False)]
            splits = [Split(torch.from_numpy(p.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(p.targets))
                      for p in parts]
        elif name == "svhn":
            parts = [datasets.SVHN(str(root), split=s, download=False) for s in ("train", "test")]
            splits = [Split(torch.from_numpy(p.data), torch.from_numpy(p.labels).long()) for p in parts]
        else:
            cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
            parts = [cls(str(root), train=train, download=False) for train in (True, False)]
            splits = [Split(p.data[:, None].contiguous(), p.targets.long()) for p in parts]
    except (RuntimeError, FileNotFoundError, OSError) as error:
        raise DatasetNotFound(
            f"{name} files not found: expected {root / TORCHVISION_FOLDERS[name]} "
            f"(torchvision format; downloads are off; set --data-root or COSCOPE_DATA_ROOT)"
        ) from error
    num_classes = int(max(int(s.labels.max()) for s in splits)) + 1
    return splits[0], splits[1], num_classes


# ---------------------------------------------------------------------------------------------------
# Subsets, statistics, batching, augmentation


def balanced_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded permutation of ``range(len(labels))`` in which every prefix is class-stratified.

    Within each class the order is a seeded permutation; classes are then interleaved by each sample's
    rank within its class as a fraction of the class size, so the first k indices hold every class in
    proportion (up to one sample). Take ``balanced_order(labels, seed)[:k]``, never ``split[:k]``: splits may
    be sorted by class.
    """
    count = int(labels.shape[0])
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    permuted = labels.cpu()[order]
    rank = torch.zeros(count, dtype=torch.float64)
    for label in permuted.unique():
        members = (permuted == label).nonzero().squeeze(1)
        rank[members] = torch.arange(members.numel(), dtype=torch.float64) / members.numel()
    return order[torch.sort(rank, stable=True).indices]


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    """Images per class, for reports that say which classes were measured."""
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()


def stratified_subset(split: Split, size: int, seed: int) -> Split:
    """``size`` samples whose class proportions match the split's, chosen by a seeded permutation (kept in
    index order: the subset is as sorted as the split; consumers draw with ``balanced_order``)."""
    if size >= len(split):
        return split
    chosen = torch.sort(balanced_order(split.labels, seed)[:size]).values
    return Split(split.images[chosen], split.labels[chosen])


def channel_statistics(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) standard deviation of uint8 images, in [0, 1] units.

    Sums and sums of squares accumulate in float64 over chunks of images, so memory stays bounded (a
    float64 copy of 50,000 CIFAR images would be 1.2 GB).
    """
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        pixels = images[start:start + chunk].to(torch.float64).div_(255).transpose(0, 1).reshape(channels, -1)
        total += pixels.sum(dim=1)
        squares += pixels.square().sum(dim=1)
    count = images.numel() // channels
    mean = total / count
    std = ((squares - count * mean.square()) / max(count - 1, 1)).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled sample order of one epoch; a pure function of (seed, epoch), so resume can recompute it."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def augment(x: torch.Tensor, generator: torch.Generator | None, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding plus random horizontal flip, batched on x's device."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    shifts = torch.randint(0, 2 * padding + 1, (2, n), device=x.device, generator=generator)
    rows = (shifts[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (shifts[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]
