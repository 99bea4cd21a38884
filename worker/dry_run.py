"""Dry-run jobs (``spec.dry_run``): the spec checked, the data located, the cost estimated, a report
written; no training.

``worker.runner`` claims, leases, fences and finishes a dry run like any job, so it exercises the whole
service path at a fraction of the cost (``bench/load_submit.py`` loads the service with them). Synthetic
data has no files to find, so a synthetic dry run imports no torch; any other dataset is loaded by the
trainer's own loader, so a missing folder fails the dry run with the ``DatasetNotFound`` a real run gets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.cost import estimate_cost
from core.spec import JobSpec


def locate_data(spec: JobSpec, data_root: str | Path | None) -> dict[str, Any]:
    """Image counts (after subsets) and image shape of the data the run would train and evaluate on; the data
    root defaults as the trainer's does."""
    data = spec.dataset
    if data.name == "synthetic":  # generated from the seed at train time
        train = min(data.train_subset or data.synthetic_train_size, data.synthetic_train_size)
        test = min(data.test_subset or data.synthetic_test_size, data.synthetic_test_size)
        side = data.synthetic_image_size
        shape = [data.synthetic_channels, side, side]
    else:
        from core.data import load_dataset  # torch: only for data on disk

        loaded = load_dataset(data, data_root, spec.seed)
        train, test, shape = len(loaded.train), len(loaded.test), list(loaded.image_shape)
    return {"name": data.name, "path": data.path, "train_images": train, "test_images": test,
            "image_shape": shape}


def dry_run_report(spec: JobSpec, data_root: str | Path | None) -> dict[str, Any]:
    """What a real run of ``spec`` would start from; raises ``DatasetNotFound`` like the trainer."""
    return {"dry_run": True, "spec": spec.resolved().model_dump(mode="json"), "spec_sha256": spec.sha256(),
            "estimated_cost_image_passes": estimate_cost(spec), "data": locate_data(spec, data_root)}


def write_dry_run(spec: JobSpec, out: Path, data_root: str | Path | None) -> dict[str, Any]:
    """Write ``out/report.json`` for a dry run and return the report."""
    report = dry_run_report(spec, data_root)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report

