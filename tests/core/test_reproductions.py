"""Issue 11's cause, reproduced at CPU scale (opt-in: COSCOPE_REPRODUCE=1; about 10 minutes per run on 2 cores).

N-FGSM at eps 8/255 on 10,000 class-stratified CIFAR-10 JPEG images (width 16, 10 epochs, seed 0): with the
He et al. block that coscope used before (projection shortcut on relu(bn1(x))) the monitor sees CO; with the
paper's block (projection of the block input, the default) it does not. The three-seed table and the other
arms (last batch, FGSM start point) are in docs/ablation.md (bench/ablation.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.spec import JobSpec
from core.trainer import train

pytestmark = pytest.mark.reproduction
DATA_ROOT = Path(os.environ.get("COSCOPE_DATA_ROOT", Path(__file__).parents[3] / "shared" / "data"))


def nfgsm_spec(arch: str) -> JobSpec:
    return JobSpec.model_validate({
        "seed": 0,
        "dataset": {"name": "imagefolder", "path": "cifar10-jpeg", "train_subset": 10_000, "test_subset": 1000},
        "model": {"arch": arch, "width": 16},
        "training": {"method": "n_fgsm", "epsilon": 8, "epochs": 10, "batch_size": 128, "last_batch": "keep"},
        "evaluation": {"pgd_steps": 10, "restarts": 1, "test_subset": 500},
    })


@pytest.mark.parametrize(("arch", "verdict"), [("preact_resnet18_he", "co"), ("preact_resnet18", "no_co")])
def test_nfgsm_collapses_with_the_he_block_only(tmp_path, arch, verdict):
    if not (DATA_ROOT / "cifar10-jpeg").is_dir():
        pytest.skip(f"no CIFAR-10 JPEG folder under {DATA_ROOT}")
    report = train(nfgsm_spec(arch), tmp_path, data_root=DATA_ROOT)
    assert report["co"]["verdict"] == verdict
