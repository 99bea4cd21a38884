"""``coscope sweep`` and the Python client's sweep methods against a real embedded server with its worker."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from coscope.client import CoscopeClient
from coscope.harness import Stack
from tests.service.conftest import job_spec


def _cli(stack: Stack, key: str, *args: str):
    return stack.coscope(*args, "--server", stack.url, "--key", key)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(job_spec(epochs=1)))
    return path


def test_submit_wait_prints_the_table_of_the_sweep_and_download_writes_its_artifacts(embedded_server, spec_file,
                                                                                     tmp_path):
    stack, key = embedded_server
    result = _cli(stack, key, "sweep", "submit", str(spec_file), "--axis", "training.epsilon=2,8",
                  "--seeds", "0", "--name", "cli", "--wait")
    assert result.returncode == 0, result.stderr
    sweep_id = result.stdout.split()[1]
    with CoscopeClient(stack.url, key) as client:
        sweep = client.sweep(sweep_id)
    assert sweep["status"] == "succeeded"
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("training.epsilon"))
    for cell, line in zip(sweep["cells"], lines[header + 1:header + 3], strict=True):
        columns = line.split()
        assert columns[0] == str(cell["params"]["training.epsilon"])
        assert columns[1] == f"{100 * cell['clean_accuracy']['mean']:.1f}"
        assert columns[2] == f"{100 * cell['robust_accuracy']['mean']:.1f}"
    status = _cli(stack, key, "sweep", "status", sweep_id)
    assert status.returncode == 0 and lines[header:header + 3] == status.stdout.splitlines()[1:4]
    download = _cli(stack, key, "sweep", "download", sweep_id, "--out", str(tmp_path))
    assert download.returncode == 0, download.stderr
    assert (tmp_path / f"{sweep_id}-heatmap.svg").read_bytes().startswith(b"<svg ")
    assert (tmp_path / f"{sweep_id}-table.csv").read_text().startswith("training.epsilon,clean_accuracy_mean")
    assert sweep_id in _cli(stack, key, "sweep", "list").stdout


@pytest.mark.parametrize(("axis", "named"), [("training.epsilon", "--axis 'training.epsilon'"),
                                             ("training.epsilon=.nan", "--axis 'training.epsilon=.nan'"),
                                             ("training.epsilon=[1", "--axis 'training.epsilon=[1'"),
                                             ("training.epsilon=2020-01-01", "numbers, booleans or words"),
                                             ("training.epsilon=4,300", "grid.training.epsilon.1 (cell "
                                                                        "training.epsilon=300)")])
def test_a_bad_axis_exits_2_naming_it(embedded_server, spec_file, axis, named):
    stack, key = embedded_server
    result = _cli(stack, key, "sweep", "submit", str(spec_file), "--axis", axis)
    assert result.returncode == 2 and named in result.stderr, result.stderr


def test_the_python_client_cancels_a_sweep_and_waits_for_its_end(embedded_server):
    stack, key = embedded_server
    with CoscopeClient(stack.url, key) as client:
        sweep = client.submit_sweep(job_spec(epochs=30, train_size=512), {"training.epsilon": [2, 4, 6, 8]})
        client.cancel_sweep(sweep["id"])
        events = []
        final = client.wait_sweep(sweep["id"], on_event=events.append)
    assert final["status"] == "cancelled" and final["counts"] == {"cancelled": 4}
    assert sorted(e.data["job_id"] for e in events if e.type == "child_finished") == sorted(sweep["jobs"])
    assert events[-1].type == "sweep_finished"


def test_axes_and_seeds_parse_to_scalars_and_refuse_repeats_and_non_numbers(capsys):
    from coscope.client_cli import _Abort
    from coscope.sweep_cli import parse_grid, parse_seeds

    assert parse_grid(["intervention.beta=0,4.5", "training.method=fgsm,n_fgsm", "dataset.augment=true"]) == {
        "intervention.beta": [0, 4.5], "training.method": ["fgsm", "n_fgsm"], "dataset.augment": [True]}
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(None) is None
    for call in (lambda: parse_grid(["training.epsilon=2", "training.epsilon=4"]), lambda: parse_seeds("0,x")):
        with pytest.raises(_Abort) as aborted:
            call()
        assert aborted.value.code == 2
    assert "given twice" in capsys.readouterr().err
