"""One versioned checkpoint dict, written atomically and loaded with ``weights_only=True``.

Keys: schema_version, spec_sha256, epoch, batch (next batch index in that epoch), step (global),
model, optimizer, rng {torch, cuda, generator}, sums {epoch, interval}, history (metrics rows so far).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from core.errors import CheckpointError

SCHEMA_VERSION = 1


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file, fsync, then rename over ``path``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(partial, "wb") as handle:
        torch.save({"schema_version": SCHEMA_VERSION, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def load(path: Path, device: torch.device | str, spec_sha256: str | None = None) -> dict[str, Any]:
    """Load safely (no pickle code runs); check the schema version and, if given, the spec digest."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # corrupt files and unsafe pickles both end here
        raise CheckpointError(f"cannot load checkpoint {path}: {error}") from error
    if not isinstance(state, dict) or state.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(f"{path} is not a coscope checkpoint of schema version {SCHEMA_VERSION}")
    if spec_sha256 is not None and state.get("spec_sha256") != spec_sha256:
        raise CheckpointError(f"{path} was written for another spec; refusing to resume")
    return state
