import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from core import checkpoint
from core.errors import Cancelled, CheckpointError, DatasetNotFound, DivergedError, SpecError
from core.trainer import Callbacks, train
from tests.conftest import DIVERGING, tiny_spec


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_the_run_folder(tmp_path, spec):
    events = []
    report = train(spec, tmp_path, callbacks=Callbacks(on_event=events.append))
    for name in ("report.json", "metrics.jsonl", "checkpoint.pt", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    stored = json.loads((tmp_path / "report.json").read_text())
    assert stored == json.loads(json.dumps(report))
    assert stored["spec"]["training"]["alpha"] == 8.0  # resolved, with defaults
    assert 0.0 <= stored["final"]["clean_accuracy"] <= 1.0
    assert 0.0 <= stored["final"]["robust_accuracy"] <= stored["final"]["clean_accuracy"] + 1e-9
    assert set(stored["timing"]) == {"train_seconds", "train_images_per_second", "monitor_seconds", "eval_seconds"}
    assert stored["environment"]["torch"] == torch.__version__
    assert stored["environment"]["channels_last"] is False  # width 4 on the CPU: NCHW (memory_format_for)
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]  # 96/32 = 3 steps x 2 epochs
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [0, 1]
    assert [e["type"] for e in events][0] == "started" and events[-1]["type"] == "finished"
    assert sum(e["type"] == "progress" for e in events) == 6


def test_max_steps_stops_mid_epoch_and_still_evaluates(tmp_path):
    spec = tiny_spec(training={"max_steps": 4}, monitor={"every_steps": 100})
    report = train(spec, tmp_path)
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]  # 1 of epoch 1's 3 steps
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [0, 1]
    assert [r["step"] for r in rows if r["kind"] == "monitor"] == [3, 4]  # the closing epoch is checked
    assert report["steps"] == {"done": 4, "planned": 6}
    assert 0.0 <= report["final"]["robust_accuracy"] <= report["final"]["clean_accuracy"] + 1e-9
    train(tiny_spec(monitor={"every_steps": 100}), tmp_path / "whole")
    whole = _rows(tmp_path / "whole")
    assert [r for r in rows if r["kind"] == "train"] == [r for r in whole if r["kind"] == "train"][:4]  # same lr


def test_resume_after_cancel_matches_an_uninterrupted_run(tmp_path):
    spec = tiny_spec(training={"method": "rs_fgsm"}, dataset={"augment": True})  # uses both random streams
    whole = train(spec, tmp_path / "whole")

    calls = {"n": 0}

    def stop_at_step_four() -> bool:
        calls["n"] += 1
        return calls["n"] == 5  # checked before each step: stops mid-epoch 1, after 4 steps

    with pytest.raises(Cancelled):
        train(spec, tmp_path / "split", callbacks=Callbacks(should_stop=stop_at_step_four))
    assert [r["step"] for r in _rows(tmp_path / "split")][-1] == 4
    resumed = train(spec, tmp_path / "split", resume=True)

    assert _rows(tmp_path / "split") == _rows(tmp_path / "whole")
    assert resumed["final"] == whole["final"]


def test_a_real_nan_loss_raises_diverged_error(tmp_path, single_thread):
    """R10 in the trainer: an absurd learning rate and weight decay make the loss nan (no fault injection);
    train() raises DivergedError at the logged step, after a finite first epoch, and writes no report."""
    events = []
    with pytest.raises(DivergedError, match=r"training loss became (nan|inf|-inf) by step (\d+)") as raised:
        train(tiny_spec(**DIVERGING), tmp_path, callbacks=Callbacks(on_event=events.append))
    step = int(raised.value.args[0].rsplit(" ", 1)[1])
    assert step > 3  # after epoch 0 (3 steps), which ended with a finite loss
    epochs = [e for e in events if e["type"] == "epoch"]
    assert epochs and all(torch.isfinite(torch.tensor(e["train_loss"])) for e in epochs)
    assert not (tmp_path / "report.json").exists()


def test_resume_refuses_a_checkpoint_of_another_spec(tmp_path, spec):
    train(spec, tmp_path)
    with pytest.raises(CheckpointError, match="another spec"):
        train(tiny_spec(seed=1), tmp_path, resume=True)


def test_checkpoint_loading_never_runs_pickled_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(pickle.dumps({"schema_version": 1, "payload": Exploit()}))
    with pytest.raises(CheckpointError):
        checkpoint.load(path, "cpu")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("training", [
    {"method": "standard"}, {"method": "fgsm"}, {"method": "rs_fgsm"}, {"method": "n_fgsm"},
    {"method": "grad_align"}, {"method": "grad_align", "grad_align_at": "adversarial"},
    {"method": "pgd", "pgd_steps": 2}, {"method": "fgsm", "precision": "bf16"},
    {"method": "fgsm", "channels_last": False, "lr_schedule": "multistep"},
])
def test_every_method_trains_with_finite_loss(tmp_path, training):
    train(tiny_spec(training={**training, "epochs": 1}), tmp_path)
    assert all(np.isfinite(r["train_loss"]) for r in _rows(tmp_path) if r["kind"] != "monitor")


