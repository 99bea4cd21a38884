"""Container images (issue 12): sizes and podman build times of the API and the CPU worker image.

    python bench/container_images.py [--skip-cold] [--no-record]

Builds as tests/containers does (coscope/images.py: the local Debian base image, this machine's pip
sources mounted at build time; the worker with the torch wheel on local disk) from a copy of the build
context, the API image first:

1. cold: ``--no-cache``, every layer built (packages installed from the local indexes and PyPI);
2. cached: the same again, nothing changed (every layer from the cache);
3. after a source edit: a comment appended to coscope/__init__.py in the copy (the dependency layers from
   the cache, the package layer and the final stage's copy of the venv rebuilt).

Base images (scripts/container_images.sh) are built first when missing and not timed here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import arguments, parse, record

from coscope import images

CONTEXT = ["pyproject.toml", "README.md", ".dockerignore", "core", "store", "api", "worker", "coscope",
           "docker"]
TAGS = {"api": "localhost/coscope-bench-api:latest", "worker": "localhost/coscope-bench-worker-cpu:latest"}
DOCKERFILES = {"api": "docker/Dockerfile.api", "worker": "docker/Dockerfile.worker"}


def image_ids() -> list[str]:
    return images.podman("images", "--all", "--quiet", "--no-trunc").stdout.split()


def build_both(context: Path, no_cache: bool = False) -> dict[str, float]:
    return {name: images.build(DOCKERFILES[name], TAGS[name], "TORCH_INDEX_URL=", context=context,
                               no_cache=no_cache) for name in ("api", "worker")}


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--skip-cold", action="store_true", help="only the cached builds (minutes faster)")
    args = parse(parser)
    if reason := images.available():
        sys.exit(reason)
    images.base_images()
    before = set(image_ids())
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        context = Path(folder)
        for name in CONTEXT:
            source = images.ROOT / name
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, context / name)
        if not args.skip_cold:
            for name, seconds in build_both(context, no_cache=True).items():
                rows.append((f"{name} image, cold build (--no-cache)", f"{seconds:.0f} s"))
        for name, seconds in build_both(context).items():
            rows.append((f"{name} image, cached build (no change)", f"{seconds:.1f} s"))
        with open(context / "coscope" / "__init__.py", "a") as handle:
            handle.write("# a source edit\n")
        for name, seconds in build_both(context).items():
            rows.append((f"{name} image, build after a source edit", f"{seconds:.0f} s"))
    for name, tag in TAGS.items():
        rows.append((f"{name} image size", f"{images.size_mb(tag):.0f} MB"))
    for tag in (images.BASE_IMAGE, images.REDIS_IMAGE, images.POSTGRES_IMAGE):
        rows.append((f"base {tag} size", f"{images.size_mb(tag):.0f} MB"))
    rows.append(("worker torch", "CUDA wheel from local disk (no CPU 2.14.1 wheel here)"))
    record("Container images (podman build, local Debian base)", rows)
    # Remove what this run added (gigabytes), but not the cache of the test's own builds.
    added = set(image_ids()) - before
    subprocess.run(["podman", "rmi", "--force", *TAGS.values(), *added], capture_output=True)


if __name__ == "__main__":
    main()
