"""Carry an image folder to a machine that cannot read ours: its files' bytes in one .npz, and back.

    python bench/jpeg_pack.py pack ../shared/data/cifar10-jpeg .devdata/cifar10-jpeg.npz
    python bench/jpeg_pack.py unpack .devdata/cifar10-jpeg.npz /tmp/data/cifar10-jpeg

The CIFAR-10 JPEG folder is 60,000 files of 53 MiB in all; a tar's 512-byte headers and padding would
nearly double that, which the device tool's 64 MiB tree limit does not allow. The bytes are copied, not
decoded: the unpacked folder is the same files, so the trainer's data cache and fingerprints behave as here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def pack(folder: Path, archive: Path) -> None:
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    contents = [path.read_bytes() for path in files]
    sizes = np.array([len(content) for content in contents], dtype=np.int64)
    names = np.array([str(path.relative_to(folder)).encode() for path in files])  # bytes: no pickle needed
    archive.parent.mkdir(parents=True, exist_ok=True)
    np.savez(archive, names=names, sizes=sizes, blob=np.frombuffer(b"".join(contents), dtype=np.uint8))
    print(f"{len(files)} files, {sizes.sum() / 2**20:.1f} MiB -> {archive}")


def unpack(archive: Path, folder: Path) -> None:
    with np.load(archive, allow_pickle=False) as stored:
        names, sizes, blob = stored["names"], stored["sizes"], stored["blob"]
    ends = np.cumsum(sizes)
    for name, end, size in zip(names, ends, sizes, strict=True):
        target = folder / name.decode()
        if ".." in target.relative_to(folder).parts:
            raise ValueError(f"refusing a path outside {folder}: {name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob[end - size:end].tobytes())
    print(f"{len(names)} files -> {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    (pack if args.action == "pack" else unpack)(args.source, args.target)


if __name__ == "__main__":
    main()