@pytest.mark.parametrize("intervention", [
    {"kind": "inject", "beta": 8}, {"kind": "inject_orthogonal", "beta": 4},
    {"kind": "low_pass", "bandwidth": 8}, {"kind": "high_pass", "bandwidth": 8},
])
def test_every_intervention_trains(tmp_path, intervention):
    report = train(tiny_spec(intervention=intervention, training={"epochs": 1}), tmp_path)
    assert report["spec"]["intervention"]["kind"] == intervention["kind"]


def test_strong_injected_carrier_is_learned_faster_than_the_images(tmp_path):
    # beta = 64/255: the carrier alone identifies the class, so the same short run does far better
    training = {"method": "standard", "epochs": 4}
    plain = train(tiny_spec(training=training), tmp_path / "plain")
    injected = train(tiny_spec(intervention={"kind": "inject", "beta": 64}, training=training), tmp_path / "inj")
    assert injected["final"]["clean_accuracy"] >= 0.9
    assert injected["final"]["clean_accuracy"] >= plain["final"]["clean_accuracy"] + 0.2


def test_bandwidth_larger_than_the_image_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="bandwidth 20 is larger than the image side 16"):
        train(tiny_spec(intervention={"kind": "low_pass", "bandwidth": 20}), tmp_path)


def test_missing_torchvision_dataset_names_the_expected_path(tmp_path):
    spec = tiny_spec(dataset={"name": "cifar10"})
    with pytest.raises(DatasetNotFound, match=str(tmp_path / "cifar-10-batches-py")):
        train(spec, tmp_path / "run", data_root=tmp_path)


def test_missing_image_folder_names_the_expected_path(tmp_path):
    spec = tiny_spec(dataset={"name": "imagefolder", "path": "mine"})
    with pytest.raises(DatasetNotFound, match=str(tmp_path / "mine" / "train")):
        train(spec, tmp_path / "run", data_root=tmp_path)


def _write_image_folder(root, per_class=12):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, name in enumerate(["cat", "dog", "emu"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(60 + 60 * label, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")


def test_image_folder_is_decoded_cached_and_trained(tmp_path, monkeypatch):
    monkeypatch.setenv("COSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    _write_image_folder(tmp_path / "data" / "shapes")
    spec = tiny_spec(dataset={"name": "imagefolder", "path": "shapes"}, training={"epochs": 1, "batch_size": 12})
    report = train(spec, tmp_path / "run", data_root=tmp_path / "data")
    assert report["data"] == {**report["data"], "train_images": 36, "test_images": 36, "num_classes": 3,
                              "image_shape": [3, 16, 16]}
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # train and test decoded once
    first = Image.open(tmp_path / "data" / "shapes" / "train" / "cat" / "000.png")
    from core.data import load_dataset

    cached = load_dataset(spec.dataset, tmp_path / "data", 0)
    assert torch.equal(cached.train.images[0], torch.from_numpy(np.asarray(first)).permute(2, 0, 1))


def test_image_folder_link_out_of_the_data_root_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("COSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    _write_image_folder(tmp_path / "outside")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "escape").symlink_to(tmp_path / "outside")
    spec = tiny_spec(dataset={"name": "imagefolder", "path": "escape"})
    with pytest.raises(SpecError, match="outside the data root"):
        train(spec, tmp_path / "run", data_root=tmp_path / "data")


@pytest.mark.parametrize(("images", "policy", "steps"), [
    (10_000, "keep", 79), (10_000, "drop", 78), (10_000, "drop_small", 78),  # 78 x 128 + 16
    (50_000, "keep", 391), (50_000, "drop_small", 391), (50_000, "drop", 390),  # the paper: 390 x 128 + 80
    (256, "drop_small", 2), (100, "drop", 1),  # fewer images than a batch: that one batch
])
def test_steps_per_epoch_follow_the_last_batch_policy(images, policy, steps):
    from core.trainer import batches_per_epoch

    assert batches_per_epoch(images, 128, policy) == steps


@pytest.mark.parametrize(("policy", "sizes"), [("drop_small", [32, 32, 32]), ("keep", [32, 32, 32, 8])])
def test_the_training_batches_of_an_epoch(tmp_path, monkeypatch, policy, sizes):
    # 104 images in batches of 32 leave 8: BatchNorm in train mode would normalise 8 images and the
    # optimizer take a full-lr step on them (issue 11); drop_small drops that batch, keep keeps it
    spec = tiny_spec(dataset={"synthetic_train_size": 104}, training={"epochs": 1, "last_batch": policy},
                     monitor={"enabled": False})
    seen = []
    import core.trainer as trainer

    original = trainer.train_step

    def counting_step(model, optimizer, x, *args):
        seen.append(len(x))
        return original(model, optimizer, x, *args)

    monkeypatch.setattr(trainer, "train_step", counting_step)
    report = train(spec, tmp_path)
    assert seen == sizes and report["steps"] == {"done": len(sizes), "planned": len(sizes)}


def test_monitor_and_final_evaluation_run_in_fp32_under_bf16_training(tmp_path):
    from core.trainer import _Run

    spec = tiny_spec(training={"precision": "bf16", "epochs": 1},
                     monitor={"curvature_every_epochs": 1, "curvature_iterations": 2})
    run = _Run(spec.resolved(), tmp_path, torch.device("cpu"), None, Callbacks(), None)
    dtypes = set()
    run.model.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # even when called from inside the training precision
        run._monitor_row(curvature=True)
        run._evaluate()
    assert dtypes == {torch.float32}
